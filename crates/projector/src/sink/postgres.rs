//! The PostgreSQL read model: 128-bit values as NUMERIC(39,0), every write one statement per
//! table for the whole transaction, never one per row: `COPY … FROM STDIN` for the new
//! transfers and history rows, `UNNEST` of column arrays for the rest (and for a replay).
//!
//! Owns the PostgreSQL SQL text and the `COPY` text it sends. It must not hold rows across
//! transactions.

use std::collections::HashSet;
use std::fmt::Write as _;

use ledger::{Account, AccountFlags, Transfer, TransferFlags};
use sqlx::{Connection, PgConnection, Row};

use super::{
    COUNTS, Counts, SinkError, counts_of, db, narrow, narrow_u64, offset_before, parse_u128,
    state_of, timestamp_sql,
};
use crate::model::{Changes, HistoryRow, TransferRow};

/// The advisory lock taken while the tables are created ("fincore" in ASCII).
const SCHEMA_LOCK: i64 = 0x66_69_6e_63_6f_72_65;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS accounts (
        id NUMERIC(39,0) PRIMARY KEY,
        debits_pending NUMERIC(39,0) NOT NULL,
        debits_posted NUMERIC(39,0) NOT NULL,
        credits_pending NUMERIC(39,0) NOT NULL,
        credits_posted NUMERIC(39,0) NOT NULL,
        user_data_128 NUMERIC(39,0) NOT NULL,
        user_data_64 NUMERIC(20,0) NOT NULL,
        user_data_32 BIGINT NOT NULL,
        ledger BIGINT NOT NULL,
        code INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        \"timestamp\" BIGINT NOT NULL)
        WITH (fillfactor = 50)",
    "CREATE TABLE IF NOT EXISTS transfers (
        id NUMERIC(39,0) PRIMARY KEY,
        debit_account_id NUMERIC(39,0) NOT NULL,
        credit_account_id NUMERIC(39,0) NOT NULL,
        amount NUMERIC(39,0) NOT NULL,
        pending_id NUMERIC(39,0) NOT NULL,
        user_data_128 NUMERIC(39,0) NOT NULL,
        user_data_64 NUMERIC(20,0) NOT NULL,
        user_data_32 BIGINT NOT NULL,
        timeout BIGINT NOT NULL,
        ledger BIGINT NOT NULL,
        code INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        \"timestamp\" BIGINT NOT NULL,
        state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS account_balances (
        account_id NUMERIC(39,0) NOT NULL,
        seq BIGINT NOT NULL,
        \"timestamp\" BIGINT NOT NULL,
        debits_pending NUMERIC(39,0) NOT NULL,
        debits_posted NUMERIC(39,0) NOT NULL,
        credits_pending NUMERIC(39,0) NOT NULL,
        credits_posted NUMERIC(39,0) NOT NULL,
        PRIMARY KEY (account_id, seq))",
    "CREATE TABLE IF NOT EXISTS projection_offsets (
        group_id TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL)",
];

const INSERT_ACCOUNTS: &str = "INSERT INTO accounts (id, debits_pending, debits_posted,
        credits_pending, credits_posted, user_data_128, user_data_64, user_data_32, ledger, code,
        flags, \"timestamp\")
    SELECT id::numeric, dpe::numeric, dpo::numeric, cpe::numeric, cpo::numeric, u128::numeric,
        u64::numeric, u32, ledger, code, flags, ts
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::bigint[], $9::bigint[], $10::integer[], $11::integer[], $12::bigint[])
        AS u(id, dpe, dpo, cpe, cpo, u128, u64, u32, ledger, code, flags, ts)
    ON CONFLICT (id) DO UPDATE SET debits_pending = EXCLUDED.debits_pending,
        debits_posted = EXCLUDED.debits_posted, credits_pending = EXCLUDED.credits_pending,
        credits_posted = EXCLUDED.credits_posted, user_data_128 = EXCLUDED.user_data_128,
        user_data_64 = EXCLUDED.user_data_64, user_data_32 = EXCLUDED.user_data_32,
        ledger = EXCLUDED.ledger, code = EXCLUDED.code, flags = EXCLUDED.flags,
        \"timestamp\" = EXCLUDED.\"timestamp\"";

const UPDATE_BALANCES: &str = "UPDATE accounts AS a SET debits_pending = u.dpe::numeric,
        debits_posted = u.dpo::numeric, credits_pending = u.cpe::numeric,
        credits_posted = u.cpo::numeric
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
        AS u(id, dpe, dpo, cpe, cpo)
    WHERE a.id = u.id::numeric";

const INSERT_TRANSFERS: &str = "INSERT INTO transfers (id, debit_account_id, credit_account_id,
        amount, pending_id, user_data_128, user_data_64, user_data_32, timeout, ledger, code,
        flags, \"timestamp\", state)
    SELECT id::numeric, debit::numeric, credit::numeric, amount::numeric, pending::numeric,
        u128::numeric, u64::numeric, u32, timeout, ledger, code, flags, ts, state
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::integer[], $12::integer[],
        $13::bigint[], $14::text[])
        AS u(id, debit, credit, amount, pending, u128, u64, u32, timeout, ledger, code, flags,
            ts, state)
    ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state";

const UPDATE_STATES: &str = "UPDATE transfers AS t SET state = u.state
    FROM UNNEST($1::text[], $2::text[]) AS u(id, state)
    WHERE t.id = u.id::numeric";

const INSERT_HISTORY: &str = "INSERT INTO account_balances (account_id, seq, \"timestamp\",
        debits_pending, debits_posted, credits_pending, credits_posted)
    SELECT id::numeric, seq, ts, dpe::numeric, dpo::numeric, cpe::numeric, cpo::numeric
    FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
        $7::text[]) AS u(id, seq, ts, dpe, dpo, cpe, cpo)
    ON CONFLICT (account_id, seq) DO NOTHING";

/// The fast path's inserts: no `ON CONFLICT`, so PostgreSQL inserts in bulk without a
/// speculative insertion per row. Columns in the order [`copy_transfers`] writes them.
const COPY_TRANSFERS: &str = "COPY transfers (id, debit_account_id, credit_account_id, amount,
        pending_id, user_data_128, user_data_64, user_data_32, timeout, ledger, code, flags,
        \"timestamp\", state) FROM STDIN";

/// Columns in the order [`copy_history`] writes them.
const COPY_HISTORY: &str = "COPY account_balances (account_id, seq, \"timestamp\",
        debits_pending, debits_posted, credits_pending, credits_posted) FROM STDIN";

const SELECT_ACCOUNTS: &str = "SELECT id::text, debits_pending::text, debits_posted::text,
        credits_pending::text, credits_posted::text, user_data_128::text, user_data_64::text,
        user_data_32, ledger, code, flags, \"timestamp\"
    FROM accounts WHERE id > $1::numeric ORDER BY id LIMIT $2";

const SELECT_TRANSFERS: &str = "SELECT id::text, debit_account_id::text,
        credit_account_id::text, amount::text, pending_id::text, user_data_128::text,
        user_data_64::text, user_data_32, timeout, ledger, code, flags, \"timestamp\", state
    FROM transfers WHERE id > $1::numeric ORDER BY id LIMIT $2";

/// A PostgreSQL read model on one connection.
pub struct PgSink {
    conn: PgConnection,
}

fn texts<T>(rows: &[T], field: impl Fn(&T) -> u128) -> Vec<String> {
    rows.iter().map(|row| field(row).to_string()).collect()
}

impl PgSink {
    pub async fn connect(url: &str) -> Result<PgSink, SinkError> {
        let conn = PgConnection::connect(url)
            .await
            .map_err(db("connecting to PostgreSQL (--postgres)"))?;
        Ok(PgSink { conn })
    }

    pub async fn create_schema(&mut self) -> Result<(), SinkError> {
        // Two processes creating the same table at once collide in PostgreSQL's catalog even
        // with IF NOT EXISTS: one creates while the other waits on this lock.
        // All there already (every start but the first): nothing to create, and no notice
        // "relation … already exists" per table in the log.
        let present: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()
             AND tablename IN ('accounts', 'transfers', 'account_balances', 'projection_offsets')",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(db("looking for the read model's tables"))?;
        if present == SCHEMA.len() as i64 {
            return Ok(());
        }
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db("locking the schema"))?;
        for statement in SCHEMA {
            sqlx::query(*statement)
                .execute(&mut *tx)
                .await
                .map_err(db("creating the read model's tables"))?;
        }
        tx.commit()
            .await
            .map_err(db("creating the read model's tables"))
    }

    pub async fn offset(&mut self, group: &str) -> Result<u64, SinkError> {
        sqlx::query(
            "INSERT INTO projection_offsets (group_id, last_seq) VALUES ($1, 0)
             ON CONFLICT (group_id) DO NOTHING",
        )
        .bind(group)
        .execute(&mut self.conn)
        .await
        .map_err(db("creating the group's offset"))?;
        let seq: i64 =
            sqlx::query_scalar("SELECT last_seq FROM projection_offsets WHERE group_id = $1")
                .bind(group)
                .fetch_one(&mut self.conn)
                .await
                .map_err(db("reading the group's offset"))?;
        narrow("projection_offsets", "last_seq", seq)
    }

    pub async fn apply(&mut self, group: &str, changes: &Changes) -> Result<(), SinkError> {
        let before = offset_before(changes);
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        // First, so that the offset's row lock orders concurrent writers.
        let moved = sqlx::query(
            "UPDATE projection_offsets SET last_seq = $1 WHERE group_id = $2 AND last_seq = $3",
        )
        .bind(changes.last_seq as i64)
        .bind(group)
        .bind(before as i64)
        .execute(&mut *tx)
        .await
        .map_err(db("moving the group's offset"))?;
        if moved.rows_affected() != 1 {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT last_seq FROM projection_offsets WHERE group_id = $1")
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
        write_accounts(&mut tx, &changes.accounts).await?;
        write_balances(&mut tx, changes).await?;
        write_states(&mut tx, changes).await?;
        // New transfers and history rows, by `COPY` under a savepoint: rows of these batches
        // are not there unless the offset was moved back by hand (a replay) or another group
        // wrote a cross-group transfer's copy first. If one is (a unique violation), the
        // savepoint undoes the copies and the `ON CONFLICT` statements write the same rows,
        // as they did before `COPY` was used: what a replay changes is transfer states only.
        let mut copies = tx.begin().await.map_err(db("starting a savepoint"))?;
        let copied = async {
            copy_transfers(&mut copies, &changes.transfers).await?;
            copy_history(&mut copies, &changes.history).await
        }
        .await;
        match copied {
            Ok(()) => copies.commit().await.map_err(db("releasing a savepoint"))?,
            Err(SinkError::Database { source, .. })
                if source
                    .as_database_error()
                    .is_some_and(|e| e.is_unique_violation()) =>
            {
                copies
                    .rollback()
                    .await
                    .map_err(db("rolling back to a savepoint"))?;
                write_transfers(&mut tx, &changes.transfers).await?;
                write_history(&mut tx, changes).await?;
            }
            Err(error) => return Err(error),
        }
        tx.commit().await.map_err(db("committing a transaction"))
    }

    pub async fn clear(&mut self) -> Result<(), SinkError> {
        sqlx::query("TRUNCATE accounts, transfers, account_balances, projection_offsets")
            .execute(&mut self.conn)
            .await
            .map_err(db("deleting the read model's rows (--rebuild)"))?;
        Ok(())
    }

    pub async fn history_accounts(&mut self) -> Result<HashSet<u128>, SinkError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id::text FROM accounts WHERE flags & $1 <> 0")
                .bind(i32::from(AccountFlags::HISTORY.bits()))
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
        let rows = sqlx::query(SELECT_ACCOUNTS)
            .bind(after.map_or("-1".to_string(), |id| id.to_string()))
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
        let rows = sqlx::query(SELECT_TRANSFERS)
            .bind(after.map_or("-1".to_string(), |id| id.to_string()))
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

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// Sends `data` (rows in `COPY`'s text format) with `statement`.
async fn copy(
    tx: &mut Tx<'_>,
    statement: &str,
    data: String,
    context: &'static str,
) -> Result<(), SinkError> {
    let mut copy = tx.copy_in_raw(statement).await.map_err(db(context))?;
    copy.send(data.into_bytes()).await.map_err(db(context))?;
    copy.finish().await.map_err(db(context))?;
    Ok(())
}

/// One row of `COPY`'s text format: the values are numbers and state names, none of which
/// holds a tab, a newline or a backslash, so none needs escaping.
fn copy_row(data: &mut String, values: std::fmt::Arguments<'_>) {
    data.write_fmt(values)
        .expect("writing into a String cannot fail");
    data.push('\n');
}

async fn copy_transfers(tx: &mut Tx<'_>, rows: &[TransferRow]) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut data = String::with_capacity(rows.len() * 160);
    for TransferRow { transfer: t, state } in rows {
        let timestamp = timestamp_sql("transfers", t.timestamp)?;
        copy_row(
            &mut data,
            format_args!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                t.id,
                t.debit_account_id,
                t.credit_account_id,
                t.amount,
                t.pending_id,
                t.user_data_128,
                t.user_data_64,
                t.user_data_32,
                t.timeout,
                t.ledger,
                t.code,
                t.flags.bits(),
                timestamp,
                state.name()
            ),
        );
    }
    copy(tx, COPY_TRANSFERS, data, "writing transfers").await
}

async fn copy_history(tx: &mut Tx<'_>, rows: &[HistoryRow]) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    // In the primary key's order: each index page is reached in turn, not at random.
    let mut sorted: Vec<&HistoryRow> = rows.iter().collect();
    sorted.sort_unstable_by_key(|r| (r.account_id, r.seq));
    let mut data = String::with_capacity(rows.len() * 120);
    for row in sorted {
        let timestamp = timestamp_sql("account_balances", row.timestamp)?;
        let b = &row.balances;
        copy_row(
            &mut data,
            format_args!(
                "{}\t{}\t{timestamp}\t{}\t{}\t{}\t{}",
                row.account_id,
                row.seq,
                b.debits_pending,
                b.debits_posted,
                b.credits_pending,
                b.credits_posted
            ),
        );
    }
    copy(tx, COPY_HISTORY, data, "writing balance history").await
}

async fn write_accounts(tx: &mut Tx<'_>, accounts: &[Account]) -> Result<(), SinkError> {
    if accounts.is_empty() {
        return Ok(());
    }
    let timestamps = accounts
        .iter()
        .map(|a| timestamp_sql("accounts", a.timestamp))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(INSERT_ACCOUNTS)
        .bind(texts(accounts, |a| a.id))
        .bind(texts(accounts, |a| a.debits_pending))
        .bind(texts(accounts, |a| a.debits_posted))
        .bind(texts(accounts, |a| a.credits_pending))
        .bind(texts(accounts, |a| a.credits_posted))
        .bind(texts(accounts, |a| a.user_data_128))
        .bind(texts(accounts, |a| u128::from(a.user_data_64)))
        .bind(
            accounts
                .iter()
                .map(|a| i64::from(a.user_data_32))
                .collect::<Vec<_>>(),
        )
        .bind(
            accounts
                .iter()
                .map(|a| i64::from(a.ledger))
                .collect::<Vec<_>>(),
        )
        .bind(
            accounts
                .iter()
                .map(|a| i32::from(a.code))
                .collect::<Vec<_>>(),
        )
        .bind(
            accounts
                .iter()
                .map(|a| i32::from(a.flags.bits()))
                .collect::<Vec<_>>(),
        )
        .bind(timestamps)
        .execute(&mut **tx)
        .await
        .map_err(db("writing accounts"))?;
    Ok(())
}

async fn write_balances(tx: &mut Tx<'_>, changes: &Changes) -> Result<(), SinkError> {
    let rows = &changes.balances;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(UPDATE_BALANCES)
        .bind(texts(rows, |r| r.0))
        .bind(texts(rows, |r| r.1.debits_pending))
        .bind(texts(rows, |r| r.1.debits_posted))
        .bind(texts(rows, |r| r.1.credits_pending))
        .bind(texts(rows, |r| r.1.credits_posted))
        .execute(&mut **tx)
        .await
        .map_err(db("writing balances"))?;
    Ok(())
}

async fn write_transfers(tx: &mut Tx<'_>, rows: &[TransferRow]) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let timestamps = rows
        .iter()
        .map(|r| timestamp_sql("transfers", r.transfer.timestamp))
        .collect::<Result<Vec<_>, _>>()?;
    let t = |f: fn(&Transfer) -> u128| texts(rows, move |r| f(&r.transfer));
    sqlx::query(INSERT_TRANSFERS)
        .bind(t(|t| t.id))
        .bind(t(|t| t.debit_account_id))
        .bind(t(|t| t.credit_account_id))
        .bind(t(|t| t.amount))
        .bind(t(|t| t.pending_id))
        .bind(t(|t| t.user_data_128))
        .bind(t(|t| u128::from(t.user_data_64)))
        .bind(
            rows.iter()
                .map(|r| i64::from(r.transfer.user_data_32))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| i64::from(r.transfer.timeout))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| i64::from(r.transfer.ledger))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| i32::from(r.transfer.code))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| i32::from(r.transfer.flags.bits()))
                .collect::<Vec<_>>(),
        )
        .bind(timestamps)
        .bind(rows.iter().map(|r| r.state.name()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(db("writing transfers"))?;
    Ok(())
}

async fn write_states(tx: &mut Tx<'_>, changes: &Changes) -> Result<(), SinkError> {
    let rows = &changes.states;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(UPDATE_STATES)
        .bind(texts(rows, |r| r.0))
        .bind(rows.iter().map(|r| r.1.name()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(db("writing transfer states"))?;
    Ok(())
}

async fn write_history(tx: &mut Tx<'_>, changes: &Changes) -> Result<(), SinkError> {
    let rows = &changes.history;
    if rows.is_empty() {
        return Ok(());
    }
    let timestamps = rows
        .iter()
        .map(|r| timestamp_sql("account_balances", r.timestamp))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(INSERT_HISTORY)
        .bind(texts(rows, |r| r.account_id))
        .bind(rows.iter().map(|r| r.seq as i64).collect::<Vec<_>>())
        .bind(timestamps)
        .bind(texts(rows, |r| r.balances.debits_pending))
        .bind(texts(rows, |r| r.balances.debits_posted))
        .bind(texts(rows, |r| r.balances.credits_pending))
        .bind(texts(rows, |r| r.balances.credits_posted))
        .execute(&mut **tx)
        .await
        .map_err(db("writing balance history"))?;
    Ok(())
}

fn account_of(row: &sqlx::postgres::PgRow) -> Result<Account, SinkError> {
    let text = |i: usize, column: &'static str| -> Result<u128, SinkError> {
        let value: String = row.try_get(i).map_err(db("reading accounts"))?;
        parse_u128("accounts", column, &value)
    };
    let int = |i: usize| -> Result<i64, SinkError> {
        let value: i64 = match i {
            9 | 10 => i64::from(row.try_get::<i32, _>(i).map_err(db("reading accounts"))?),
            _ => row.try_get(i).map_err(db("reading accounts"))?,
        };
        Ok(value)
    };
    Ok(Account {
        id: text(0, "id")?,
        debits_pending: text(1, "debits_pending")?,
        debits_posted: text(2, "debits_posted")?,
        credits_pending: text(3, "credits_pending")?,
        credits_posted: text(4, "credits_posted")?,
        user_data_128: text(5, "user_data_128")?,
        user_data_64: narrow_u64("accounts", "user_data_64", text(6, "user_data_64")?)?,
        user_data_32: narrow("accounts", "user_data_32", int(7)?)?,
        ledger: narrow("accounts", "ledger", int(8)?)?,
        code: narrow("accounts", "code", int(9)?)?,
        flags: AccountFlags::from_bits_retain(narrow("accounts", "flags", int(10)?)?),
        timestamp: narrow("accounts", "timestamp", int(11)?)?,
    })
}

fn transfer_of(row: &sqlx::postgres::PgRow) -> Result<TransferRow, SinkError> {
    let text = |i: usize, column: &'static str| -> Result<u128, SinkError> {
        let value: String = row.try_get(i).map_err(db("reading transfers"))?;
        parse_u128("transfers", column, &value)
    };
    let int = |i: usize| -> Result<i64, SinkError> {
        let value: i64 = match i {
            10 | 11 => i64::from(row.try_get::<i32, _>(i).map_err(db("reading transfers"))?),
            _ => row.try_get(i).map_err(db("reading transfers"))?,
        };
        Ok(value)
    };
    let state: String = row.try_get(13).map_err(db("reading transfers"))?;
    Ok(TransferRow {
        transfer: Transfer {
            id: text(0, "id")?,
            debit_account_id: text(1, "debit_account_id")?,
            credit_account_id: text(2, "credit_account_id")?,
            amount: text(3, "amount")?,
            pending_id: text(4, "pending_id")?,
            user_data_128: text(5, "user_data_128")?,
            user_data_64: narrow_u64("transfers", "user_data_64", text(6, "user_data_64")?)?,
            user_data_32: narrow("transfers", "user_data_32", int(7)?)?,
            timeout: narrow("transfers", "timeout", int(8)?)?,
            ledger: narrow("transfers", "ledger", int(9)?)?,
            code: narrow("transfers", "code", int(10)?)?,
            flags: TransferFlags::from_bits_retain(narrow("transfers", "flags", int(11)?)?),
            timestamp: narrow("transfers", "timestamp", int(12)?)?,
        },
        state: state_of(&state)?,
    })
}

#[cfg(test)]
mod tests {
    //! Against the PostgreSQL of `scripts/services` (127.0.0.1:5432, database `test` to create
    //! a database of its own): the `COPY` path, the replay path it falls back to, exact values.

    use std::collections::HashSet;

    use ledger::{
        Account, AccountFlags, Balances, BatchMarker, Event, EventBody, EventKind, RemoteSides,
        Transfer, TransferChange, TransferFlags,
    };
    use sqlx::{Connection, PgConnection};

    use crate::model::{Changes, TransferRow, TransferState};
    use crate::sink::{Sink, SinkError, Target};

    const GROUP: &str = "g";

    /// A database of its own, dropped when the test ends (even a failed one), and a runtime
    /// to reach it.
    struct Database {
        database: testkit::postgres::PgDatabase,
        runtime: tokio::runtime::Runtime,
    }

    impl Database {
        fn new(label: &str) -> Database {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let database = testkit::postgres::PgDatabase::unique(&format!("projector_{label}"));
            Database { database, runtime }
        }

        fn url(&self) -> String {
            self.database.url().to_string()
        }
    }

    const A: u128 = u128::MAX;
    const B: u128 = 1 << 127;

    fn balances(base: u128) -> Balances {
        Balances {
            debits_pending: base,
            debits_posted: base - 1,
            credits_pending: base - 2,
            credits_posted: base - 3,
        }
    }

    fn transfer(id: u128, flags: TransferFlags, pending_id: u128) -> Transfer {
        Transfer {
            id,
            debit_account_id: A,
            credit_account_id: B,
            amount: u128::MAX - id,
            pending_id,
            user_data_128: u128::MAX - 1,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            timeout: u32::MAX,
            ledger: u32::MAX,
            code: u16::MAX,
            flags,
            timestamp: i64::MAX as u64 - 1_000 + id as u64 % 1_000,
        }
    }

    /// Events `first_seq..` of `bodies`, closed by a marker.
    fn batch(first_seq: u64, bodies: Vec<(EventKind, EventBody)>) -> Vec<Event> {
        let mut events: Vec<Event> = bodies
            .into_iter()
            .enumerate()
            .map(|(at, (kind, body))| Event {
                seq: first_seq + at as u64,
                kind,
                timestamp: 1_000 + first_seq + at as u64,
                body,
            })
            .collect();
        let seq = first_seq + events.len() as u64;
        events.push(Event {
            seq,
            kind: EventKind::Batch,
            timestamp: 1_000 + seq,
            body: EventBody::Batch(BatchMarker {
                first_seq,
                events_count: events.len() as u32,
                log_index: seq,
            }),
        });
        events
    }

    fn change(kind: EventKind, transfer: Transfer, base: u128) -> (EventKind, EventBody) {
        (
            kind,
            EventBody::Transfer(TransferChange {
                transfer,
                remote: RemoteSides::empty(),
                debit: balances(base),
                credit: balances(base - 10),
            }),
        )
    }

    /// Three batches: two accounts (`A` with history), a pending and a plain transfer, then a
    /// transfer posting the pending one; every value at the edge of its column.
    fn batches() -> Vec<Changes> {
        let account = |id: u128, flags: AccountFlags| Account {
            id,
            user_data_128: u128::MAX,
            user_data_64: u64::MAX,
            user_data_32: u32::MAX,
            ledger: u32::MAX,
            code: u16::MAX,
            flags,
            timestamp: 7,
            ..Account::default()
        };
        let first = batch(
            1,
            vec![
                (
                    EventKind::AccountCreated,
                    EventBody::Account(account(A, AccountFlags::HISTORY)),
                ),
                (
                    EventKind::AccountCreated,
                    EventBody::Account(account(B, AccountFlags::empty())),
                ),
            ],
        );
        let second = batch(
            4,
            vec![
                change(
                    EventKind::TransferCreated,
                    transfer(B + 1, TransferFlags::PENDING, 0),
                    u128::MAX - 100,
                ),
                change(
                    EventKind::TransferCreated,
                    transfer(B + 2, TransferFlags::empty(), 0),
                    u128::MAX - 200,
                ),
            ],
        );
        let third = batch(
            7,
            vec![change(
                EventKind::TransferPosted,
                transfer(B + 3, TransferFlags::POST_PENDING_TRANSFER, B + 1),
                u128::MAX - 300,
            )],
        );
        let mut history = HashSet::new();
        [first, second, third]
            .iter()
            .map(|events| Changes::fold(events, &mut history).unwrap())
            .collect()
    }

    /// Everything the read model holds, as text where PostgreSQL stores NUMERIC.
    async fn rows(
        sink: &mut Sink,
        url: &str,
    ) -> (Vec<Account>, Vec<TransferRow>, Vec<(String, i64, String)>) {
        let mut conn = PgConnection::connect(url).await.unwrap();
        let history = sqlx::query_as(
            "SELECT account_id::text, seq, debits_pending::text || ' ' || debits_posted::text
                 || ' ' || credits_pending::text || ' ' || credits_posted::text
             FROM account_balances ORDER BY account_id, seq",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        (
            sink.accounts_after(None, 100).await.unwrap(),
            sink.transfers_after(None, 100).await.unwrap(),
            history,
        )
    }

    async fn set_offset(url: &str, seq: i64) {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::query("UPDATE projection_offsets SET last_seq = $1")
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    #[test]
    fn copies_exact_values_and_a_replay_after_the_offset_moved_back_changes_nothing() {
        let database = Database::new("replay");
        let url = database.url();
        let changes = batches();
        database.runtime.block_on(async {
            let mut sink = Sink::open(&Target::Postgres(url.clone()), true)
                .await
                .unwrap();
            assert_eq!(sink.offset(GROUP).await.unwrap(), 0);
            for batch in &changes {
                sink.apply(GROUP, batch).await.unwrap();
            }
            let written = rows(&mut sink, &url).await;

            // Exact 128-bit values, and the states as of the last event.
            let (accounts, transfers, history) = &written;
            assert_eq!(accounts.len(), 2);
            let a = accounts.iter().find(|a| a.id == A).unwrap();
            assert_eq!(a.user_data_128, u128::MAX);
            assert_eq!(a.debits_pending, u128::MAX - 300);
            let states: Vec<(u128, TransferState)> =
                transfers.iter().map(|r| (r.transfer.id, r.state)).collect();
            assert_eq!(
                states,
                [
                    (B + 1, TransferState::Posted),
                    (B + 2, TransferState::Created),
                    (B + 3, TransferState::Created),
                ]
            );
            let expected: Vec<Transfer> = changes
                .iter()
                .flat_map(|c| c.transfers.iter().map(|r| r.transfer))
                .collect();
            let stored: Vec<Transfer> = transfers.iter().map(|r| r.transfer).collect();
            assert_eq!(stored, expected);
            // A history row per change of A (the debit side of each transfer event).
            assert_eq!(history.len(), 3);
            assert_eq!(history[0].0, A.to_string());
            assert_eq!(
                history[0].2,
                format!(
                    "{} {} {} {}",
                    u128::MAX - 100,
                    u128::MAX - 101,
                    u128::MAX - 102,
                    u128::MAX - 103
                )
            );

            // Written again from the end of the first batch, then from 0: the copies meet the
            // rows already there, the savepoint undoes them, nothing changes.
            set_offset(&url, changes[0].last_seq as i64).await;
            assert_eq!(sink.offset(GROUP).await.unwrap(), changes[0].last_seq);
            for batch in &changes[1..] {
                sink.apply(GROUP, batch).await.unwrap();
            }
            assert_eq!(rows(&mut sink, &url).await, written);
            set_offset(&url, 0).await;
            for batch in &changes {
                sink.apply(GROUP, batch).await.unwrap();
            }
            assert_eq!(rows(&mut sink, &url).await, written);
            assert_eq!(sink.offset(GROUP).await.unwrap(), changes[2].last_seq);

            // The compare-and-set still refuses a batch the offset has passed.
            let error = sink.apply(GROUP, &changes[2]).await.unwrap_err();
            assert!(
                matches!(
                    error,
                    SinkError::OffsetMoved {
                        expected: 6,
                        found: 8,
                        ..
                    }
                ),
                "{error}"
            );
            assert_eq!(rows(&mut sink, &url).await, written);
        });
    }
}
