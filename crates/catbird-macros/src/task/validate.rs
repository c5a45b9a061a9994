//! Stage 2: checks the parsed arguments and function and turns them into
//! the values the expansion needs. Every problem is recorded, at the tokens
//! it concerns, with what to write instead.

use std::time::Duration;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{FnArg, GenericArgument, Ident, LitInt, LitStr, Path, PathArguments, ReturnType, Type};

use super::parse::{HandlerArgs, Opt, TaskArgs, TaskFn};
use crate::duration::parse_duration;
use crate::errors::Errors;

/// The maximum length of a task name, because catbird stores runs in a
/// table named after the task.
const MAX_NAME_LEN: usize = 58;

/// A checked task definition, ready to expand.
pub(crate) struct Task {
    /// The path of the catbird facade crate.
    pub(crate) krate: Path,
    /// The task's name.
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) condition: Option<String>,
    pub(crate) retention: Option<Value<Duration>>,
    pub(crate) handler: HandlerOpts,
    pub(crate) on_fail: Option<OnFail>,
    /// The function as written.
    pub(crate) function: TaskFn,
    /// The function's input, context and output; `None` when its signature
    /// cannot make a task, and only a stand-in is generated.
    pub(crate) io: Option<Io>,
}

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
    pub(crate) timeout: Option<Value<Duration>>,
    pub(crate) max_retries: Option<Value<u64>>,
    pub(crate) backoff: Option<(Value<Duration>, Value<Duration>)>,
    pub(crate) circuit_breaker: Option<(Value<u64>, Value<Duration>)>,
}

/// The on-fail handler: a function path, and options when some were given.
pub(crate) struct OnFail {
    pub(crate) handler: Path,
    pub(crate) options: Option<HandlerOpts>,
}

/// The function's input, context and output types.
pub(crate) struct Io {
    /// The input parameter's type.
    pub(crate) input: Type,
    /// The form of the context parameter, if there is one.
    pub(crate) context: Option<Context>,
    /// The function's return type.
    pub(crate) output: Output,
}

/// The form of the context parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// `ctx: &TaskContext`.
    Borrowed,
    /// `ctx: TaskContext`.
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

/// Checks `args` and `function`, recording every problem in `errors`.
/// Always returns a model: invalid options are left out of it, and an
/// invalid signature leaves `io` empty.
pub(crate) fn validate(args: TaskArgs, function: TaskFn, errors: &mut Errors) -> Task {
    let krate = args
        .krate
        .as_ref()
        .and_then(|krate| crate_path(&krate.value, errors))
        .unwrap_or_else(|| syn::parse_quote!(::catbird));

    let name = task_name(args.name.as_ref(), &function.sig.ident, errors);
    let description = match &args.description {
        Some(description) => Some(description.value.value()),
        None => doc_summary(&function.attrs),
    };
    let condition = args
        .condition
        .as_ref()
        .map(|condition| condition.value.value());
    let retention = args
        .retention
        .as_ref()
        .and_then(|retention| duration(&retention.value, errors));

    let handler = handler_opts(&args.handler, errors);
    let on_fail = args.on_fail.and_then(|on_fail| {
        let options = on_fail
            .value
            .options
            .as_ref()
            .map(|options| handler_opts(options, errors));
        match on_fail.value.handler {
            Some(handler) => Some(OnFail {
                handler: handler.value,
                options,
            }),
            None => {
                errors.at_span(
                    on_fail.key.span,
                    "`on_fail(...)` needs the function to call: \
                     write `on_fail(handler = notify_failure, ...)`",
                );
                None
            }
        }
    });

    let io = signature(&function, errors);

    Task {
        krate,
        name,
        description,
        condition,
        retention,
        handler,
        on_fail,
        function,
        io,
    }
}

fn crate_path(literal: &LitStr, errors: &mut Errors) -> Option<Path> {
    match literal.parse_with(Path::parse_mod_style) {
        Ok(path) => Some(path),
        Err(_) => {
            errors.at(
                literal,
                "`crate` takes the path of the catbird crate: write `crate = \"my_crate::catbird\"`",
            );
            None
        }
    }
}

/// Returns the task's name, `name = "..."` or the function's name, after
/// checking it against catbird's naming rule.
fn task_name(explicit: Option<&Opt<LitStr>>, ident: &Ident, errors: &mut Errors) -> String {
    let (name, span, origin) = match explicit {
        Some(explicit) => (explicit.value.value(), explicit.value.span(), ""),
        None => (
            ident.unraw().to_string(),
            ident.span(),
            " (the function's name)",
        ),
    };
    if let Err(problem) = check_name(&name) {
        errors.at_span(
            span,
            format_args!("invalid task name `{name}`{origin}: {problem}"),
        );
    }
    name
}

/// Checks catbird's naming rule: 1 to 58 characters of `a-z`, `0-9` and
/// `_`, and `input` is reserved. The error completes "invalid task name: ".
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a task name must not be empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a task name has at most {MAX_NAME_LEN} characters, this one has {}",
            name.len()
        ));
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
        let suggestion = if fixed.chars().all(allowed) && fixed != "input" {
            format!("; write `name = \"{fixed}\"`")
        } else {
            String::new()
        };
        return Err(format!(
            "a task name may only contain a-z, 0-9 and _{suggestion}"
        ));
    }
    if name == "input" {
        return Err(
            "`input` is reserved (conditions use it for the run input); choose another name"
                .to_owned(),
        );
    }
    Ok(())
}

/// Returns the first paragraph of the doc comment, lines joined by spaces.
fn doc_summary(attrs: &[syn::Attribute]) -> Option<String> {
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

fn duration(literal: &LitStr, errors: &mut Errors) -> Option<Value<Duration>> {
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

fn handler_opts(args: &HandlerArgs, errors: &mut Errors) -> HandlerOpts {
    let concurrency = args.concurrency.as_ref().and_then(|opt| {
        positive(
            opt,
            u64::from(u32::MAX),
            "it is the maximum number of runs of this task that one worker executes at once",
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
    group: super::parse::Key,
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

/// Checks the signature: an `async fn` taking the input and optionally the
/// context, returning a `Result`.
fn signature(function: &TaskFn, errors: &mut Errors) -> Option<Io> {
    let sig = &function.sig;
    let name = &sig.ident;
    let found_before = errors.count();

    if let Some(constness) = &sig.constness {
        errors.at(constness, "a task cannot be a `const fn`; remove `const`");
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.at(unsafety, "a task cannot be `unsafe`; remove `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.at(abi, "a task cannot have an ABI; remove it");
    }
    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token,
            format_args!("a task must be an `async fn`: write `async fn {name}`"),
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.at(
            &sig.generics,
            "a task cannot be generic: each run's input is decoded from JSON into one \
             concrete type; remove the generic parameters",
        );
    }

    let mut params = sig.inputs.iter();
    let first = params.next();
    let input = match first {
        None => {
            errors.at_span(
                sig.paren_token.span.join(),
                format_args!(
                    "a task takes its input as its first parameter: \
                     write `async fn {name}(input: Input)`; use `_: ()` for a task without input"
                ),
            );
            None
        }
        Some(FnArg::Receiver(receiver)) => {
            errors.at(
                receiver,
                "a task cannot take `self`: write it as a free function outside the `impl` \
                 block, with the input as its first parameter",
            );
            None
        }
        Some(FnArg::Typed(param)) => input_type(&param.ty, name, errors),
    };

    // After `self` or a context in first place, the next parameter is likely
    // the input, and the error on the first parameter explains where it goes.
    let misplaced = match first {
        Some(FnArg::Receiver(_)) => true,
        Some(FnArg::Typed(param)) => context_kind(&param.ty) != Ok(None),
        None => false,
    };
    let second = if misplaced { None } else { params.next() };
    let context = match second {
        None => None,
        Some(FnArg::Receiver(receiver)) => {
            errors.at(receiver, "`self` can only be a method's first parameter");
            None
        }
        Some(FnArg::Typed(param)) => match context_kind(&param.ty) {
            Ok(Some(kind)) => Some(kind),
            Ok(None) => {
                errors.at(
                    &param.ty,
                    "a task's second parameter can only be the run's context, \
                     `&TaskContext`; put other values in the input type",
                );
                None
            }
            Err(message) => {
                errors.at(&param.ty, message);
                None
            }
        },
    };

    let extra: Vec<&FnArg> = params.skip(if misplaced { 2 } else { 0 }).collect();
    if !extra.is_empty() {
        errors.at(
            quote::quote!(#(#extra),*),
            "a task takes at most two parameters, its input and `&TaskContext`; \
             put the other values in the input type",
        );
    }

    let output = match &sig.output {
        ReturnType::Default => {
            errors.at_span(
                sig.paren_token.span.close(),
                "a task must return a `Result`: add `-> anyhow::Result<Output>`, or \
                 `-> Result<Output, E>` with an error type that converts into `anyhow::Error`",
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
                        "a task must return a `Result`: write `-> anyhow::Result<{output}>`, \
                         or `-> Result<{output}, E>` with an error type that converts into \
                         `anyhow::Error` (an alias of `Result` must be named `Result`)"
                    ),
                );
                None
            }
        },
    };

    if errors.count() > found_before {
        return None;
    }
    Some(Io {
        input: input?,
        context,
        output: output?,
    })
}

/// Checks the input parameter's type; `None` after recording a problem.
fn input_type(ty: &Type, name: &Ident, errors: &mut Errors) -> Option<Type> {
    match ty {
        Type::Reference(reference) if is_task_context(&reference.elem) => {
            errors.at(
                ty,
                format_args!(
                    "a task's first parameter is its input and the context comes second: \
                     write `async fn {name}(input: Input, ctx: &TaskContext)`"
                ),
            );
            None
        }
        ty if is_task_context(ty) => {
            errors.at(
                ty,
                format_args!(
                    "a task's first parameter is its input and the context comes second: \
                     write `async fn {name}(input: Input, ctx: &TaskContext)`"
                ),
            );
            None
        }
        Type::Reference(reference) => {
            let owned = match &*reference.elem {
                Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
                Type::Slice(slice) => {
                    let elem = &slice.elem;
                    format!("Vec<{}>", quote::quote!(#elem))
                }
                elem => quote::quote!(#elem).to_string(),
            };
            errors.at(
                ty,
                format_args!(
                    "a task owns its input, which is decoded from JSON for each run: \
                     take it by value, as `{owned}`"
                ),
            );
            None
        }
        Type::ImplTrait(_) => {
            errors.at(
                ty,
                "a task's input must be a concrete type: each run's input is decoded from \
                 JSON into it; `impl Trait` makes the function generic",
            );
            None
        }
        ty => Some(ty.clone()),
    }
}

/// Classifies a second parameter of type `ty`: `Ok(None)` when it is not
/// the context at all, and `Err` when it takes the context in a way that
/// cannot work.
fn context_kind(ty: &Type) -> Result<Option<Context>, String> {
    match ty {
        Type::Reference(reference) if is_task_context(&reference.elem) => {
            if reference.mutability.is_some() {
                Err("take the context by shared reference: `ctx: &TaskContext`".to_owned())
            } else {
                Ok(Some(Context::Borrowed))
            }
        }
        Type::Paren(inner) => context_kind(&inner.elem),
        ty if is_task_context(ty) => Ok(Some(Context::Owned)),
        _ => Ok(None),
    }
}

/// Checks whether `ty` is a path ending in `TaskContext`.
fn is_task_context(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "TaskContext" && last.arguments.is_empty()),
        Type::Paren(inner) => is_task_context(&inner.elem),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::parse::parse_args;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn check(args: TokenStream, item: TokenStream) -> (Task, Vec<String>) {
        let mut errors = Errors::default();
        let args = parse_args(args, &mut errors);
        let function: TaskFn = syn::parse2(item).unwrap();
        let task = validate(args, function, &mut errors);
        (task, errors.messages())
    }

    fn check_item(item: TokenStream) -> Vec<String> {
        check(TokenStream::new(), item).1
    }

    #[test]
    fn name_rule() {
        assert_eq!(check_name("send_email"), Ok(()));
        assert_eq!(check_name(&"x".repeat(58)), Ok(()));
        assert_eq!(
            check_name("Send-Email").unwrap_err(),
            "a task name may only contain a-z, 0-9 and _; write `name = \"send_email\"`"
        );
        assert_eq!(
            check_name("sendEmail2").unwrap_err(),
            "a task name may only contain a-z, 0-9 and _; write `name = \"send_email2\"`"
        );
        assert_eq!(
            check_name("émail").unwrap_err(),
            "a task name may only contain a-z, 0-9 and _"
        );
        assert!(
            check_name("input")
                .unwrap_err()
                .starts_with("`input` is reserved")
        );
        assert!(check_name("").is_err());
        assert!(
            check_name(&"x".repeat(59))
                .unwrap_err()
                .contains("at most 58")
        );
    }

    #[test]
    fn name_defaults_to_the_function_name() {
        let (task, errors) = check(
            quote!(),
            quote!(
                async fn r#send(x: u8) -> Result<()> {}
            ),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(task.name, "send");
    }

    #[test]
    fn description_defaults_to_the_first_doc_paragraph() {
        let (task, _) = check(
            quote!(),
            quote! {
                #[doc = " Sends one"]
                #[doc = " transactional email."]
                #[doc = ""]
                #[doc = " More details."]
                async fn send(x: u8) -> Result<()> {}
            },
        );
        assert_eq!(
            task.description.as_deref(),
            Some("Sends one transactional email.")
        );
        let (task, _) = check(
            quote!(),
            quote! {
                #[doc = " Sends one\n transactional email.\n\n More details."]
                #[doc = " More details."]
                async fn send(x: u8) -> Result<()> {}
            },
        );
        assert_eq!(
            task.description.as_deref(),
            Some("Sends one transactional email.")
        );
        let (task, _) = check(
            quote!(description = "given"),
            quote!(
                #[doc = "doc"]
                async fn f(x: u8) -> Result<()> {}
            ),
        );
        assert_eq!(task.description.as_deref(), Some("given"));
        let (task, _) = check(
            quote!(),
            quote!(
                async fn f(x: u8) -> Result<()> {}
            ),
        );
        assert_eq!(task.description, None);
    }

    #[test]
    fn options_become_values() {
        let (task, errors) = check(
            quote! {
                concurrency = 5, timeout = "30s", max_retries = 0,
                backoff(min = "2s", max = "1s"), retention = "2d",
                circuit_breaker(threshold = 3, open_timeout = "1m"),
                on_fail(handler = notify, batch_size = 2)
            },
            quote!(
                async fn f(x: u8) -> anyhow::Result<()> {}
            ),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let handler = &task.handler;
        assert_eq!(handler.concurrency.unwrap().value, 5);
        assert_eq!(handler.timeout.unwrap().value, Duration::from_secs(30));
        assert_eq!(handler.max_retries.unwrap().value, 0);
        // Without retries the backoff is never used, so it is not checked.
        assert!(handler.backoff.is_some());
        assert_eq!(task.retention.unwrap().value, Duration::from_secs(172_800));
        let (threshold, open) = handler.circuit_breaker.unwrap();
        assert_eq!((threshold.value, open.value), (3, Duration::from_secs(60)));
        let on_fail = task.on_fail.unwrap();
        assert!(on_fail.handler.is_ident("notify"));
        assert_eq!(on_fail.options.unwrap().batch_size.unwrap().value, 2);
    }

    #[test]
    fn reports_every_bad_value() {
        let (task, errors) = check(
            quote! {
                name = "Bad-Name", concurrency = 0, timeout = "30 s",
                backoff(min = "2s", max = "1s"), circuit_breaker(threshold = 3),
                on_fail(max_retries = 1), crate = "not a path"
            },
            quote!(
                async fn f(x: u8) -> anyhow::Result<()> {}
            ),
        );
        assert_eq!(
            errors,
            [
                "`crate` takes the path of the catbird crate: write `crate = \"my_crate::catbird\"`",
                "invalid task name `Bad-Name`: a task name may only contain a-z, 0-9 and _; \
                 write `name = \"bad_name\"`",
                "`concurrency` must be at least 1: it is the maximum number of runs of this \
                 task that one worker executes at once",
                "invalid duration \"30 s\": unknown unit ` s`; write a whole number and a unit \
                 (ms, s, m, h or d), like \"500ms\", \"30s\" or \"1h30m\"",
                "the backoff `max` (1s) must be longer than its `min` (2s)",
                "`circuit_breaker` is missing `open_timeout`: write \
                 `circuit_breaker(threshold = 5, open_timeout = \"30s\")`",
                "`on_fail(...)` needs the function to call: write \
                 `on_fail(handler = notify_failure, ...)`",
            ]
        );
        // The function is still usable: only the bad options are left out.
        assert!(task.io.is_some());
        assert!(task.handler.concurrency.is_none());
    }

    #[test]
    fn accepts_the_signatures_of_the_docs() {
        for item in [
            quote!(
                async fn f(email: Email) -> anyhow::Result<Receipt> {}
            ),
            quote!(
                pub async fn f(email: Email, ctx: &TaskContext) -> Result<Receipt, MyError> {}
            ),
            quote!(
                async fn f(email: Email, ctx: catbird::worker::TaskContext) -> io::Result<()> {}
            ),
            quote!(
                async fn f(_: ()) -> Result {}
            ),
        ] {
            assert_eq!(check_item(item.clone()), Vec::<String>::new(), "{item}");
        }
    }

    #[test]
    fn finds_the_result_types() {
        let (task, _) = check(
            quote!(),
            quote!(
                async fn f(x: In) -> Result<Out, MyError> {}
            ),
        );
        let output = task.io.unwrap().output;
        let (ok, err) = (output.ok.unwrap(), output.err.unwrap());
        assert_eq!(quote!(#ok).to_string(), "Out");
        assert_eq!(quote!(#err).to_string(), "MyError");
        let (task, _) = check(
            quote!(),
            quote!(
                async fn f(x: In) -> anyhow::Result<Out> {}
            ),
        );
        let output = task.io.unwrap().output;
        assert!(output.ok.is_some());
        assert!(output.err.is_none());
        let (task, _) = check(
            quote!(),
            quote!(
                async fn f(x: In) -> Result {}
            ),
        );
        let output = task.io.unwrap().output;
        assert!(output.ok.is_none());
        assert!(output.err.is_none());
    }

    #[test]
    fn finds_the_context() {
        let (task, _) = check(
            quote!(),
            quote!(
                async fn f(x: In, c: &TaskContext) -> Result<()> {}
            ),
        );
        assert_eq!(task.io.unwrap().context, Some(Context::Borrowed));
        let (task, _) = check(
            quote!(),
            quote!(
                async fn f(x: In, c: TaskContext) -> Result<()> {}
            ),
        );
        assert_eq!(task.io.unwrap().context, Some(Context::Owned));
        let (task, _) = check(
            quote!(),
            quote!(
                async fn f(x: In) -> Result<()> {}
            ),
        );
        assert_eq!(task.io.unwrap().context, None);
    }

    #[test]
    fn rejects_bad_signatures_together() {
        let errors = check_item(quote!(
            fn f<T>(a: T, b: u8, c: u8) {}
        ));
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("a task must be an `async fn`"));
        assert!(errors[1].starts_with("a task cannot be generic"));
        assert!(errors[2].starts_with("a task's second parameter can only be the run's context"));
        assert!(errors[3].starts_with("a task takes at most two parameters"));
        assert!(errors[4].starts_with("a task must return a `Result`"));
    }

    #[test]
    fn rejects_misplaced_inputs() {
        let errors = check_item(quote!(
            async fn f() -> Result<()> {}
        ));
        assert!(errors[0].starts_with("a task takes its input as its first parameter"));
        let errors = check_item(quote!(
            async fn f(&self, x: u8) -> Result<()> {}
        ));
        assert!(errors[0].starts_with("a task cannot take `self`"));
        let errors = check_item(quote!(
            async fn f(ctx: &TaskContext) -> Result<()> {}
        ));
        assert!(errors[0].starts_with("a task's first parameter is its input"));
        let errors = check_item(quote!(
            async fn f(x: &Email) -> Result<()> {}
        ));
        assert_eq!(
            errors,
            [
                "a task owns its input, which is decoded from JSON for each run: \
              take it by value, as `Email`"
            ]
        );
        let errors = check_item(quote!(
            async fn f(x: u8, c: &mut TaskContext) -> Result<()> {}
        ));
        assert_eq!(
            errors,
            ["take the context by shared reference: `ctx: &TaskContext`"]
        );
        let errors = check_item(quote!(
            async fn f(x: &str) -> Result<()> {}
        ));
        assert!(errors[0].ends_with("take it by value, as `String`"));
        let errors = check_item(quote!(
            async fn f(ctx: &TaskContext, x: u8) -> Result<()> {}
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let errors = check_item(quote!(
            async fn f(&self, x: u8, c: &TaskContext) -> Result<()> {}
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let errors = check_item(quote!(
            async fn f(x: u8, y: u8, z: u8) -> Result<()> {}
        ));
        assert!(errors[0].starts_with("a task's second parameter"));
        assert!(errors[1].starts_with("a task takes at most two parameters"));
    }

    #[test]
    fn rejects_returns_that_are_not_a_result() {
        for item in [
            quote!(
                async fn f(x: u8) {}
            ),
            quote!(
                async fn f(x: u8) -> () {}
            ),
            quote!(
                async fn f(x: u8) -> &'static str {}
            ),
            quote!(
                async fn f(x: u8) -> impl Sized {}
            ),
            quote!(
                async fn f(x: u8) -> String {}
            ),
            quote!(
                async fn f(x: u8) -> Fallible<u8> {}
            ),
        ] {
            let errors = check_item(item.clone());
            assert_eq!(errors.len(), 1, "{item}");
            assert!(
                errors[0].starts_with("a task must return a `Result`"),
                "{item}"
            );
        }
    }
}
