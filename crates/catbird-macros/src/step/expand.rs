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
use super::validate::{Dependency, Form, Io, Param, Step};
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
    match (&step.io, &step.form) {
        (Some(io), Form::Item) => item_handler(step, io),
        (Some(io), _) => full(step, io),
        (None, _) => stand_in(step),
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
    // The kind comes after the dependencies: `map_step_output` and `reduce`
    // append their source when it is not a dependency yet (R-FDEF-3).
    let kind = match &step.form {
        Form::Normal | Form::Item => None,
        Form::MapInput => Some(quote!(.map_input())),
        Form::MapStep { source } => {
            let name = dependency_name(private, &step.dependencies[*source].step);
            Some(quote!(.map_step_output(#name)))
        }
        Form::Generator { .. } => Some(quote!(.generator())),
        Form::Reduce { source } => {
            let name = dependency_name(private, source);
            Some(quote!(.reduce(#name)))
        }
    };
    if step.dependencies.is_empty() {
        return quote!(#new #kind);
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
        definition #kind
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
        if let Param::Item(ty) = param {
            checks.extend(item_checks(private, cfgs, step, ty));
            continue;
        }
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

/// Generates the compile-time checks of the item parameter of a mapper or
/// reducer whose source is given by path: a mapper's element type must be
/// the element type of the source's output, which must not be skipped; a
/// reducer's item type must be the output type of the source's items.
fn item_checks(
    private: &TokenStream,
    cfgs: &[&syn::Attribute],
    step: &Step,
    ty: &syn::Type,
) -> TokenStream {
    let span = ty.span();
    match &step.form {
        Form::MapStep { source } => {
            let StepRef::Path(path) = &step.dependencies[*source].step else {
                return TokenStream::new();
            };
            let this = step_item(private, path, "This", span);
            let output = step_item(private, path, "Output", span);
            let element_of = respan(quote!(#private::ElementOf), span);
            let map_source = respan(quote!(#private::MapSource), span);
            quote_spanned! {span=>
                #(#cfgs)*
                const _: () = <#ty as #element_of<#this, #output>>::CHECK;
                #(#cfgs)*
                const _: () = <#ty as #map_source<#this>>::CHECK;
            }
        }
        Form::Reduce {
            source: StepRef::Path(path),
        } => {
            let this = step_item(private, path, "This", span);
            let fan_out = respan(quote!(#private::FanOut), span);
            let item_output = quote_spanned!(span=> <#path as #fan_out>::ItemOutput);
            let item_output_of = respan(quote!(#private::ItemOutputOf), span);
            quote_spanned! {span=>
                #(#cfgs)*
                const _: () = <#ty as #item_output_of<#this, #item_output>>::CHECK;
            }
        }
        _ => TokenStream::new(),
    }
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
    let mut yielded = None;
    let mut accumulator = None;
    for (position, param) in io.params.iter().enumerate() {
        let local = format_ident!("__catbird_{position}");
        let decoded = match param {
            Param::Input(ty) => quote!(#worker::StepArgs::input::<#ty>(&args)),
            Param::Item(ty) => quote!(#worker::StepArgs::item::<#ty>(&args)),
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
            Param::Yield(ty) => {
                yielded = Some(ty);
                call_args.push(quote!(__catbird_yield));
                continue;
            }
            Param::Accumulator(ty) => {
                accumulator = Some(ty);
                call_args.push(quote!(__catbird_accumulator));
                continue;
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
    let any_error = respan(quote!(#private::AnyError), fn_span);
    // Every use of the item handler is at its path, so a path that is not
    // an item handler is reported once.
    let item_handler = |item: &syn::Path, member: &str| {
        let member = format_ident!("{member}");
        respan(
            quote!(<#item as #private::ItemHandler>::#member),
            item.span(),
        )
    };
    // What the step's dependents receive, and the output of one item for
    // the fan-out steps, which reducers fold.
    let (step_output, item_output) = match &step.form {
        Form::MapInput | Form::MapStep { .. } => {
            (quote!(#private::Vec<#output>), Some(output.clone()))
        }
        Form::Generator { item: Some(item) } => {
            let item_output = item_handler(item, "Output");
            (quote!(#private::Vec<#item_output>), Some(item_output))
        }
        _ => (output.clone(), None),
    };
    let (handler, execute_fn) = match (&step.form, yielded, accumulator) {
        (Form::Generator { item: Some(item) }, Some(yielded), _) => {
            let (this, input) = (item_handler(item, "This"), item_handler(item, "Item"));
            let handle = item_handler(item, "handle");
            // A yielded type that is not the item handler's is reported at
            // the `Yielder`'s type argument.
            let yield_span = yielded.span();
            let item_of = respan(quote!(#private::ItemOf), yield_span);
            let into_item = quote_spanned! {yield_span=>
                <#yielded as #item_of<#this, #input>>::into_item
            };
            let new_handler = respan(quote!(#worker::StepHandler::generator::), fn_span);
            let execute = respan(
                quote!(move |args, items, ctx| async move {
                    Self::__catbird_execute(args, items, ctx).await
                }),
                fn_span,
            );
            let handler = quote_spanned! {fn_span=>
                #new_handler<#yielded, _, #any_error, #any_error, _, _, _, _>(
                    Self::definition(),
                    #execute,
                    |item: #yielded, ctx| #handle(#into_item(item), ctx),
                )
            };
            let execute_fn = quote! {
                /// Decodes the arguments and calls the generator. A decoding
                /// failure fails the attempt.
                #[allow(dead_code)]
                async fn __catbird_execute(
                    args: #worker::StepArgs,
                    __catbird_yield: #worker::Yielder<#yielded>,
                    #ctx: #worker::StepContext,
                ) -> #private::Result<(), #private::AnyError> {
                    #(#decode)*
                    let output = Self::call(#(#call_args),*).await;
                    #into_anyhow
                }
            };
            (handler, execute_fn)
        }
        (Form::Reduce { .. }, _, Some(accumulator)) => {
            let item = io
                .params
                .iter()
                .find_map(|param| match param {
                    Param::Item(ty) => Some(ty),
                    _ => None,
                })
                .expect("a reducer has an item parameter");
            let new_handler = respan(quote!(#worker::StepHandler::reducer::), fn_span);
            let fold = respan(
                quote!(move |accumulator, item| async move {
                    Self::__catbird_fold(accumulator, item).await
                }),
                fn_span,
            );
            let handler = quote_spanned! {fn_span=>
                #new_handler<#accumulator, #item, #any_error, _, _>(Self::definition(), #fold)
            };
            // An accumulator that is not the output is reported at its type.
            let acc_span = accumulator.span();
            let from_output = respan(quote!(#private::Accumulator), acc_span);
            let next = quote_spanned! {acc_span=>
                <#accumulator as #from_output<#output>>::from_output(output)
            };
            let execute_fn = quote! {
                /// Calls the reducer with the accumulator and one item output.
                #[allow(dead_code)]
                async fn __catbird_fold(
                    __catbird_accumulator: #accumulator,
                    __catbird_0: #item,
                ) -> #private::Result<#accumulator, #private::AnyError> {
                    let output = Self::call(__catbird_accumulator, __catbird_0).await;
                    let output: #private::Result<#output, #private::AnyError> = #into_anyhow;
                    let output = output?;
                    #private::Result::Ok(#next)
                }
            };
            (handler, execute_fn)
        }
        _ => {
            let new_handler = respan(quote!(#worker::StepHandler::new::), fn_span);
            let execute = respan(
                quote!(move |args, ctx| async move { Self::__catbird_execute(args, ctx).await }),
                fn_span,
            );
            let handler = quote_spanned! {fn_span=>
                #new_handler<#output, #any_error, _, _>(Self::definition(), #execute)
            };
            let execute_fn = quote! {
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
            };
            (handler, execute_fn)
        }
    };
    // A generator's output types name its item handler: at the handler's
    // path, a path that is not an item handler is reported once.
    let types_span = match &step.form {
        Form::Generator { item: Some(item) } => item.span(),
        _ => Span::call_site(),
    };
    let output_item = quote_spanned!(types_span=> type Output = #step_output;);
    let fan_out = item_output.map(|item_output| {
        let item_output = quote_spanned!(types_span=> type ItemOutput = #item_output;);
        quote! {
            #(#cfgs)*
            impl #private::FanOut for #ident {
                #item_output
            }
        }
    });
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

            #execute_fn
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
            #output_item
            type This = Self;
        }

        #fan_out

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

        // The stand-in may be a fan-out step or an item handler.
        #(#cfgs)*
        impl #private::FanOut for #ident {
            type ItemOutput = ();
        }

        #(#cfgs)*
        impl #private::ItemHandler for #ident {
            type Item = ();
            type Output = ();
            type This = #private::AnyStep;

            fn handle(
                _: (),
                _: #worker::StepContext,
            ) -> #private::Pin<#private::Box<
                dyn #private::Future<Output = #private::Result<(), #private::AnyError>> + Send,
            >> {
                #stand_in
            }
        }
    }
}

/// Generates the expansion of a valid item handler: a struct with `call`,
/// which implements `ItemHandler` for the generators that name it.
fn item_handler(step: &Step, io: &Io) -> TokenStream {
    let krate = &step.krate;
    let private = quote!(#krate::__private);
    let worker = quote!(#private::catbird_worker);
    let function = &step.function;
    let vis = &function.vis;
    let ident = &function.sig.ident;
    let attrs = Attrs::split(&function.attrs);
    let cfgs = &attrs.cfgs;
    let docs = &attrs.docs;
    let generated = doc_lines(
        !docs.is_empty(),
        &[
            format!(
                "The item handler `{ident}`, defined by `#[catbird::step(item)]`: \
                 `generator(item = {ident})` makes it process the items of a generator step."
            ),
            String::new(),
            format!("`{ident}::call(...)` calls the function directly, outside catbird."),
        ],
    );
    let call = call_fn(function, &function.sig, &attrs, Kind::Step);

    let returned = &io.output.ty;
    let returned_span = returned.span();
    let output = match &io.output.ok {
        Some(ok) => ok.to_token_stream(),
        None => {
            let result = respan(quote!(#private::StepResult), returned_span);
            quote_spanned!(returned_span=> <#returned as #result>::Ok)
        }
    };
    let err_span = io.output.err.as_ref().map_or(returned_span, Spanned::span);
    let into_anyhow = respan(
        quote!(#private::Result::map_err(output, #private::Into::into)),
        err_span,
    );
    let mut item = None;
    let mut call_args = Vec::new();
    let mut uses_context = false;
    for param in &io.params {
        match param {
            Param::Item(ty) => {
                item = Some(ty);
                call_args.push(quote!(item));
            }
            Param::Context(Context::Borrowed) => {
                uses_context = true;
                call_args.push(quote!(&ctx));
            }
            Param::Context(Context::Owned) => {
                uses_context = true;
                call_args.push(quote!(ctx));
            }
            _ => {}
        }
    }
    let ctx = if uses_context { quote!(ctx) } else { quote!(_) };
    let fn_span = ident.span();
    let boxed = respan(
        quote!(#private::Box::pin(async move {
            let output = Self::call(#(#call_args),*).await;
            #into_anyhow
        })),
        fn_span,
    );

    quote! {
        #(#cfgs)*
        #(#docs)*
        #generated
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Debug, Clone, Copy)]
        #vis struct #ident {}

        #(#cfgs)*
        impl #ident {
            #call
        }

        #(#cfgs)*
        impl #private::ItemHandler for #ident {
            type Item = #item;
            type Output = #output;
            type This = Self;

            fn handle(
                item: #item,
                #ctx: #worker::StepContext,
            ) -> #private::Pin<#private::Box<
                dyn #private::Future<Output = #private::Result<#output, #private::AnyError>> + Send,
            >> {
                #boxed
            }
        }
    }
}
