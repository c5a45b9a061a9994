//! Tokenising expressions, typing literals and reading the JSON form.
//!
//! The checks run in the order the SQL function `cb_parse_condition` runs
//! them, so both report the same problem for the same expression.

use serde::de::IgnoredAny;
use serde_json::Value;

use super::{Condition, MAX_LITERAL_DEPTH, Operator, Problem};

/// Token separators: space, tab, line feed and carriage return, the
/// whitespace of JSON.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Splits `text`, which starts with a non-space, into its first token and
/// the rest with leading spaces removed.
fn split_first(text: &str) -> (&str, &str) {
    match text.find(is_space) {
        Some(at) => (&text[..at], text[at..].trim_start_matches(is_space)),
        None => (text, ""),
    }
}

pub(super) fn parse_expression(expression: &str) -> Result<Condition, Problem> {
    let text = expression.trim_matches(is_space);
    if text.is_empty() {
        return Err(Problem::Empty);
    }

    let (mut token, mut rest) = split_first(text);
    let negated = token == "not";
    if negated {
        if rest.is_empty() {
            return Err(Problem::MissingPath);
        }
        (token, rest) = split_first(rest);
    }
    let path = parse_path(token)?;

    if rest.is_empty() {
        return Ok(Condition {
            negated,
            path,
            operator: Operator::Eq,
            value: Some(Value::Bool(true)),
        });
    }

    let (word, literal) = split_first(rest);
    let operator =
        Operator::from_word(word).ok_or_else(|| Problem::UnknownOperator(word.to_owned()))?;
    let value = match (operator.takes_value(), literal.is_empty()) {
        (false, true) => None,
        (false, false) => return Err(Problem::UnexpectedValue),
        (true, true) => return Err(Problem::MissingValue(operator)),
        (true, false) => Some(parse_literal(literal)?),
    };
    if operator == Operator::In && !matches!(value, Some(Value::Array(_))) {
        return Err(Problem::InNeedsArray);
    }

    Ok(Condition {
        negated,
        path,
        operator,
        value,
    })
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Splits a path token into segments; `a[0].b` gives `["a", "0", "b"]`.
fn parse_path(token: &str) -> Result<Vec<String>, Problem> {
    let invalid = || Problem::InvalidPath(token.to_owned());
    let mut segments = Vec::new();
    for part in token.split('.') {
        let bytes = part.as_bytes();
        let name_end = bytes.iter().take_while(|&&b| is_name_byte(b)).count();
        if name_end == 0 {
            return Err(invalid());
        }
        segments.push(part[..name_end].to_owned());

        let index = &part[name_end..];
        if index.is_empty() {
            continue;
        }
        let digits = index
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(invalid)?;
        segments.push(digits.to_owned());
    }
    if segments == ["not"] {
        return Err(Problem::ReservedPath);
    }
    Ok(segments)
}

/// Types a literal, which is non-empty and has no surrounding spaces.
fn parse_literal(text: &str) -> Result<Value, Problem> {
    if text.starts_with('[') {
        parse_array(text)
    } else if text.starts_with('{') {
        Err(Problem::ObjectValue)
    } else if text.starts_with('"') {
        parse_string(text)
    } else if text == "true" || text == "false" {
        Ok(Value::Bool(text == "true"))
    } else if let Some(json) = number_as_json(text) {
        serde_json::from_str(&json).map_err(|_| Problem::NumberTooLarge)
    } else if is_bare_word(text) {
        Ok(Value::String(text.to_owned()))
    } else {
        Err(Problem::InvalidValue(text.to_owned()))
    }
}

/// Returns whether `text` matches `[A-Za-z_][A-Za-z0-9_-]*`.
pub(super) fn is_bare_word(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| is_name_byte(b) || b == b'-')
}

/// Rewrites a number literal, `[+-]? (digits [. digits?] | . digits)
/// [(e|E) [+-]? digits]`, in JSON syntax: no `+`, no leading zeros, a digit
/// on both sides of the point. Returns `None` for any other text.
fn number_as_json(text: &str) -> Option<String> {
    let (sign, unsigned) = match text.as_bytes().first()? {
        b'-' => ("-", &text[1..]),
        b'+' => ("", &text[1..]),
        _ => ("", text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at..])),
        None => (unsigned, None),
    };
    if let Some(exponent) = exponent {
        let digits = exponent[1..].trim_start_matches(['+', '-']);
        let signs = exponent.len() - 1 - digits.len();
        if signs > 1 || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let (integer, fraction) = match mantissa.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer)
        || !fraction.is_none_or(all_digits)
        || integer.len() + fraction.map_or(0, str::len) == 0
    {
        return None;
    }

    let integer = match integer.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    let fraction = match fraction {
        None => String::new(),
        Some("") => ".0".to_owned(),
        Some(digits) => format!(".{digits}"),
    };
    Some(format!(
        "{sign}{integer}{fraction}{}",
        exponent.unwrap_or_default()
    ))
}

fn parse_string(text: &str) -> Result<Value, Problem> {
    // Syntax first, then the escapes: the order PostgreSQL's json and jsonb
    // input functions find problems in.
    serde_json::from_str::<IgnoredAny>(text).map_err(|_| Problem::InvalidString)?;
    check_escapes(text, Problem::InvalidString)?;
    let string: String = serde_json::from_str(text).map_err(|_| Problem::InvalidString)?;
    Ok(Value::String(string))
}

/// Checks the `\u` escapes of a syntactically valid JSON string token, left
/// to right, as PostgreSQL's jsonb input does. A high surrogate must be
/// followed at once by a low one, and a low one must follow a high one, else
/// the check fails with `invalid`. An escaped NUL fails with [`Problem::Nul`].
fn check_escapes(token: &str, invalid: Problem) -> Result<(), Problem> {
    let mut pending_high = false;
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if pending_high {
                return Err(invalid);
            }
            continue;
        }
        let escape = chars.next();
        if escape != Some('u') {
            if pending_high {
                return Err(invalid);
            }
            continue;
        }
        let hex: String = chars.by_ref().take(4).collect();
        let code = u32::from_str_radix(&hex, 16).map_err(|_| invalid.clone())?;
        match code {
            0xD800..=0xDBFF if pending_high => return Err(invalid),
            0xD800..=0xDBFF => pending_high = true,
            0xDC00..=0xDFFF if !pending_high => return Err(invalid),
            0xDC00..=0xDFFF => pending_high = false,
            _ if pending_high => return Err(invalid),
            0 => return Err(Problem::Nul),
            _ => {}
        }
    }
    // The closing quote ends a pending high surrogate above.
    Ok(())
}

fn parse_array(text: &str) -> Result<Value, Problem> {
    let tokens = scan_json_text(text)?;
    serde_json::from_str::<IgnoredAny>(text).map_err(|_| Problem::InvalidArray)?;
    // Strings and numbers are checked one by one in document order, the
    // order in which `cb_condition_literal` finds them.
    for token in tokens {
        let token_text = &text[token.range];
        match token.kind {
            TokenKind::String => check_escapes(token_text, Problem::InvalidArray)?,
            TokenKind::Number => {
                serde_json::from_str::<Value>(token_text).map_err(|_| Problem::NumberTooLarge)?;
            }
        }
    }
    serde_json::from_str(text).map_err(|_| Problem::InvalidArray)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    String,
    Number,
}

/// A string or number token of JSON text.
#[derive(Debug)]
struct Token {
    kind: TokenKind,
    range: std::ops::Range<usize>,
}

fn is_number_char(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E')
}

/// Checks the nesting depth of JSON text and lists its string and number
/// tokens. Brackets inside strings do not count; a number token starts with
/// `-` or a digit and runs over digits, signs, points and exponent letters.
/// The scan does not validate the text, and returns the same result as the
/// SQL scan in `cb_condition_scan` on invalid text too.
fn scan_json_text(text: &str) -> Result<Vec<Token>, Problem> {
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut string_start = None;
    let mut number_start = None;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if let Some(start) = string_start {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                tokens.push(Token {
                    kind: TokenKind::String,
                    range: start..at + 1,
                });
                string_start = None;
            }
            continue;
        }
        if let Some(start) = number_start {
            if is_number_char(c) {
                continue;
            }
            tokens.push(Token {
                kind: TokenKind::Number,
                range: start..at,
            });
            number_start = None;
        }
        match c {
            '"' => string_start = Some(at),
            '-' | '0'..='9' => number_start = Some(at),
            '[' | '{' => {
                depth += 1;
                if depth > MAX_LITERAL_DEPTH {
                    return Err(Problem::TooDeep);
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if let Some(start) = number_start {
        tokens.push(Token {
            kind: TokenKind::Number,
            range: start..text.len(),
        });
    }
    Ok(tokens)
}

/// Reads the JSON form, checking it as strictly as the expression grammar.
pub(super) fn parse_json(json: &Value) -> Result<Condition, Problem> {
    let object = json
        .as_object()
        .ok_or_else(|| Problem::InvalidJson("expected a JSON object".to_owned()))?;
    if let Some(key) = object
        .keys()
        .find(|key| !["not", "path", "op", "value"].contains(&key.as_str()))
    {
        return Err(Problem::InvalidJson(format!(
            "unexpected field \"{key}\": the fields are not, path, op and value"
        )));
    }

    let negated = object
        .get("not")
        .and_then(Value::as_bool)
        .ok_or_else(|| Problem::InvalidJson("field \"not\" must be true or false".to_owned()))?;

    let path_error =
        Problem::InvalidJson("field \"path\" must be a non-empty array of strings".to_owned());
    let segments = object
        .get("path")
        .and_then(Value::as_array)
        .filter(|segments| !segments.is_empty())
        .ok_or_else(|| path_error.clone())?;
    let mut path = Vec::with_capacity(segments.len());
    for segment in segments {
        let segment = segment.as_str().ok_or_else(|| path_error.clone())?;
        if segment.is_empty() || !segment.bytes().all(is_name_byte) {
            return Err(Problem::InvalidPath(segment.to_owned()));
        }
        path.push(segment.to_owned());
    }
    if path == ["not"] {
        return Err(Problem::ReservedPath);
    }

    let operator = object
        .get("op")
        .and_then(Value::as_str)
        .and_then(Operator::from_word)
        .ok_or_else(|| {
            Problem::InvalidJson(
                "field \"op\" must be one of eq, ne, gt, gte, lt, lte, in, contains and exists"
                    .to_owned(),
            )
        })?;

    let value = object.get("value").cloned();
    match (&value, operator) {
        (None, Operator::Exists) => {}
        (Some(_), Operator::Exists) => return Err(Problem::UnexpectedValue),
        (None, operator) => return Err(Problem::MissingValue(operator)),
        (Some(value), operator) => {
            check_literal(value, 1)?;
            if operator == Operator::In && !value.is_array() {
                return Err(Problem::InNeedsArray);
            }
        }
    }

    Ok(Condition {
        negated,
        path,
        operator,
        value,
    })
}

/// Checks that a literal from the JSON form is one an expression can write:
/// not null or an object at the top, no NUL, nested at most
/// [`MAX_LITERAL_DEPTH`] levels.
fn check_literal(value: &Value, depth: usize) -> Result<(), Problem> {
    match value {
        Value::Null if depth == 1 => Err(Problem::InvalidJson(
            "field \"value\" must not be null; the bare word null is the string \"null\""
                .to_owned(),
        )),
        Value::Object(_) if depth == 1 => Err(Problem::ObjectValue),
        Value::String(text) if text.contains('\0') => Err(Problem::Nul),
        Value::Array(_) | Value::Object(_) if depth > MAX_LITERAL_DEPTH => Err(Problem::TooDeep),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_literal(item, depth + 1)),
        Value::Object(members) => members.iter().try_for_each(|(key, item)| {
            if key.contains('\0') {
                return Err(Problem::Nul);
            }
            check_literal(item, depth + 1)
        }),
        _ => Ok(()),
    }
}
