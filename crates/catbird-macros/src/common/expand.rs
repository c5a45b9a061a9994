//! Code generation helpers shared by the macros.

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::quote;
use syn::{Attribute, Ident, Signature};

use super::Kind;
use super::parse::Function;
use super::validate::{HandlerOpts, Value};

/// The function exactly as written.
pub(crate) fn original(function: &Function) -> TokenStream {
    let Function {
        attrs,
        vis,
        sig,
        body,
    } = function;
    quote!(#(#attrs)* #vis #sig #body)
}

/// The function's attributes, by where they go.
pub(crate) struct Attrs<'a> {
    /// `#[doc]`: on the struct and on `call`.
    pub(crate) docs: Vec<&'a Attribute>,
    /// `#[cfg]`: on every generated item.
    pub(crate) cfgs: Vec<&'a Attribute>,
    /// Everything else (`#[tracing::instrument]`, lints, ...): on `call`.
    pub(crate) others: Vec<&'a Attribute>,
}

impl<'a> Attrs<'a> {
    pub(crate) fn split(attrs: &'a [Attribute]) -> Self {
        let mut split = Attrs {
            docs: Vec::new(),
            cfgs: Vec::new(),
            others: Vec::new(),
        };
        for attr in attrs {
            if attr.path().is_ident("doc") {
                split.docs.push(attr);
            } else if attr.path().is_ident("cfg") {
                split.cfgs.push(attr);
            } else {
                split.others.push(attr);
            }
        }
        split
    }
}

/// `#[doc = "..."]` lines, with a blank line first when `after_docs`.
pub(crate) fn doc_lines(after_docs: bool, lines: &[String]) -> TokenStream {
    let blank = after_docs.then(|| quote!(#[doc = ""]));
    quote!(#blank #(#[doc = #lines])*)
}

/// The user's function with the signature `sig`, renamed `call`, with its
/// attributes and body.
pub(crate) fn call_fn(
    function: &Function,
    sig: &Signature,
    attrs: &Attrs<'_>,
    kind: Kind,
) -> TokenStream {
    let Function { vis, body, .. } = function;
    let ident = &sig.ident;
    let mut sig = sig.clone();
    sig.ident = Ident::new("call", ident.span());
    let docs = &attrs.docs;
    let others = &attrs.others;
    let note = doc_lines(
        !docs.is_empty(),
        &[format!(
            "The function as written under `{}`: `{ident}::call(...)` \
             runs it directly, outside catbird.",
            kind.attribute()
        )],
    );
    quote! {
        #(#docs)*
        #note
        #(#others)*
        #vis #sig #body
    }
}

/// `Duration::from_millis(...)` at the span of the duration string.
pub(crate) fn duration_tokens(
    private: &TokenStream,
    duration: &Value<std::time::Duration>,
) -> TokenStream {
    let millis = u64::try_from(duration.value.as_millis()).unwrap_or(u64::MAX);
    let mut millis = Literal::u64_unsuffixed(millis);
    millis.set_span(duration.span);
    quote!(#private::Duration::from_millis(#millis))
}

fn integer_tokens(value: &Value<u64>) -> Literal {
    let mut literal = Literal::u64_unsuffixed(value.value);
    literal.set_span(value.span);
    literal
}

/// The builder calls that apply `opts`; `TaskHandler`, `StepHandler` and
/// `HandlerOpts` share these method names.
pub(crate) fn option_calls(private: &TokenStream, opts: &HandlerOpts) -> TokenStream {
    let mut calls = TokenStream::new();
    if let Some(concurrency) = &opts.concurrency {
        let concurrency = integer_tokens(concurrency);
        calls.extend(quote!(.concurrency(#concurrency)));
    }
    if let Some(batch_size) = &opts.batch_size {
        let batch_size = integer_tokens(batch_size);
        calls.extend(quote!(.batch_size(#batch_size)));
    }
    if let Some(busy_poll) = &opts.busy_poll {
        let busy_poll = duration_tokens(private, busy_poll);
        calls.extend(quote!(.busy_poll(#busy_poll)));
    }
    if let Some(timeout) = &opts.timeout {
        let timeout = duration_tokens(private, timeout);
        calls.extend(quote!(.timeout(#timeout)));
    }
    if let Some(max_retries) = &opts.max_retries {
        let max_retries = integer_tokens(max_retries);
        calls.extend(quote!(.max_retries(#max_retries)));
    }
    if let Some((min, max)) = &opts.backoff {
        let (min, max) = (duration_tokens(private, min), duration_tokens(private, max));
        calls.extend(quote!(.backoff(#min, #max)));
    }
    if let Some((threshold, open_timeout)) = &opts.circuit_breaker {
        let threshold = integer_tokens(threshold);
        let open_timeout = duration_tokens(private, open_timeout);
        calls.extend(quote!(.circuit_breaker(#threshold, #open_timeout)));
    }
    calls
}

/// `tokens` with every span set to `span`, so that rustc reports problems
/// with them at `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = respanned.into();
            }
            token.set_span(span);
            token
        })
        .collect()
}
