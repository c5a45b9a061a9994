//! Stage 1: parses the attribute arguments and the annotated function into a
//! model that keeps each value's tokens, so later stages report problems at
//! the tokens the user wrote.
//!
//! Argument parsing recovers from a bad option by skipping to the next comma,
//! so one compile reports every bad option, not only the first.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{Lookahead1, Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Attribute, Ident, LitInt, LitStr, Path, Signature, Token, Visibility, token};

use crate::errors::Errors;
use crate::suggest::did_you_mean;

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(description);
    syn::custom_keyword!(condition);
    syn::custom_keyword!(concurrency);
    syn::custom_keyword!(batch_size);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(max_retries);
    syn::custom_keyword!(backoff);
    syn::custom_keyword!(min);
    syn::custom_keyword!(max);
    syn::custom_keyword!(circuit_breaker);
    syn::custom_keyword!(threshold);
    syn::custom_keyword!(open_timeout);
    syn::custom_keyword!(retention);
    syn::custom_keyword!(on_fail);
    syn::custom_keyword!(handler);
}

/// The options of `#[catbird::task(...)]`, in the order the docs list them.
pub(crate) const TASK_OPTIONS: &[&str] = &[
    "name",
    "description",
    "condition",
    "concurrency",
    "batch_size",
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

/// The options inside `backoff(...)`.
pub(crate) const BACKOFF_OPTIONS: &[&str] = &["min", "max"];

/// The options inside `circuit_breaker(...)`.
pub(crate) const BREAKER_OPTIONS: &[&str] = &["threshold", "open_timeout"];

/// An option's key: its name and where it was written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) span: Span,
}

/// An option's value, with the key it was given under.
#[derive(Clone)]
pub(crate) struct Opt<T> {
    pub(crate) key: Key,
    pub(crate) value: T,
}

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

/// The handler options, shared by the task and its on-fail handler.
#[derive(Default)]
pub(crate) struct HandlerArgs {
    pub(crate) concurrency: Option<Opt<LitInt>>,
    pub(crate) batch_size: Option<Opt<LitInt>>,
    pub(crate) timeout: Option<Opt<LitStr>>,
    pub(crate) max_retries: Option<Opt<LitInt>>,
    pub(crate) backoff: Option<Opt<BackoffArgs>>,
    pub(crate) circuit_breaker: Option<Opt<BreakerArgs>>,
}

/// `backoff(min = "...", max = "...")`.
#[derive(Default)]
pub(crate) struct BackoffArgs {
    pub(crate) min: Option<Opt<LitStr>>,
    pub(crate) max: Option<Opt<LitStr>>,
}

/// `circuit_breaker(threshold = N, open_timeout = "...")`.
#[derive(Default)]
pub(crate) struct BreakerArgs {
    pub(crate) threshold: Option<Opt<LitInt>>,
    pub(crate) open_timeout: Option<Opt<LitStr>>,
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
    let mut parsed = TaskArgs::default();
    let parser = |input: ParseStream<'_>| {
        parse_list(input, errors, |input, errors| {
            parse_task_option(input, &mut parsed, errors)
        });
        Ok(())
    };
    // The list parser consumes every token, so this cannot fail.
    if let Err(error) = syn::parse::Parser::parse2(parser, args) {
        errors.push(error);
    }
    parsed
}

/// Parses `option, option, ...` until the input is empty, recording a bad
/// option and skipping to the next top-level comma.
fn parse_list(
    input: ParseStream<'_>,
    errors: &mut Errors,
    mut option: impl FnMut(ParseStream<'_>, &mut Errors) -> syn::Result<()>,
) {
    while !input.is_empty() {
        if let Err(error) = option(input, errors) {
            errors.push(error);
            skip_to_comma(input);
        }
        if input.is_empty() {
            break;
        }
        if let Err(error) = input.parse::<Token![,]>() {
            errors.push(syn::Error::new(
                error.span(),
                "expected `,` between options",
            ));
            skip_to_comma(input);
            let _ = input.parse::<Option<Token![,]>>();
        }
    }
}

/// Skips token trees up to the next comma at this level (or the end).
fn skip_to_comma(input: ParseStream<'_>) {
    while !input.is_empty() && !input.peek(Token![,]) {
        if input.parse::<TokenTree>().is_err() {
            break;
        }
    }
}

/// Records `value` in `slot`, or reports it at its key when the option was
/// already given.
fn set<T>(slot: &mut Option<Opt<T>>, value: Opt<T>, errors: &mut Errors) {
    if slot.is_some() {
        errors.at_span(
            value.key.span,
            format_args!("`{}` is given twice; remove one of them", value.key.name),
        );
    } else {
        *slot = Some(value);
    }
}

/// Parses `= value` after `key`, explaining with `example` what to write
/// when either part is missing or of the wrong kind.
fn eq_value<T: Parse>(
    input: ParseStream<'_>,
    key: Key,
    expected: &str,
    example: &str,
) -> syn::Result<Opt<T>> {
    if !input.peek(Token![=]) {
        return Err(syn::Error::new(
            key.span,
            format_args!("`{}` takes {expected}: write `{example}`", key.name),
        ));
    }
    input.parse::<Token![=]>()?;
    let at = input.span();
    match input.parse::<T>() {
        Ok(value) => Ok(Opt { key, value }),
        Err(_) => Err(syn::Error::new(
            at,
            format_args!("`{}` takes {expected}: write `{example}`", key.name),
        )),
    }
}

/// Parses the parenthesised list after `key` with `option`. The whole list
/// is consumed even when some of its options are bad.
fn paren_list<T: Default>(
    input: ParseStream<'_>,
    key: Key,
    example: &str,
    errors: &mut Errors,
    mut option: impl FnMut(ParseStream<'_>, &mut T, &mut Errors) -> syn::Result<()>,
) -> syn::Result<Opt<T>> {
    if !input.peek(token::Paren) {
        return Err(syn::Error::new(
            key.span,
            format_args!("`{}` takes a list of options: write `{example}`", key.name),
        ));
    }
    let content;
    syn::parenthesized!(content in input);
    let mut value = T::default();
    parse_list(&content, errors, |input, errors| {
        option(input, &mut value, errors)
    });
    Ok(Opt { key, value })
}

/// Builds the error for a token that is not a known option. It names the
/// unknown option, suggests a close match and lists the options.
fn unknown_option(
    input: ParseStream<'_>,
    lookahead: Lookahead1<'_>,
    place: &str,
    options: &[&str],
) -> syn::Error {
    if input.peek(Ident::peek_any) {
        if let Ok(ident) = input.call(Ident::parse_any) {
            let unknown = ident.unraw().to_string();
            let list = options
                .iter()
                .map(|option| format!("`{option}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let hint = match did_you_mean(&unknown, options) {
                Some(close) => format!("did you mean `{close}`? "),
                None => String::new(),
            };
            return syn::Error::new(
                ident.span(),
                format_args!("unknown {place} option `{unknown}`; {hint}expected one of {list}"),
            );
        }
    }
    lookahead.error()
}

/// Parses the keyword `K` of the option `name`.
fn key<K: Parse + Spanned>(input: ParseStream<'_>, name: &'static str) -> syn::Result<Key> {
    let token: K = input.parse()?;
    Ok(Key {
        name,
        span: token.span(),
    })
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

/// Parses one handler option when the next token starts one; returns
/// whether it did.
fn parse_handler_option(
    input: ParseStream<'_>,
    lookahead: &Lookahead1<'_>,
    args: &mut HandlerArgs,
    errors: &mut Errors,
) -> syn::Result<bool> {
    if lookahead.peek(kw::concurrency) {
        let key = key::<kw::concurrency>(input, "concurrency")?;
        let value = eq_value(input, key, "an integer", "concurrency = 5")?;
        set(&mut args.concurrency, value, errors);
    } else if lookahead.peek(kw::batch_size) {
        let key = key::<kw::batch_size>(input, "batch_size")?;
        let value = eq_value(input, key, "an integer", "batch_size = 64")?;
        set(&mut args.batch_size, value, errors);
    } else if lookahead.peek(kw::timeout) {
        let key = key::<kw::timeout>(input, "timeout")?;
        let value = eq_value(input, key, "a duration string", "timeout = \"30s\"")?;
        set(&mut args.timeout, value, errors);
    } else if lookahead.peek(kw::max_retries) {
        let key = key::<kw::max_retries>(input, "max_retries")?;
        let value = eq_value(input, key, "an integer", "max_retries = 3")?;
        set(&mut args.max_retries, value, errors);
    } else if lookahead.peek(kw::backoff) {
        let key = key::<kw::backoff>(input, "backoff")?;
        let example = "backoff(min = \"500ms\", max = \"10s\")";
        let value = paren_list(input, key, example, errors, parse_backoff_option)?;
        set(&mut args.backoff, value, errors);
    } else if lookahead.peek(kw::circuit_breaker) {
        let key = key::<kw::circuit_breaker>(input, "circuit_breaker")?;
        let example = "circuit_breaker(threshold = 5, open_timeout = \"30s\")";
        let value = paren_list(input, key, example, errors, parse_breaker_option)?;
        set(&mut args.circuit_breaker, value, errors);
    } else {
        return Ok(false);
    }
    Ok(true)
}

fn parse_backoff_option(
    input: ParseStream<'_>,
    args: &mut BackoffArgs,
    errors: &mut Errors,
) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::min) {
        let key = key::<kw::min>(input, "min")?;
        let value = eq_value(input, key, "a duration string", "min = \"500ms\"")?;
        set(&mut args.min, value, errors);
    } else if lookahead.peek(kw::max) {
        let key = key::<kw::max>(input, "max")?;
        let value = eq_value(input, key, "a duration string", "max = \"10s\"")?;
        set(&mut args.max, value, errors);
    } else {
        return Err(unknown_option(input, lookahead, "backoff", BACKOFF_OPTIONS));
    }
    Ok(())
}

fn parse_breaker_option(
    input: ParseStream<'_>,
    args: &mut BreakerArgs,
    errors: &mut Errors,
) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::threshold) {
        let key = key::<kw::threshold>(input, "threshold")?;
        let value = eq_value(input, key, "an integer", "threshold = 5")?;
        set(&mut args.threshold, value, errors);
    } else if lookahead.peek(kw::open_timeout) {
        let key = key::<kw::open_timeout>(input, "open_timeout")?;
        let value = eq_value(input, key, "a duration string", "open_timeout = \"30s\"")?;
        set(&mut args.open_timeout, value, errors);
    } else {
        return Err(unknown_option(
            input,
            lookahead,
            "circuit_breaker",
            BREAKER_OPTIONS,
        ));
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

/// The annotated function. Its body stays opaque tokens: the macro moves it
/// and never needs to look inside.
pub(crate) struct TaskFn {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    pub(crate) body: TokenTree,
}

impl Parse for TaskFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let start = input.span();
        let sig: Signature = input.parse().map_err(|_| not_a_function(start))?;
        let body: TokenTree = input.parse().map_err(|_| not_a_function(start))?;
        match &body {
            TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => {}
            _ => return Err(not_a_function(start)),
        }
        if !input.is_empty() {
            return Err(not_a_function(start));
        }
        Ok(TaskFn {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

fn not_a_function(span: Span) -> syn::Error {
    syn::Error::new(
        span,
        "`#[catbird::task]` goes on an `async fn` with a body that takes the task's input: \
         `async fn send_email(email: Email) -> anyhow::Result<Receipt> { ... }`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
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
                 `condition`, `concurrency`, `batch_size`, `timeout`, `max_retries`, \
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
        let item: TaskFn = syn::parse2(quote! {
            /// Docs.
            pub async fn send(email: Email) -> anyhow::Result<()> { this is not rust }
        })
        .unwrap();
        assert_eq!(item.sig.ident, "send");
        assert_eq!(item.attrs.len(), 1);
    }

    #[test]
    fn rejects_items_that_are_not_functions() {
        let error = syn::parse2::<TaskFn>(quote!(
            struct Email;
        ))
        .err()
        .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("`#[catbird::task]` goes on an `async fn`")
        );
        let error = syn::parse2::<TaskFn>(quote!(
            fn f(x: u8);
        ))
        .err()
        .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("`#[catbird::task]` goes on an `async fn`")
        );
    }
}
