//! Stage 1: parses the arguments of `#[catbird::step(...)]` into a model
//! that keeps each value's tokens, with the option machinery of
//! `common::parse`.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Lookahead1, ParseStream};
use syn::{LitStr, Path, Token, token};

use crate::common::parse::{
    HandlerArgs, Key, Opt, eq_value, key, kw, paren_list, parse_handler_option, parse_list, set,
    unknown_option,
};
use crate::errors::Errors;

/// The options of `#[catbird::step(...)]`, in the order the docs list them.
pub(crate) const STEP_OPTIONS: &[&str] = &[
    "name",
    "description",
    "depends_on",
    "condition",
    "signal",
    "ignore_output",
    "optional",
    "map_input",
    "map",
    "generator",
    "reduce",
    "item",
    "concurrency",
    "batch_size",
    "busy_poll",
    "timeout",
    "max_retries",
    "backoff",
    "circuit_breaker",
    "crate",
];

/// The arguments of `#[catbird::step(...)]`, as written.
#[derive(Default)]
pub(crate) struct StepArgs {
    pub(crate) name: Option<Opt<LitStr>>,
    pub(crate) description: Option<Opt<LitStr>>,
    pub(crate) depends_on: Option<Opt<Vec<StepRef>>>,
    pub(crate) condition: Option<Opt<LitStr>>,
    /// The `signal` flag: where it was written.
    pub(crate) signal: Option<Key>,
    pub(crate) ignore_output: Option<Opt<Vec<StepRef>>>,
    pub(crate) optional: Option<Opt<Vec<StepRef>>>,
    /// The `map_input` flag: where it was written.
    pub(crate) map_input: Option<Key>,
    /// `map = "source"` or `map = source`.
    pub(crate) map: Option<Opt<StepRef>>,
    /// `generator(item = handler)`.
    pub(crate) generator: Option<Opt<GeneratorArgs>>,
    /// `reduce = "source"` or `reduce = source`.
    pub(crate) reduce: Option<Opt<StepRef>>,
    /// The `item` flag, which makes the function a generator's item
    /// handler: where it was written.
    pub(crate) item: Option<Key>,
    pub(crate) handler: HandlerArgs,
    pub(crate) krate: Option<Opt<LitStr>>,
}

/// The options inside `generator(...)`.
pub(crate) const GENERATOR_OPTIONS: &[&str] = &["item"];

/// `generator(item = handler)`.
#[derive(Default)]
pub(crate) struct GeneratorArgs {
    /// The path of the item handler, a function under
    /// `#[catbird::step(item)]`.
    pub(crate) item: Option<Opt<Path>>,
}

/// A step named in `depends_on`, `ignore_output` or `optional`: by its
/// name, or by the path of its function.
#[derive(Clone)]
pub(crate) enum StepRef {
    /// `"validate"`.
    Name(LitStr),
    /// `validate` or `crate::orders::validate`.
    Path(Path),
}

impl StepRef {
    /// Returns the name of the parameter that receives the step's output:
    /// the string, or the path's last segment.
    pub(crate) fn key(&self) -> String {
        match self {
            StepRef::Name(name) => name.value(),
            StepRef::Path(path) => path
                .segments
                .last()
                .map(|last| last.ident.unraw().to_string())
                .unwrap_or_default(),
        }
    }

    /// Formats the reference as the user would write it in a list:
    /// `"validate"` or `validate`.
    pub(crate) fn written(&self) -> String {
        match self {
            StepRef::Name(name) => format!("\"{}\"", name.value()),
            StepRef::Path(path) => path
                .segments
                .iter()
                .map(|segment| segment.ident.to_string())
                .collect::<Vec<_>>()
                .join("::"),
        }
    }
}

impl ToTokens for StepRef {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            StepRef::Name(name) => name.to_tokens(tokens),
            StepRef::Path(path) => path.to_tokens(tokens),
        }
    }
}

/// Parses the attribute arguments. Never fails: every problem is recorded
/// in `errors` and parsing goes on with the next option.
pub(crate) fn parse_args(args: TokenStream, errors: &mut Errors) -> StepArgs {
    crate::common::parse::parse_args(args, errors, parse_step_option)
}

fn parse_step_option(
    input: ParseStream<'_>,
    args: &mut StepArgs,
    errors: &mut Errors,
) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::name) {
        let key = key::<kw::name>(input, "name")?;
        let value = eq_value(input, key, "a string", "name = \"validate\"")?;
        set(&mut args.name, value, errors);
    } else if lookahead.peek(kw::description) {
        let key = key::<kw::description>(input, "description")?;
        let value = eq_value(input, key, "a string", "description = \"Checks the order\"")?;
        set(&mut args.description, value, errors);
    } else if lookahead.peek(kw::depends_on) {
        let key = key::<kw::depends_on>(input, "depends_on")?;
        let value = step_list(input, key, errors)?;
        if args.depends_on.is_some() {
            errors.at_span(
                key.span,
                "`depends_on` is given twice; list every dependency in one: \
                 `depends_on(\"validate\", \"check_inventory\")`",
            );
        } else {
            args.depends_on = Some(value);
        }
    } else if lookahead.peek(kw::condition) {
        let key = key::<kw::condition>(input, "condition")?;
        let value = eq_value(
            input,
            key,
            "a string",
            "condition = \"validate.valid eq true\"",
        )?;
        set(&mut args.condition, value, errors);
    } else if lookahead.peek(kw::signal) {
        let key = key::<kw::signal>(input, "signal")?;
        if input.peek(Token![=]) || input.peek(token::Paren) {
            return Err(syn::Error::new(
                key.span,
                "`signal` takes no value: write `signal` to make the step wait for a signal",
            ));
        }
        if args.signal.is_some() {
            errors.at_span(key.span, "`signal` is given twice; remove one of them");
        } else {
            args.signal = Some(key);
        }
    } else if lookahead.peek(kw::ignore_output) {
        let key = key::<kw::ignore_output>(input, "ignore_output")?;
        let value = step_list(input, key, errors)?;
        set(&mut args.ignore_output, value, errors);
    } else if lookahead.peek(kw::optional) {
        let key = key::<kw::optional>(input, "optional")?;
        let value = step_list(input, key, errors)?;
        set(&mut args.optional, value, errors);
    } else if lookahead.peek(kw::map_input) {
        let key = key::<kw::map_input>(input, "map_input")?;
        flag(
            input,
            key,
            "`map_input` takes no value: write `map_input` to map over the flow input",
        )?;
        if args.map_input.is_some() {
            errors.at_span(key.span, "`map_input` is given twice; remove one of them");
        } else {
            args.map_input = Some(key);
        }
    } else if lookahead.peek(kw::map) {
        let key = key::<kw::map>(input, "map")?;
        let value = source(input, key)?;
        set(&mut args.map, value, errors);
    } else if lookahead.peek(kw::generator) {
        let key = key::<kw::generator>(input, "generator")?;
        let example = "generator(item = double)";
        let value = paren_list(input, key, example, errors, parse_generator_option)?;
        set(&mut args.generator, value, errors);
    } else if lookahead.peek(kw::reduce) {
        let key = key::<kw::reduce>(input, "reduce")?;
        let value = source(input, key)?;
        set(&mut args.reduce, value, errors);
    } else if lookahead.peek(kw::item) {
        let key = key::<kw::item>(input, "item")?;
        flag(
            input,
            key,
            "`item` takes no value: write `item` to make the function a generator's item \
             handler, and `generator(item = ...)` on the generator",
        )?;
        if args.item.is_some() {
            errors.at_span(key.span, "`item` is given twice; remove one of them");
        } else {
            args.item = Some(key);
        }
    } else if lookahead.peek(Token![crate]) {
        let key = key::<Token![crate]>(input, "crate")?;
        let value = eq_value(
            input,
            key,
            "a path in a string",
            "crate = \"my_crate::catbird\"",
        )?;
        set(&mut args.krate, value, errors);
    } else if !parse_handler_option(input, &lookahead, &mut args.handler, errors)? {
        return Err(unknown_option(input, lookahead, "step", STEP_OPTIONS));
    }
    Ok(())
}

/// Fails with `message` when the flag `key` is given a value.
fn flag(input: ParseStream<'_>, key: Key, message: &str) -> syn::Result<()> {
    if input.peek(Token![=]) || input.peek(token::Paren) {
        return Err(syn::Error::new(key.span, message));
    }
    Ok(())
}

/// Parses `= "source"` or `= source` after `map` or `reduce`.
fn source(input: ParseStream<'_>, key: Key) -> syn::Result<Opt<StepRef>> {
    let example = format!("{} = \"numbers\"` or `{} = numbers", key.name, key.name);
    if !input.peek(Token![=]) {
        return Err(syn::Error::new(
            key.span,
            format_args!(
                "`{}` takes one step name or step function: write `{example}`",
                key.name
            ),
        ));
    }
    input.parse::<Token![=]>()?;
    let lookahead = input.lookahead1();
    let step = step_ref(input, lookahead, key, &example).map_err(|error| {
        syn::Error::new(
            error.span(),
            format_args!(
                "`{}` takes one step name or step function: write `{example}`",
                key.name
            ),
        )
    })?;
    Ok(Opt { key, value: step })
}

fn parse_generator_option(
    input: ParseStream<'_>,
    args: &mut GeneratorArgs,
    errors: &mut Errors,
) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::item) {
        let key = key::<kw::item>(input, "item")?;
        let value = eq_value(
            input,
            key,
            "the path of a function under `#[catbird::step(item)]`",
            "item = double",
        )?;
        set(&mut args.item, value, errors);
    } else {
        return Err(unknown_option(
            input,
            lookahead,
            "generator",
            GENERATOR_OPTIONS,
        ));
    }
    Ok(())
}

/// Parses the steps after `key`: `= "name"`, `= path`, or a parenthesised
/// list of names and paths. Every bad entry of a list is reported and the
/// good ones are kept.
fn step_list(
    input: ParseStream<'_>,
    key: Key,
    errors: &mut Errors,
) -> syn::Result<Opt<Vec<StepRef>>> {
    let example = format!(
        "{}(\"validate\", \"check_inventory\")` or `{}(validate, check_inventory)",
        key.name, key.name
    );
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        if input.peek(token::Bracket) {
            return Err(syn::Error::new(
                input.span(),
                format_args!(
                    "`{}` lists several steps in parentheses: write `{example}`",
                    key.name
                ),
            ));
        }
        let lookahead = input.lookahead1();
        let step = step_ref(input, lookahead, key, &example)?;
        return Ok(Opt {
            key,
            value: vec![step],
        });
    }
    if !input.peek(token::Paren) {
        return Err(syn::Error::new(
            key.span,
            format_args!(
                "`{}` takes step names or step functions: write `{} = \"validate\"` or `{example}`",
                key.name, key.name
            ),
        ));
    }
    let content;
    syn::parenthesized!(content in input);
    let mut steps = Vec::new();
    parse_list(&content, errors, |input, _| {
        let lookahead = input.lookahead1();
        steps.push(step_ref(input, lookahead, key, &example)?);
        Ok(())
    });
    Ok(Opt { key, value: steps })
}

/// Parses one step name or function path.
fn step_ref(
    input: ParseStream<'_>,
    lookahead: Lookahead1<'_>,
    key: Key,
    example: &str,
) -> syn::Result<StepRef> {
    if lookahead.peek(LitStr) {
        return Ok(StepRef::Name(input.parse()?));
    }
    if lookahead.peek(syn::Ident::peek_any) || lookahead.peek(Token![::]) {
        if let Ok(path) = input.call(Path::parse_mod_style) {
            return Ok(StepRef::Path(path));
        }
    }
    Err(syn::Error::new(
        input.span(),
        format_args!(
            "`{}` takes step names or step functions: write `{example}`",
            key.name
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(args: TokenStream) -> (StepArgs, Vec<String>) {
        let mut errors = Errors::default();
        let parsed = parse_args(args, &mut errors);
        (parsed, errors.messages())
    }

    fn keys(list: &Option<Opt<Vec<StepRef>>>) -> Vec<String> {
        list.as_ref()
            .map(|list| list.value.iter().map(StepRef::key).collect())
            .unwrap_or_default()
    }

    #[test]
    fn parses_every_option() {
        let (args, errors) = parse(quote! {
            name = "charge", description = "Charges the card",
            depends_on("validate", crate::orders::check_inventory),
            condition = "validate.valid eq true", signal,
            ignore_output("validate"), optional(check_inventory),
            concurrency = 5, batch_size = 10, timeout = "30s", max_retries = 3,
            backoff(min = "500ms", max = "10s"),
            circuit_breaker(threshold = 4, open_timeout = "1m"),
            crate = "reexport::catbird",
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(args.name.unwrap().value.value(), "charge");
        assert_eq!(args.description.unwrap().value.value(), "Charges the card");
        assert_eq!(keys(&args.depends_on), ["validate", "check_inventory"]);
        assert_eq!(
            args.condition.unwrap().value.value(),
            "validate.valid eq true"
        );
        assert!(args.signal.is_some());
        assert_eq!(keys(&args.ignore_output), ["validate"]);
        assert_eq!(keys(&args.optional), ["check_inventory"]);
        assert_eq!(args.handler.max_retries.unwrap().value.base10_digits(), "3");
        assert!(args.handler.backoff.is_some());
        assert!(args.handler.circuit_breaker.is_some());
        assert_eq!(args.krate.unwrap().value.value(), "reexport::catbird");
    }

    #[test]
    fn every_listed_option_is_recognised() {
        for option in STEP_OPTIONS {
            let key: TokenStream = option.parse().unwrap();
            let (_, errors) = parse(quote!(#key));
            assert!(
                errors.iter().all(|error| !error.contains("unknown")),
                "{option}: {errors:?}"
            );
        }
    }

    #[test]
    fn depends_on_takes_one_step_or_a_list() {
        let (args, errors) = parse(quote!(depends_on = "validate"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(keys(&args.depends_on), ["validate"]);

        let (args, errors) = parse(quote!(depends_on = validate));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(matches!(
            args.depends_on.unwrap().value[0],
            StepRef::Path(_)
        ));

        let (args, errors) = parse(quote!(depends_on(r#type, super::steps::ship,)));
        assert!(errors.is_empty(), "{errors:?}");
        let depends_on = args.depends_on.unwrap().value;
        assert_eq!(depends_on[0].key(), "type");
        assert_eq!(depends_on[1].key(), "ship");
        assert_eq!(depends_on[1].written(), "super::steps::ship");
    }

    #[test]
    fn reports_bad_entries_and_keeps_the_good_ones() {
        let (args, errors) = parse(quote!(depends_on("validate", 3, ship), signal));
        assert_eq!(
            errors,
            ["`depends_on` takes step names or step functions: write \
              `depends_on(\"validate\", \"check_inventory\")` or \
              `depends_on(validate, check_inventory)`"]
        );
        assert_eq!(keys(&args.depends_on), ["validate", "ship"]);
        assert!(args.signal.is_some());
    }

    #[test]
    fn explains_the_list_forms() {
        let (_, errors) = parse(quote!(depends_on = ["a", "b"], optional, signal = true));
        assert_eq!(
            errors,
            [
                "`depends_on` lists several steps in parentheses: write \
                 `depends_on(\"validate\", \"check_inventory\")` or \
                 `depends_on(validate, check_inventory)`",
                "`optional` takes step names or step functions: write `optional = \"validate\"` \
                 or `optional(\"validate\", \"check_inventory\")` or \
                 `optional(validate, check_inventory)`",
                "`signal` takes no value: write `signal` to make the step wait for a signal",
            ]
        );
    }

    #[test]
    fn repeated_options_are_reported() {
        let (args, errors) = parse(quote!(depends_on("a"), signal, depends_on("b"), signal));
        assert_eq!(
            errors,
            [
                "`depends_on` is given twice; list every dependency in one: \
                 `depends_on(\"validate\", \"check_inventory\")`",
                "`signal` is given twice; remove one of them",
            ]
        );
        assert_eq!(keys(&args.depends_on), ["a"]);
    }

    #[test]
    fn unknown_option_lists_the_options() {
        let (_, errors) = parse(quote!(depends = "a"));
        assert_eq!(
            errors,
            [
                "unknown step option `depends`; did you mean `depends_on`? expected one of \
                 `name`, `description`, `depends_on`, `condition`, `signal`, `ignore_output`, \
                 `optional`, `map_input`, `map`, `generator`, `reduce`, `item`, `concurrency`, \
                 `batch_size`, `busy_poll`, `timeout`, `max_retries`, `backoff`, \
                 `circuit_breaker`, `crate`"
            ]
        );
    }

    #[test]
    fn parses_the_fan_out_options() {
        let (args, errors) = parse(quote!(map = crate::steps::numbers, reduce = "double", item));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(args.map.unwrap().value.written(), "crate::steps::numbers");
        assert_eq!(args.reduce.unwrap().value.key(), "double");
        assert!(args.item.is_some());

        let (args, errors) = parse(quote!(map_input, generator(item = items::double)));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(args.map_input.is_some());
        let item = args.generator.unwrap().value.item.unwrap().value;
        assert_eq!(quote!(#item).to_string(), "items :: double");

        let (_, errors) = parse(quote!(
            map,
            map_input = true,
            generator,
            generator(items = x)
        ));
        assert_eq!(
            errors,
            [
                "`map` takes one step name or step function: write `map = \"numbers\"` or \
                 `map = numbers`",
                "`map_input` takes no value: write `map_input` to map over the flow input",
                "`generator` takes a list of options: write `generator(item = double)`",
                "unknown generator option `items`; did you mean `item`? expected one of `item`",
            ]
        );
    }
}
