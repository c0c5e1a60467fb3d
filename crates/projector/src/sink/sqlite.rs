//! The SQLite read model (one file, WAL): 128-bit values (and `user_data_64`) as decimal text,
//! every write a multi-row statement of at most `PROJECTOR_SQLITE_ROWS_PER_STATEMENT_MAX` rows.
//!
//! Owns the SQLite SQL text. It must not hold rows across transactions. This is the only
//! place of the workspace that links the native sqlite3 (bundled by sqlx).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use ledger::{Account, AccountFlags, Transfer, TransferFlags};
use limits::PROJECTOR_SQLITE_ROWS_PER_STATEMENT_MAX as ROWS_PER_STATEMENT_MAX;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row, Sqlite, SqliteConnection};

use super::{
    COUNTS, Counts, SinkError, counts_of, db, narrow, narrow_u64, offset_before, parse_u128,
    state_of, timestamp_sql,
};
use crate::model::{Changes, HistoryRow, TransferRow};

/// How long a writer waits for another connection's lock (another group's writer, a reader).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite's result code for a lock held by another connection.
const SQLITE_BUSY: &str = "5";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS accounts (
        id TEXT PRIMARY KEY,
        debits_pending TEXT NOT NULL,
        debits_posted TEXT NOT NULL,
        credits_pending TEXT NOT NULL,
        credits_posted TEXT NOT NULL,
        user_data_128 TEXT NOT NULL,
        user_data_64 TEXT NOT NULL,
        user_data_32 INTEGER NOT NULL,
        ledger INTEGER NOT NULL,
        code INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        \"timestamp\" INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS transfers (
        id TEXT PRIMARY KEY,
        debit_account_id TEXT NOT NULL,
        credit_account_id TEXT NOT NULL,
        amount TEXT NOT NULL,
        pending_id TEXT NOT NULL,
        user_data_128 TEXT NOT NULL,
        user_data_64 TEXT NOT NULL,
        user_data_32 INTEGER NOT NULL,
        timeout INTEGER NOT NULL,
        ledger INTEGER NOT NULL,
        code INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        \"timestamp\" INTEGER NOT NULL,
        state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS account_balances (
        account_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        \"timestamp\" INTEGER NOT NULL,
        debits_pending TEXT NOT NULL,
        debits_posted TEXT NOT NULL,
        credits_pending TEXT NOT NULL,
        credits_posted TEXT NOT NULL,
        PRIMARY KEY (account_id, seq))",
    "CREATE TABLE IF NOT EXISTS projection_offsets (
        group_id TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL)",
];

const ACCOUNT_COLUMNS: &str = "id, debits_pending, debits_posted, credits_pending, credits_posted,
    user_data_128, user_data_64, user_data_32, ledger, code, flags, \"timestamp\"";

const TRANSFER_COLUMNS: &str = "id, debit_account_id, credit_account_id, amount, pending_id,
    user_data_128, user_data_64, user_data_32, timeout, ledger, code, flags, \"timestamp\",
    state";

type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;
type Tx<'a> = sqlx::Transaction<'a, Sqlite>;

/// A SQLite read model on one connection.
pub struct SqliteSink {
    conn: SqliteConnection,
}

/// `(?, ?, …)` for `columns`, `rows` times.
fn values(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// Runs `head VALUES (…), … tail` over `rows`, a statement per chunk, binding each row.
async fn multi_row<T>(
    tx: &mut Tx<'_>,
    (head, columns, tail): (&str, usize, &str),
    rows: &[T],
    bind: impl Fn(Query, &T) -> Query,
    context: &'static str,
) -> Result<(), SinkError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT_MAX) {
        let sql = format!("{head} VALUES {} {tail}", values(chunk.len(), columns));
        let query = chunk
            .iter()
            .fold(sqlx::query(AssertSqlSafe(sql)), |query, row| {
                bind(query, row)
            });
        query.execute(&mut **tx).await.map_err(db(context))?;
    }
    Ok(())
}

fn bind_account(query: Query, a: &Account) -> Query {
    query
        .bind(a.id.to_string())
        .bind(a.debits_pending.to_string())
        .bind(a.debits_posted.to_string())
        .bind(a.credits_pending.to_string())
        .bind(a.credits_posted.to_string())
        .bind(a.user_data_128.to_string())
        .bind(a.user_data_64.to_string())
        .bind(i64::from(a.user_data_32))
        .bind(i64::from(a.ledger))
        .bind(i64::from(a.code))
        .bind(i64::from(a.flags.bits()))
        .bind(a.timestamp as i64)
}

fn bind_transfer(query: Query, r: &TransferRow) -> Query {
    let t = &r.transfer;
    query
        .bind(t.id.to_string())
        .bind(t.debit_account_id.to_string())
        .bind(t.credit_account_id.to_string())
        .bind(t.amount.to_string())
        .bind(t.pending_id.to_string())
        .bind(t.user_data_128.to_string())
        .bind(t.user_data_64.to_string())
        .bind(i64::from(t.user_data_32))
        .bind(i64::from(t.timeout))
        .bind(i64::from(t.ledger))
        .bind(i64::from(t.code))
        .bind(i64::from(t.flags.bits()))
        .bind(t.timestamp as i64)
        .bind(r.state.name())
}

fn bind_history(query: Query, h: &HistoryRow) -> Query {
    query
        .bind(h.account_id.to_string())
        .bind(h.seq as i64)
        .bind(h.timestamp as i64)
        .bind(h.balances.debits_pending.to_string())
        .bind(h.balances.debits_posted.to_string())
        .bind(h.balances.credits_pending.to_string())
        .bind(h.balances.credits_posted.to_string())
}

impl SqliteSink {
    pub async fn connect(path: &Path) -> Result<SqliteSink, SinkError> {
        // WAL with NORMAL sync: a committed transaction survives the projector's crash; a power
        // loss may lose the last ones, offset included, and they are projected again.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        // Switching a new file to WAL is refused at once (SQLITE_BUSY, no busy wait) while
        // another process opens it too (a projector and `--verify` started together): try
        // again, within the same bound as a busy write.
        let started = std::time::Instant::now();
        loop {
            match options.connect().await {
                Ok(conn) => return Ok(SqliteSink { conn }),
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some(SQLITE_BUSY)
                        && started.elapsed() < BUSY_TIMEOUT =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => return Err(db("opening the SQLite file (--sqlite)")(error)),
            }
        }
    }

    pub async fn create_schema(&mut self) -> Result<(), SinkError> {
        for statement in SCHEMA {
            sqlx::query(*statement)
                .execute(&mut self.conn)
                .await
                .map_err(db("creating the read model's tables"))?;
        }
        Ok(())
    }

    pub async fn offset(&mut self, group: &str) -> Result<u64, SinkError> {
        sqlx::query("INSERT OR IGNORE INTO projection_offsets (group_id, last_seq) VALUES (?, 0)")
            .bind(group)
            .execute(&mut self.conn)
            .await
            .map_err(db("creating the group's offset"))?;
        let seq: i64 =
            sqlx::query_scalar("SELECT last_seq FROM projection_offsets WHERE group_id = ?")
                .bind(group)
                .fetch_one(&mut self.conn)
                .await
                .map_err(db("reading the group's offset"))?;
        narrow("projection_offsets", "last_seq", seq)
    }

    pub async fn apply(&mut self, group: &str, changes: &Changes) -> Result<(), SinkError> {
        for account in &changes.accounts {
            timestamp_sql("accounts", account.timestamp)?;
        }
        for row in &changes.transfers {
            timestamp_sql("transfers", row.transfer.timestamp)?;
        }
        for row in &changes.history {
            timestamp_sql("account_balances", row.timestamp)?;
        }
        let before = offset_before(changes);
        // BEGIN IMMEDIATE: take the write lock first, so the offset check below cannot go stale.
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))?;
        let moved = sqlx::query(
            "UPDATE projection_offsets SET last_seq = ? WHERE group_id = ? AND last_seq = ?",
        )
        .bind(changes.last_seq as i64)
        .bind(group)
        .bind(before as i64)
        .execute(&mut *tx)
        .await
        .map_err(db("moving the group's offset"))?;
        if moved.rows_affected() != 1 {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT last_seq FROM projection_offsets WHERE group_id = ?")
                    .bind(group)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("reading the group's offset"))?;
            return Err(SinkError::OffsetMoved {
                group: group.to_string(),
                expected: before,
                found: found.unwrap_or(0).max(0) as u64,
            });
        }
        let head = format!("INSERT INTO accounts ({ACCOUNT_COLUMNS})");
        let accounts = (
            head.as_str(),
            12,
            "ON CONFLICT (id) DO UPDATE SET debits_pending = excluded.debits_pending,
                debits_posted = excluded.debits_posted, credits_pending = excluded.credits_pending,
                credits_posted = excluded.credits_posted, user_data_128 = excluded.user_data_128,
                user_data_64 = excluded.user_data_64, user_data_32 = excluded.user_data_32,
                ledger = excluded.ledger, code = excluded.code, flags = excluded.flags,
                \"timestamp\" = excluded.\"timestamp\"",
        );
        multi_row(
            &mut tx,
            accounts,
            &changes.accounts,
            bind_account,
            "writing accounts",
        )
        .await?;
        let balances = (
            "UPDATE accounts SET debits_pending = v.column2, debits_posted = v.column3,
                credits_pending = v.column4, credits_posted = v.column5 FROM (",
            5,
            ") AS v WHERE accounts.id = v.column1",
        );
        multi_row(
            &mut tx,
            balances,
            &changes.balances,
            |q, (id, b)| {
                q.bind(id.to_string())
                    .bind(b.debits_pending.to_string())
                    .bind(b.debits_posted.to_string())
                    .bind(b.credits_pending.to_string())
                    .bind(b.credits_posted.to_string())
            },
            "writing balances",
        )
        .await?;
        let head = format!("INSERT INTO transfers ({TRANSFER_COLUMNS})");
        let transfers = (
            head.as_str(),
            14,
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        );
        multi_row(
            &mut tx,
            transfers,
            &changes.transfers,
            bind_transfer,
            "writing transfers",
        )
        .await?;
        let states = (
            "UPDATE transfers SET state = v.column2 FROM (",
            2,
            ") AS v WHERE transfers.id = v.column1",
        );
        multi_row(
            &mut tx,
            states,
            &changes.states,
            |q, (id, state)| q.bind(id.to_string()).bind(state.name()),
            "writing transfer states",
        )
        .await?;
        let history = (
            "INSERT OR IGNORE INTO account_balances (account_id, seq, \"timestamp\",
                debits_pending, debits_posted, credits_pending, credits_posted)",
            7,
            "",
        );
        multi_row(
            &mut tx,
            history,
            &changes.history,
            bind_history,
            "writing balance history",
        )
        .await?;
        tx.commit().await.map_err(db("committing a transaction"))
    }

    pub async fn clear(&mut self) -> Result<(), SinkError> {
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        for table in [
            "accounts",
            "transfers",
            "account_balances",
            "projection_offsets",
        ] {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await
                .map_err(db("deleting the read model's rows (--rebuild)"))?;
        }
        tx.commit().await.map_err(db("committing a transaction"))
    }

    pub async fn history_accounts(&mut self) -> Result<HashSet<u128>, SinkError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM accounts WHERE flags & ? <> 0")
            .bind(i64::from(AccountFlags::HISTORY.bits()))
            .fetch_all(&mut self.conn)
            .await
            .map_err(db("reading the accounts with history"))?;
        ids.iter()
            .map(|id| parse_u128("accounts", "id", id))
            .collect()
    }

    pub async fn accounts_after(
        &mut self,
        after: Option<u128>,
        limit: usize,
    ) -> Result<Vec<Account>, SinkError> {
        let sql =
            format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id > ? ORDER BY id LIMIT ?");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after.map_or(String::new(), |id| id.to_string()))
            .bind(limit as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(db("reading accounts"))?;
        rows.iter().map(account_of).collect()
    }

    pub async fn transfers_after(
        &mut self,
        after: Option<u128>,
        limit: usize,
    ) -> Result<Vec<TransferRow>, SinkError> {
        let sql =
            format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id > ? ORDER BY id LIMIT ?");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after.map_or(String::new(), |id| id.to_string()))
            .bind(limit as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(db("reading transfers"))?;
        rows.iter().map(transfer_of).collect()
    }

    pub async fn counts(&mut self) -> Result<Counts, SinkError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNTS)
            .fetch_all(&mut self.conn)
            .await
            .map_err(db("counting rows"))?;
        counts_of(rows)
    }
}

/// Reads column `i` of `row` as text and parses it as a 128-bit value.
fn big(
    row: &SqliteRow,
    table: &'static str,
    i: usize,
    column: &'static str,
) -> Result<u128, SinkError> {
    let value: String = row.try_get(i).map_err(db("reading rows"))?;
    parse_u128(table, column, &value)
}

fn int(row: &SqliteRow, i: usize) -> Result<i64, SinkError> {
    row.try_get(i).map_err(db("reading rows"))
}

fn account_of(row: &SqliteRow) -> Result<Account, SinkError> {
    const T: &str = "accounts";
    Ok(Account {
        id: big(row, T, 0, "id")?,
        debits_pending: big(row, T, 1, "debits_pending")?,
        debits_posted: big(row, T, 2, "debits_posted")?,
        credits_pending: big(row, T, 3, "credits_pending")?,
        credits_posted: big(row, T, 4, "credits_posted")?,
        user_data_128: big(row, T, 5, "user_data_128")?,
        user_data_64: narrow_u64(T, "user_data_64", big(row, T, 6, "user_data_64")?)?,
        user_data_32: narrow(T, "user_data_32", int(row, 7)?)?,
        ledger: narrow(T, "ledger", int(row, 8)?)?,
        code: narrow(T, "code", int(row, 9)?)?,
        flags: AccountFlags::from_bits_retain(narrow(T, "flags", int(row, 10)?)?),
        timestamp: narrow(T, "timestamp", int(row, 11)?)?,
    })
}

fn transfer_of(row: &SqliteRow) -> Result<TransferRow, SinkError> {
    const T: &str = "transfers";
    let state: String = row.try_get(13).map_err(db("reading rows"))?;
    Ok(TransferRow {
        transfer: Transfer {
            id: big(row, T, 0, "id")?,
            debit_account_id: big(row, T, 1, "debit_account_id")?,
            credit_account_id: big(row, T, 2, "credit_account_id")?,
            amount: big(row, T, 3, "amount")?,
            pending_id: big(row, T, 4, "pending_id")?,
            user_data_128: big(row, T, 5, "user_data_128")?,
            user_data_64: narrow_u64(T, "user_data_64", big(row, T, 6, "user_data_64")?)?,
            user_data_32: narrow(T, "user_data_32", int(row, 7)?)?,
            timeout: narrow(T, "timeout", int(row, 8)?)?,
            ledger: narrow(T, "ledger", int(row, 9)?)?,
            code: narrow(T, "code", int(row, 10)?)?,
            flags: TransferFlags::from_bits_retain(narrow(T, "flags", int(row, 11)?)?),
            timestamp: narrow(T, "timestamp", int(row, 12)?)?,
        },
        state: state_of(&state)?,
    })
}
