//! Path resolution and the operator semantics, matching PostgreSQL's jsonb
//! operators `#>`, `=`, `@>` and `strpos` as `cb_eval_condition` uses them.
//!
//! Recursion only follows the literal, which nests at most 32 levels, so a
//! deep context cannot exhaust the stack.

use std::cmp::Ordering;

use serde_json::Value;

use super::Operator;
use super::number;

/// Follows `path` from `context`, as jsonb's `#>` does: a segment is an array
/// index when the value is an array and the segment is all digits (leading
/// zeros allowed), else an object key. `None` when the path does not resolve.
pub(super) fn resolve<'a>(context: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = context;
    for segment in path {
        current = match current {
            Value::Object(members) => members.get(segment)?,
            Value::Array(items) if segment.bytes().all(|b| b.is_ascii_digit()) => {
                items.get(segment.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(current)
}

/// Applies `operator` to the resolved field (`None` when missing) and the
/// literal, before negation.
pub(super) fn test(operator: Operator, field: Option<&Value>, literal: Option<&Value>) -> bool {
    let (field, literal) = match (operator, field, literal) {
        (Operator::Exists, field, _) => return field.is_some(),
        (Operator::Ne, None, _) => return true,
        (_, None, _) | (_, _, None) => return false,
        (_, Some(field), Some(literal)) => (field, literal),
    };
    match operator {
        Operator::Eq => json_equal(field, literal),
        Operator::Ne => !json_equal(field, literal),
        Operator::Gt => numeric_order(field, literal) == Some(Ordering::Greater),
        Operator::Gte => numeric_order(field, literal).is_some_and(Ordering::is_ge),
        Operator::Lt => numeric_order(field, literal) == Some(Ordering::Less),
        Operator::Lte => numeric_order(field, literal).is_some_and(Ordering::is_le),
        Operator::In => match literal {
            Value::Array(items) => items.iter().any(|item| json_equal(field, item)),
            _ => false,
        },
        Operator::Contains => match field {
            Value::String(text) => {
                literal_text(literal).is_some_and(|needle| text.contains(&needle))
            }
            Value::Array(_) | Value::Object(_) => json_contains(field, literal),
            _ => false,
        },
        Operator::Exists => true,
    }
}

fn numeric_order(field: &Value, literal: &Value) -> Option<Ordering> {
    match (field, literal) {
        (Value::Number(a), Value::Number(b)) => Some(number::compare(a, b)),
        _ => None,
    }
}

/// Returns the text `contains` looks for in a string field. An array literal
/// has none, because its JSON text has no canonical spelling.
fn literal_text(literal: &Value) -> Option<String> {
    match literal {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(number::plain_text(n)),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

/// JSON equality with numbers compared by value, as jsonb's `=`.
pub(super) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => number::compare(x, y) == Ordering::Equal,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, p)| y.get(key).is_some_and(|q| json_equal(p, q)))
        }
        _ => false,
    }
}

/// Returns jsonb's `container @> item` for an array or object container.
/// An object contains an object item when it has each of the item's keys
/// with an equal scalar, or a container that contains the item's container.
/// An array contains each element of an array item: a scalar as an equal
/// top-level element, a container inside some top-level element of the same
/// kind. An array also contains a scalar item equal to a top-level element.
pub(super) fn json_contains(container: &Value, item: &Value) -> bool {
    match (container, item) {
        (Value::Object(members), Value::Object(wanted)) => wanted.iter().all(|(key, want)| {
            members
                .get(key)
                .is_some_and(|have| match (is_scalar(have), is_scalar(want)) {
                    (true, true) => json_equal(have, want),
                    (false, false) => json_contains(have, want),
                    _ => false,
                })
        }),
        (Value::Array(elements), Value::Array(wanted)) => {
            wanted.iter().all(|want| array_holds(elements, want))
        }
        (Value::Array(elements), scalar) if is_scalar(scalar) => array_holds(elements, scalar),
        _ => false,
    }
}

fn array_holds(elements: &[Value], want: &Value) -> bool {
    if is_scalar(want) {
        elements
            .iter()
            .any(|have| is_scalar(have) && json_equal(have, want))
    } else {
        elements
            .iter()
            .any(|have| !is_scalar(have) && json_contains(have, want))
    }
}
