//! Stage 3: generates the task's unit struct, its associated items and its
//! `IntoTaskHandler` impl, or a stand-in when the signature cannot make a
//! task, so that call sites still compile and only the real problems show.
//!
//! Generated code names everything through `<crate>::__private`, so it works
//! wherever the user's crate has `catbird` (or the `crate = "..."` path), and
//! a user's `Result` alias or `Option` type cannot change its meaning.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ReturnType, Type};

use super::validate::{Io, Task};
use crate::common::Kind;
use crate::common::expand::{
    Attrs, call_fn, doc_lines, duration_tokens, option_calls, original, respan,
};
use crate::common::validate::{Context, result_types};

/// The tokens that replace the annotated function.
pub(crate) fn expand(task: &Task) -> TokenStream {
    let function = &task.function;
    if function
        .sig
        .inputs
        .iter()
        .any(|param| matches!(param, FnArg::Receiver(_)))
    {
        // A method sits in an `impl` block, where no struct can go: give the
        // function back untouched next to the error.
        return original(function);
    }
    match &task.io {
        Some(io) => full(task, io),
        None => stand_in(task),
    }
}

/// Builds the docs of the generated struct, after the user's own.
fn struct_docs(task: &Task, attrs: &Attrs<'_>) -> TokenStream {
    let ident = &task.function.sig.ident;
    let name = &task.name;
    let docs = &attrs.docs;
    let generated = doc_lines(
        !docs.is_empty(),
        &[
            format!("The catbird task `{name}`, defined by `#[catbird::task]`:"),
            String::new(),
            format!("- `Worker::task({ident})` registers its handler with a worker;"),
            format!(
                "- `{ident}::run(&client, &input)` starts a run and returns a handle whose \
                 `wait_for_output()` gives the typed output;"
            ),
            format!("- `{ident}::call(...)` calls the function directly, outside catbird."),
        ],
    );
    quote!(#(#docs)* #generated)
}

/// Builds the calls that set the definition's description, condition and
/// retention period, on a `Task` or a `TaskHandler`.
fn definition_calls(private: &TokenStream, task: &Task) -> TokenStream {
    let description = task
        .description
        .as_ref()
        .map(|description| quote!(.description(#description)));
    let condition = task
        .condition
        .as_ref()
        .map(|condition| quote!(.condition(#condition)));
    let retention = task.retention.as_ref().map(|retention| {
        let retention = duration_tokens(private, retention);
        quote!(.retention_period(#retention))
    });
    quote!(#description #condition #retention)
}

/// Generates the full expansion of a valid task.
fn full(task: &Task, io: &Io) -> TokenStream {
    let krate = &task.krate;
    let private = quote!(#krate::__private);
    let worker = quote!(#private::catbird_worker);
    let core = quote!(#private::catbird_core);
    let function = &task.function;
    let vis = &function.vis;
    let ident = &function.sig.ident;
    let name = &task.name;
    let attrs = Attrs::split(&function.attrs);
    let cfgs = &attrs.cfgs;
    let struct_docs = struct_docs(task, &attrs);
    let call = call_fn(&task.function, &task.function.sig, &attrs, Kind::Task);

    // The types are the user's tokens, so a missing trait is reported at the
    // parameter or return type that needs it. A return type spelt as an
    // alias is taken apart by `TaskResult`, whose error explains what to
    // write. Every mention of it is at the return type, so it is reported
    // once.
    let input = &io.input;
    let returned = &io.output.ty;
    let returned_span = returned.span();
    let result = respan(quote!(#private::TaskResult), returned_span);
    let output = match &io.output.ok {
        Some(ok) => ok.to_token_stream(),
        None => quote_spanned!(returned_span=> <#returned as #result>::Ok),
    };
    let error = match &io.output.err {
        Some(err) => err.to_token_stream(),
        None => quote_spanned!(returned_span=> <#returned as #result>::Err),
    };

    // The handler's future is checked for `Send` at the function's name:
    // rustc reports an unmet bound of an argument at the argument.
    let fn_span = ident.span();
    let (ctx_param, call_args) = match io.context {
        None => (quote!(_), quote!(input)),
        Some(Context::Borrowed) => (quote!(ctx), quote!(input, &ctx)),
        Some(Context::Owned) => (quote!(ctx), quote!(input, ctx)),
    };
    let call_expr = match &io.output.ok {
        Some(_) => quote!(Self::call(#call_args).await),
        None => respan(
            quote!(#result::into_result(Self::call(#call_args).await)),
            returned_span,
        ),
    };
    let closure = respan(quote!(move |input, #ctx_param| async move), fn_span);
    let new_handler = respan(quote!(#worker::TaskHandler::new::), fn_span);
    let handler = quote_spanned! {fn_span=>
        #new_handler<#input, #output, #error, _, _>(Self::NAME, #closure { #call_expr })
    };

    let definition_calls = definition_calls(&private, task);
    let handler_calls = option_calls(&private, &task.handler);
    let on_fail = task.on_fail.as_ref().map(|on_fail| {
        let handler = &on_fail.handler;
        let options = match &on_fail.options {
            Some(options) => {
                let calls = option_calls(&private, options);
                quote!(#private::Option::Some(#worker::HandlerOpts::on_fail_default() #calls))
            }
            None => quote!(#private::Option::None),
        };
        // The handler's signature is checked at its path.
        let span = handler.span();
        let call = respan(quote!(.on_fail::), span);
        let rest = respan(quote!(, _, _, _>), span);
        let args = quote_spanned!(span=> (#handler, #options));
        quote!(#call<#input #rest #args)
    });
    let definition = if task.on_fail.is_some() {
        // Creating the definition elsewhere must not turn off on-fail
        // processing that this task's workers registered.
        quote! {
            #core::Task {
                has_on_fail: true,
                ..#core::Task::define(Self::NAME) #definition_calls
            }
        }
    } else {
        quote!(#core::Task::define(Self::NAME) #definition_calls)
    };

    // With an alias, the types of `run` are projections too: keep them at the
    // return type, like the other mentions of `TaskResult`.
    let mut run_output = quote!(#private::Result<#core::TaskHandle<#output>, #core::Error>);
    let output_span = io.output.ok.as_ref().map_or(returned_span, Spanned::span);
    let mut typed = quote_spanned!(output_span=> handle.typed::<#output>());
    if io.output.ok.is_none() {
        run_output = respan(run_output, returned_span);
        typed = respan(typed, returned_span);
    }

    let name_doc = format!("The task's name, `{name}`.");
    let definition_doc = format!(
        "The definition of task `{name}`, for processes that create the task without \
         running its handler (a worker creates it when it starts)."
    );
    let handler_doc = format!(
        "The handler of task `{name}`, with the options of its `#[catbird::task]` \
         attribute. `Worker::task({ident})` calls this."
    );
    let run_doc = doc_lines(
        false,
        &[
            format!("Starts a run of task `{name}` with `input` and returns its handle."),
            String::new(),
            "`handle.wait_for_output().await` gives the typed output once a worker has \
             executed the run."
                .to_owned(),
        ],
    );
    let run_with_doc = format!(
        "Starts a run of task `{name}` with `input` and options (concurrency key, \
         headers, delay, expiry, priority), and returns its handle."
    );

    quote! {
        #(#cfgs)*
        #struct_docs
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        #vis struct #ident;

        #(#cfgs)*
        impl #ident {
            #[doc = #name_doc]
            #[allow(dead_code)]
            #vis const NAME: &str = #name;

            #call

            #[doc = #definition_doc]
            #[allow(dead_code)]
            #vis fn definition() -> #core::Task {
                #definition
            }

            #[doc = #handler_doc]
            #[allow(dead_code)]
            #vis fn handler() -> #worker::TaskHandler {
                #handler
                    #definition_calls
                    #handler_calls
                    #on_fail
            }

            #run_doc
            #[allow(dead_code)]
            #vis async fn run(
                client: &#core::Client,
                input: &#input,
            ) -> #run_output {
                let opts = <#core::RunTaskOpts as #private::Default>::default();
                Self::run_with(client, input, opts).await
            }

            #[doc = #run_with_doc]
            #[allow(dead_code)]
            #vis async fn run_with(
                client: &#core::Client,
                input: &#input,
                opts: #core::RunTaskOpts,
            ) -> #run_output {
                let handle = client.run_task::<#input>(Self::NAME, input, opts).await?;
                #private::Result::Ok(#typed)
            }
        }

        #(#cfgs)*
        impl #worker::IntoTaskHandler for #ident {
            fn into_task_handler(self) -> #worker::TaskHandler {
                Self::handler()
            }
        }
    }
}

/// Generates the stand-in for a function whose signature cannot make a
/// task: the same struct and associated functions with stand-in bodies,
/// next to the function itself as `call`, so only the reported problems
/// show.
fn stand_in(task: &Task) -> TokenStream {
    let krate = &task.krate;
    let private = quote!(#krate::__private);
    let worker = quote!(#private::catbird_worker);
    let core = quote!(#private::catbird_core);
    let function = &task.function;
    let vis = &function.vis;
    let ident = &function.sig.ident;
    let name = &task.name;
    let attrs = Attrs::split(&function.attrs);
    let cfgs = &attrs.cfgs;
    let struct_docs = struct_docs(task, &attrs);
    let call = call_fn(&task.function, &task.function.sig, &attrs, Kind::Task);

    let input = format_ident!("__CatbirdInput");
    let known_output = match &function.sig.output {
        ReturnType::Type(_, ty) => match result_types(ty) {
            Ok((Some(ok), _)) if !mentions_generics(&ok, task) => Some(ok),
            _ => None,
        },
        ReturnType::Default => None,
    };
    let (output, output_param) = match known_output {
        Some(ok) => (ok.to_token_stream(), None),
        None => {
            let output = format_ident!("__CatbirdOutput");
            (quote!(#output), Some(quote!(, #output)))
        }
    };
    let stand_in = quote!(#private::stand_in());

    quote! {
        #(#cfgs)*
        #struct_docs
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        #vis struct #ident;

        #(#cfgs)*
        #[allow(dead_code, unused_variables)]
        impl #ident {
            /// The task's name.
            #vis const NAME: &str = #name;

            #call

            /// The task's definition.
            #vis fn definition() -> #core::Task {
                #core::Task::define(Self::NAME)
            }

            /// The task's handler.
            #vis fn handler() -> #worker::TaskHandler {
                #stand_in
            }

            /// Starts a run.
            #vis async fn run<#input: ?Sized #output_param>(
                client: &#core::Client,
                input: &#input,
            ) -> #private::Result<#core::TaskHandle<#output>, #core::Error> {
                #stand_in
            }

            /// Starts a run with options.
            #vis async fn run_with<#input: ?Sized #output_param>(
                client: &#core::Client,
                input: &#input,
                opts: #core::RunTaskOpts,
            ) -> #private::Result<#core::TaskHandle<#output>, #core::Error> {
                #stand_in
            }
        }

        #(#cfgs)*
        impl #worker::IntoTaskHandler for #ident {
            fn into_task_handler(self) -> #worker::TaskHandler {
                Self::handler()
            }
        }
    }
}

/// Checks whether `ty` names one of the function's generic parameters or a
/// lifetime, which the stand-in's `run` cannot mention.
fn mentions_generics(ty: &Type, task: &Task) -> bool {
    let generics = &task.function.sig.generics;
    if generics.params.is_empty() {
        return false;
    }
    let names: Vec<String> = generics
        .params
        .iter()
        .map(|param| match param {
            syn::GenericParam::Type(param) => param.ident.to_string(),
            syn::GenericParam::Lifetime(param) => param.lifetime.ident.to_string(),
            syn::GenericParam::Const(param) => param.ident.to_string(),
        })
        .collect();
    fn names_one(tokens: TokenStream, names: &[String]) -> bool {
        tokens.into_iter().any(|token| match token {
            proc_macro2::TokenTree::Group(group) => names_one(group.stream(), names),
            proc_macro2::TokenTree::Ident(ident) => names.iter().any(|name| ident == name),
            proc_macro2::TokenTree::Punct(punct) => punct.as_char() == '\'',
            proc_macro2::TokenTree::Literal(_) => false,
        })
    }
    names_one(ty.to_token_stream(), &names)
}
