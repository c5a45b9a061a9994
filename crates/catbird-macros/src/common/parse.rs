//! Parsing shared by the macros: the option-list machinery, the handler
//! options, and the annotated function.
//!
//! Option parsing recovers from a bad option by skipping to the next comma,
//! so one compile reports every bad option, not only the first. Each value
//! keeps its key and tokens, so later stages report problems at the tokens
//! the user wrote.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{Lookahead1, Parse, ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Attribute, Ident, LitInt, LitStr, Signature, Token, Visibility, token};

use super::Kind;
use crate::errors::Errors;
use crate::suggest::did_you_mean;

/// The keywords of the options.
pub(crate) mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(description);
    syn::custom_keyword!(condition);
    syn::custom_keyword!(concurrency);
    syn::custom_keyword!(batch_size);
    syn::custom_keyword!(busy_poll);
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
    syn::custom_keyword!(depends_on);
    syn::custom_keyword!(signal);
    syn::custom_keyword!(ignore_output);
    syn::custom_keyword!(optional);
    syn::custom_keyword!(map_input);
    syn::custom_keyword!(map);
    syn::custom_keyword!(generator);
    syn::custom_keyword!(reduce);
    syn::custom_keyword!(item);
}

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

/// The handler options, shared by tasks, their on-fail handlers and steps.
#[derive(Default)]
pub(crate) struct HandlerArgs {
    pub(crate) concurrency: Option<Opt<LitInt>>,
    pub(crate) batch_size: Option<Opt<LitInt>>,
    pub(crate) busy_poll: Option<Opt<LitStr>>,
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

/// Parses attribute arguments with `option`, one option at a time. Never
/// fails: every problem is recorded in `errors` and parsing goes on with the
/// next option.
pub(crate) fn parse_args<T: Default>(
    args: TokenStream,
    errors: &mut Errors,
    mut option: impl FnMut(ParseStream<'_>, &mut T, &mut Errors) -> syn::Result<()>,
) -> T {
    let mut parsed = T::default();
    let parser = |input: ParseStream<'_>| {
        parse_list(input, errors, |input, errors| {
            option(input, &mut parsed, errors)
        });
        Ok(())
    };
    // The list parser consumes every token, so this cannot fail.
    if let Err(error) = Parser::parse2(parser, args) {
        errors.push(error);
    }
    parsed
}

/// Parses `option, option, ...` until the input is empty, recording a bad
/// option and skipping to the next top-level comma.
pub(crate) fn parse_list(
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
pub(crate) fn set<T>(slot: &mut Option<Opt<T>>, value: Opt<T>, errors: &mut Errors) {
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
pub(crate) fn eq_value<T: Parse>(
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
pub(crate) fn paren_list<T: Default>(
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
pub(crate) fn unknown_option(
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
pub(crate) fn key<K: Parse + Spanned>(
    input: ParseStream<'_>,
    name: &'static str,
) -> syn::Result<Key> {
    let token: K = input.parse()?;
    Ok(Key {
        name,
        span: token.span(),
    })
}

/// Parses one handler option when the next token starts one; returns
/// whether it did.
pub(crate) fn parse_handler_option(
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
    } else if lookahead.peek(kw::busy_poll) {
        let key = key::<kw::busy_poll>(input, "busy_poll")?;
        let value = eq_value(input, key, "a duration string", "busy_poll = \"2ms\"")?;
        set(&mut args.busy_poll, value, errors);
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

/// The annotated function. Its body stays opaque tokens: the macros move it
/// and never need to look inside.
pub(crate) struct Function {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    pub(crate) body: TokenTree,
}

impl Function {
    /// Parses `item` as a function with a body, or explains what the
    /// attribute of `kind` goes on.
    pub(crate) fn parse(item: TokenStream, kind: Kind) -> syn::Result<Function> {
        let parser = |input: ParseStream<'_>| {
            let attrs = input.call(Attribute::parse_outer)?;
            let vis: Visibility = input.parse()?;
            let start = input.span();
            let sig: Signature = input.parse().map_err(|_| not_a_function(start, kind))?;
            let body: TokenTree = input.parse().map_err(|_| not_a_function(start, kind))?;
            match &body {
                TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => {}
                _ => return Err(not_a_function(start, kind)),
            }
            if !input.is_empty() {
                return Err(not_a_function(start, kind));
            }
            Ok(Function {
                attrs,
                vis,
                sig,
                body,
            })
        };
        Parser::parse2(parser, item)
    }
}

fn not_a_function(span: Span, kind: Kind) -> syn::Error {
    let message = match kind {
        Kind::Task => {
            "`#[catbird::task]` goes on an `async fn` with a body that takes the task's input: \
             `async fn send_email(email: Email) -> anyhow::Result<Receipt> { ... }`"
        }
        Kind::Step => {
            "`#[catbird::step]` goes on an `async fn` with a body that takes the flow input: \
             `async fn validate(order: Order) -> anyhow::Result<Validation> { ... }`"
        }
    };
    syn::Error::new(span, message)
}
