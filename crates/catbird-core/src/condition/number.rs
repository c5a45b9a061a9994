//! Exact comparison and text of JSON numbers.
//!
//! PostgreSQL reads every JSON number as an exact decimal (`numeric`).
//! serde_json stores a 64-bit integer or a double, and writes a double as its
//! shortest round-trip decimal. Comparing the decimals serde_json writes,
//! exactly, gives the results PostgreSQL gives for the same JSON text: `1`
//! equals `1.0`, and the integer 2^60 + 4 is greater than the double 2^60,
//! whose text is `1.152921504606847e18`.
//!
//! NOTE: a context number with more digits than a double keeps, written by
//! another client, is rounded when serde_json reads it, so it can compare
//! differently here than in `cb_eval_condition`.

use std::cmp::Ordering;

use serde_json::Number;

/// A decimal `0.d1 d2 d3... × 10^exponent`, with no leading or trailing zero
/// digit. Zero has no digits and is never negative.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    /// Reads the text serde_json writes for a number: an optional `-`,
    /// digits with an optional fraction, and an optional exponent.
    fn of(number: &Number) -> Decimal {
        let text = number.to_string();
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (
                &unsigned[..at],
                // A double's exponent is at most a few hundred.
                unsigned[at + 1..].parse::<i64>().unwrap_or(0),
            ),
            None => (unsigned, 0),
        };
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));

        let mut digits: Vec<u8> = integer.bytes().chain(fraction.bytes()).collect();
        let mut point = integer.len() as i64 + exponent;
        let leading_zeros = digits.iter().take_while(|&&d| d == b'0').count();
        digits.drain(..leading_zeros);
        point -= leading_zeros as i64;
        while digits.last() == Some(&b'0') {
            digits.pop();
        }

        if digits.is_empty() {
            return Decimal {
                negative: false,
                digits,
                exponent: 0,
            };
        }
        Decimal {
            negative,
            digits,
            exponent: point,
        }
    }

    fn sign(&self) -> i8 {
        match (self.digits.is_empty(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }

    /// Formats the value in plain decimal notation, without exponent or
    /// trailing zeros, as PostgreSQL prints `trim_scale(x::numeric)`.
    fn plain_text(&self) -> String {
        if self.digits.is_empty() {
            return "0".to_owned();
        }
        let digits = String::from_utf8_lossy(&self.digits);
        let length = self.digits.len() as i64;
        let sign = if self.negative { "-" } else { "" };
        if self.exponent <= 0 {
            let zeros = "0".repeat(self.exponent.unsigned_abs() as usize);
            format!("{sign}0.{zeros}{digits}")
        } else if self.exponent >= length {
            let zeros = "0".repeat((self.exponent - length) as usize);
            format!("{sign}{digits}{zeros}")
        } else {
            let (integer, fraction) = digits.split_at(self.exponent as usize);
            format!("{sign}{integer}.{fraction}")
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_sign = self.sign().cmp(&other.sign());
        if by_sign != Ordering::Equal || self.sign() == 0 {
            return by_sign;
        }
        let by_magnitude = self
            .exponent
            .cmp(&other.exponent)
            .then_with(|| self.digits.cmp(&other.digits));
        if self.negative {
            by_magnitude.reverse()
        } else {
            by_magnitude
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two JSON numbers by value.
pub(super) fn compare(a: &Number, b: &Number) -> Ordering {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.cmp(&y);
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x.cmp(&y);
    }
    if a.is_f64() && b.is_f64() {
        // Distinct doubles have distinct shortest texts in the same order,
        // and serde_json numbers are never NaN.
        if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
            return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
        }
    }
    Decimal::of(a).cmp(&Decimal::of(b))
}

/// Formats a number in plain decimal notation: `1500` for `1.5e3` and for
/// `1500.0`, `0.00000015` for `1.5e-7`, `0` for `-0.0`.
pub(super) fn plain_text(number: &Number) -> String {
    Decimal::of(number).plain_text()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Number {
        serde_json::from_str(text).expect("a JSON number")
    }

    #[test]
    fn integer_equals_float_of_same_value() {
        assert_eq!(compare(&number("1"), &number("1.0")), Ordering::Equal);
        assert_eq!(compare(&number("-0.0"), &number("0")), Ordering::Equal);
        assert_eq!(compare(&number("100"), &number("1e2")), Ordering::Equal);
    }

    #[test]
    fn orders_across_integer_and_float() {
        assert_eq!(compare(&number("2"), &number("1.5")), Ordering::Greater);
        assert_eq!(compare(&number("-2"), &number("-1.5")), Ordering::Less);
        assert_eq!(compare(&number("-1"), &number("0.5")), Ordering::Less);
        assert_eq!(
            compare(&number("18446744073709551615"), &number("-1")),
            Ordering::Greater
        );
    }

    #[test]
    fn large_integer_compares_with_shortest_float_text() {
        // 2^60 as a double prints as 1152921504606847000.
        let double = Number::from_f64(2f64.powi(60)).unwrap();
        assert_eq!(
            compare(&number("1152921504606846980"), &double),
            Ordering::Less
        );
        assert_eq!(
            compare(&number("1152921504606847000"), &double),
            Ordering::Equal
        );
    }

    #[test]
    fn floats_compare_numerically() {
        assert_eq!(compare(&number("0.1"), &number("0.2")), Ordering::Less);
        assert_eq!(
            compare(&number("1e300"), &number("1e-300")),
            Ordering::Greater
        );
        assert_eq!(
            compare(&number("-1e300"), &number("-1e-300")),
            Ordering::Less
        );
    }

    #[test]
    fn plain_text_has_no_exponent_or_trailing_zeros() {
        let cases = [
            ("1500.0", "1500"),
            ("1.5e3", "1500"),
            ("1.5e-7", "0.00000015"),
            ("-1.50", "-1.5"),
            ("-0.0", "0"),
            ("0", "0"),
            ("42", "42"),
            ("1e20", "100000000000000000000"),
            ("123.456", "123.456"),
        ];
        for (input, expected) in cases {
            assert_eq!(plain_text(&number(input)), expected, "{input}");
        }
    }
}
