//! JSON payloads on their way into PostgreSQL.
//!
//! Payloads are serialized once, checked, and sent as jsonb text. PostgreSQL's
//! jsonb cannot store the NUL character, and a jsonb value holds at most
//! 268,435,455 bytes; both are rejected here with an error that names the
//! payload, before any SQL runs, so a bad payload never fails a transaction
//! halfway.

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::error::Error;

/// The largest payload PostgreSQL's jsonb type can hold, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 268_435_455;

/// A JSON document, already serialized and checked, that binds to a `jsonb`
/// or `json` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// Serializes `value` and checks it. `what` names the payload in errors
    /// ("message body", "task input", ...).
    pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Self, Error> {
        let text =
            serde_json::to_string(value).map_err(|source| Error::json_encode(what, source))?;
        if text.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::InvalidPayload {
                what,
                reason: format!(
                    "{} bytes of JSON exceed the maximum of {MAX_PAYLOAD_BYTES} bytes",
                    text.len()
                ),
            });
        }
        if contains_nul_escape(&text) {
            return Err(Error::InvalidPayload {
                what,
                reason: "contains the NUL character (\\u0000), which PostgreSQL jsonb cannot store"
                    .to_owned(),
            });
        }
        Ok(JsonText(text))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Rejects text PostgreSQL cannot store: the NUL character. `what` names the
/// argument in the error ("topic", "concurrency key", ...).
pub(crate) fn check_text(what: &str, value: Option<&str>) -> Result<(), Error> {
    match value {
        Some(text) if text.contains('\0') => Err(Error::InvalidArgument(format!(
            "{what} {text:?} contains the NUL character, which PostgreSQL text cannot store"
        ))),
        _ => Ok(()),
    }
}

/// Checks that per-item keys and headers of a batch, when given, have one
/// entry per item. `items` names the items in the error ("bodies", "inputs").
pub(crate) fn check_batch_lengths(
    items: &str,
    count: usize,
    keys: Option<usize>,
    headers: Option<usize>,
) -> Result<(), Error> {
    if let Some(keys) = keys.filter(|keys| *keys != count) {
        return Err(Error::InvalidArgument(format!(
            "concurrency_keys length must match {items} length ({keys} keys, {count} {items})"
        )));
    }
    if let Some(headers) = headers.filter(|headers| *headers != count) {
        return Err(Error::InvalidArgument(format!(
            "headers length must match {items} length ({headers} headers, {count} {items})"
        )));
    }
    Ok(())
}

/// Reports whether JSON text contains a `\u0000` escape. Valid JSON can only
/// carry NUL that way; an escape is real when the backslash before `u` is
/// itself not escaped, that is when an odd number of backslashes precede `u`.
fn contains_nul_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(offset) = text[from..].find("u0000") {
        let u_at = from + offset;
        let backslashes = bytes[..u_at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = u_at + 1;
    }
    false
}

impl ToSql for JsonText {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // The jsonb binary format is a version byte followed by the text.
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_ordinary_values() {
        let text = JsonText::encode("message body", &json!({"a": [1, "two", null]})).unwrap();
        assert_eq!(text.as_str(), r#"{"a":[1,"two",null]}"#);
    }

    #[test]
    fn rejects_nul_in_string_value() {
        let error = JsonText::encode("message body", &json!({"s": "a\u{0}b"})).unwrap_err();
        assert!(matches!(
            error,
            Error::InvalidPayload {
                what: "message body",
                ..
            }
        ));
        assert!(error.to_string().contains("NUL"), "{error}");
    }

    #[test]
    fn rejects_nul_in_object_key() {
        assert!(JsonText::encode("headers", &json!({"k\u{0}": 1})).is_err());
    }

    #[test]
    fn accepts_escaped_backslash_before_u0000_text() {
        // The string is backslash followed by "u0000": six printable characters.
        let text = JsonText::encode("message body", &json!("\\u0000")).unwrap();
        assert_eq!(text.as_str(), r#""\\u0000""#);
    }

    #[test]
    fn rejects_nul_after_escaped_backslash() {
        // A backslash, then a real NUL.
        assert!(JsonText::encode("message body", &json!("\\\u{0}")).is_err());
    }

    #[test]
    fn null_is_a_valid_payload() {
        assert_eq!(
            JsonText::encode("task input", &()).unwrap().as_str(),
            "null"
        );
    }
}
