//! Checks shared by the macros: names, durations, handler options, the
//! parts of a signature every handler shares, and the return type. Every
//! problem is recorded at the tokens it concerns, with what to write
//! instead.

use std::time::Duration;

use proc_macro2::Span;
use syn::{
    Attribute, GenericArgument, LitInt, LitStr, Path, PathArguments, ReturnType, Signature, Type,
};

use super::Kind;
use super::parse::{HandlerArgs, Key, Opt};
use crate::duration::parse_duration;
use crate::errors::Errors;

/// The maximum length of a task or step name, because catbird stores runs
/// in tables named after them.
const MAX_NAME_LEN: usize = 58;

/// The longest `busy_poll`, as `catbird_worker::MAX_BUSY_POLL`.
const MAX_BUSY_POLL: Duration = Duration::from_secs(1);

/// A checked value with the span of the tokens it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Value<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// Checked handler options; `None` keeps the worker's default.
#[derive(Debug, Default)]
pub(crate) struct HandlerOpts {
    pub(crate) concurrency: Option<Value<u64>>,
    pub(crate) batch_size: Option<Value<u64>>,
    pub(crate) busy_poll: Option<Value<Duration>>,
    pub(crate) timeout: Option<Value<Duration>>,
    pub(crate) max_retries: Option<Value<u64>>,
    pub(crate) backoff: Option<(Value<Duration>, Value<Duration>)>,
    pub(crate) circuit_breaker: Option<(Value<u64>, Value<Duration>)>,
}

/// The form of a context parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// `ctx: &TaskContext` or `ctx: &StepContext`.
    Borrowed,
    /// `ctx: TaskContext` or `ctx: StepContext`.
    Owned,
}

/// The function's return type and, when it is spelt `Result<T, E>` or
/// `some::Result<T>`, the types it holds.
pub(crate) struct Output {
    pub(crate) ty: Type,
    /// `T` of `Result<T, ...>`.
    pub(crate) ok: Option<Type>,
    /// `E` of `Result<T, E>`.
    pub(crate) err: Option<Type>,
}

/// Returns the path of `crate = "..."`, or `::catbird`.
pub(crate) fn crate_path(krate: Option<&Opt<LitStr>>, errors: &mut Errors) -> Path {
    let parsed = krate.and_then(|krate| match krate.value.parse_with(Path::parse_mod_style) {
        Ok(path) => Some(path),
        Err(_) => {
            errors.at(
                &krate.value,
                "`crate` takes the path of the catbird crate: write `crate = \"my_crate::catbird\"`",
            );
            None
        }
    });
    parsed.unwrap_or_else(|| syn::parse_quote!(::catbird))
}

/// The reason a name breaks catbird's naming rule, and the name to write
/// instead when one is obvious.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NameProblem {
    pub(crate) reason: String,
    pub(crate) fixed: Option<String>,
}

impl NameProblem {
    /// Formats the reason, followed by what to write when there is a fix.
    /// `write` puts the fixed name in the tokens that contain it.
    pub(crate) fn message(&self, write: impl FnOnce(&str) -> String) -> String {
        match &self.fixed {
            Some(fixed) => format!("{}; write `{}`", self.reason, write(fixed)),
            None => self.reason.clone(),
        }
    }
}

/// Checks catbird's naming rule: 1 to 58 characters of `a-z`, `0-9` and
/// `_`, and none of `reserved`, each given with the reason it is reserved.
pub(crate) fn check_name(
    kind: Kind,
    name: &str,
    reserved: &[(&str, &str)],
) -> Result<(), NameProblem> {
    let noun = kind.noun();
    let problem = |reason: String| NameProblem {
        reason,
        fixed: None,
    };
    if name.is_empty() {
        return Err(problem(format!("a {noun} name must not be empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(problem(format!(
            "a {noun} name has at most {MAX_NAME_LEN} characters, this one has {}",
            name.len()
        )));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if !name.chars().all(allowed) {
        let mut fixed = String::new();
        let mut previous = '_';
        for c in name.chars() {
            match c {
                '-' | ' ' | '.' => fixed.push('_'),
                c if c.is_ascii_uppercase() => {
                    if previous.is_ascii_lowercase() || previous.is_ascii_digit() {
                        fixed.push('_');
                    }
                    fixed.push(c.to_ascii_lowercase());
                }
                c => fixed.push(c),
            }
            previous = c;
        }
        let usable = fixed.chars().all(allowed) && reserved.iter().all(|(word, _)| fixed != *word);
        return Err(NameProblem {
            reason: format!("a {noun} name may only contain a-z, 0-9 and _"),
            fixed: usable.then_some(fixed),
        });
    }
    if let Some((word, why)) = reserved.iter().find(|(word, _)| name == *word) {
        return Err(problem(format!(
            "`{word}` is reserved ({why}); choose another name"
        )));
    }
    Ok(())
}

/// Returns the first paragraph of the doc comment, lines joined by spaces.
pub(crate) fn doc_summary(attrs: &[Attribute]) -> Option<String> {
    let mut lines = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        let syn::Meta::NameValue(doc) = &attr.meta else {
            continue;
        };
        let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(text),
            ..
        }) = &doc.value
        else {
            continue;
        };
        lines.extend(text.value().split('\n').map(|line| line.trim().to_owned()));
    }
    let summary = lines
        .iter()
        .skip_while(|line| line.is_empty())
        .take_while(|line| !line.is_empty())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    (!summary.is_empty()).then_some(summary)
}

/// Parses a duration string, reporting it at its tokens when invalid.
pub(crate) fn duration(literal: &LitStr, errors: &mut Errors) -> Option<Value<Duration>> {
    match parse_duration(&literal.value()) {
        Ok(value) => Some(Value {
            value,
            span: literal.span(),
        }),
        Err(problem) => {
            errors.at(
                literal,
                format_args!(
                    "invalid duration \"{}\": {problem}; write a whole number and a unit \
                     (ms, s, m, h or d), like \"500ms\", \"30s\" or \"1h30m\"",
                    literal.value()
                ),
            );
            None
        }
    }
}

fn integer(literal: &LitInt, max: u64, errors: &mut Errors) -> Option<Value<u64>> {
    match literal.base10_parse::<u64>() {
        Ok(value) if value <= max => Some(Value {
            value,
            span: literal.span(),
        }),
        _ => {
            errors.at(literal, format_args!("expected an integer from 0 to {max}"));
            None
        }
    }
}

/// Checks an integer that must be at least 1. `meaning` explains the option
/// in the error.
fn positive(opt: &Opt<LitInt>, max: u64, meaning: &str, errors: &mut Errors) -> Option<Value<u64>> {
    let value = integer(&opt.value, max, errors)?;
    if value.value == 0 {
        errors.at(
            &opt.value,
            format_args!("`{}` must be at least 1: {meaning}", opt.key.name),
        );
        return None;
    }
    Some(value)
}

/// Checks the handler options of a task, an on-fail handler or a step.
pub(crate) fn handler_opts(args: &HandlerArgs, kind: Kind, errors: &mut Errors) -> HandlerOpts {
    let concurrency = args.concurrency.as_ref().and_then(|opt| {
        positive(
            opt,
            u64::from(u32::MAX),
            &format!(
                "it is the maximum number of runs of this {} that one worker executes at once",
                kind.noun()
            ),
            errors,
        )
    });
    let batch_size = args.batch_size.as_ref().and_then(|opt| {
        positive(
            opt,
            u64::from(u32::MAX),
            "it is the maximum number of runs that a worker claims at once",
            errors,
        )
    });
    let busy_poll = args.busy_poll.as_ref().and_then(|opt| {
        let delay = duration(&opt.value, errors)?;
        if delay.value > MAX_BUSY_POLL {
            errors.at_span(
                delay.span,
                format_args!(
                    "`busy_poll` ({:?}) must be at most {MAX_BUSY_POLL:?}: it is the pause \
                     between claims while work keeps coming",
                    delay.value
                ),
            );
            return None;
        }
        Some(delay)
    });
    let timeout = args
        .timeout
        .as_ref()
        .and_then(|opt| duration(&opt.value, errors));
    let max_retries = args
        .max_retries
        .as_ref()
        .and_then(|opt| integer(&opt.value, u64::from(u32::MAX), errors));

    let backoff = args.backoff.as_ref().and_then(|backoff| {
        let min = pair_part(&backoff.value.min, backoff.key, "min", errors);
        let max = pair_part(&backoff.value.max, backoff.key, "max", errors);
        let min = min.and_then(|min| duration(&min.value, errors));
        let max = max.and_then(|max| duration(&max.value, errors));
        let (min, max) = (min?, max?);
        let retries = max_retries.is_none_or(|retries| retries.value > 0);
        if retries && !max.value.is_zero() && max.value <= min.value {
            errors.at_span(
                max.span,
                format_args!(
                    "the backoff `max` ({:?}) must be longer than its `min` ({:?})",
                    max.value, min.value
                ),
            );
            return None;
        }
        Some((min, max))
    });

    let circuit_breaker = args.circuit_breaker.as_ref().and_then(|breaker| {
        let threshold = pair_part(&breaker.value.threshold, breaker.key, "threshold", errors);
        let open_timeout = pair_part(
            &breaker.value.open_timeout,
            breaker.key,
            "open_timeout",
            errors,
        );
        let threshold = threshold.and_then(|threshold| {
            positive(
                threshold,
                u64::from(u32::MAX),
                "it is the number of failures in a row that opens the circuit breaker",
                errors,
            )
        });
        let open_timeout = open_timeout.and_then(|open| duration(&open.value, errors))?;
        if open_timeout.value.is_zero() {
            errors.at_span(
                open_timeout.span,
                "the circuit breaker's `open_timeout` must be longer than zero",
            );
            return None;
        }
        Some((threshold?, open_timeout))
    });

    HandlerOpts {
        concurrency,
        batch_size,
        busy_poll,
        timeout,
        max_retries,
        backoff,
        circuit_breaker,
    }
}

/// Returns one half of `backoff(min, max)` or `circuit_breaker(threshold,
/// open_timeout)`, reporting it when missing: both halves are required.
fn pair_part<'a, T>(
    part: &'a Option<Opt<T>>,
    group: Key,
    name: &str,
    errors: &mut Errors,
) -> Option<&'a Opt<T>> {
    match part {
        Some(part) => Some(part),
        None => {
            let example = match group.name {
                "backoff" => "backoff(min = \"500ms\", max = \"10s\")",
                _ => "circuit_breaker(threshold = 5, open_timeout = \"30s\")",
            };
            errors.at_span(
                group.span,
                format_args!("`{}` is missing `{name}`: write `{example}`", group.name),
            );
            None
        }
    }
}

/// Checks what every handler function shares before its parameters: an
/// `async fn`, neither `const`, `unsafe`, `extern` nor generic.
pub(crate) fn check_modifiers(sig: &Signature, kind: Kind, errors: &mut Errors) {
    let noun = kind.noun();
    let name = &sig.ident;
    if let Some(constness) = &sig.constness {
        errors.at(
            constness,
            format_args!("a {noun} cannot be a `const fn`; remove `const`"),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.at(
            unsafety,
            format_args!("a {noun} cannot be `unsafe`; remove `unsafe`"),
        );
    }
    if let Some(abi) = &sig.abi {
        errors.at(abi, format_args!("a {noun} cannot have an ABI; remove it"));
    }
    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token,
            format_args!("a {noun} must be an `async fn`: write `async fn {name}`"),
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let why = match kind {
            Kind::Task => "each run's input is decoded from JSON into one concrete type",
            Kind::Step => {
                "its input, signal and dependency outputs are decoded from JSON into \
                 concrete types"
            }
        };
        errors.at(
            &sig.generics,
            format_args!("a {noun} cannot be generic: {why}; remove the generic parameters"),
        );
    }
}

/// Checks the return type: a `Result`, or an alias of it named `Result`.
pub(crate) fn check_output(sig: &Signature, kind: Kind, errors: &mut Errors) -> Option<Output> {
    let noun = kind.noun();
    match &sig.output {
        ReturnType::Default => {
            errors.at_span(
                sig.paren_token.span.close(),
                format_args!(
                    "a {noun} must return a `Result`: add `-> anyhow::Result<Output>`, or \
                     `-> Result<Output, E>` with an error type that converts into `anyhow::Error`"
                ),
            );
            None
        }
        ReturnType::Type(_, ty) => match result_types(ty) {
            Ok((ok, err)) => Some(Output {
                ty: (**ty).clone(),
                ok,
                err,
            }),
            Err(()) => {
                let output = match &**ty {
                    Type::ImplTrait(_) | Type::Infer(_) | Type::Never(_) => quote::quote!(Output),
                    ty => quote::quote!(#ty),
                };
                errors.at(
                    ty,
                    format_args!(
                        "a {noun} must return a `Result`: write `-> anyhow::Result<{output}>`, \
                         or `-> Result<{output}, E>` with an error type that converts into \
                         `anyhow::Error` (an alias of `Result` must be named `Result`)"
                    ),
                );
                None
            }
        },
    }
}

/// Returns the owned type to suggest for a parameter taken by reference.
pub(crate) fn owned_form(reference: &syn::TypeReference) -> String {
    match &*reference.elem {
        Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
        Type::Slice(slice) => {
            let elem = &slice.elem;
            format!("Vec<{}>", quote::quote!(#elem))
        }
        elem => quote::quote!(#elem).to_string(),
    }
}

/// Classifies a parameter of type `ty` as the context named `context`
/// (`TaskContext` or `StepContext`): `Ok(None)` when it is not the context
/// at all, and `Err` when it takes the context in a way that cannot work.
pub(crate) fn context_kind(ty: &Type, context: &str) -> Result<Option<Context>, String> {
    match ty {
        Type::Reference(reference) if is_context(&reference.elem, context) => {
            if reference.mutability.is_some() {
                Err(format!(
                    "take the context by shared reference: `ctx: &{context}`"
                ))
            } else {
                Ok(Some(Context::Borrowed))
            }
        }
        Type::Paren(inner) => context_kind(&inner.elem, context),
        ty if is_context(ty, context) => Ok(Some(Context::Owned)),
        _ => Ok(None),
    }
}

/// Checks whether `ty` is a path ending in `context`.
pub(crate) fn is_context(ty: &Type, context: &str) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == context && last.arguments.is_empty()),
        Type::Paren(inner) => is_context(&inner.elem, context),
        _ => false,
    }
}

/// The `T` and `E` of a return type spelt `...Result<T, E>` or
/// `...Result<T>` (`E` is then found by the compiler). Any other type is not
/// a `Result`, as far as the macro can tell: `Err(())`.
pub(crate) fn result_types(ty: &Type) -> Result<(Option<Type>, Option<Type>), ()> {
    match ty {
        Type::Paren(inner) => result_types(&inner.elem),
        Type::Group(inner) => result_types(&inner.elem),
        Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return Err(());
            };
            if last.ident != "Result" {
                return Err(());
            }
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return Ok((None, None));
            };
            let mut types = args.args.iter().filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty.clone()),
                _ => None,
            });
            Ok((types.next(), types.next()))
        }
        _ => Err(()),
    }
}
