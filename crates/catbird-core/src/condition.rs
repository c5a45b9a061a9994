//! The condition language that guards tasks and flow steps.
//!
//! A condition is one comparison of a value in the evaluation context with a
//! literal, optionally negated. There is no AND, OR or parenthesis: compute a
//! derived field upstream instead.
//!
//! ```text
//! condition := [ "not" ] path operator [ literal ]
//!            | [ "not" ] path
//! operator  := eq | ne | gt | gte | lt | lte | in | contains | exists
//! path      := segment { "." segment }
//! segment   := [A-Za-z0-9_]+ [ "[" digits "]" ]
//! literal   := JSON array | true | false | number | JSON string | bare word
//! bare word := [A-Za-z_][A-Za-z0-9_-]*
//! ```
//!
//! Tokens are separated by spaces, tabs, carriage returns or line feeds.
//! After an optional leading `not`, the first token is the path, the second
//! the operator, and the rest of the expression, trimmed, is the literal, so a
//! quoted literal may contain spaces or operator words. `exists` takes no
//! literal; every other operator needs one. A bare path means `path eq true`.
//!
//! `a[0].b` and `a.0.b` are the same path. A segment indexes an array when the
//! value reached so far is an array and the segment is a non-negative integer.
//! Otherwise it is an object key. The first segment is a root of the context:
//! `input`, `signal` or a step name. A path that does not resolve is
//! *missing*; a path that resolves to JSON null exists.
//!
//! Literals: `[...]` is a JSON array (nested at most 32 levels), `true` and
//! `false` are booleans, a decimal number with optional sign, fraction and
//! exponent is a number, `"..."` is a JSON string with escapes, and a bare
//! word is a string, so `null` is the string `"null"`. Anything else, objects
//! included, is rejected. A number written as an integer that fits 64 bits
//! stays exact; any other number becomes the nearest double. A number too
//! large for a double is rejected, and one too small to represent becomes 0.
//!
//! With field value F and literal L:
//!
//! | operator | F present | F missing |
//! |---|---|---|
//! | `eq` | F equals L: JSON equality, numbers by value (`1` equals `1.0`, `"80"` does not equal `80`) | false |
//! | `ne` | F does not equal L | true |
//! | `gt` `gte` `lt` `lte` | numeric comparison; false unless F and L are both numbers | false |
//! | `in` | L must be an array; true when F equals one of its elements | false |
//! | `contains` | F a string: the text of L (a string's content, a number in plain decimal notation, `true` or `false`) occurs in F, and an array L never matches; F an array or object: PostgreSQL's jsonb containment `F @> L` | false |
//! | `exists` | true, even when F is null | false |
//!
//! `not` negates the final result, so `not x gt 5` is true when `x` is the
//! string `"abc"`, and `not validate.valid` is true when `valid` is false or
//! missing.
//!
//! The SQL functions `cb_parse_condition` and `cb_eval_condition` implement
//! the same language, and catbird's integration tests check that both sides
//! agree.
//!
//! ```
//! use catbird_core::condition::Condition;
//! use serde_json::json;
//!
//! let condition = Condition::parse("input.score gte 80").unwrap();
//! assert_eq!(condition.root(), "input");
//! assert!(condition.evaluate(&json!({"input": {"score": 92}})));
//! assert!(!condition.evaluate(&json!({"input": {}})));
//! assert_eq!(
//!     condition.to_json(),
//!     json!({"not": false, "path": ["input", "score"], "op": "gte", "value": 80})
//! );
//! ```

mod eval;
mod number;
mod parse;

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

/// The deepest nesting of arrays and objects a literal may have, counting the
/// outermost array.
pub const MAX_LITERAL_DEPTH: usize = 32;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The field equals the literal.
    Eq,
    /// The field is missing or does not equal the literal.
    Ne,
    /// The field is a number greater than the literal.
    Gt,
    /// The field is a number greater than or equal to the literal.
    Gte,
    /// The field is a number less than the literal.
    Lt,
    /// The field is a number less than or equal to the literal.
    Lte,
    /// The field equals an element of the array literal.
    In,
    /// The field string contains the literal's text, or the field array or
    /// object contains the literal as PostgreSQL's jsonb `@>` defines it.
    Contains,
    /// The field is present, null included.
    Exists,
}

impl Operator {
    /// Every operator, in the order the grammar lists them.
    pub const ALL: [Operator; 9] = [
        Operator::Eq,
        Operator::Ne,
        Operator::Gt,
        Operator::Gte,
        Operator::Lt,
        Operator::Lte,
        Operator::In,
        Operator::Contains,
        Operator::Exists,
    ];

    /// Returns the operator's word in expressions and in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Eq => "eq",
            Operator::Ne => "ne",
            Operator::Gt => "gt",
            Operator::Gte => "gte",
            Operator::Lt => "lt",
            Operator::Lte => "lte",
            Operator::In => "in",
            Operator::Contains => "contains",
            Operator::Exists => "exists",
        }
    }

    /// Looks an operator up by its word. Words are lower case.
    pub fn from_word(word: &str) -> Option<Operator> {
        Operator::ALL.into_iter().find(|op| op.as_str() == word)
    }

    /// Returns whether the operator needs a literal: every operator but `exists`.
    pub fn takes_value(self) -> bool {
        self != Operator::Exists
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed condition.
///
/// Build one with [`Condition::parse`] or [`Condition::from_json`]; both
/// reject conditions that break the grammar, so every `Condition` prints as
/// an expression that parses back to itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    negated: bool,
    path: Vec<String>,
    operator: Operator,
    value: Option<Value>,
}

impl Condition {
    /// Parses an expression such as `input.score gte 80` or
    /// `not validate.valid`.
    pub fn parse(expression: &str) -> Result<Condition, ConditionError> {
        parse::parse_expression(expression).map_err(|problem| ConditionError::Expression {
            expression: expression.to_owned(),
            problem,
        })
    }

    /// Reads the JSON form that [`Condition::to_json`] writes and that the SQL
    /// function `cb_parse_condition` returns.
    pub fn from_json(json: &Value) -> Result<Condition, ConditionError> {
        parse::parse_json(json).map_err(|problem| ConditionError::Json {
            json: json.to_string(),
            problem,
        })
    }

    /// Returns whether the result is negated (a leading `not`).
    pub fn is_negated(&self) -> bool {
        self.negated
    }

    /// Returns the path segments: `a[0].b` gives `["a", "0", "b"]`.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// Returns the first path segment: `input`, `signal` or a step name.
    /// Flows use it to check what a step's condition refers to.
    pub fn root(&self) -> &str {
        &self.path[0]
    }

    /// Returns the operator. A bare path reads as [`Operator::Eq`] with the
    /// literal `true`.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// Returns the literal, absent for `exists`.
    pub fn value(&self) -> Option<&Value> {
        self.value.as_ref()
    }

    /// Evaluates the condition against a context such as
    /// `{"input": ..., "step1": ...}`. Never fails: a type mismatch or a
    /// missing field gives the result the operator table defines.
    pub fn evaluate(&self, context: &Value) -> bool {
        let field = eval::resolve(context, &self.path);
        let result = eval::test(self.operator, field, self.value.as_ref());
        result != self.negated
    }

    /// The canonical JSON form, the one catbird stores:
    /// `{"not": false, "path": ["input", "score"], "op": "gte", "value": 80}`.
    /// `value` is left out for `exists`.
    pub fn to_json(&self) -> Value {
        let mut json = Map::new();
        json.insert("not".to_owned(), Value::Bool(self.negated));
        json.insert(
            "path".to_owned(),
            Value::Array(self.path.iter().cloned().map(Value::String).collect()),
        );
        json.insert(
            "op".to_owned(),
            Value::String(self.operator.as_str().to_owned()),
        );
        if let Some(value) = &self.value {
            json.insert("value".to_owned(), value.clone());
        }
        Value::Object(json)
    }
}

impl FromStr for Condition {
    type Err = ConditionError;

    fn from_str(expression: &str) -> Result<Self, Self::Err> {
        Condition::parse(expression)
    }
}

/// Prints the canonical expression: `a[0]` prints as `a.0`, `x eq true` as
/// the bare path `x`, and a string literal bare when it is a bare word other
/// than `true` or `false`, else as a JSON string.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("not ")?;
        }
        f.write_str(&self.path.join("."))?;
        let value = match &self.value {
            Some(Value::Bool(true)) if self.operator == Operator::Eq => return Ok(()),
            Some(value) => value,
            None => return write!(f, " {}", self.operator),
        };
        write!(f, " {} ", self.operator)?;
        match value {
            Value::String(text)
                if parse::is_bare_word(text) && text != "true" && text != "false" =>
            {
                f.write_str(text)
            }
            other => write!(f, "{other}"),
        }
    }
}

/// Why an expression or a JSON form was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConditionError {
    /// An expression does not parse.
    #[error("invalid condition \"{expression}\": {problem}")]
    Expression {
        /// The whole expression as given.
        expression: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// A JSON form is not a valid condition.
    #[error("invalid condition JSON {json}: {problem}")]
    Json {
        /// The JSON text.
        json: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

impl ConditionError {
    /// Returns what is wrong.
    pub fn problem(&self) -> &Problem {
        match self {
            ConditionError::Expression { problem, .. } | ConditionError::Json { problem, .. } => {
                problem
            }
        }
    }
}

/// What is wrong with a condition. The messages are the ones the SQL
/// function `cb_parse_condition` raises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The expression is empty or only whitespace.
    #[error("expression is empty")]
    Empty,
    /// The expression is only the word `not`.
    #[error("expected a path after \"not\"")]
    MissingPath,
    /// The path token breaks the path grammar.
    #[error(
        "invalid path \"{0}\": expected names of letters, digits and _ joined by dots, \
         each optionally followed by an array index such as [0]"
    )]
    InvalidPath(String),
    /// The path is the single word `not`, which always reads as negation.
    #[error("\"not\" cannot be used as a path")]
    ReservedPath,
    /// The second token is not an operator.
    #[error("unknown operator \"{0}\": expected eq, ne, gt, gte, lt, lte, in, contains or exists")]
    UnknownOperator(String),
    /// An operator other than `exists` has no literal.
    #[error("operator {0} needs a value")]
    MissingValue(Operator),
    /// `exists` was given a literal.
    #[error("operator exists takes no value")]
    UnexpectedValue,
    /// `in` was given a literal that is not an array.
    #[error("operator in needs a JSON array value such as [\"a\", \"b\"]")]
    InNeedsArray,
    /// A literal starting with `[` is not valid JSON.
    #[error("value is not a valid JSON array")]
    InvalidArray,
    /// A literal starting with `"` is not one valid JSON string.
    #[error("value is not a valid JSON string")]
    InvalidString,
    /// A literal nests arrays or objects deeper than [`MAX_LITERAL_DEPTH`].
    #[error("value is nested deeper than 32 levels")]
    TooDeep,
    /// A string in the literal contains the NUL character.
    #[error("value contains the NUL character (\\u0000), which PostgreSQL cannot store")]
    Nul,
    /// A number in the literal exceeds the range of a double.
    #[error("number too large for a double-precision float")]
    NumberTooLarge,
    /// The literal is a JSON object.
    #[error("object values are not supported")]
    ObjectValue,
    /// The literal is none of the accepted forms.
    #[error(
        "invalid value \"{0}\": expected a JSON array, a JSON string in double quotes, \
         a number, true, false or a bare word of letters, digits, _ and -"
    )]
    InvalidValue(String),
    /// A JSON form does not have the expected shape.
    #[error("{0}")]
    InvalidJson(String),
}

#[cfg(test)]
mod tests;
