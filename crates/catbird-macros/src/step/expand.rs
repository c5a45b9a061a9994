//! Stage 3: generates the step's struct with its associated items and its
//! `IntoStepHandler` impl, the function that is the step in the value
//! namespace, and the compile-time checks of its path dependencies. When the
//! signature or the dependencies cannot make a step, it generates a
//! stand-in instead, so that uses elsewhere still compile and only the real
//! problems show.
//!
//! Generated code names everything through `<crate>::__private`, so it works
//! wherever the user's crate has `catbird` (or the `crate = "..."` path), and
//! a user's `Result` alias or `Option` type cannot change its meaning.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Signature};

use super::parse::StepRef;
use super::validate::{Dependency, Io, Param, Step};
use crate::common::Kind;
use crate::common::expand::{Attrs, call_fn, doc_lines, option_calls, original, respan};
use crate::common::parse::Function;
use crate::common::validate::Context;

/// The tokens that replace the annotated function.
pub(crate) fn expand(step: &Step) -> TokenStream {
    let function = &step.function;
    if function
        .sig
        .inputs
        .iter()
        .any(|param| matches!(param, FnArg::Receiver(_)))
    {
        // A method sits in an `impl` block, where no struct can go: give the
        // function back next to the error, without the `#[signal]`
        // attributes that rustc does not know.
        return original(&Function {
            attrs: function.attrs.clone(),
            vis: function.vis.clone(),
            sig: without_signal_attrs(&function.sig),
            body: function.body.clone(),
        });
    }
    match &step.io {
        Some(io) => full(step, io),
        None => stand_in(step),
    }
}

/// `sig` without the `#[signal]` attributes of its parameters, which only
/// the macro reads.
fn without_signal_attrs(sig: &Signature) -> Signature {
    let mut sig = sig.clone();
    for param in &mut sig.inputs {
        if let FnArg::Typed(param) = param {
            param.attrs.retain(|attr| !attr.path().is_ident("signal"));
        }
    }
    sig
}

/// Builds the docs of the generated struct, after the user's own.
fn struct_docs(step: &Step, attrs: &Attrs<'_>) -> TokenStream {
    let ident = &step.function.sig.ident;
    let name = &step.name;
    let docs = &attrs.docs;
    let generated = doc_lines(
        !docs.is_empty(),
        &[
            format!("The catbird step `{name}`, defined by `#[catbird::step]`:"),
            String::new(),
            format!("- `Flow::step({ident})` adds it to a flow, with its handler;"),
            format!(
                "- `{ident}::definition()` gives its definition alone, for a process that \
                 creates the flow without executing it;"
            ),
            format!("- `{ident}::call(...)` calls the function directly, outside catbird."),
        ],
    );
    quote!(#(#docs)* #generated)
}

/// Generates the function that is the step in the value namespace, so that
/// `Flow::step(validate)` works while other steps name their parameters
/// `validate` (see `StepToken`).
fn marker_fn(worker: &TokenStream, step: &Step) -> TokenStream {
    let vis = &step.function.vis;
    let ident = &step.function.sig.ident;
    quote! {
        #[doc(hidden)]
        #[allow(dead_code)]
        #vis fn #ident(_: #worker::StepToken) -> #ident {
            #ident {}
        }
    }
}

/// Returns the expression of a dependency's name: the string, or the `NAME`
/// of the step at the path, which also checks that the path names a
/// `#[catbird::step]`.
fn dependency_name(private: &TokenStream, step: &StepRef) -> TokenStream {
    match step {
        StepRef::Name(name) => name.to_token_stream(),
        StepRef::Path(path) => respan(quote!(<#path as #private::Step>::NAME), path.span()),
    }
}

/// Builds the body of `definition()`.
fn definition_body(private: &TokenStream, step: &Step) -> TokenStream {
    let core = quote!(#private::catbird_core);
    let description = step
        .description
        .as_ref()
        .map(|description| quote!(.description(#description)));
    let condition = step
        .condition
        .as_ref()
        .map(|condition| quote!(.condition(#condition)));
    let signal = step.signal.then(|| quote!(.signal()));
    let new = quote!(#core::flow::StepDef::new(Self::NAME) #description #condition #signal);
    if step.dependencies.is_empty() {
        return new;
    }
    let dependencies = step.dependencies.iter().map(|dependency| {
        let Dependency {
            step,
            optional,
            ignore_output,
            ..
        } = dependency;
        let name = dependency_name(private, step);
        quote! {
            definition.depends_on.push(#core::flow::Dependency {
                optional: #optional,
                ignore_output: #ignore_output,
                ..#core::flow::Dependency::on(#name)
            });
        }
    });
    quote! {
        let mut definition = #new;
        #(#dependencies)*
        definition
    }
}

/// Generates the compile-time checks of the path dependencies that a
/// parameter receives. The dependency's output type must be the parameter's,
/// and a dependency with a condition must be optional. Both are reported at
/// the parameter's type.
fn dependency_checks(
    private: &TokenStream,
    cfgs: &[&syn::Attribute],
    step: &Step,
    io: &Io,
) -> TokenStream {
    let mut checks = TokenStream::new();
    for param in &io.params {
        let Param::Dependency {
            index,
            ty,
            optional,
        } = param
        else {
            continue;
        };
        let StepRef::Path(path) = &step.dependencies[*index].step else {
            continue;
        };
        // The path keeps its tokens, so a path that is not a step is
        // reported once, at the path, as by `definition()`. The rest is at
        // the parameter's type: rustc reports an unmet bound at its self
        // type.
        let span = ty.span();
        let this = step_item(private, path, "This", span);
        let output = step_item(private, path, "Output", span);
        let output_of = respan(quote!(#private::OutputOf), span);
        checks.extend(quote_spanned! {span=>
            #(#cfgs)*
            const _: () = <#ty as #output_of<#this, #output>>::CHECK;
        });
        if !optional {
            let required = respan(quote!(#private::Required), span);
            checks.extend(quote_spanned! {span=>
                #(#cfgs)*
                const _: () = <#ty as #required<#this>>::CHECK;
            });
        }
    }
    checks
}

/// Builds `<path as Step>::item`, which is a type even when the path names a
/// function, with the path's own spans and the rest at `span`.
fn step_item(private: &TokenStream, path: &syn::Path, item: &str, span: Span) -> TokenStream {
    let trait_path = respan(quote!(#private::Step), span);
    let item = syn::Ident::new(item, span);
    quote_spanned!(span=> <#path as #trait_path>::#item)
}

/// Generates the full expansion of a valid step.
fn full(step: &Step, io: &Io) -> TokenStream {
    let krate = &step.krate;
    let private = quote!(#krate::__private);
    let worker = quote!(#private::catbird_worker);
    let core = quote!(#private::catbird_core);
    let function = &step.function;
    let vis = &function.vis;
    let ident = &function.sig.ident;
    let name = &step.name;
    let attrs = Attrs::split(&function.attrs);
    let cfgs = &attrs.cfgs;
    let struct_docs = struct_docs(step, &attrs);
    let sig = without_signal_attrs(&function.sig);
    let call = call_fn(function, &sig, &attrs, Kind::Step);
    let marker = marker_fn(&worker, step);

    // The output type is the user's tokens, so a missing `Serialize` is
    // reported at it. A return type spelt as an alias is taken apart by
    // `StepResult`, whose error explains what to write.
    let returned = &io.output.ty;
    let returned_span = returned.span();
    let output = match &io.output.ok {
        Some(ok) => ok.to_token_stream(),
        None => {
            let result = respan(quote!(#private::StepResult), returned_span);
            quote_spanned!(returned_span=> <#returned as #result>::Ok)
        }
    };

    // Each parameter is decoded with the type it was written with, so a
    // missing `Deserialize` is reported at that type.
    let mut decode = Vec::new();
    let mut call_args = Vec::new();
    let mut uses_context = false;
    for (position, param) in io.params.iter().enumerate() {
        let local = format_ident!("__catbird_{position}");
        let decoded = match param {
            Param::Input(ty) => quote!(#worker::StepArgs::input::<#ty>(&args)),
            Param::Signal(ty) => quote!(#worker::StepArgs::signal::<#ty>(&args)),
            Param::Dependency {
                index,
                ty,
                optional,
            } => {
                let name = dependency_name(&private, &step.dependencies[*index].step);
                if *optional {
                    quote!(#worker::StepArgs::optional_dependency::<#ty>(&args, #name))
                } else {
                    quote!(#worker::StepArgs::dependency::<#ty>(&args, #name))
                }
            }
            Param::Context(context) => {
                uses_context = true;
                call_args.push(match context {
                    Context::Borrowed => quote!(&ctx),
                    Context::Owned => quote!(ctx),
                });
                continue;
            }
        };
        decode.push(quote!(let #local = #decoded?;));
        call_args.push(quote!(#local));
    }
    let ctx = if uses_context { quote!(ctx) } else { quote!(_) };
    // A user error type that does not convert into `anyhow::Error` is
    // reported at the return type.
    let err_span = io.output.err.as_ref().map_or(returned_span, Spanned::span);
    let into_anyhow = respan(
        quote!(#private::Result::map_err(output, #private::Into::into)),
        err_span,
    );

    // The handler's future is checked for `Send` at the function's name.
    let fn_span = ident.span();
    let new_handler = respan(quote!(#worker::StepHandler::new::), fn_span);
    let execute = respan(
        quote!(move |args, ctx| async move { Self::__catbird_execute(args, ctx).await }),
        fn_span,
    );
    let any_error = respan(quote!(#private::AnyError), fn_span);
    let handler = quote_spanned! {fn_span=>
        #new_handler<#output, #any_error, _, _>(Self::definition(), #execute)
    };
    let handler_calls = option_calls(&private, &step.handler);
    let definition = definition_body(&private, step);
    let has_condition = step
        .condition
        .as_ref()
        .is_some_and(|condition| !condition.trim().is_empty());
    let unconditional = (!has_condition).then(|| {
        quote! {
            #(#cfgs)*
            impl #private::Unconditional for #ident {}
        }
    });
    let checks = dependency_checks(&private, cfgs, step, io);

    let name_doc = format!("The step's name, `{name}`.");
    let definition_doc = format!(
        "The definition of step `{name}`, with its dependencies, condition and signal, \
         for a process that creates the flow without executing this step."
    );
    let handler_doc = format!(
        "The handler of step `{name}`, with the options of its `#[catbird::step]` \
         attribute. `Flow::step({ident})` calls this."
    );

    quote! {
        #(#cfgs)*
        #struct_docs
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        #vis struct #ident {}

        #(#cfgs)*
        #marker

        #(#cfgs)*
        impl #ident {
            #[doc = #name_doc]
            #[allow(dead_code)]
            #vis const NAME: &str = #name;

            #call

            #[doc = #definition_doc]
            #[allow(dead_code)]
            #vis fn definition() -> #core::flow::StepDef {
                #definition
            }

            #[doc = #handler_doc]
            #[allow(dead_code)]
            #vis fn handler() -> #worker::StepHandler {
                #handler
                    #handler_calls
            }

            /// Decodes the arguments and calls the function. A decoding
            /// failure fails the attempt.
            #[allow(dead_code)]
            async fn __catbird_execute(
                args: #worker::StepArgs,
                #ctx: #worker::StepContext,
            ) -> #private::Result<#output, #private::AnyError> {
                #(#decode)*
                let output = Self::call(#(#call_args),*).await;
                #into_anyhow
            }
        }

        #(#cfgs)*
        impl #worker::IntoStepHandler for #ident {
            fn into_step_handler(self) -> #worker::StepHandler {
                Self::handler()
            }
        }

        #(#cfgs)*
        impl #private::Step for #ident {
            const NAME: &'static str = #name;
            type Output = #output;
            type This = Self;
        }


        #unconditional

        #checks
    }
}

/// Generates the stand-in for a function that cannot make a step: the same
/// struct and associated functions with stand-in bodies, next to the
/// function itself as `call`, so only the reported problems show. It
/// passes every check of the steps that depend on it.
fn stand_in(step: &Step) -> TokenStream {
    let krate = &step.krate;
    let private = quote!(#krate::__private);
    let worker = quote!(#private::catbird_worker);
    let core = quote!(#private::catbird_core);
    let function = &step.function;
    let vis = &function.vis;
    let ident = &function.sig.ident;
    let name = &step.name;
    let attrs = Attrs::split(&function.attrs);
    let cfgs = &attrs.cfgs;
    let struct_docs = struct_docs(step, &attrs);
    let sig = without_signal_attrs(&function.sig);
    let call = call_fn(function, &sig, &attrs, Kind::Step);
    let marker = marker_fn(&worker, step);
    let stand_in = quote!(#private::stand_in());

    quote! {
        #(#cfgs)*
        #struct_docs
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy)]
        #vis struct #ident {}

        #(#cfgs)*
        #marker

        #(#cfgs)*
        #[allow(dead_code, unused_variables)]
        impl #ident {
            /// The step's name.
            #vis const NAME: &str = #name;

            #call

            /// The step's definition.
            #vis fn definition() -> #core::flow::StepDef {
                #core::flow::StepDef::new(Self::NAME)
            }

            /// The step's handler.
            #vis fn handler() -> #worker::StepHandler {
                #stand_in
            }
        }

        #(#cfgs)*
        impl #worker::IntoStepHandler for #ident {
            fn into_step_handler(self) -> #worker::StepHandler {
                Self::handler()
            }
        }

        #(#cfgs)*
        impl #private::Step for #ident {
            const NAME: &'static str = #name;
            type Output = ();
            type This = #private::AnyStep;
        }
    }
}
