//! Stage 2: checks the parsed arguments and function, matches each
//! parameter with the flow input, the signal, a dependency or the context,
//! and turns them into the values the expansion needs. Every problem is
//! recorded, at the tokens it concerns, with what to write instead.

use syn::ext::IdentExt;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, LitStr, Meta, Pat, PatType, Path, PathArguments, Type,
};

use super::parse::{StepArgs, StepRef};
use crate::common::Kind;
use crate::common::parse::{Function, Key, Opt};
use crate::common::validate::{
    Context, HandlerOpts, Output, check_modifiers, check_name, check_output, context_kind,
    crate_path, doc_summary, handler_opts, owned_form,
};
use crate::errors::Errors;
use crate::suggest::did_you_mean;

/// The names a step cannot take, with the reason.
pub(crate) const RESERVED_NAMES: &[(&str, &str)] = &[
    ("input", "conditions use `input.*` for the flow input"),
    ("signal", "conditions use `signal.*` for the signal input"),
];

/// The parameter to write for a step that does not read the flow input.
const IGNORE_INPUT: &str = "_: serde::de::IgnoredAny";

/// A checked step definition, ready to expand.
pub(crate) struct Step {
    /// The path of the catbird facade crate.
    pub(crate) krate: Path,
    /// The step's name.
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) condition: Option<String>,
    /// Whether the step waits for a signal.
    pub(crate) signal: bool,
    pub(crate) handler: HandlerOpts,
    /// The dependencies, in `depends_on` order, then the map source when
    /// `depends_on` does not list it.
    pub(crate) dependencies: Vec<Dependency>,
    /// What the step does with its function: one call, one call per item,
    /// a generator, a fold, or an item handler.
    pub(crate) form: Form,
    /// The function as written.
    pub(crate) function: Function,
    /// The parameters, by what they receive, and the output. `None` when the
    /// signature or the dependencies cannot make a step, so only a stand-in
    /// is generated.
    pub(crate) io: Option<Io>,
}

/// What a step does with its function.
pub(crate) enum Form {
    /// One call per step run.
    Normal,
    /// `map_input`: one call per element of the flow input.
    MapInput,
    /// `map = source`: one call per element of the output of
    /// `dependencies[source]`.
    MapStep { source: usize },
    /// `generator(item = handler)`: the function yields items, which the
    /// item handler at `item` processes.
    Generator { item: Option<Path> },
    /// `reduce = source`: folds the item outputs of `source`.
    Reduce { source: StepRef },
    /// `item`: the item handler of a generator step, not a step itself.
    Item,
}

/// One dependency of the step.
pub(crate) struct Dependency {
    /// The step depended on, as written in `depends_on`.
    pub(crate) step: StepRef,
    /// The step also runs when this dependency was skipped: it is listed in
    /// `optional`, or its parameter is an `Option`.
    pub(crate) optional: bool,
    /// Listed in `ignore_output`: the step waits for it without receiving
    /// its output.
    pub(crate) ignore_output: bool,
    /// The entry has a problem that is already reported, so its parameter
    /// (or the lack of one) reports nothing more.
    pub(crate) reported: bool,
}

/// The function's parameters, by what they receive, and its output.
pub(crate) struct Io {
    /// One entry per parameter, in order.
    pub(crate) params: Vec<Param>,
    pub(crate) output: Output,
}

/// The value a parameter receives.
pub(crate) enum Param {
    /// The flow input, of this type.
    Input(Type),
    /// The item: an element of the mapped array for a mapper, the item
    /// for an item handler, the item output for a reducer.
    Item(Type),
    /// A generator's `Yielder<T>`, with `T`.
    Yield(Type),
    /// A reducer's accumulator, of this type.
    Accumulator(Type),
    /// The signal input, of this type.
    Signal(Type),
    /// The output of `dependencies[index]`, of type `ty`, wrapped in an
    /// `Option` when `optional`.
    Dependency {
        index: usize,
        ty: Type,
        optional: bool,
    },
    /// The step's context.
    Context(Context),
}

/// Checks `args` and `function`, recording every problem in `errors`.
/// Always returns a model: invalid options are left out of it, and a
/// signature or dependency list with problems leaves `io` empty.
pub(crate) fn validate(args: StepArgs, function: Function, errors: &mut Errors) -> Step {
    let krate = crate_path(args.krate.as_ref(), errors);
    let name = step_name(args.name.as_ref(), &function.sig.ident, errors);
    let description = match &args.description {
        Some(description) => Some(description.value.value()),
        None => doc_summary(&function.attrs),
    };
    let handler = handler_opts(&args.handler, Kind::Step, errors);

    let found_before = errors.count();
    let mut dependencies = dependencies(&args, &name, &function.sig.ident, errors);
    let form = form(&args, &name, &function.sig.ident, &dependencies, errors);
    let io = match &form {
        Form::Reduce { source } => reducer_signature(&function, source, &dependencies, errors),
        Form::Item => item_signature(&function, errors),
        form => signature(&function, &args, form, &mut dependencies, errors),
    };
    let io = if errors.count() > found_before {
        None
    } else {
        io
    };

    let signal = args.signal.is_some();
    if let Some(condition) = &args.condition {
        check_condition(&condition.value, &dependencies, signal, errors);
    }

    Step {
        krate,
        name,
        description,
        condition: args.condition.map(|condition| condition.value.value()),
        signal,
        handler,
        dependencies,
        form,
        function,
        io,
    }
}

/// Returns the step's name, `name = "..."` or the function's name, after
/// checking it against catbird's naming rule.
fn step_name(explicit: Option<&Opt<LitStr>>, ident: &Ident, errors: &mut Errors) -> String {
    let (name, span, origin) = match explicit {
        Some(explicit) => (explicit.value.value(), explicit.value.span(), ""),
        None => (
            ident.unraw().to_string(),
            ident.span(),
            " (the function's name)",
        ),
    };
    if let Err(problem) = check_name(Kind::Step, &name, RESERVED_NAMES) {
        let problem = problem.message(|fixed| format!("name = \"{fixed}\""));
        errors.at_span(
            span,
            format_args!("invalid step name `{name}`{origin}: {problem}"),
        );
    }
    name
}

/// Collects `depends_on`, marked with `optional` and `ignore_output`.
/// Entries with a problem are reported and kept, so that their parameters
/// do not report a second problem.
fn dependencies(
    args: &StepArgs,
    name: &str,
    ident: &Ident,
    errors: &mut Errors,
) -> Vec<Dependency> {
    let mut dependencies: Vec<Dependency> = Vec::new();
    if let Some(depends_on) = &args.depends_on {
        if depends_on.value.is_empty() {
            errors.at_span(
                depends_on.key.span,
                "`depends_on` lists no step: name one, as in `depends_on(\"validate\")`, \
                 or remove it",
            );
        }
        for step in &depends_on.value {
            let key = step.key();
            let reported = !check_dependency(step, &key, name, ident, errors);
            if dependencies
                .iter()
                .any(|dependency| dependency.step.key() == key)
            {
                errors.at(
                    step,
                    format_args!("`{key}` is listed twice in `depends_on`; remove one of them"),
                );
                continue;
            }
            dependencies.push(Dependency {
                step: step.clone(),
                optional: false,
                ignore_output: false,
                reported,
            });
        }
    }
    if let Some(map) = &args.map {
        // The map source is a dependency (R-FDEF-3), appended when
        // `depends_on` does not list it.
        let key = map.value.key();
        let reported = !check_source(&map.value, "map", name, ident, errors);
        if !dependencies
            .iter()
            .any(|dependency| dependency.step.key() == key)
        {
            dependencies.push(Dependency {
                step: map.value.clone(),
                optional: false,
                ignore_output: false,
                reported,
            });
        }
    }
    if let Some(ignored) = &args.ignore_output {
        mark(ignored, &mut dependencies, errors, |dependency| {
            &mut dependency.ignore_output
        });
    }
    if let Some(optional) = &args.optional {
        mark(optional, &mut dependencies, errors, |dependency| {
            &mut dependency.optional
        });
    }
    if let Some(map) = &args.map {
        let key = map.value.key();
        if let Some(source) = dependencies
            .iter_mut()
            .find(|dependency| dependency.step.key() == key)
        {
            if source.ignore_output {
                errors.at(
                    &map.value,
                    format_args!(
                        "the step maps the output of `{key}`, so it cannot ignore it: remove \
                         `{key}` from `ignore_output`"
                    ),
                );
                source.reported = true;
            }
            if source.optional {
                errors.at(
                    &map.value,
                    format_args!(
                        "the step maps the output of `{key}`, which must therefore complete: \
                         remove `{key}` from `optional`"
                    ),
                );
                source.reported = true;
            }
        }
    }
    dependencies
}

/// Checks the source of `map` or `reduce`: a valid step name that is not
/// reserved, and not the step itself. Returns whether it passed.
fn check_source(
    step: &StepRef,
    option: &str,
    name: &str,
    ident: &Ident,
    errors: &mut Errors,
) -> bool {
    let key = step.key();
    let itself = match step {
        StepRef::Name(literal) => {
            if key == "input" {
                let message = if option == "map" {
                    "to map over the flow input, write `map_input` instead of `map = \"input\"`"
                } else {
                    "`input` is not a step: `reduce` names the mapper or generator step whose \
                     item outputs it folds"
                };
                errors.at(literal, message);
                return false;
            }
            if let Err(problem) = check_name(Kind::Step, &key, RESERVED_NAMES) {
                let problem = problem.message(|fixed| format!("\"{fixed}\""));
                errors.at(
                    literal,
                    format_args!("invalid step name `{key}` in `{option}`: {problem}"),
                );
                return false;
            }
            key == name
        }
        StepRef::Path(_) => ident.unraw() == key,
    };
    if itself {
        errors.at(
            step,
            format_args!("a step cannot {option} its own output: name another step in `{option}`"),
        );
    }
    !itself
}

/// Finds the step's form from `map_input`, `map`, `generator`, `reduce`
/// and `item`, and reports the combinations and the options that do not
/// apply to it.
fn form(
    args: &StepArgs,
    name: &str,
    ident: &Ident,
    dependencies: &[Dependency],
    errors: &mut Errors,
) -> Form {
    let kinds: Vec<Key> = [
        args.map_input,
        args.map.as_ref().map(|map| map.key),
        args.generator.as_ref().map(|generator| generator.key),
        args.reduce.as_ref().map(|reduce| reduce.key),
        args.item,
    ]
    .into_iter()
    .flatten()
    .collect();
    let Some(first) = kinds.first() else {
        return Form::Normal;
    };
    for other in &kinds[1..] {
        errors.at_span(other.span, combined(first.name, other.name));
    }
    match first.name {
        "map_input" => Form::MapInput,
        "map" => {
            let key = args
                .map
                .as_ref()
                .map(|map| map.value.key())
                .unwrap_or_default();
            let source = dependencies
                .iter()
                .position(|dependency| dependency.step.key() == key)
                .unwrap_or_default();
            Form::MapStep { source }
        }
        "generator" => {
            let generator = args.generator.as_ref().expect("`generator` was given");
            let item = generator.value.item.as_ref().map(|item| item.value.clone());
            if item.is_none() {
                errors.at_span(
                    generator.key.span,
                    "`generator` is missing `item`, the function that processes each item: \
                     write `generator(item = double)`, where `double` is an `async fn` under \
                     `#[catbird::step(item)]`",
                );
            }
            Form::Generator { item }
        }
        "reduce" => {
            let reduce = args.reduce.as_ref().expect("`reduce` was given");
            check_source(&reduce.value, "reduce", name, ident, errors);
            if let Some(signal) = args.signal {
                errors.at_span(
                    signal.span,
                    "a reducer does not wait for a signal: it receives only its accumulator \
                     and the item outputs it folds; remove `signal`",
                );
            }
            Form::Reduce {
                source: reduce.value.clone(),
            }
        }
        _ => {
            for key in step_options(args) {
                errors.at_span(
                    key.span,
                    format_args!(
                        "`{}` does not apply to an item handler, which processes the items of \
                         the generator steps that name it: set it on the generator step",
                        key.name
                    ),
                );
            }
            Form::Item
        }
    }
}

/// Explains why the kind options `first` and `second` cannot be combined.
fn combined(first: &str, second: &str) -> String {
    match (first, second) {
        ("map_input", "map") => "`map_input` maps the flow input and `map` maps a step's \
                                 output, and a step maps one array: keep one of them"
            .to_owned(),
        ("map_input" | "map", "reduce") => format!(
            "a step cannot both map and reduce: keep `{first}` on this step and fold its item \
             outputs in another step with `reduce = \"<this step>\"`"
        ),
        _ => format!(
            "`{second}` cannot be combined with `{first}`: a step is a mapper (`map_input` or \
             `map`), a generator (`generator(...)`), a reducer (`reduce`) or a generator's item \
             handler (`item`); keep one of them"
        ),
    }
}

/// The keys of the options given to `args`, other than the kind options
/// and `crate`.
fn step_options(args: &StepArgs) -> Vec<Key> {
    let handler = &args.handler;
    [
        args.name.as_ref().map(|opt| opt.key),
        args.description.as_ref().map(|opt| opt.key),
        args.depends_on.as_ref().map(|opt| opt.key),
        args.condition.as_ref().map(|opt| opt.key),
        args.signal,
        args.ignore_output.as_ref().map(|opt| opt.key),
        args.optional.as_ref().map(|opt| opt.key),
        handler.concurrency.as_ref().map(|opt| opt.key),
        handler.batch_size.as_ref().map(|opt| opt.key),
        handler.busy_poll.as_ref().map(|opt| opt.key),
        handler.timeout.as_ref().map(|opt| opt.key),
        handler.max_retries.as_ref().map(|opt| opt.key),
        handler.backoff.as_ref().map(|opt| opt.key),
        handler.circuit_breaker.as_ref().map(|opt| opt.key),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Checks one `depends_on` entry: a valid step name that is not reserved,
/// and not the step itself. Returns whether it passed.
fn check_dependency(
    step: &StepRef,
    key: &str,
    name: &str,
    ident: &Ident,
    errors: &mut Errors,
) -> bool {
    let itself = match step {
        StepRef::Name(literal) => {
            if key == "input" {
                errors.at(
                    literal,
                    "`input` is not a step: a step receives the flow input as its first \
                     parameter; remove `\"input\"` from `depends_on`",
                );
                return false;
            }
            if key == "signal" {
                errors.at(
                    literal,
                    "`signal` is not a step: a step that waits for a signal takes the `signal` \
                     option and a `#[signal]` parameter; remove `\"signal\"` from `depends_on`",
                );
                return false;
            }
            if let Err(problem) = check_name(Kind::Step, key, RESERVED_NAMES) {
                let problem = problem.message(|fixed| format!("\"{fixed}\""));
                errors.at(
                    literal,
                    format_args!("invalid step name `{key}` in `depends_on`: {problem}"),
                );
                return false;
            }
            key == name
        }
        StepRef::Path(_) => ident.unraw() == key,
    };
    if itself {
        errors.at(
            step,
            format_args!(
                "a step cannot depend on itself; remove `{}` from `depends_on`",
                step.written()
            ),
        );
    }
    !itself
}

/// Sets the flag `field` of each dependency that `list` names.
fn mark(
    list: &Opt<Vec<StepRef>>,
    dependencies: &mut [Dependency],
    errors: &mut Errors,
    field: impl Fn(&mut Dependency) -> &mut bool,
) {
    let option = list.key.name;
    for step in &list.value {
        let key = step.key();
        let Some(dependency) = dependencies
            .iter_mut()
            .find(|dependency| dependency.step.key() == key)
        else {
            errors.at(
                step,
                format_args!(
                    "`{key}` is listed in `{option}` but not in `depends_on`; \
                     add it to `depends_on`"
                ),
            );
            continue;
        };
        let flag = field(dependency);
        if *flag {
            errors.at(
                step,
                format_args!("`{key}` is listed twice in `{option}`; remove one of them"),
            );
        }
        *flag = true;
    }
}

/// Checks the signature and matches each parameter with what it
/// receives. `None` after recording a problem.
fn signature(
    function: &Function,
    args: &StepArgs,
    form: &Form,
    dependencies: &mut [Dependency],
    errors: &mut Errors,
) -> Option<Io> {
    let sig = &function.sig;
    let name = &sig.ident;
    check_modifiers(sig, Kind::Step, errors);

    let mut matcher = Matcher {
        args,
        form,
        dependencies,
        received: Vec::new(),
        params: Vec::new(),
        signal: false,
        context: false,
        yielder: None,
    };
    matcher.received.resize(matcher.dependencies.len(), false);

    let mut inputs = sig.inputs.iter().enumerate().peekable();
    // The position of the flow input: after `self`, the next parameter is
    // likely the input.
    let mut input_position = 0;
    match inputs.next() {
        None if matches!(form, Form::MapInput) => errors.at_span(
            sig.paren_token.span.join(),
            format_args!(
                "a mapper over the flow input takes the item, an element of the flow input, as \
                 its first parameter: write `async fn {name}(item: Item)`"
            ),
        ),
        None => errors.at_span(
            sig.paren_token.span.join(),
            format_args!(
                "a step takes the flow input as its first parameter: write \
                 `async fn {name}(input: Input)`; take `{IGNORE_INPUT}` if the step does not \
                 read it"
            ),
        ),
        Some((_, FnArg::Receiver(receiver))) => {
            errors.at(
                receiver,
                "a step cannot take `self`: write it as a free function outside the `impl` \
                 block, with the flow input as its first parameter",
            );
            input_position = 1;
            if let Some((_, FnArg::Typed(param))) = inputs.next() {
                matcher.input(param, name, errors);
            }
        }
        Some((_, FnArg::Typed(param))) => matcher.input(param, name, errors),
    }
    while let Some((position, arg)) = inputs.next() {
        let last = inputs.peek().is_none();
        match arg {
            FnArg::Receiver(receiver) => {
                errors.at(receiver, "`self` can only be a method's first parameter");
            }
            FnArg::Typed(param) => {
                matcher.param(param, position == input_position + 1, last, errors);
            }
        }
    }
    matcher.unmatched(errors);
    matcher.check_yielder(sig, errors);

    let output = check_output(sig, Kind::Step, errors);
    if let (Form::Generator { item }, Some(Output { ok: Some(ok), .. })) = (form, &output) {
        if !matches!(ok, Type::Tuple(tuple) if tuple.elems.is_empty()) {
            let item = item.as_ref().map_or_else(
                || "its item handler".to_owned(),
                |item| format!("`{}`", quote::quote!(#item)),
            );
            errors.at(
                ok,
                format_args!(
                    "a generator returns `Result<()>`: the step's output is the array of its \
                     items' outputs, which {item} returns; return `Ok(())` once every item is \
                     yielded"
                ),
            );
            return None;
        }
    }
    Some(Io {
        params: matcher.params,
        output: output?,
    })
}

/// Matches parameters with the flow input, the signal, the dependencies
/// and the context.
struct Matcher<'a> {
    args: &'a StepArgs,
    form: &'a Form,
    dependencies: &'a mut [Dependency],
    /// Whether a parameter receives `dependencies[i]`.
    received: Vec<bool>,
    params: Vec<Param>,
    /// Whether a `#[signal]` parameter was seen.
    signal: bool,
    /// Whether a context parameter was seen.
    context: bool,
    /// A generator's `Yielder` parameter and its place in `params`.
    yielder: Option<(usize, &'a PatType)>,
}

impl<'a> Matcher<'a> {
    /// Matches the first parameter, which receives the flow input.
    fn input(&mut self, param: &PatType, name: &Ident, errors: &mut Errors) {
        if let Some(attr) = signal_attr(&param.attrs) {
            errors.at(
                attr,
                format_args!(
                    "a step's first parameter is the flow input, and the `#[signal]` parameter \
                     comes after it: write `async fn {name}(input: Input, #[signal] signal: \
                     Signal)`"
                ),
            );
            return;
        }
        if context_kind(&param.ty, "StepContext") != Ok(None) {
            errors.at(
                &param.ty,
                format_args!(
                    "a step's first parameter is the flow input, and the context comes last: \
                     write `async fn {name}(input: Input, ctx: &StepContext)`"
                ),
            );
            return;
        }
        if let Some(index) = self.dependency_named(&param.pat) {
            self.received[index] = true;
            let key = self.dependencies[index].step.key();
            errors.at(
                &param.pat,
                format_args!(
                    "a step's first parameter is the flow input, but `{key}` is named after a \
                     dependency: add the flow input before it, as in `async fn {name}(input: \
                     Input, {key}: ...)`, or `{IGNORE_INPUT}` if the step does not read it"
                ),
            );
            return;
        }
        if matches!(self.form, Form::MapInput) {
            if let Some(ty) = owned(&param.ty, "its item", errors) {
                self.params.push(Param::Item(ty));
            }
        } else if let Some(ty) = owned(&param.ty, "its flow input", errors) {
            self.params.push(Param::Input(ty));
        }
    }

    /// Matches a parameter after the flow input. `second` is true when it
    /// comes right after the input, and `last` when it comes last.
    fn param(&mut self, param: &'a PatType, second: bool, last: bool, errors: &mut Errors) {
        if let Some(attr) = signal_attr(&param.attrs) {
            self.signal_param(param, attr, second, errors);
            return;
        }
        match context_kind(&param.ty, "StepContext") {
            Err(message) => {
                errors.at(&param.ty, message);
                return;
            }
            Ok(Some(kind)) => {
                if self.context {
                    errors.at(
                        param,
                        "a step takes the context once; remove this parameter",
                    );
                } else if !last {
                    let moved = match &*param.pat {
                        Pat::Ident(pat) => format!("`{}`", pat.ident),
                        _ => "it".to_owned(),
                    };
                    errors.at(
                        param,
                        format_args!(
                            "the context comes last: move {moved} after the other parameters"
                        ),
                    );
                }
                self.context = true;
                self.params.push(Param::Context(kind));
                return;
            }
            Ok(None) => {}
        }
        if let Some(item) = yielder_item(&param.ty) {
            self.yield_param(param, item, errors);
            return;
        }
        match self.dependency_named(&param.pat) {
            Some(index) => self.dependency_param(param, index, errors),
            None => self.unknown_param(param, errors),
        }
    }

    fn signal_param(
        &mut self,
        param: &PatType,
        attr: &Attribute,
        second: bool,
        errors: &mut Errors,
    ) {
        if !matches!(attr.meta, Meta::Path(_)) {
            errors.at(attr, "`#[signal]` takes no arguments: write `#[signal]`");
        }
        if self.signal {
            errors.at(
                attr,
                "a step receives one signal input: keep `#[signal]` on one parameter only",
            );
        } else if !second {
            errors.at(
                attr,
                "the `#[signal]` parameter comes right after the flow input: move it to \
                 second place",
            );
        }
        if self.args.signal.is_none() {
            errors.at(
                attr,
                "a `#[signal]` parameter needs the `signal` option, which makes the step wait \
                 for the signal it receives: write `#[catbird::step(signal)]`",
            );
        }
        self.signal = true;
        if let Some(ty) = owned(&param.ty, "its signal input", errors) {
            self.params.push(Param::Signal(ty));
        }
    }

    /// Matches a generator's `Yielder<item>` parameter.
    fn yield_param(&mut self, param: &'a PatType, item: &Type, errors: &mut Errors) {
        if !matches!(self.form, Form::Generator { .. }) {
            errors.at(
                &param.ty,
                "a `Yielder` yields the items of a generator step: add \
                 `generator(item = ...)` to the attribute, naming the function that processes \
                 each item",
            );
            return;
        }
        if self.yielder.is_some() {
            errors.at(
                param,
                "a generator yields its items through one `Yielder`; remove this parameter",
            );
            return;
        }
        self.yielder = Some((self.params.len(), param));
        self.params.push(Param::Yield(item.clone()));
    }

    /// Checks that a generator has a `Yielder`, after the dependencies and
    /// before the context.
    fn check_yielder(&self, sig: &syn::Signature, errors: &mut Errors) {
        if !matches!(self.form, Form::Generator { .. }) {
            return;
        }
        match self.yielder {
            None => errors.at_span(
                sig.paren_token.span.join(),
                "a generator yields its items through a `Yielder<Item>` parameter after its \
                 dependencies: add `items: catbird::worker::Yielder<Item>`",
            ),
            Some((position, param)) => {
                let misplaced = self.params[position + 1..]
                    .iter()
                    .any(|param| !matches!(param, Param::Context(_)));
                if misplaced {
                    let moved = match &*param.pat {
                        Pat::Ident(pat) => format!("`{}`", pat.ident),
                        _ => "it".to_owned(),
                    };
                    errors.at(
                        param,
                        format_args!(
                            "the `Yielder` comes after the dependencies, and before the context \
                             only: move {moved} there"
                        ),
                    );
                }
            }
        }
    }

    fn dependency_param(&mut self, param: &PatType, index: usize, errors: &mut Errors) {
        self.received[index] = true;
        if matches!(self.form, Form::MapStep { source } if *source == index) {
            self.element_param(param, index, errors);
            return;
        }
        let dependency = &mut self.dependencies[index];
        let key = dependency.step.key();
        if dependency.ignore_output {
            errors.at(
                &param.pat,
                format_args!(
                    "the step ignores the output of `{key}` (it is listed in `ignore_output`), \
                     so no parameter receives it: remove this parameter, or remove `{key}` \
                     from `ignore_output`"
                ),
            );
            return;
        }
        let (ty, optional) = match option_inner(&param.ty) {
            Some(inner) => (inner, true),
            None => (&*param.ty, false),
        };
        if dependency.optional && !optional {
            let ty = &param.ty;
            errors.at(
                ty,
                format_args!(
                    "`{key}` is listed in `optional`, so the step also runs when `{key}` was \
                     skipped, without its output: write `{key}: Option<{}>`",
                    quote::quote!(#ty)
                ),
            );
            return;
        }
        // An `Option` parameter makes the dependency optional by itself.
        dependency.optional |= optional;
        if let Some(ty) = owned(ty, &format!("the output of `{key}`"), errors) {
            self.params.push(Param::Dependency {
                index,
                ty,
                optional,
            });
        }
    }

    /// Matches the parameter named after the map source, which receives
    /// one element of its output.
    fn element_param(&mut self, param: &PatType, index: usize, errors: &mut Errors) {
        let dependency = &self.dependencies[index];
        if dependency.reported {
            return;
        }
        let key = dependency.step.key();
        if let Some(inner) = option_inner(&param.ty) {
            errors.at(
                &param.ty,
                format_args!(
                    "the step maps the output of `{key}`, which must complete, and `{key}` \
                     receives one element of it: write `{key}: {}`",
                    quote::quote!(#inner)
                ),
            );
            return;
        }
        if let Some(ty) = owned(&param.ty, &format!("each element of `{key}`"), errors) {
            self.params.push(Param::Item(ty));
        }
    }

    fn unknown_param(&mut self, param: &PatType, errors: &mut Errors) {
        let Pat::Ident(pat) = &*param.pat else {
            errors.at(
                &param.pat,
                "this parameter is neither the flow input, the signal, a dependency nor the \
                 context: a dependency's parameter is named after the step, as in \
                 `validate: Validation`",
            );
            return;
        };
        let ident = pat.ident.unraw().to_string();
        let waiting: Vec<String> = self
            .dependencies
            .iter()
            .zip(&self.received)
            .filter(|(dependency, received)| !dependency.ignore_output && !**received)
            .map(|(dependency, _)| dependency.step.key())
            .collect();
        let candidates: Vec<&str> = waiting.iter().map(String::as_str).collect();
        let close = did_you_mean(&ident, &candidates).and_then(|close| {
            self.dependencies
                .iter()
                .position(|dependency| dependency.step.key() == close)
        });
        let hint = if let Some(index) = close {
            // The typo is the problem: the dependency needs no second
            // report, and one with a reported problem needs none at all.
            self.received[index] = true;
            let dependency = &self.dependencies[index];
            if dependency.reported {
                return;
            }
            format!(
                "did you mean `{}`, a dependency of the step?",
                dependency.step.key()
            )
        } else if self.args.signal.is_some() && !self.signal {
            // The `signal` option needs no second report either.
            self.signal = true;
            "mark it `#[signal]` to receive the signal input that the `signal` option \
             makes the step wait for"
                .to_owned()
        } else {
            format!(
                "to receive the output of step `{ident}`, add it to `depends_on`; to receive \
                 the signal input, mark it `#[signal]`"
            )
        };
        errors.at(
            &param.pat,
            format_args!(
                "parameter `{ident}` is neither the flow input, the signal, a dependency nor \
                 the context: {hint}"
            ),
        );
    }

    /// Reports the dependencies that no parameter receives, and a `signal`
    /// option without a `#[signal]` parameter.
    fn unmatched(&self, errors: &mut Errors) {
        for (dependency, received) in self.dependencies.iter().zip(&self.received) {
            if dependency.ignore_output || dependency.reported || *received {
                continue;
            }
            let key = dependency.step.key();
            if let Some(map) = self.args.map.as_ref().filter(|map| map.value.key() == key) {
                if !matches!(self.form, Form::MapStep { .. }) {
                    // `map` is combined with another kind, which is
                    // reported.
                    continue;
                }
                errors.at(
                    &map.value,
                    format_args!(
                        "no parameter receives the elements of `{key}`, which the step maps: \
                         add a parameter `{key}` of its element type after the flow input"
                    ),
                );
                continue;
            }
            errors.at(
                &dependency.step,
                format_args!(
                    "no parameter receives the output of `{key}`: add a parameter `{key}` of \
                     its output type after the flow input, or add `ignore_output({})` if the \
                     step only waits for it",
                    dependency.step.written()
                ),
            );
        }
        if let (Some(key), false) = (self.args.signal, self.signal) {
            errors.at_span(
                key.span,
                format!(
                    "the `signal` option makes the step wait for a signal, and a `#[signal]` \
                     parameter receives its input: add one after the flow input, as in \
                     `#[signal] decision: Decision`, or `#[signal] {IGNORE_INPUT}`"
                ),
            );
        }
    }

    /// Finds the dependency whose output a parameter named by `pat`
    /// receives.
    fn dependency_named(&self, pat: &Pat) -> Option<usize> {
        let Pat::Ident(pat) = pat else {
            return None;
        };
        let ident = pat.ident.unraw().to_string();
        self.dependencies
            .iter()
            .position(|dependency| dependency.step.key() == ident)
    }
}

/// Returns the `T` of a type spelt `Yielder<T>` (or with a path to
/// `Yielder`).
fn yielder_item(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Paren(inner) => yielder_item(&inner.elem),
        Type::Group(inner) => yielder_item(&inner.elem),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            if last.ident != "Yielder" {
                return None;
            }
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            match args.args.iter().collect::<Vec<_>>()[..] {
                [GenericArgument::Type(inner)] => Some(inner),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Checks the signature of a reducer: `(accumulator, item)`.
fn reducer_signature(
    function: &Function,
    source: &StepRef,
    dependencies: &[Dependency],
    errors: &mut Errors,
) -> Option<Io> {
    let sig = &function.sig;
    let name = &sig.ident;
    check_modifiers(sig, Kind::Step, errors);
    let source_key = source.key();
    let mut params = Vec::new();
    for (position, arg) in sig.inputs.iter().enumerate() {
        let param = match arg {
            FnArg::Receiver(receiver) => {
                errors.at(
                    receiver,
                    "a step cannot take `self`: write it as a free function outside the \
                     `impl` block",
                );
                continue;
            }
            FnArg::Typed(param) => param,
        };
        if position >= 2 {
            errors.at(
                param,
                format_args!(
                    "a reducer takes only its accumulator and one item output of \
                     `{source_key}`: it receives neither the flow input, the signal, other \
                     dependencies' outputs nor the context; remove this parameter"
                ),
            );
        } else if let Some(attr) = signal_attr(&param.attrs) {
            errors.at(
                attr,
                "a reducer receives no signal input: it takes its accumulator and one item \
                 output",
            );
        } else if context_kind(&param.ty, "StepContext") != Ok(None) {
            errors.at(
                &param.ty,
                "a reducer receives no context: it takes its accumulator and one item output",
            );
        } else if position == 0 {
            if let Type::Reference(reference) = &*param.ty {
                errors.at(
                    &param.ty,
                    format_args!(
                        "a reducer takes its accumulator by value and returns the next one: \
                         write `{}`",
                        owned_form(reference)
                    ),
                );
            } else {
                params.push(Param::Accumulator((*param.ty).clone()));
            }
        } else if let Some(ty) = owned(&param.ty, "each item output", errors) {
            params.push(Param::Item(ty));
        }
    }
    if sig.inputs.len() < 2 {
        errors.at_span(
            sig.paren_token.span.join(),
            format_args!(
                "a reducer takes its accumulator, which starts as its type's default value, \
                 and one item output of `{source_key}`, and returns the next accumulator: \
                 write `async fn {name}(total: u64, item: u64) -> anyhow::Result<u64>`"
            ),
        );
    }
    for dependency in dependencies {
        if dependency.ignore_output || dependency.reported {
            continue;
        }
        let key = dependency.step.key();
        errors.at(
            &dependency.step,
            format_args!(
                "a reducer receives only its accumulator and the item outputs of \
                 `{source_key}`, so it waits for `{key}` without its output: add \
                 `ignore_output({})`",
                dependency.step.written()
            ),
        );
    }
    let output = check_output(sig, Kind::Step, errors)?;
    Some(Io { params, output })
}

/// Checks the signature of a generator's item handler: `(item, [ctx])`.
fn item_signature(function: &Function, errors: &mut Errors) -> Option<Io> {
    let sig = &function.sig;
    let name = &sig.ident;
    check_modifiers(sig, Kind::Step, errors);
    let mut params = Vec::new();
    for (position, arg) in sig.inputs.iter().enumerate() {
        let param = match arg {
            FnArg::Receiver(receiver) => {
                errors.at(
                    receiver,
                    "an item handler cannot take `self`: write it as a free function outside \
                     the `impl` block",
                );
                continue;
            }
            FnArg::Typed(param) => param,
        };
        if let Some(attr) = signal_attr(&param.attrs) {
            errors.at(
                attr,
                "an item handler receives no signal input: it takes the item and, last, the \
                 context",
            );
            continue;
        }
        match (position, context_kind(&param.ty, "StepContext")) {
            (_, Err(message)) => errors.at(&param.ty, message),
            (1, Ok(Some(context))) => params.push(Param::Context(context)),
            (0, Ok(None)) => {
                if let Some(ty) = owned(&param.ty, "its item", errors) {
                    params.push(Param::Item(ty));
                }
            }
            _ => errors.at(
                param,
                "an item handler takes the item, then optionally the context: \
                 `async fn double(item: u32, ctx: &StepContext)`; remove this parameter",
            ),
        }
    }
    if sig.inputs.is_empty() {
        errors.at_span(
            sig.paren_token.span.join(),
            format_args!(
                "an item handler takes the item that the generator yielded as its first \
                 parameter: write `async fn {name}(item: Item) -> anyhow::Result<Output>`"
            ),
        );
    }
    let output = check_output(sig, Kind::Step, errors)?;
    Some(Io { params, output })
}

/// Finds the `#[signal]` attribute among a parameter's attributes.
fn signal_attr(attrs: &[Attribute]) -> Option<&Attribute> {
    attrs.iter().find(|attr| attr.path().is_ident("signal"))
}

/// Checks that `ty`, which receives `what` decoded from JSON, is an owned,
/// concrete type.
fn owned(ty: &Type, what: &str, errors: &mut Errors) -> Option<Type> {
    match ty {
        Type::Reference(reference) => {
            let owned = owned_form(reference);
            errors.at(
                ty,
                format_args!(
                    "a step owns {what}, which is decoded from JSON for each run: take it by \
                     value, as `{owned}`"
                ),
            );
            None
        }
        Type::ImplTrait(_) => {
            errors.at(
                ty,
                format_args!(
                    "a step takes {what} as a concrete type, which it is decoded from JSON \
                     into; `impl Trait` makes the function generic"
                ),
            );
            None
        }
        ty => Some(ty.clone()),
    }
}

/// Returns the `T` of a type spelt `Option<T>` (or with a path to
/// `Option`).
pub(crate) fn option_inner(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Paren(inner) => option_inner(&inner.elem),
        Type::Group(inner) => option_inner(&inner.elem),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            if last.ident != "Option" {
                return None;
            }
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            match args.args.iter().collect::<Vec<_>>()[..] {
                [GenericArgument::Type(inner)] => Some(inner),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Checks what the condition reads first: `input`, `signal` when the step
/// waits for one, or a dependency whose output the step receives. A path
/// dependency may name a step whose name differs from its function's, so a
/// root that matches nothing is only reported when every dependency is
/// named by a string.
fn check_condition(
    condition: &LitStr,
    dependencies: &[Dependency],
    signal: bool,
    errors: &mut Errors,
) {
    let text = condition.value();
    let mut tokens = text.split_whitespace();
    let mut first = tokens.next();
    if first == Some("not") {
        first = tokens.next().or(first);
    }
    let Some(first) = first else {
        return;
    };
    let root = first.split(['.', '[']).next().unwrap_or_default();
    match root {
        "input" => {}
        "signal" if !signal => errors.at(
            condition,
            "the condition reads `signal`, but the step does not wait for a signal: \
             add the `signal` option",
        ),
        "signal" => {}
        root => match dependencies
            .iter()
            .find(|dependency| dependency.step.key() == root)
        {
            Some(dependency) if dependency.ignore_output => errors.at(
                condition,
                format_args!(
                    "the condition reads `{root}`, whose output the step ignores: remove \
                     `{root}` from `ignore_output`"
                ),
            ),
            Some(_) => {}
            None if dependencies
                .iter()
                .any(|dependency| matches!(dependency.step, StepRef::Path(_))) => {}
            None => errors.at(
                condition,
                format_args!(
                    "the condition reads `{root}`, which is not a dependency of the step: \
                     read `input`, `signal` or a step listed in `depends_on`"
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::parse::parse_args;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn check(args: TokenStream, item: TokenStream) -> (Step, Vec<String>) {
        let mut errors = Errors::default();
        let args = parse_args(args, &mut errors);
        let function = Function::parse(item, Kind::Step).unwrap();
        let step = validate(args, function, &mut errors);
        (step, errors.messages())
    }

    fn flags(step: &Step) -> Vec<(String, bool, bool)> {
        step.dependencies
            .iter()
            .map(|dependency| {
                (
                    dependency.step.key(),
                    dependency.optional,
                    dependency.ignore_output,
                )
            })
            .collect()
    }

    #[test]
    fn matches_each_parameter_with_what_it_receives() {
        let (step, errors) = check(
            quote!(
                signal,
                depends_on("validate", check_inventory, "audit"),
                ignore_output("audit")
            ),
            quote! {
                async fn ship(
                    order: Order,
                    #[signal] label: Label,
                    check_inventory: Option<Stock>,
                    validate: Validation,
                    ctx: &StepContext,
                ) -> anyhow::Result<Shipment> {}
            },
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert!(step.signal);
        assert_eq!(
            flags(&step),
            [
                ("validate".to_owned(), false, false),
                ("check_inventory".to_owned(), true, false),
                ("audit".to_owned(), false, true),
            ]
        );
        let params = step.io.unwrap().params;
        assert!(matches!(params[0], Param::Input(_)));
        assert!(matches!(params[1], Param::Signal(_)));
        let Param::Dependency {
            index: 1,
            ty,
            optional: true,
        } = &params[2]
        else {
            panic!("the third parameter receives `check_inventory`");
        };
        assert_eq!(quote!(#ty).to_string(), "Stock");
        assert!(matches!(
            params[3],
            Param::Dependency {
                index: 0,
                optional: false,
                ..
            }
        ));
        assert!(matches!(params[4], Param::Context(Context::Borrowed)));
    }

    #[test]
    fn optional_option_makes_the_dependency_optional() {
        let (step, errors) = check(
            quote!(depends_on = "approve", optional = "approve"),
            quote!(
                async fn finish(score: u32, approve: Option<String>) -> anyhow::Result<()> {}
            ),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(flags(&step), [("approve".to_owned(), true, false)]);

        let (_, errors) = check(
            quote!(depends_on = "approve", optional = "approve"),
            quote!(
                async fn finish(score: u32, approve: String) -> anyhow::Result<()> {}
            ),
        );
        assert_eq!(
            errors,
            [
                "`approve` is listed in `optional`, so the step also runs when `approve` was \
              skipped, without its output: write `approve: Option<String>`"
            ]
        );
    }

    #[test]
    fn reports_every_dependency_problem() {
        let (step, errors) = check(
            quote! {
                depends_on("charge", "Bad-Name", "signal", "validate", validate, "stock"),
                ignore_output("audit"), optional("validate", "validate")
            },
            quote!(
                async fn charge(order: Order, validate: Option<Validation>) -> anyhow::Result<()> {}
            ),
        );
        assert_eq!(
            errors,
            [
                "a step cannot depend on itself; remove `\"charge\"` from `depends_on`",
                "invalid step name `Bad-Name` in `depends_on`: a step name may only contain \
                 a-z, 0-9 and _; write `\"bad_name\"`",
                "`signal` is not a step: a step that waits for a signal takes the `signal` \
                 option and a `#[signal]` parameter; remove `\"signal\"` from `depends_on`",
                "`validate` is listed twice in `depends_on`; remove one of them",
                "`audit` is listed in `ignore_output` but not in `depends_on`; add it to \
                 `depends_on`",
                "`validate` is listed twice in `optional`; remove one of them",
                "no parameter receives the output of `stock`: add a parameter `stock` of its \
                 output type after the flow input, or add `ignore_output(\"stock\")` if the \
                 step only waits for it",
            ]
        );
        assert!(step.io.is_none());
    }

    #[test]
    fn reports_misplaced_parameters() {
        let (_, errors) = check(
            quote!(depends_on("validate")),
            quote!(
                async fn charge(
                    validate: bool,
                    ctx: &StepContext,
                    #[signal] s: u8,
                    extra: u8,
                ) -> anyhow::Result<()> {
                }
            ),
        );
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(
            errors[0].starts_with("a step's first parameter is the flow input, but `validate`")
        );
        assert!(errors[1].starts_with("the context comes last: move `ctx`"));
        assert!(errors[2].starts_with("the `#[signal]` parameter comes right after"));
        assert!(errors[3].starts_with("a `#[signal]` parameter needs the `signal` option"));
        assert!(errors[4].starts_with("parameter `extra` is neither"));
    }

    #[test]
    fn rejects_parameters_taken_by_reference() {
        let (_, errors) = check(
            quote!(signal, depends_on("validate")),
            quote!(
                async fn charge(
                    order: &Order,
                    #[signal] s: &str,
                    validate: &[u8],
                    ctx: &mut StepContext,
                ) -> anyhow::Result<()> {
                }
            ),
        );
        assert_eq!(
            errors,
            [
                "a step owns its flow input, which is decoded from JSON for each run: take it \
                 by value, as `Order`",
                "a step owns its signal input, which is decoded from JSON for each run: take \
                 it by value, as `String`",
                "a step owns the output of `validate`, which is decoded from JSON for each run: \
                 take it by value, as `Vec<u8>`",
                "take the context by shared reference: `ctx: &StepContext`",
            ]
        );
    }

    #[test]
    fn signal_needs_the_option_and_the_parameter() {
        let (_, errors) = check(
            quote!(signal),
            quote!(
                async fn approve(doc: Doc) -> anyhow::Result<()> {}
            ),
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("the `signal` option makes the step wait for a signal"));

        let (_, errors) = check(
            quote!(signal),
            quote!(
                async fn approve(
                    doc: Doc,
                    #[signal] a: u8,
                    #[signal(x)] b: u8,
                ) -> anyhow::Result<()> {
                }
            ),
        );
        assert_eq!(
            errors,
            [
                "`#[signal]` takes no arguments: write `#[signal]`",
                "a step receives one signal input: keep `#[signal]` on one parameter only",
            ]
        );
    }

    #[test]
    fn checks_what_the_condition_reads() {
        let item = quote!(
            async fn charge(order: Order, validate: bool) -> anyhow::Result<()> {}
        );
        for (condition, error) in [
            ("input.amount gt 0", None),
            ("not validate", None),
            ("validate.valid eq true", None),
            ("", None),
            (
                "signal.ok",
                Some(
                    "the condition reads `signal`, but the step does not wait for a signal: \
                     add the `signal` option",
                ),
            ),
            (
                "not stock[0].count gt 1",
                Some(
                    "the condition reads `stock`, which is not a dependency of the step: read \
                     `input`, `signal` or a step listed in `depends_on`",
                ),
            ),
        ] {
            let (_, errors) = check(
                quote!(depends_on("validate"), condition = #condition),
                item.clone(),
            );
            assert_eq!(errors, error.into_iter().collect::<Vec<_>>(), "{condition}");
        }

        // A path dependency may name a step whose name is not its function's.
        let (_, errors) = check(
            quote!(depends_on(validate), condition = "validate_order.valid"),
            item.clone(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let (_, errors) = check(
            quote!(
                depends_on("validate", "audit"),
                ignore_output("audit"),
                condition = "audit.ok"
            ),
            quote!(
                async fn charge(order: Order, validate: bool) -> anyhow::Result<()> {}
            ),
        );
        assert_eq!(
            errors,
            [
                "the condition reads `audit`, whose output the step ignores: remove `audit` from \
              `ignore_output`"
            ]
        );
    }

    #[test]
    fn name_rule_reserves_input_and_signal() {
        for (name, error) in [
            ("validate", None),
            (
                "input",
                Some(
                    "`input` is reserved (conditions use `input.*` for the flow input); choose another name",
                ),
            ),
            (
                "signal",
                Some(
                    "`signal` is reserved (conditions use `signal.*` for the signal input); choose another name",
                ),
            ),
        ] {
            let reason = check_name(Kind::Step, name, RESERVED_NAMES)
                .err()
                .map(|problem| problem.reason);
            assert_eq!(reason.as_deref(), error, "{name}");
        }
        let problem = check_name(Kind::Step, "Signal", RESERVED_NAMES).unwrap_err();
        assert_eq!(problem.fixed, None, "`signal` is not a fix");
    }

    #[test]
    fn option_inner_finds_the_type() {
        let ty: Type = syn::parse_quote!(std::option::Option<Vec<u8>>);
        let inner = option_inner(&ty).unwrap();
        assert_eq!(quote!(#inner).to_string(), "Vec < u8 >");
        let ty: Type = syn::parse_quote!(Options<u8>);
        assert!(option_inner(&ty).is_none());
        let ty: Type = syn::parse_quote!(Option);
        assert!(option_inner(&ty).is_none());
    }

    #[test]
    fn finds_the_form_and_its_parameters() {
        let (step, errors) = check(
            quote!(map = "numbers"),
            quote!(
                async fn double(input: u32, numbers: u32) -> anyhow::Result<u32> {}
            ),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert!(matches!(step.form, Form::MapStep { source: 0 }));
        assert_eq!(flags(&step), [("numbers".to_owned(), false, false)]);
        let params = step.io.unwrap().params;
        assert!(matches!(params[..], [Param::Input(_), Param::Item(_)]));

        let (step, errors) = check(
            quote!(generator(item = double), depends_on("seed")),
            quote!(
                async fn numbers(
                    input: u32,
                    seed: u32,
                    out: Yielder<u32>,
                    ctx: &StepContext,
                ) -> anyhow::Result<()> {
                }
            ),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert!(matches!(step.form, Form::Generator { item: Some(_) }));
        let params = step.io.unwrap().params;
        assert!(matches!(
            params[..],
            [
                Param::Input(_),
                Param::Dependency { .. },
                Param::Yield(_),
                Param::Context(_)
            ]
        ));
    }

    #[test]
    fn reports_fan_out_mistakes() {
        let (_, errors) = check(
            quote!(map = "numbers", optional("numbers"), generator(item = x)),
            quote!(
                async fn double(
                    input: u32,
                    numbers: u32,
                    out: Yielder<u32>,
                ) -> anyhow::Result<u32> {
                }
            ),
        );
        assert_eq!(
            errors,
            [
                "the step maps the output of `numbers`, which must therefore complete: remove \
                 `numbers` from `optional`",
                "`generator` cannot be combined with `map`: a step is a mapper (`map_input` or \
                 `map`), a generator (`generator(...)`), a reducer (`reduce`) or a generator's \
                 item handler (`item`); keep one of them",
                "a `Yielder` yields the items of a generator step: add `generator(item = ...)` \
                 to the attribute, naming the function that processes each item",
            ]
        );

        let (_, errors) = check(
            quote!(reduce = "sum", signal, depends_on("audit")),
            quote!(
                async fn sum(total: &u32) -> anyhow::Result<u32> {}
            ),
        );
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("a step cannot reduce its own output"));
        assert!(errors[1].starts_with("a reducer does not wait for a signal"));
        assert!(errors[2].starts_with("a reducer takes its accumulator by value"));
        assert!(errors[3].starts_with("a reducer takes its accumulator, which starts"));
        assert!(errors[4].ends_with("add `ignore_output(\"audit\")`"));
    }
}
