//! Client-observed quality: what a client saw of its earlier calls (each attempt's operation,
//! outcome and latency), piggy-backed on a later call in the `fincore-client-report` metadata,
//! so that a node or gateway can count failures that never reached it (a refused connection, a
//! timeout on the way) beside its own figures.
//!
//! The value: up to `limits::CLIENT_REPORTS_PER_CALL_MAX` reports separated by `,`, each
//! `OPERATION OUTCOME MICROSECONDS` (for example `create_transfers ok 812,lookup_accounts
//! timeout 5000000`). Operations and outcomes come from the closed sets here, so a hostile
//! value can add no label; [`decode`] keeps only well-formed reports and counts the rest.
//!
//! Owns the format. Must not record anything (the server's access layer does) nor decide what
//! a client measures (the client does).

use std::time::Duration;

/// The gRPC metadata key (HTTP/2 header) carrying the reports.
pub const HEADER: &str = "fincore-client-report";

/// The operations a report may name: the client's calls.
pub const OPERATIONS: [&str; 19] = [
    "create_accounts",
    "create_transfers",
    "lookup_accounts",
    "lookup_transfers",
    "lookup_outcomes",
    "get_account_transfers",
    "get_account_balances",
    "saga_steps",
    "open_saga_copies",
    "read_events",
    "subscribe_events",
    "get_map",
    "set_map",
    "watch_map",
    "replica_status",
    "get_config",
    "watch_config",
    "config_history",
    "change_config",
];

/// The longest latency a report may state (an hour); a longer one is malformed.
const REPORTED_MICROS_MAX: u64 = 3_600_000_000;

/// How one attempt ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Answered with a refusal of the request itself (invalid, not found, a key refused).
    Refused,
    /// Answered busy (retry later).
    Busy,
    /// No answer: the connection failed or the node could not serve (no quorum).
    Unavailable,
    /// No answer within the client's attempt timeout.
    Timeout,
    /// Answered "not the leader".
    NotLeader,
    /// Any other failure.
    Other,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::Busy,
        Outcome::Unavailable,
        Outcome::Timeout,
        Outcome::NotLeader,
        Outcome::Other,
    ];

    /// The word in a report, and the label value a server records.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Busy => "busy",
            Outcome::Unavailable => "unavailable",
            Outcome::Timeout => "timeout",
            Outcome::NotLeader => "not_leader",
            Outcome::Other => "other",
        }
    }

    fn parse(word: &str) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == word)
    }
}

/// One attempt of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// One of [`OPERATIONS`].
    pub operation: &'static str,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

impl Report {
    /// A report of `operation`, if it is one of [`OPERATIONS`].
    pub fn new(operation: &str, outcome: Outcome, elapsed: Duration) -> Option<Report> {
        let operation = OPERATIONS.into_iter().find(|known| *known == operation)?;
        Some(Report {
            operation,
            outcome,
            elapsed,
        })
    }
}

/// The metadata value of `reports` (at most `limits::CLIENT_REPORTS_PER_CALL_MAX` of them are
/// written; the rest are left out).
pub fn encode<'a>(reports: impl IntoIterator<Item = &'a Report>) -> String {
    reports
        .into_iter()
        .take(limits::CLIENT_REPORTS_PER_CALL_MAX)
        .map(|report| {
            let micros = u64::try_from(report.elapsed.as_micros())
                .unwrap_or(u64::MAX)
                .min(REPORTED_MICROS_MAX);
            format!("{} {} {micros}", report.operation, report.outcome.as_str())
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The well-formed reports of a metadata value, and how many entries were not (unknown
/// operation or outcome, a bad number, too many, or a value over
/// `limits::CLIENT_REPORT_BYTES_MAX`, which counts as one).
pub fn decode(value: &[u8]) -> (Vec<Report>, usize) {
    if value.len() > limits::CLIENT_REPORT_BYTES_MAX {
        return (Vec::new(), 1);
    }
    let Ok(value) = std::str::from_utf8(value) else {
        return (Vec::new(), 1);
    };
    let mut reports = Vec::new();
    let mut malformed = 0;
    for entry in value.split(',') {
        let mut words = entry.split_ascii_whitespace();
        let parsed = match (words.next(), words.next(), words.next(), words.next()) {
            (Some(operation), Some(outcome), Some(micros), None) => {
                let micros = micros
                    .parse::<u64>()
                    .ok()
                    .filter(|&micros| micros <= REPORTED_MICROS_MAX);
                Outcome::parse(outcome)
                    .zip(micros)
                    .and_then(|(outcome, micros)| {
                        Report::new(operation, outcome, Duration::from_micros(micros))
                    })
            }
            _ => None,
        };
        match parsed {
            Some(report) if reports.len() < limits::CLIENT_REPORTS_PER_CALL_MAX => {
                reports.push(report);
            }
            _ => malformed += 1,
        }
    }
    (reports, malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let reports = [
            Report::new("create_transfers", Outcome::Ok, Duration::from_micros(812)).unwrap(),
            Report::new("lookup_accounts", Outcome::Timeout, Duration::from_secs(5)).unwrap(),
        ];
        let value = encode(&reports);
        assert_eq!(
            value,
            "create_transfers ok 812,lookup_accounts timeout 5000000"
        );
        assert_eq!(decode(value.as_bytes()), (reports.to_vec(), 0));
    }

    #[test]
    fn hostile_values_add_no_label_and_are_counted() {
        for (value, malformed) in [
            ("drop_tables ok 1", 1),
            ("create_transfers exploded 1", 1),
            ("create_transfers ok -1", 1),
            ("create_transfers ok 99999999999999", 1),
            ("create_transfers ok 1 extra", 1),
            ("create_transfers ok", 1),
            ("", 1),
            ("create_transfers ok 1,,lookup_accounts ok 2", 1),
        ] {
            let (reports, counted) = decode(value.as_bytes());
            assert_eq!(counted, malformed, "{value:?}");
            assert!(
                reports.iter().all(|r| OPERATIONS.contains(&r.operation)),
                "{value:?}"
            );
        }
        let many = ["read_events ok 1"; limits::CLIENT_REPORTS_PER_CALL_MAX + 3].join(",");
        let (reports, malformed) = decode(many.as_bytes());
        assert_eq!(reports.len(), limits::CLIENT_REPORTS_PER_CALL_MAX);
        assert_eq!(malformed, 3);
        let huge = "read_events ok 1,".repeat(limits::CLIENT_REPORT_BYTES_MAX);
        assert_eq!(decode(huge.as_bytes()), (Vec::new(), 1));
        assert_eq!(decode(&[0xff, 0xfe]), (Vec::new(), 1));
    }

    #[test]
    fn at_most_a_calls_worth_is_encoded() {
        let report = Report::new("read_events", Outcome::Ok, Duration::ZERO).unwrap();
        let value = encode(&[report; 20]);
        assert_eq!(
            value.split(',').count(),
            limits::CLIENT_REPORTS_PER_CALL_MAX
        );
        assert!(value.len() <= limits::CLIENT_REPORT_BYTES_MAX);
    }
}
