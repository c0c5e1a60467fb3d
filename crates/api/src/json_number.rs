//! Unsigned integers read from JSON: decimal strings (any width the field has) and JSON numbers
//! that are whole (`7`, `7.0`, `7e2`: what JSON Schema counts as integers, so a value the
//! document allows is never refused for its spelling), up to `JSON_INTEGER_MAX`.
//!
//! Owns these readers and the `serde(with = …)` modules the JSON types use; must not know the
//! types themselves (they are in `json`).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::value::RawValue;

/// The widest value a ledger integer may be given as a JSON number rather than a string: most
/// JSON readers cannot hold a wider one exactly, and the document states this bound.
pub const JSON_INTEGER_MAX: u64 = u64::MAX;

/// A JSON number's exponent beyond which no whole number fits 128 bits (or the number is 0).
const EXPONENT_MAX: i64 = 40;

/// Reads the decimal text of an unsigned integer of at most `bits` bits: ASCII digits only
/// (leading zeros allowed), no sign, no spaces, not empty. The one reader of decimal texts, for
/// bodies, paths and queries alike; `schema::decimal_pattern` describes exactly what it accepts.
pub fn parse_decimal(digits: &str, bits: u32) -> Result<u128, String> {
    if digits.starts_with('-') {
        return Err(format!(
            "{digits} is negative; it must be an unsigned integer"
        ));
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{digits:?} is not an unsigned integer (give decimal digits only)"
        ));
    }
    let value: u128 = digits
        .parse()
        .map_err(|_| format!("{digits} does not fit in {bits} bits"))?;
    if bits < 128 && value >> bits != 0 {
        return Err(format!("{digits} does not fit in {bits} bits"));
    }
    Ok(value)
}

/// Reads the text of a JSON number (valid JSON syntax, as serde_json checked it) that is a
/// whole number of at most `bits` bits: `7`, `7.0`, `7e2`, `70e-1`, `-0`.
pub fn whole_number(text: &str, bits: u32) -> Result<u128, String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent),
        None => (unsigned, "0"),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(format!(
            "{text} is negative; it must be an unsigned integer"
        ));
    }
    let exponent: i64 = exponent
        .parse::<i64>()
        .ok()
        .filter(|e| e.abs() <= EXPONENT_MAX)
        .ok_or_else(|| format!("{text} is not a whole number of at most {bits} bits"))?
        - fraction.len() as i64;
    let value = if exponent >= 0 {
        format!("{significant}{}", "0".repeat(exponent as usize))
    } else {
        let cut = significant
            .len()
            .saturating_sub(exponent.unsigned_abs() as usize);
        let (kept, dropped) = significant.split_at(cut);
        if dropped.len() < exponent.unsigned_abs() as usize || dropped.bytes().any(|b| b != b'0') {
            return Err(format!("{text} has a fraction; give a whole number"));
        }
        kept.to_string()
    };
    parse_decimal(&value, bits)
}

/// Parses an unsigned integer given as a JSON number that is whole and at most `number_max`,
/// or (when `strings`) as a decimal string of any width up to `bits` bits.
fn parse_unsigned<'de, D: Deserializer<'de>>(
    deserializer: D,
    bits: u32,
    strings: bool,
) -> Result<u128, D::Error> {
    let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
    let text = raw.get().trim();
    if let Some(digits) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        if !strings {
            return Err(D::Error::custom(format!(
                "{text} is a string; give a JSON integer"
            )));
        }
        return parse_decimal(digits, bits).map_err(D::Error::custom);
    }
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(D::Error::custom(format!(
            "{text} is not an unsigned integer (give a JSON integer{})",
            if strings { " or a decimal string" } else { "" }
        )));
    }
    let value = whole_number(text, bits).map_err(D::Error::custom)?;
    if value > u128::from(JSON_INTEGER_MAX) {
        return Err(D::Error::custom(format!(
            "{text} is above {JSON_INTEGER_MAX}; give a wider integer as a decimal string"
        )));
    }
    Ok(value)
}

/// `u128` as a decimal string; accepts strings and integers.
pub mod u128_text {
    use super::*;
    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        parse_unsigned(deserializer, 128, true)
    }
}

/// `u64` as a decimal string; accepts strings and integers.
pub mod u64_text {
    use super::*;
    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        parse_unsigned(deserializer, 64, true).map(|v| v as u64)
    }
}

/// `u32` as a JSON integer; accepts whole JSON numbers (`7.0`), not strings.
pub mod u32_number {
    use super::*;
    pub fn serialize<S: Serializer>(value: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(*value)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        parse_unsigned(deserializer, 32, false).map(|v| v as u32)
    }
}

/// `u16` as a JSON integer; accepts whole JSON numbers (`7.0`), not strings.
pub mod u16_number {
    use super::*;
    pub fn serialize<S: Serializer>(value: &u16, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(*value)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
        parse_unsigned(deserializer, 16, false).map(|v| v as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_json_number_is_read_in_any_spelling_and_a_fraction_is_refused() {
        for (text, value) in [
            ("7", 7),
            ("7.0", 7),
            ("7.000", 7),
            ("7e2", 700),
            ("7E+2", 700),
            ("70e-1", 7),
            ("1.5e1", 15),
            ("0", 0),
            ("-0", 0),
            ("-0.0", 0),
            ("0e999", 0),
            ("18446744073709551615", u64::MAX.into()),
        ] {
            assert_eq!(whole_number(text, 64), Ok(value), "{text}");
        }
        for (text, reason) in [
            ("7.5", "fraction"),
            ("75e-2", "fraction"),
            ("1e-1", "fraction"),
            ("-1", "negative"),
            ("-1.0", "negative"),
            ("1e41", "whole number of at most 64 bits"),
            ("18446744073709551616", "does not fit in 64 bits"),
            ("1.8446744073709552e19", "does not fit in 64 bits"),
        ] {
            let error = whole_number(text, 64).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
