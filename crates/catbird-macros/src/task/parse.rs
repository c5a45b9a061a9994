//! Stage 1: parses the arguments of `#[catbird::task(...)]` into a model
//! that keeps each value's tokens, with the option machinery of
//! `common::parse`.

use proc_macro2::TokenStream;
use syn::parse::ParseStream;
use syn::{LitStr, Path, Token, token};

use crate::common::parse::{
    HandlerArgs, Key, Opt, eq_value, key, kw, paren_list, parse_handler_option, set, unknown_option,
};
use crate::errors::Errors;

/// The options of `#[catbird::task(...)]`, in the order the docs list them.
pub(crate) const TASK_OPTIONS: &[&str] = &[
    "name",
    "description",
    "condition",
    "concurrency",
    "batch_size",
    "busy_poll",
    "timeout",
    "max_retries",
    "backoff",
    "circuit_breaker",
    "retention",
    "on_fail",
    "crate",
];

/// The options inside `on_fail(...)`.
pub(crate) const ON_FAIL_OPTIONS: &[&str] = &[
    "handler",
    "concurrency",
    "batch_size",
    "timeout",
    "max_retries",
    "backoff",
    "circuit_breaker",
];

/// The arguments of `#[catbird::task(...)]`, as written.
#[derive(Default)]
pub(crate) struct TaskArgs {
    pub(crate) name: Option<Opt<LitStr>>,
    pub(crate) description: Option<Opt<LitStr>>,
    pub(crate) condition: Option<Opt<LitStr>>,
    pub(crate) retention: Option<Opt<LitStr>>,
    pub(crate) handler: HandlerArgs,
    pub(crate) on_fail: Option<Opt<OnFailArgs>>,
    pub(crate) krate: Option<Opt<LitStr>>,
}

/// `on_fail = path` or `on_fail(handler = path, <handler options>)`.
#[derive(Default)]
pub(crate) struct OnFailArgs {
    pub(crate) handler: Option<Opt<Path>>,
    /// `None` for the short form, which keeps the on-fail defaults.
    pub(crate) options: Option<HandlerArgs>,
}

/// Parses the attribute arguments. Never fails: every problem is recorded
/// in `errors` and parsing goes on with the next option.
pub(crate) fn parse_args(args: TokenStream, errors: &mut Errors) -> TaskArgs {
    crate::common::parse::parse_args(args, errors, parse_task_option)
}

fn parse_task_option(
    input: ParseStream<'_>,
    args: &mut TaskArgs,
    errors: &mut Errors,
) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::name) {
        let key = key::<kw::name>(input, "name")?;
        let value = eq_value(input, key, "a string", "name = \"send_email\"")?;
        set(&mut args.name, value, errors);
    } else if lookahead.peek(kw::description) {
        let key = key::<kw::description>(input, "description")?;
        let value = eq_value(input, key, "a string", "description = \"Sends one email\"")?;
        set(&mut args.description, value, errors);
    } else if lookahead.peek(kw::condition) {
        let key = key::<kw::condition>(input, "condition")?;
        let value = eq_value(
            input,
            key,
            "a string",
            "condition = \"input.priority gte 5\"",
        )?;
        set(&mut args.condition, value, errors);
    } else if lookahead.peek(kw::retention) {
        let key = key::<kw::retention>(input, "retention")?;
        let value = eq_value(input, key, "a duration string", "retention = \"7d\"")?;
        set(&mut args.retention, value, errors);
    } else if lookahead.peek(kw::on_fail) {
        let key = key::<kw::on_fail>(input, "on_fail")?;
        let value = parse_on_fail(input, key, errors)?;
        set(&mut args.on_fail, value, errors);
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
        return Err(unknown_option(input, lookahead, "task", TASK_OPTIONS));
    }
    Ok(())
}

/// `on_fail = path`, or `on_fail(handler = path, <handler options>)`.
fn parse_on_fail(
    input: ParseStream<'_>,
    on_fail: Key,
    errors: &mut Errors,
) -> syn::Result<Opt<OnFailArgs>> {
    let example = "on_fail = notify_failure";
    if input.peek(Token![=]) {
        let handler = eq_value(input, on_fail, "the path of a function", example)?;
        return Ok(Opt {
            key: on_fail,
            value: OnFailArgs {
                handler: Some(handler),
                options: None,
            },
        });
    }
    if !input.peek(token::Paren) {
        return Err(syn::Error::new(
            on_fail.span,
            format_args!(
                "`on_fail` takes a function: write `{example}`, or \
                 `on_fail(handler = notify_failure, max_retries = 5)` to set its options"
            ),
        ));
    }
    let example = "on_fail(handler = notify_failure, max_retries = 5)";
    paren_list(
        input,
        on_fail,
        example,
        errors,
        |input, args: &mut OnFailArgs, errors| {
            let lookahead = input.lookahead1();
            let options = args.options.get_or_insert_with(HandlerArgs::default);
            if lookahead.peek(kw::handler) {
                let key = key::<kw::handler>(input, "handler")?;
                let value = eq_value(
                    input,
                    key,
                    "the path of a function",
                    "handler = notify_failure",
                )?;
                set(&mut args.handler, value, errors);
            } else if lookahead.peek(kw::busy_poll) {
                // NOTE: on-fail loops wait for a wake-up after every short
                // claim, so the option would have no effect there.
                return Err(unknown_option(input, lookahead, "on_fail", ON_FAIL_OPTIONS));
            } else if !parse_handler_option(input, &lookahead, options, errors)? {
                return Err(unknown_option(input, lookahead, "on_fail", ON_FAIL_OPTIONS));
            }
            Ok(())
        },
    )
    .map(|mut parsed| {
        parsed
            .value
            .options
            .get_or_insert_with(HandlerArgs::default);
        parsed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Kind;
    use crate::common::parse::Function;
    use quote::quote;

    fn parse(args: TokenStream) -> (TaskArgs, Vec<String>) {
        let mut errors = Errors::default();
        let parsed = parse_args(args, &mut errors);
        (parsed, errors.messages())
    }

    #[test]
    fn parses_every_option() {
        let (args, errors) = parse(quote! {
            name = "send_email", description = "Sends one email", condition = "input.x gte 1",
            concurrency = 5, batch_size = 10, timeout = "30s", max_retries = 3,
            backoff(min = "500ms", max = "10s"),
            circuit_breaker(threshold = 4, open_timeout = "1m"),
            retention = "7d", on_fail = notify, crate = "reexport::catbird",
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(args.name.unwrap().value.value(), "send_email");
        assert_eq!(args.description.unwrap().value.value(), "Sends one email");
        assert_eq!(args.condition.unwrap().value.value(), "input.x gte 1");
        assert_eq!(args.retention.unwrap().value.value(), "7d");
        assert_eq!(args.krate.unwrap().value.value(), "reexport::catbird");
        let handler = args.handler;
        assert_eq!(handler.concurrency.unwrap().value.base10_digits(), "5");
        assert_eq!(handler.batch_size.unwrap().value.base10_digits(), "10");
        assert_eq!(handler.timeout.unwrap().value.value(), "30s");
        assert_eq!(handler.max_retries.unwrap().value.base10_digits(), "3");
        let backoff = handler.backoff.unwrap().value;
        assert_eq!(backoff.min.unwrap().value.value(), "500ms");
        assert_eq!(backoff.max.unwrap().value.value(), "10s");
        let breaker = handler.circuit_breaker.unwrap().value;
        assert_eq!(breaker.threshold.unwrap().value.base10_digits(), "4");
        assert_eq!(breaker.open_timeout.unwrap().value.value(), "1m");
        let on_fail = args.on_fail.unwrap().value;
        assert!(on_fail.handler.unwrap().value.is_ident("notify"));
        assert!(on_fail.options.is_none());
    }

    #[test]
    fn every_listed_option_is_recognised() {
        for option in TASK_OPTIONS {
            let key: TokenStream = option.parse().unwrap();
            let (_, errors) = parse(quote!(#key));
            assert!(
                errors.iter().all(|error| !error.contains("unknown")),
                "{option}: {errors:?}"
            );
        }
    }

    #[test]
    fn empty_arguments_are_fine() {
        let (args, errors) = parse(TokenStream::new());
        assert!(errors.is_empty());
        assert!(args.name.is_none());
    }

    #[test]
    fn on_fail_takes_its_own_options() {
        let (args, errors) = parse(quote! {
            on_fail(handler = crate::alerts::notify, max_retries = 5, backoff(min = "1s", max = "1m"))
        });
        assert!(errors.is_empty(), "{errors:?}");
        let on_fail = args.on_fail.unwrap().value;
        let handler = on_fail.handler.unwrap().value;
        assert_eq!(handler.segments.len(), 3);
        let options = on_fail.options.unwrap();
        assert_eq!(options.max_retries.unwrap().value.base10_digits(), "5");
        assert!(options.backoff.is_some());
        assert!(args.handler.max_retries.is_none());
    }

    #[test]
    fn reports_every_bad_option_and_keeps_the_good_ones() {
        let (args, errors) = parse(quote! {
            nme = "x", concurrency = 5, retries = 3, timeout = 30, max_retries = 2
        });
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("unknown task option `nme`; did you mean `name`?"));
        assert!(
            errors[1].starts_with("unknown task option `retries`; did you mean `max_retries`?")
        );
        assert_eq!(
            errors[2],
            "`timeout` takes a duration string: write `timeout = \"30s\"`"
        );
        assert!(args.handler.concurrency.is_some());
        assert!(args.handler.max_retries.is_some());
    }

    #[test]
    fn unknown_option_lists_the_options() {
        let (_, errors) = parse(quote!(priority = 3));
        assert_eq!(
            errors,
            [
                "unknown task option `priority`; expected one of `name`, `description`, \
                 `condition`, `concurrency`, `batch_size`, `busy_poll`, `timeout`, `max_retries`, \
                 `backoff`, `circuit_breaker`, `retention`, `on_fail`, `crate`"
            ]
        );
    }

    #[test]
    fn duplicate_is_reported_once_and_first_value_kept() {
        let (args, errors) = parse(quote!(max_retries = 1, max_retries = 2));
        assert_eq!(errors, ["`max_retries` is given twice; remove one of them"]);
        assert_eq!(args.handler.max_retries.unwrap().value.base10_digits(), "1");
    }

    #[test]
    fn bad_nested_option_is_reported_and_list_consumed() {
        let (args, errors) = parse(quote! {
            backoff(minimum = "1s", max = "2s"), name = "ok"
        });
        assert_eq!(
            errors,
            ["unknown backoff option `minimum`; did you mean `min`? expected one of `min`, `max`"]
        );
        assert!(args.backoff_max_is("2s"));
        assert_eq!(args.name.unwrap().value.value(), "ok");
    }

    #[test]
    fn missing_value_says_what_to_write() {
        let (_, errors) = parse(quote!(name, backoff = "1s", on_fail));
        assert_eq!(
            errors,
            [
                "`name` takes a string: write `name = \"send_email\"`",
                "`backoff` takes a list of options: write `backoff(min = \"500ms\", max = \"10s\")`",
                "`on_fail` takes a function: write `on_fail = notify_failure`, or \
                 `on_fail(handler = notify_failure, max_retries = 5)` to set its options",
            ]
        );
    }

    #[test]
    fn missing_comma_is_reported() {
        let (args, errors) = parse(quote!(name = "a" concurrency = 2, max_retries = 1));
        assert_eq!(errors, ["expected `,` between options"]);
        assert!(args.handler.max_retries.is_some());
    }

    impl TaskArgs {
        fn backoff_max_is(&self, text: &str) -> bool {
            self.handler
                .backoff
                .as_ref()
                .and_then(|backoff| backoff.value.max.as_ref())
                .is_some_and(|max| max.value.value() == text)
        }
    }

    #[test]
    fn parses_a_function_with_an_opaque_body() {
        let item = Function::parse(
            quote! {
                /// Docs.
                pub async fn send(email: Email) -> anyhow::Result<()> { this is not rust }
            },
            Kind::Task,
        )
        .unwrap();
        assert_eq!(item.sig.ident, "send");
        assert_eq!(item.attrs.len(), 1);
    }

    #[test]
    fn rejects_items_that_are_not_functions() {
        let error = Function::parse(
            quote!(
                struct Email;
            ),
            Kind::Task,
        )
        .err()
        .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("`#[catbird::task]` goes on an `async fn`")
        );
        let error = Function::parse(
            quote!(
                fn f(x: u8);
            ),
            Kind::Task,
        )
        .err()
        .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("`#[catbird::task]` goes on an `async fn`")
        );
    }
}
