//! The read model's database: PostgreSQL or SQLite behind one type.
//!
//! Owns the schema (created here, `CREATE … IF NOT EXISTS`), writing [`Changes`] in one
//! transaction together with the group's offset (a compare-and-set on the offset, so a batch is
//! never written twice, even by two projectors at once), and reading rows back for `--verify`.
//! It must not decide what events mean (that is [`crate::model`]) nor talk to the nodes.

mod postgres;
mod sqlite;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use ledger::Account;

use crate::model::{Changes, TransferRow, TransferState};

pub use postgres::PgSink;
pub use sqlite::SqliteSink;

/// Where the read model lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A PostgreSQL URL (`postgres://user@host:port/database`).
    Postgres(String),
    /// A SQLite database file, created if missing.
    Sqlite(PathBuf),
}

/// Why the database could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The stored offset is not where this writer left it: someone else wrote the read model
    /// (another projector, or a person). Nothing of this transaction was written.
    #[error(
        "group {group}: the read model's offset is {found}, not {expected} as this projector left it (another projector, or a change by hand); nothing written, restart to continue from {found}"
    )]
    OffsetMoved {
        group: String,
        expected: u64,
        found: u64,
    },
    #[error("{table}.{column}: {value:?} is not a value this projector writes ({reason})")]
    BadValue {
        table: &'static str,
        column: &'static str,
        value: String,
        reason: &'static str,
    },
}

pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> SinkError {
    move |source| SinkError::Database { context, source }
}

/// Rows counted in the read model (`--verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub accounts: u64,
    pub transfers: BTreeMap<TransferState, u64>,
}

/// Rows per kind: `accounts`, then each transfer state (the same SQL in both databases).
pub(crate) const COUNTS: &str = "SELECT 'accounts', count(*) FROM accounts
    UNION ALL SELECT state, count(*) FROM transfers GROUP BY state";

pub(crate) fn counts_of(rows: Vec<(String, i64)>) -> Result<Counts, SinkError> {
    let mut counts = Counts::default();
    for (kind, count) in rows {
        let count = narrow("transfers", "count", count)?;
        match kind.as_str() {
            "accounts" => counts.accounts = count,
            state => {
                counts.transfers.insert(state_of(state)?, count);
            }
        }
    }
    Ok(counts)
}

/// An open read model.
pub enum Sink {
    Postgres(PgSink),
    Sqlite(SqliteSink),
}

macro_rules! each {
    ($self:expr, $sink:ident => $call:expr) => {
        match $self {
            Sink::Postgres($sink) => $call,
            Sink::Sqlite($sink) => $call,
        }
    };
}

impl Sink {
    /// Connects; with `create_schema`, creates the tables that are missing.
    pub async fn open(target: &Target, create_schema: bool) -> Result<Sink, SinkError> {
        let mut sink = match target {
            Target::Postgres(url) => Sink::Postgres(PgSink::connect(url).await?),
            Target::Sqlite(path) => Sink::Sqlite(SqliteSink::connect(path).await?),
        };
        if create_schema {
            each!(&mut sink, s => s.create_schema().await)?;
        }
        Ok(sink)
    }

    /// The last sequence number written for `group` (0: none; the row is created).
    pub async fn offset(&mut self, group: &str) -> Result<u64, SinkError> {
        each!(self, s => s.offset(group).await)
    }

    /// Writes `changes` and moves `group`'s offset from the seq before them to their last, in
    /// one transaction; refuses ([`SinkError::OffsetMoved`]) if the offset is elsewhere.
    pub async fn apply(&mut self, group: &str, changes: &Changes) -> Result<(), SinkError> {
        assert!(
            changes.events_count > 0,
            "a transaction holds at least one batch"
        );
        each!(self, s => s.apply(group, changes).await)
    }

    /// Deletes every row of the read model, offsets included (`--rebuild`).
    pub async fn clear(&mut self) -> Result<(), SinkError> {
        each!(self, s => s.clear().await)
    }

    /// Ids of the accounts with the `history` flag.
    pub async fn history_accounts(&mut self) -> Result<HashSet<u128>, SinkError> {
        each!(self, s => s.history_accounts().await)
    }

    /// At most `limit` accounts after the one with id `after` (all from the first: `None`), in
    /// the database's order of ids.
    pub async fn accounts_after(
        &mut self,
        after: Option<u128>,
        limit: usize,
    ) -> Result<Vec<Account>, SinkError> {
        each!(self, s => s.accounts_after(after, limit).await)
    }

    /// As [`Sink::accounts_after`], for transfers.
    pub async fn transfers_after(
        &mut self,
        after: Option<u128>,
        limit: usize,
    ) -> Result<Vec<TransferRow>, SinkError> {
        each!(self, s => s.transfers_after(after, limit).await)
    }

    pub async fn counts(&mut self) -> Result<Counts, SinkError> {
        each!(self, s => s.counts().await)
    }
}

/// The offset the rows of `changes` follow.
pub(crate) fn offset_before(changes: &Changes) -> u64 {
    changes.last_seq - changes.events_count as u64
}

pub(crate) fn parse_u128(
    table: &'static str,
    column: &'static str,
    text: &str,
) -> Result<u128, SinkError> {
    text.parse().map_err(|_| SinkError::BadValue {
        table,
        column,
        value: text.to_string(),
        reason: "not a decimal 128-bit unsigned integer",
    })
}

pub(crate) fn narrow<T: TryFrom<i64>>(
    table: &'static str,
    column: &'static str,
    value: i64,
) -> Result<T, SinkError> {
    T::try_from(value).map_err(|_| SinkError::BadValue {
        table,
        column,
        value: value.to_string(),
        reason: "out of the field's range",
    })
}

pub(crate) fn state_of(text: &str) -> Result<TransferState, SinkError> {
    TransferState::from_name(text).ok_or_else(|| SinkError::BadValue {
        table: "transfers",
        column: "state",
        value: text.to_string(),
        reason: "not created, pending, posted, voided or expired",
    })
}

/// A timestamp as SQL stores it (BIGINT/INTEGER): ledger timestamps are nanoseconds since
/// 1970, below 2^63 until the year 2262; a larger one is refused, not wrapped.
pub(crate) fn timestamp_sql(table: &'static str, timestamp: u64) -> Result<i64, SinkError> {
    i64::try_from(timestamp).map_err(|_| SinkError::BadValue {
        table,
        column: "timestamp",
        value: timestamp.to_string(),
        reason: "above 2^63 - 1, which BIGINT cannot hold",
    })
}

pub(crate) fn narrow_u64(
    table: &'static str,
    column: &'static str,
    value: u128,
) -> Result<u64, SinkError> {
    u64::try_from(value).map_err(|_| SinkError::BadValue {
        table,
        column,
        value: value.to_string(),
        reason: "above 2^64 - 1",
    })
}
