//! Stage 2: checks the parsed arguments and function and turns them into
//! the values the expansion needs. Every problem is recorded, at the tokens
//! it concerns, with what to write instead.

use std::time::Duration;

use syn::ext::IdentExt;
use syn::{FnArg, Ident, LitStr, Path, Type};

use super::parse::TaskArgs;
use crate::common::Kind;
use crate::common::parse::{Function, Opt};
use crate::common::validate::{
    Context, HandlerOpts, Output, Value, check_modifiers, check_name, check_output, context_kind,
    crate_path, doc_summary, duration, handler_opts, is_context, owned_form,
};
use crate::errors::Errors;

/// The names a task cannot take, with the reason.
pub(crate) const RESERVED_NAMES: &[(&str, &str)] =
    &[("input", "conditions use it for the run input")];

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
    pub(crate) function: Function,
    /// The function's input, context and output; `None` when its signature
    /// cannot make a task, and only a stand-in is generated.
    pub(crate) io: Option<Io>,
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

/// Checks `args` and `function`, recording every problem in `errors`.
/// Always returns a model: invalid options are left out of it, and an
/// invalid signature leaves `io` empty.
pub(crate) fn validate(args: TaskArgs, function: Function, errors: &mut Errors) -> Task {
    let krate = crate_path(args.krate.as_ref(), errors);
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

    let handler = handler_opts(&args.handler, Kind::Task, errors);
    let on_fail = args.on_fail.and_then(|on_fail| {
        let options = on_fail
            .value
            .options
            .as_ref()
            .map(|options| handler_opts(options, Kind::Task, errors));
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
    if let Err(problem) = check_name(Kind::Task, &name, RESERVED_NAMES) {
        let problem = problem.message(|fixed| format!("name = \"{fixed}\""));
        errors.at_span(
            span,
            format_args!("invalid task name `{name}`{origin}: {problem}"),
        );
    }
    name
}

/// Checks the signature: an `async fn` taking the input and optionally the
/// context, returning a `Result`.
fn signature(function: &Function, errors: &mut Errors) -> Option<Io> {
    let sig = &function.sig;
    let name = &sig.ident;
    let found_before = errors.count();

    check_modifiers(sig, Kind::Task, errors);

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
        Some(FnArg::Typed(param)) => context_kind(&param.ty, "TaskContext") != Ok(None),
        None => false,
    };
    let second = if misplaced { None } else { params.next() };
    let context = match second {
        None => None,
        Some(FnArg::Receiver(receiver)) => {
            errors.at(receiver, "`self` can only be a method's first parameter");
            None
        }
        Some(FnArg::Typed(param)) => match context_kind(&param.ty, "TaskContext") {
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

    let output = check_output(sig, Kind::Task, errors);

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
        Type::Reference(reference) if is_context(&reference.elem, "TaskContext") => {
            errors.at(
                ty,
                format_args!(
                    "a task's first parameter is its input and the context comes second: \
                     write `async fn {name}(input: Input, ctx: &TaskContext)`"
                ),
            );
            None
        }
        ty if is_context(ty, "TaskContext") => {
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
            let owned = owned_form(reference);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::parse::parse_args;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn check(args: TokenStream, item: TokenStream) -> (Task, Vec<String>) {
        let mut errors = Errors::default();
        let args = parse_args(args, &mut errors);
        let function = Function::parse(item, Kind::Task).unwrap();
        let task = validate(args, function, &mut errors);
        (task, errors.messages())
    }

    fn check_item(item: TokenStream) -> Vec<String> {
        check(TokenStream::new(), item).1
    }

    fn check_task_name(name: &str) -> Result<(), String> {
        check_name(Kind::Task, name, RESERVED_NAMES)
            .map_err(|problem| problem.message(|fixed| format!("name = \"{fixed}\"")))
    }

    #[test]
    fn name_rule() {
        assert_eq!(check_task_name("send_email"), Ok(()));
        assert_eq!(check_task_name(&"x".repeat(58)), Ok(()));
        assert_eq!(
            check_task_name("Send-Email").unwrap_err(),
            "a task name may only contain a-z, 0-9 and _; write `name = \"send_email\"`"
        );
        assert_eq!(
            check_task_name("sendEmail2").unwrap_err(),
            "a task name may only contain a-z, 0-9 and _; write `name = \"send_email2\"`"
        );
        assert_eq!(
            check_task_name("émail").unwrap_err(),
            "a task name may only contain a-z, 0-9 and _"
        );
        assert!(
            check_task_name("input")
                .unwrap_err()
                .starts_with("`input` is reserved")
        );
        assert!(check_task_name("").is_err());
        assert!(
            check_task_name(&"x".repeat(59))
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
