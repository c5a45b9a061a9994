//! Checks of a flow definition made before any SQL runs. `cb_create_flow`
//! makes the same checks for SQL callers.

use std::collections::{HashMap, HashSet};

use super::{FlowDef, MapSource, StepDef, StepKind};
use crate::error::Error;
use crate::names::validate_name;
use crate::payload::check_text;

fn invalid(flow: &str, message: String) -> Error {
    Error::InvalidArgument(format!("invalid flow \"{flow}\": {message}"))
}

/// The first path segment a step's condition reads: `input`, `signal` or a
/// step. A malformed condition is an error naming the flow and the step.
fn condition_root(flow: &str, step: &str, condition: &str) -> Result<String, Error> {
    crate::condition::Condition::parse(condition)
        .map(|parsed| parsed.root().to_owned())
        .map_err(|error| {
            invalid(
                flow,
                format!("the condition of step \"{step}\" is invalid: {error}"),
            )
        })
}

/// Checks the kind rules. A mapper's or reducer's source is another step
/// and one of its dependencies, required and not ignored. A reducer's source
/// is a mapper or generator.
fn check_kind(flow: &FlowDef, step: &StepDef) -> Result<(), Error> {
    let (source, verb) = match &step.kind {
        StepKind::Map(MapSource::Step(source)) => (source, "maps"),
        StepKind::Reduce(source) => (source, "reduces"),
        StepKind::Normal | StepKind::Generator | StepKind::Map(MapSource::Input) => return Ok(()),
    };
    let name = &flow.name;
    if *source == step.name {
        return Err(invalid(
            name,
            format!("step \"{}\" {verb} its own output", step.name),
        ));
    }
    let Some(target) = flow.steps.iter().find(|other| other.name == *source) else {
        return Err(invalid(
            name,
            format!(
                "step \"{}\" {verb} \"{source}\", which is not a step of the flow",
                step.name
            ),
        ));
    };
    let Some(dependency) = step.depends_on.iter().find(|d| d.name == *source) else {
        return Err(invalid(
            name,
            format!(
                "step \"{}\" {verb} \"{source}\", which is not one of its dependencies; add it to depends_on",
                step.name
            ),
        ));
    };
    if dependency.ignore_output {
        return Err(invalid(
            name,
            format!(
                "step \"{}\" ignores the output of \"{source}\", the step it {verb}",
                step.name
            ),
        ));
    }
    match &step.kind {
        StepKind::Map(_) if dependency.optional => Err(invalid(
            name,
            format!(
                "step \"{}\" maps \"{source}\", declared optional; a map source must be a required dependency",
                step.name
            ),
        )),
        StepKind::Reduce(_) if !target.kind.is_fan_out() => Err(invalid(
            name,
            format!(
                "reducer step \"{}\" reduces \"{source}\", which is not a mapper or generator step",
                step.name
            ),
        )),
        _ => Ok(()),
    }
}

pub(super) fn validate(flow: &FlowDef) -> Result<(), Error> {
    let name = &flow.name;
    validate_name("flow", name)?;
    check_text("description", flow.description.as_deref())?;
    if flow.steps.is_empty() {
        return Err(invalid(name, "a flow needs at least one step".to_owned()));
    }

    let mut names = HashSet::new();
    for step in &flow.steps {
        validate_name("step", &step.name)?;
        check_text("description", step.description.as_deref())?;
        check_text("condition", step.condition.as_deref())?;
        if step.name == "input" || step.name == "signal" {
            return Err(invalid(
                name,
                format!(
                    "step name \"{}\" is reserved (conditions use input.* and signal.*)",
                    step.name
                ),
            ));
        }
        if !names.insert(step.name.as_str()) {
            return Err(invalid(
                name,
                format!("step \"{}\" is defined twice", step.name),
            ));
        }
    }

    let conditional: HashSet<&str> = flow
        .steps
        .iter()
        .filter(|step| {
            step.condition
                .as_deref()
                .is_some_and(|c| !c.trim().is_empty())
        })
        .map(|step| step.name.as_str())
        .collect();

    for step in &flow.steps {
        check_kind(flow, step)?;
        let mut seen = HashSet::new();
        for dependency in &step.depends_on {
            if dependency.name == step.name {
                return Err(invalid(
                    name,
                    format!("step \"{}\" depends on itself", step.name),
                ));
            }
            if !names.contains(dependency.name.as_str()) {
                return Err(invalid(
                    name,
                    format!(
                        "step \"{}\" depends on \"{}\", which is not a step of the flow",
                        step.name, dependency.name
                    ),
                ));
            }
            if !seen.insert(dependency.name.as_str()) {
                return Err(invalid(
                    name,
                    format!(
                        "step \"{}\" lists the dependency \"{}\" twice",
                        step.name, dependency.name
                    ),
                ));
            }
            let reduced =
                matches!(&step.kind, StepKind::Reduce(source) if *source == dependency.name);
            let mapped = matches!(&step.kind, StepKind::Map(MapSource::Step(source)) if *source == dependency.name);
            if mapped && conditional.contains(dependency.name.as_str()) {
                return Err(invalid(
                    name,
                    format!(
                        "step \"{}\" maps \"{}\", which has a condition and may be skipped; \
                         a map source cannot be skipped",
                        step.name, dependency.name
                    ),
                ));
            }
            if conditional.contains(dependency.name.as_str())
                && !dependency.optional
                && !dependency.ignore_output
                && !reduced
            {
                return Err(invalid(
                    name,
                    format!(
                        "step \"{}\" depends on \"{}\", which has a condition and may be skipped; \
                         declare the dependency optional",
                        step.name, dependency.name
                    ),
                ));
            }
        }

        if let Some(condition) = step.condition.as_deref().filter(|c| !c.trim().is_empty()) {
            let root = condition_root(name, &step.name, condition)?;
            let dependency = step
                .depends_on
                .iter()
                .find(|dependency| dependency.name == root);
            if root == "signal" && !step.signal {
                return Err(invalid(
                    name,
                    format!(
                        "the condition of step \"{}\" reads signal.*, but the step does not wait for a signal",
                        step.name
                    ),
                ));
            }
            if root != "input" && root != "signal" {
                match dependency {
                    None => {
                        let listed: Vec<&str> =
                            step.depends_on.iter().map(|d| d.name.as_str()).collect();
                        return Err(invalid(
                            name,
                            format!(
                                "the condition of step \"{}\" reads \"{root}\", which is not one of its dependencies ({})",
                                step.name,
                                if listed.is_empty() {
                                    "none".to_owned()
                                } else {
                                    listed.join(", ")
                                }
                            ),
                        ));
                    }
                    Some(dependency) if dependency.ignore_output => {
                        return Err(invalid(
                            name,
                            format!(
                                "the condition of step \"{}\" reads \"{root}\", whose output the step ignores",
                                step.name
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }

    if let Some(cycle) = find_cycle(flow) {
        return Err(invalid(
            name,
            format!("the dependencies form a cycle: {}", cycle.join(" -> ")),
        ));
    }

    let depended_on: HashSet<&str> = flow
        .steps
        .iter()
        .flat_map(|step| step.depends_on.iter().map(|d| d.name.as_str()))
        .collect();
    if let Some(priority) = &flow.output_priority {
        if priority.is_empty() {
            return Err(invalid(
                name,
                "output_priority is empty; omit it to use the final steps".to_owned(),
            ));
        }
        let mut listed = HashSet::new();
        for entry in priority {
            if !names.contains(entry.as_str()) {
                return Err(invalid(
                    name,
                    format!("output_priority names \"{entry}\", which is not a step"),
                ));
            }
            if !listed.insert(entry.as_str()) {
                return Err(invalid(
                    name,
                    "output_priority lists a step twice".to_owned(),
                ));
            }
        }
        for step in &flow.steps {
            if !depended_on.contains(step.name.as_str()) && !listed.contains(step.name.as_str()) {
                return Err(invalid(
                    name,
                    format!(
                        "output_priority must include every final step; \"{}\" is missing",
                        step.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Returns one dependency cycle as a path that ends where it starts.
fn find_cycle(flow: &FlowDef) -> Option<Vec<String>> {
    let dependencies: HashMap<&str, Vec<&str>> = flow
        .steps
        .iter()
        .map(|step| {
            (
                step.name.as_str(),
                step.depends_on.iter().map(|d| d.name.as_str()).collect(),
            )
        })
        .collect();

    // Depth-first search with colours: grey nodes are on the current path.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour: HashMap<&str, Colour> = dependencies
        .keys()
        .map(|name| (*name, Colour::White))
        .collect();

    fn visit<'a>(
        node: &'a str,
        dependencies: &HashMap<&'a str, Vec<&'a str>>,
        colour: &mut HashMap<&'a str, Colour>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        colour.insert(node, Colour::Grey);
        path.push(node);
        for &next in dependencies
            .get(node)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            match colour.get(next).copied() {
                Some(Colour::Grey) => {
                    let start = path.iter().position(|n| *n == next).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|n| (*n).to_owned()).collect();
                    cycle.push(next.to_owned());
                    return Some(cycle);
                }
                Some(Colour::White) => {
                    if let Some(cycle) = visit(next, dependencies, colour, path) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        colour.insert(node, Colour::Black);
        None
    }

    for step in &flow.steps {
        if colour.get(step.name.as_str()) == Some(&Colour::White) {
            let mut path = Vec::new();
            if let Some(cycle) = visit(step.name.as_str(), &dependencies, &mut colour, &mut path) {
                return Some(cycle);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::{FlowDef, StepDef};

    fn error_of(flow: FlowDef) -> String {
        flow.validate().unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_diamond() {
        FlowDef::new("order")
            .step(StepDef::new("validate"))
            .step(StepDef::new("charge").depends_on("validate"))
            .step(StepDef::new("stock").depends_on("validate"))
            .step(
                StepDef::new("ship")
                    .depends_on("charge")
                    .depends_on("stock"),
            )
            .validate()
            .unwrap();
    }

    #[test]
    fn accepts_dependencies_defined_later() {
        FlowDef::new("f")
            .step(StepDef::new("b").depends_on("a"))
            .step(StepDef::new("a"))
            .validate()
            .unwrap();
    }

    #[test]
    fn names_the_cycle() {
        let error = error_of(
            FlowDef::new("f")
                .step(StepDef::new("a").depends_on("c"))
                .step(StepDef::new("b").depends_on("a"))
                .step(StepDef::new("c").depends_on("b")),
        );
        assert!(
            error.ends_with("the dependencies form a cycle: a -> c -> b -> a"),
            "{error}"
        );
    }

    #[test]
    fn rejects_unknown_dependency() {
        let error = error_of(FlowDef::new("f").step(StepDef::new("a").depends_on("zz")));
        assert!(
            error.contains("step \"a\" depends on \"zz\", which is not a step of the flow"),
            "{error}"
        );
    }

    #[test]
    fn rejects_duplicate_step() {
        let error = error_of(
            FlowDef::new("f")
                .step(StepDef::new("a"))
                .step(StepDef::new("a")),
        );
        assert!(error.contains("step \"a\" is defined twice"), "{error}");
    }

    #[test]
    fn rejects_reserved_step_names() {
        for reserved in ["input", "signal"] {
            let error = error_of(FlowDef::new("f").step(StepDef::new(reserved)));
            assert!(error.contains("is reserved"), "{error}");
        }
    }

    #[test]
    fn rejects_invalid_step_name() {
        let error = error_of(FlowDef::new("f").step(StepDef::new("Bad-Name")));
        assert!(error.contains("invalid step name \"Bad-Name\""), "{error}");
    }

    #[test]
    fn rejects_empty_flow() {
        assert!(error_of(FlowDef::new("f")).contains("at least one step"));
    }

    #[test]
    fn rejects_condition_on_a_step_that_is_not_a_dependency() {
        let error = error_of(
            FlowDef::new("f")
                .step(StepDef::new("a"))
                .step(StepDef::new("b").condition("a.ok eq true")),
        );
        assert!(
            error.contains("reads \"a\", which is not one of its dependencies (none)"),
            "{error}"
        );
    }

    #[test]
    fn rejects_required_dependency_on_a_conditional_step() {
        let error = error_of(
            FlowDef::new("f")
                .step(StepDef::new("a").condition("input.x gt 1"))
                .step(StepDef::new("b").depends_on("a")),
        );
        assert!(error.contains("declare the dependency optional"), "{error}");
    }

    #[test]
    fn accepts_optional_dependency_on_a_conditional_step() {
        FlowDef::new("f")
            .step(StepDef::new("a").condition("input.x gt 1"))
            .step(StepDef::new("b").depends_on_optional("a"))
            .validate()
            .unwrap();
    }

    #[test]
    fn malformed_condition_names_the_flow_and_step() {
        let error = error_of(FlowDef::new("f").step(StepDef::new("a").condition("not")));
        assert!(
            error.contains("invalid flow \"f\": the condition of step \"a\" is invalid"),
            "{error}"
        );
    }

    #[test]
    fn rejects_signal_condition_without_signal() {
        let error = error_of(FlowDef::new("f").step(StepDef::new("a").condition("signal.ok")));
        assert!(error.contains("does not wait for a signal"), "{error}");
    }

    #[test]
    fn output_priority_must_name_steps_and_cover_final_steps() {
        let base = || {
            FlowDef::new("f")
                .step(StepDef::new("a"))
                .step(StepDef::new("b"))
        };
        assert!(
            error_of(base().output_priority(["zz", "a", "b"]))
                .contains("\"zz\", which is not a step")
        );
        assert!(error_of(base().output_priority(["a"])).contains("\"b\" is missing"));
        assert!(error_of(base().output_priority(["a", "a", "b"])).contains("twice"));
        assert!(error_of(base().output_priority(Vec::<String>::new())).contains("empty"));
        base().output_priority(["b", "a"]).validate().unwrap();
    }
}
