//! JSON Schemas of the wire's scalar encodings, for the OpenAPI document: decimal strings of
//! bounded value ([`decimal_pattern`], exact to the last digit, so a document and the parser in
//! [`crate::json`] accept the same texts), and, with the `openapi` feature, the named schemas
//! (`U128`, `U64`, …) that the JSON types' fields refer to.
//!
//! Owns how a scalar is described; must not parse anything (the parsers are in `json`) nor know
//! of routes.

/// A regular expression (ECMA-262 and Rust `regex` alike) matching exactly the decimal texts of
/// the integers from 0 (or 1, when `nonzero`) to `max`: digits only, leading zeros allowed, no
/// sign, no spaces. `parse_decimal` accepts exactly these texts for that range.
pub fn decimal_pattern(nonzero: bool, max: u128) -> String {
    assert!(max >= 1 || !nonzero, "no nonzero integer is at most 0");
    let digits: Vec<u8> = max.to_string().bytes().map(|b| b - b'0').collect();
    let len = digits.len();
    let mut branches = Vec::new();
    if !nonzero {
        branches.push("0".to_string());
    }
    // Every number with fewer digits than `max`.
    if len >= 2 {
        branches.push(format!("[1-9]{}", any_digits(0, len - 2)));
    }
    // Numbers with as many digits: equal to `max` up to position `i`, smaller there.
    for i in 0..len {
        let lowest = if i == 0 { 1 } else { 0 };
        if digits[i] > lowest {
            let prefix: String = digits[..i].iter().map(|d| char::from(b'0' + d)).collect();
            branches.push(format!(
                "{prefix}{}{}",
                digit_class(lowest, digits[i] - 1),
                any_digits(len - i - 1, len - i - 1)
            ));
        }
    }
    if max >= 1 {
        branches.push(max.to_string());
    }
    format!("^0*({})$", branches.join("|"))
}

fn digit_class(low: u8, high: u8) -> String {
    if low == high {
        char::from(b'0' + low).to_string()
    } else {
        format!("[{low}-{high}]")
    }
}

/// `[0-9]` repeated from `min` to `max` times.
fn any_digits(min: usize, max: usize) -> String {
    match (min, max) {
        (_, 0) => String::new(),
        (1, 1) => "[0-9]".into(),
        (min, max) if min == max => format!("[0-9]{{{min}}}"),
        (min, max) => format!("[0-9]{{{min},{max}}}"),
    }
}

#[cfg(feature = "openapi")]
pub use named::*;

#[cfg(feature = "openapi")]
mod named {
    use super::decimal_pattern;
    use utoipa::openapi::schema::{
        AnyOfBuilder, Array, ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, Type,
    };
    use utoipa::openapi::{Ref, RefOr};
    use utoipa::{PartialSchema, ToSchema};

    use crate::json::{AccountJson, TransferJson};

    use crate::json::JSON_INTEGER_MAX;

    /// A whole number from `min` to `max` as a JSON integer.
    pub fn integer(min: u64, max: u64, description: &str) -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(min as usize))
            .maximum(Some(max as usize))
            .description(Some(description))
            .into()
    }

    /// A decimal string of `decimal_pattern(nonzero, max)`.
    pub fn decimal_string(nonzero: bool, max: u128, description: &str) -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(decimal_pattern(nonzero, max)))
            .description(Some(description))
            .into()
    }

    /// A ledger integer of up to `bits` bits as a request may give it: a decimal string, or a
    /// JSON integer up to 2^64-1. Answers always give the string.
    fn string_or_integer(bits: u32, description: &str) -> RefOr<Schema> {
        let max = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        let integer_max = u128::from(JSON_INTEGER_MAX).min(max) as u64;
        AnyOfBuilder::new()
            .item(decimal_string(false, max, "decimal digits"))
            .item(integer(0, integer_max, "a JSON integer"))
            .description(Some(description))
            .into()
    }

    /// A schema named after a unit struct, with what it refers to (`$refers_to`).
    macro_rules! named_schema {
        ($(#[$doc:meta])* $name:ident, $schema:expr) => {
            named_schema!($(#[$doc])* $name, $schema, |_| {});
        };
        ($(#[$doc:meta])* $name:ident, $schema:expr, $refers_to:expr) => {
            $(#[$doc])*
            pub struct $name;

            impl PartialSchema for $name {
                fn schema() -> RefOr<Schema> {
                    $schema
                }
            }

            impl ToSchema for $name {
                fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                    let refers_to: fn(&mut Vec<(String, RefOr<Schema>)>) = $refers_to;
                    refers_to(schemas);
                }
            }
        };
    }

    named_schema!(
        /// An unsigned 128-bit integer (ids, amounts, balances, `user_data_128`).
        U128,
        string_or_integer(
            128,
            "Unsigned 128-bit integer, written as a decimal string; requests may also give a JSON integer up to 18446744073709551615."
        )
    );

    named_schema!(
        /// An unsigned 64-bit integer (`user_data_64`, timestamps).
        U64,
        string_or_integer(
            64,
            "Unsigned 64-bit integer, written as a decimal string; requests may also give a JSON integer."
        )
    );

    named_schema!(
        /// An unsigned 32-bit JSON integer.
        U32,
        integer(0, u32::MAX.into(), "Unsigned 32-bit integer.").into()
    );

    named_schema!(
        /// An unsigned 16-bit JSON integer.
        U16,
        integer(0, u16::MAX.into(), "Unsigned 16-bit integer.").into()
    );

    named_schema!(
        /// A node id, term or log index: a plain JSON integer.
        NodeInteger,
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(None::<SchemaFormat>)
            .minimum(Some(0usize))
            .maximum(Some(u64::MAX as usize))
            .description(Some("Unsigned 64-bit integer (a node id, a term or a log index)."))
            .into()
    );

    named_schema!(
        /// An account or transfer id in a path: any unsigned 128-bit integer, in decimal.
        IdPath,
        decimal_string(false, u128::MAX, "Unsigned 128-bit integer in decimal.").into()
    );

    named_schema!(
        /// The account of a history query: 1 to 2^128-2, in decimal (the ledger refuses 0 and
        /// 2^128-1 as a filter's account).
        HistoryAccountId,
        decimal_string(
            true,
            u128::MAX - 1,
            "The account's id, 1 to 2^128-2, in decimal."
        )
        .into()
    );

    named_schema!(
        /// A decimal 128-bit value in a query (`user_data_128`).
        U128Query,
        decimal_string(false, u128::MAX, "Unsigned 128-bit integer in decimal; 0 matches any.").into()
    );

    named_schema!(
        /// A 64-bit value in a query (`user_data_64`).
        U64Query,
        integer(0, u64::MAX, "Unsigned 64-bit integer; 0 matches any.").into()
    );

    named_schema!(
        /// A timestamp bound of a history query: 0 to `ledger::TIMESTAMP_MAX`.
        TimestampBound,
        integer(
            0,
            ledger::TIMESTAMP_MAX,
            "Nanoseconds, 0 to 2^63-1; 0 means no bound."
        )
        .into()
    );

    named_schema!(
        /// How many rows a history query returns: 1 to `limits::QUERY_ROWS_MAX`.
        RowLimit,
        integer(
            1,
            limits::QUERY_ROWS_MAX as u64,
            "Rows to return at most."
        )
        .into()
    );

    named_schema!(
        /// How many ids `GET /v1/ids` mints: 1 to `limits::BATCH_EVENTS_MAX`.
        IdCount,
        integer(
            1,
            limits::BATCH_EVENTS_MAX as u64,
            "How many ids to mint."
        )
        .into()
    );

    named_schema!(
        /// How many events `GET /v1/events` returns: 1 to `limits::EVENTS_PAGE_EVENTS_MAX`.
        EventsLimit,
        integer(
            1,
            limits::EVENTS_PAGE_EVENTS_MAX as u64,
            "Events to return at most."
        )
        .into()
    );

    named_schema!(
        /// `after` of `GET /v1/events`: a sequence number.
        EventsAfter,
        integer(
            0,
            u64::MAX,
            "Events with a sequence number above this one (0: from the first)."
        )
        .into()
    );

    /// An array of 1 to `max` items of the named schema `item`.
    fn bounded_array(item: &str, max: usize, description: &str) -> Array {
        ArrayBuilder::new()
            .items(RefOr::Ref(Ref::from_schema_name(item)))
            .min_items(Some(1))
            .max_items(Some(max))
            .description(Some(description))
            .build()
    }

    /// The `ids` of `GET /v1/ids`: 1 to `limits::BATCH_EVENTS_MAX` fresh ids.
    pub fn minted_ids() -> Array {
        bounded_array(
            &U128::name(),
            limits::BATCH_EVENTS_MAX,
            "Fresh ids, each in the slot of `near` (so in its group, always), time-ordered.",
        )
    }

    /// The `ids` of a lookup body: 1 to `limits::LOOKUP_IDS_MAX` ids.
    pub fn lookup_ids() -> Array {
        bounded_array(
            &U128::name(),
            limits::LOOKUP_IDS_MAX,
            "The ids to look up; unknown ids are left out of the answer.",
        )
    }

    /// The `ids` of an outcomes body: 1 to `limits::LOOKUP_IDS_MAX` ids.
    pub fn outcome_ids() -> Array {
        bounded_array(
            &U128::name(),
            limits::LOOKUP_IDS_MAX,
            "The transfer ids whose outcomes to give, one outcome per id in this order.",
        )
    }

    /// The `wait_ms` of an outcomes body.
    pub fn outcome_wait_ms() -> Schema {
        integer(
            0,
            limits::OUTCOME_WAIT_MS_MAX.into(),
            "How long to wait (milliseconds) while any outcome is `pending`.",
        )
    }

    /// The `outcome` of an outcome.
    pub fn outcome_kind() -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["not_found", "pending", "created", "failed"]))
            .description(Some(
                "`created` and `failed` are final; `pending` ends by itself; `not_found`: no transfer has the id and it is not spent.",
            ))
            .into()
    }

    /// Registers `T` and what it refers to among the document's named schemas.
    fn register<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(schemas);
    }

    named_schema!(
        /// The body of `POST /v1/accounts`: 1 to `limits::BATCH_EVENTS_MAX` accounts.
        AccountBatch,
        bounded_array(
            &AccountJson::name(),
            limits::BATCH_EVENTS_MAX,
            "The accounts to create, in order; each gets one result."
        )
        .into(),
        register::<AccountJson>
    );

    named_schema!(
        /// The body of `POST /v1/transfers`: 1 to `limits::BATCH_EVENTS_MAX` transfers.
        TransferBatch,
        bounded_array(
            &TransferJson::name(),
            limits::BATCH_EVENTS_MAX,
            "The transfers to create, in order; each gets one result."
        )
        .into(),
        register::<TransferJson>
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse_decimal;

    /// Texts around every boundary of `max` and a spread of others, each checked against the
    /// parser: the pattern must accept a text exactly when the parser reads it into the range.
    fn texts_around(max: u128) -> Vec<String> {
        let mut texts: Vec<String> = ["", "0", "00", "+1", "-1", " 1", "1 ", "1.0", "1e3", "a"]
            .map(String::from)
            .to_vec();
        for value in [0, 1, 2, 9, 10, 11, 99, 100, max / 2, max / 10] {
            texts.push(value.to_string());
        }
        for value in [max.saturating_sub(1), max, max.saturating_add(1)] {
            texts.push(value.to_string());
            texts.push(format!("000{value}"));
        }
        texts.push(format!("{max}0"));
        let mut power = 1u128;
        while let Some(next) = power.checked_mul(10) {
            texts.extend([power - 1, power, power + 1].map(|v| v.to_string()));
            power = next;
        }
        // Same-length neighbours: `max` with one digit raised or lowered.
        let digits = max.to_string().into_bytes();
        for i in 0..digits.len() {
            for delta in [-1i8, 1] {
                let mut changed = digits.clone();
                let digit = changed[i] as i8 + delta;
                if (b'0' as i8..=b'9' as i8).contains(&digit) {
                    changed[i] = digit as u8;
                    texts.push(String::from_utf8(changed).unwrap());
                }
            }
        }
        texts
    }

    #[test]
    fn a_decimal_pattern_accepts_exactly_what_the_parser_reads_into_its_range() {
        let cases = [
            (false, u128::MAX, 128),
            (true, u128::MAX - 1, 128),
            (false, u64::MAX.into(), 64),
            (false, ledger::TIMESTAMP_MAX.into(), 64),
            (true, 8189, 32),
            (false, 7, 8),
            (true, 1, 8),
        ];
        for (nonzero, max, bits) in cases {
            let pattern = regex::Regex::new(&decimal_pattern(nonzero, max)).unwrap();
            for text in texts_around(max) {
                let in_range = parse_decimal(&text, bits)
                    .is_ok_and(|value| value <= max && (value != 0 || !nonzero));
                assert_eq!(
                    pattern.is_match(&text),
                    in_range,
                    "{text:?} against {pattern} (nonzero {nonzero}, max {max})"
                );
            }
        }
    }
}
