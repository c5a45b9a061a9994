//! The naming rule for queues, tasks, flows and steps.

use crate::error::{Error, NameRule};

/// The maximum length of a name. Catbird stores each task in a table named
/// `cb_t_<name>`, and PostgreSQL identifiers hold at most 63 bytes.
pub const MAX_NAME_LEN: usize = 58;

/// Checks that `name` is 1 to 58 characters of `a-z`, `0-9` and `_`.
/// Upper-case letters are rejected, not folded. `kind` ("queue", "task", ...)
/// appears in the error.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), Error> {
    let rule = if name.is_empty() {
        Some(NameRule::Empty)
    } else if name.len() > MAX_NAME_LEN {
        Some(NameRule::TooLong)
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Some(NameRule::InvalidCharacter)
    } else {
        None
    };

    match rule {
        None => Ok(()),
        Some(rule) => Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            rule,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_of(name: &str) -> Option<NameRule> {
        match validate_name("queue", name) {
            Ok(()) => None,
            Err(Error::InvalidName { rule, .. }) => Some(rule),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn accepts_lowercase_digits_and_underscore() {
        for name in ["a", "jobs", "send_email", "q1", "_", "0", &"x".repeat(58)] {
            assert_eq!(rule_of(name), None, "{name}");
        }
    }

    #[test]
    fn rejects_empty_name() {
        assert_eq!(rule_of(""), Some(NameRule::Empty));
    }

    #[test]
    fn rejects_names_over_58_characters() {
        assert_eq!(rule_of(&"x".repeat(59)), Some(NameRule::TooLong));
    }

    #[test]
    fn rejects_uppercase_hyphen_and_other_characters() {
        for name in ["Jobs", "send-email", "a.b", "a b", "é", "a\0"] {
            assert_eq!(rule_of(name), Some(NameRule::InvalidCharacter), "{name:?}");
        }
    }

    #[test]
    fn error_names_value_and_rule() {
        let error = validate_name("queue", "my-queue").unwrap_err();
        assert_eq!(
            error.to_string(),
            "catbird: invalid queue name \"my-queue\": may only contain a-z, 0-9 and _"
        );
    }
}
