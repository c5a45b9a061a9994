//! `#[catbird::task]`: parse, validate, expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;
use quote::quote;

use crate::common::Kind;
use crate::common::parse::Function;
use crate::errors::Errors;

/// Expands `#[catbird::task(args)]` on `item`. Every problem becomes a
/// `compile_error!` at its span, next to an expansion that keeps the user's
/// function, so call sites do not report errors of their own.
pub(crate) fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = match Function::parse(item.clone(), Kind::Task) {
        Ok(function) => function,
        Err(error) => {
            let error = error.to_compile_error();
            return quote!(#item #error);
        }
    };

    let mut errors = Errors::default();
    let args = parse::parse_args(args, &mut errors);
    let task = validate::validate(args, function, &mut errors);
    let expanded = expand::expand(&task);
    let errors = errors.to_compile_errors();
    quote!(#expanded #errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: TokenStream, item: TokenStream) -> String {
        let expanded = task(args, item);
        let file: syn::File = syn::parse2(expanded).expect("the expansion is valid Rust");
        quote!(#file).to_string()
    }

    #[test]
    fn expands_to_a_struct_with_the_task_items() {
        let expanded = expand(
            quote!(max_retries = 3, timeout = "30s"),
            quote! {
                /// Sends one email.
                pub async fn send_email(email: Email) -> anyhow::Result<Receipt> { todo!() }
            },
        );
        for part in [
            "pub struct send_email ;",
            "impl send_email",
            "pub const NAME : & str = \"send_email\"",
            "pub async fn call (email : Email) -> anyhow :: Result < Receipt >",
            "pub fn definition () -> :: catbird :: __private :: catbird_core :: Task",
            ". max_retries (3)",
            ". timeout (:: catbird :: __private :: Duration :: from_millis (30000))",
            ". description (\"Sends one email.\")",
            "TaskHandler :: new :: < Email , Receipt ,",
            "pub async fn run (client : & :: catbird :: __private :: catbird_core :: Client , \
             input : & Email ,)",
            "IntoTaskHandler for send_email",
        ] {
            assert!(expanded.contains(part), "missing `{part}` in {expanded}");
        }
        assert!(!expanded.contains("compile_error"), "{expanded}");
    }

    #[test]
    fn crate_option_changes_every_path() {
        let expanded = expand(
            quote!(crate = "reexport::catbird"),
            quote!(
                async fn ping(n: u8) -> Result<u8, E> {
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
    fn invalid_signature_keeps_the_function_next_to_the_error() {
        let expanded = expand(
            quote!(),
            quote!(
                fn ping(n: u8) -> Result<u8, E> {
                    Ok(n)
                }
            ),
        );
        assert!(expanded.contains("compile_error"), "{expanded}");
        assert!(expanded.contains("struct ping ;"), "{expanded}");
        assert!(
            expanded.contains("fn call (n : u8) -> Result < u8 , E > { Ok (n) }"),
            "{expanded}"
        );
        assert!(expanded.contains("stand_in"), "{expanded}");
    }

    #[test]
    fn method_is_given_back_untouched() {
        let expanded = expand(
            quote!(),
            quote!(
                async fn ping(&self, n: u8) -> Result<u8, E> {
                    Ok(n)
                }
            ),
        );
        assert!(
            expanded.starts_with("async fn ping (& self , n : u8)"),
            "{expanded}"
        );
        assert!(!expanded.contains("struct"), "{expanded}");
    }

    #[test]
    fn item_that_is_not_a_function_is_kept() {
        let expanded = expand(
            quote!(),
            quote!(
                struct Email;
            ),
        );
        assert!(expanded.starts_with("struct Email ;"), "{expanded}");
        assert!(expanded.contains("compile_error"), "{expanded}");
    }
}
