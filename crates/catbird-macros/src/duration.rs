//! Durations written as strings in attribute arguments: `"500ms"`, `"30s"`,
//! `"10m"`, `"1h"`, `"2d"`, and sums of them such as `"1h30m"`.

use std::fmt;
use std::time::Duration;

/// The units a duration may use, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// The reason a duration string was rejected. Each message completes the
/// sentence `invalid duration "…": `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DurationError {
    /// The string is empty.
    Empty,
    /// A part has no number before its unit, as in `"s"` or `"1h m"`.
    MissingNumber,
    /// A number has no unit after it, as in `"30"`.
    MissingUnit,
    /// A number has a fractional part, as in `"1.5s"`.
    Fraction,
    /// A unit is not one of `ms`, `s`, `m`, `h`, `d`.
    UnknownUnit(String),
    /// The duration does not fit in 64 bits of milliseconds.
    TooLong,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Empty => f.write_str("it is empty"),
            DurationError::MissingNumber => f.write_str("a unit has no number before it"),
            DurationError::MissingUnit => f.write_str("a number has no unit after it"),
            DurationError::Fraction => f.write_str("fractions are not supported"),
            DurationError::UnknownUnit(unit) => write!(f, "unknown unit `{unit}`"),
            DurationError::TooLong => f.write_str("it is too long"),
        }
    }
}

/// Parses `text` as one or more `<integer><unit>` parts, with the units
/// `ms`, `s`, `m`, `h` and `d`. Spaces are not allowed.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }

    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::MissingNumber);
        }
        let (number, after) = rest.split_at(digits);
        if after.starts_with(['.', ',']) {
            return Err(DurationError::Fraction);
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit);
        }
        let Some((_, millis)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit(unit.to_owned()));
        };

        let number: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
        total = number
            .checked_mul(*millis)
            .and_then(|part| total.checked_add(part))
            .ok_or(DurationError::TooLong)?;
        rest = next;
    }
    Ok(Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(text: &str) -> Result<u128, DurationError> {
        parse_duration(text).map(|duration| duration.as_millis())
    }

    #[test]
    fn accepts_every_unit() {
        assert_eq!(millis("500ms"), Ok(500));
        assert_eq!(millis("30s"), Ok(30_000));
        assert_eq!(millis("10m"), Ok(600_000));
        assert_eq!(millis("1h"), Ok(3_600_000));
        assert_eq!(millis("2d"), Ok(172_800_000));
    }

    #[test]
    fn adds_up_several_parts() {
        assert_eq!(millis("1h30m"), Ok(5_400_000));
        assert_eq!(millis("1s500ms"), Ok(1_500));
        assert_eq!(millis("1d1h1m1s1ms"), Ok(90_061_001));
    }

    #[test]
    fn accepts_zero() {
        assert_eq!(millis("0s"), Ok(0));
        assert_eq!(millis("0ms"), Ok(0));
    }

    #[test]
    fn rejects_unknown_units() {
        assert_eq!(
            millis("30sec"),
            Err(DurationError::UnknownUnit("sec".into()))
        );
        assert_eq!(millis("5 s"), Err(DurationError::UnknownUnit(" s".into())));
        assert_eq!(millis("2w"), Err(DurationError::UnknownUnit("w".into())));
        assert_eq!(millis("10M"), Err(DurationError::UnknownUnit("M".into())));
    }

    #[test]
    fn rejects_fractions() {
        assert_eq!(millis("1.5s"), Err(DurationError::Fraction));
        assert_eq!(millis("0,5h"), Err(DurationError::Fraction));
    }

    #[test]
    fn rejects_missing_parts() {
        assert_eq!(millis(""), Err(DurationError::Empty));
        assert_eq!(millis("30"), Err(DurationError::MissingUnit));
        assert_eq!(millis("1h30"), Err(DurationError::MissingUnit));
        assert_eq!(millis("s"), Err(DurationError::MissingNumber));
        assert_eq!(millis("-1s"), Err(DurationError::MissingNumber));
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(millis("99999999999999999999s"), Err(DurationError::TooLong));
        assert_eq!(millis("18446744073709551615d"), Err(DurationError::TooLong));
        assert_eq!(
            millis("18446744073709551615ms1ms"),
            Err(DurationError::TooLong)
        );
    }

    #[test]
    fn messages_read_as_reasons() {
        assert_eq!(
            DurationError::UnknownUnit("sec".into()).to_string(),
            "unknown unit `sec`"
        );
        assert_eq!(
            DurationError::MissingUnit.to_string(),
            "a number has no unit after it"
        );
    }
}
