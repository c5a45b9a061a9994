//! `#[catbird::step]`: parse, validate, expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;
use quote::quote;

use crate::common::Kind;
use crate::common::parse::Function;
use crate::errors::Errors;

/// Expands `#[catbird::step(args)]` on `item`. Every problem becomes a
/// `compile_error!` at its span, next to an expansion that keeps the user's
/// function, so uses elsewhere do not report errors of their own.
pub(crate) fn step(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = match Function::parse(item.clone(), Kind::Step) {
        Ok(function) => function,
        Err(error) => {
            let error = error.to_compile_error();
            return quote!(#item #error);
        }
    };

    let mut errors = Errors::default();
    let args = parse::parse_args(args, &mut errors);
    let step = validate::validate(args, function, &mut errors);
    let expanded = expand::expand(&step);
    let errors = errors.to_compile_errors();
    quote!(#expanded #errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: TokenStream, item: TokenStream) -> String {
        let expanded = step(args, item);
        let file: syn::File = syn::parse2(expanded).expect("the expansion is valid Rust");
        quote!(#file).to_string()
    }

    fn assert_contains(expanded: &str, parts: &[&str]) {
        for part in parts {
            assert!(expanded.contains(part), "missing `{part}` in {expanded}");
        }
    }

    #[test]
    fn expands_to_a_struct_with_the_step_items() {
        let expanded = expand(
            quote!(
                depends_on = "validate",
                condition = "validate.valid eq true",
                max_retries = 2
            ),
            quote! {
                /// Charges the card.
                pub async fn charge(order: Order, validate: Validation) -> anyhow::Result<Charge> {
                    todo!()
                }
            },
        );
        assert_contains(
            &expanded,
            &[
                "pub struct charge { }",
                "pub fn charge (_ : :: catbird :: __private :: catbird_worker :: StepToken) -> charge { charge { } }",
                "impl charge",
                "pub const NAME : & str = \"charge\"",
                "pub async fn call (order : Order , validate : Validation) -> anyhow :: Result < Charge >",
                "pub fn definition () -> :: catbird :: __private :: catbird_core :: flow :: StepDef",
                ". description (\"Charges the card.\") . condition (\"validate.valid eq true\")",
                "optional : false , ignore_output : false , .. :: catbird :: __private :: \
                 catbird_core :: flow :: Dependency :: on (\"validate\")",
                "StepHandler :: new :: < Charge , :: catbird :: __private :: AnyError , _ , _ >",
                ". max_retries (2)",
                "StepArgs :: input :: < Order > (& args) ?",
                "StepArgs :: dependency :: < Validation > (& args , \"validate\") ?",
                "Self :: call (__catbird_0 , __catbird_1) . await",
                "IntoStepHandler for charge",
                "Step for charge { const NAME : & 'static str = \"charge\" ; \
                 type Output = Charge ; type This = Self ; }",
            ],
        );
        assert!(!expanded.contains("compile_error"), "{expanded}");
        // A step with a condition may be skipped.
        assert!(!expanded.contains("Unconditional for charge"), "{expanded}");
        // String dependencies have no compile-time check.
        assert!(!expanded.contains("CHECK"), "{expanded}");
    }

    #[test]
    fn path_dependencies_are_checked_at_compile_time() {
        let expanded = expand(
            quote!(depends_on(validate, crate::stock::check_inventory)),
            quote! {
                async fn ship(
                    order: Order,
                    validate: Validation,
                    check_inventory: Option<Stock>,
                    ctx: &StepContext,
                ) -> anyhow::Result<Shipment> { todo!() }
            },
        );
        assert_contains(
            &expanded,
            &[
                "Dependency :: on (< validate as :: catbird :: __private :: Step > :: NAME)",
                "optional : true , ignore_output : false , .. :: catbird :: __private :: \
                 catbird_core :: flow :: Dependency :: on (< crate :: stock :: check_inventory as",
                "optional_dependency :: < Stock > (& args , < crate :: stock :: check_inventory as",
                "const _ : () = < Validation as :: catbird :: __private :: OutputOf < < validate as \
                 :: catbird :: __private :: Step > :: This , < validate as :: catbird :: \
                 __private :: Step > :: Output > > :: CHECK ;",
                "< Stock as :: catbird :: __private :: OutputOf < < crate :: stock :: check_inventory as",
                "< Validation as :: catbird :: __private :: Required < < validate as",
                "Unconditional for ship",
                "Self :: call (__catbird_0 , __catbird_1 , __catbird_2 , & ctx)",
            ],
        );
        // An optional dependency may have a condition.
        assert_eq!(expanded.matches("Required <").count(), 1, "{expanded}");
    }

    #[test]
    fn signal_parameter_loses_its_attribute() {
        let expanded = expand(
            quote!(signal),
            quote! {
                async fn approve(doc: Doc, #[signal] decision: Decision, ctx: StepContext) -> Result<bool, E> {
                    todo!()
                }
            },
        );
        assert_contains(
            &expanded,
            &[
                "fn call (doc : Doc , decision : Decision , ctx : StepContext)",
                ". signal ()",
                "StepArgs :: signal :: < Decision > (& args) ?",
                "Self :: call (__catbird_0 , __catbird_1 , ctx)",
            ],
        );
        assert!(!expanded.contains("# [signal]"), "{expanded}");
    }

    #[test]
    fn ignored_outputs_have_no_parameter() {
        let expanded = expand(
            quote!(depends_on("audit", "validate"), ignore_output("audit")),
            quote! {
                async fn ship(order: Order, validate: Validation) -> anyhow::Result<()> { todo!() }
            },
        );
        assert_contains(
            &expanded,
            &[
                "optional : false , ignore_output : true , .. :: catbird :: __private :: \
                 catbird_core :: flow :: Dependency :: on (\"audit\")",
            ],
        );
        assert!(!expanded.contains("compile_error"), "{expanded}");
    }

    #[test]
    fn crate_option_changes_every_path() {
        let expanded = expand(
            quote!(crate = "reexport::catbird", depends_on(validate)),
            quote!(
                async fn ship(n: u8, validate: u8) -> Result<u8, E> {
                    Ok(n)
                }
            ),
        );
        let private = expanded.matches("__private").count();
        assert!(private > 0);
        assert_eq!(
            expanded.matches("reexport :: catbird :: __private").count(),
            private,
            "{expanded}"
        );
    }

    #[test]
    fn invalid_step_keeps_the_function_next_to_the_error() {
        let expanded = expand(
            quote!(depends_on("validate")),
            quote!(
                async fn ship(n: u8, #[signal] s: u8) -> Result<u8, E> {
                    Ok(n)
                }
            ),
        );
        assert!(expanded.contains("compile_error"), "{expanded}");
        assert!(expanded.contains("struct ship { }"), "{expanded}");
        assert!(
            expanded.contains("fn call (n : u8 , s : u8) -> Result < u8 , E > { Ok (n) }"),
            "{expanded}"
        );
        assert!(expanded.contains("stand_in"), "{expanded}");
        assert!(
            expanded.contains("type This = :: catbird :: __private :: AnyStep"),
            "{expanded}"
        );
    }

    #[test]
    fn method_is_given_back_without_signal_attributes() {
        let expanded = expand(
            quote!(signal),
            quote!(
                async fn ship(&self, n: u8, #[signal] s: u8) -> Result<u8, E> {
                    Ok(n)
                }
            ),
        );
        assert!(
            expanded.starts_with("async fn ship (& self , n : u8 , s : u8)"),
            "{expanded}"
        );
        assert!(!expanded.contains("struct"), "{expanded}");
    }

    #[test]
    fn item_that_is_not_a_function_is_kept() {
        let expanded = expand(
            quote!(),
            quote!(
                struct Order;
            ),
        );
        assert!(expanded.starts_with("struct Order ;"), "{expanded}");
        assert!(expanded.contains("#[catbird::step]"), "{expanded}");
    }
}
