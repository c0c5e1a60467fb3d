//! A PostgreSQL database of one's own: created on a server, dropped (with its connections) when
//! the handle is dropped, so a test or a benchmark run leaves nothing behind even when it fails.
//!
//! Blocking, like the rest of the kit: each call runs on a runtime of its own, on a thread of
//! its own, so it works both inside and outside the caller's tokio runtime. It speaks only
//! `CREATE DATABASE` and `DROP DATABASE`; what goes into the database is the caller's.

use sqlx::{Connection, PgConnection};

/// The server the tests use (`scripts/services` starts it; trust authentication), with the
/// database to connect to as administrator.
pub const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Longest database name PostgreSQL keeps whole (`NAMEDATALEN - 1`); a longer one is cut.
const NAME_BYTES_MAX: usize = 63;

/// Why a database could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{url}: expected postgres://USER@HOST:PORT/DATABASE")]
    Url { url: String },
    #[error(
        "database name {name:?}: expected 1 to {NAME_BYTES_MAX} lowercase ASCII letters, digits or underscores, not starting with a digit"
    )]
    Name { name: String },
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("creating database {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("starting a runtime to reach PostgreSQL: {0}")]
    Runtime(#[from] std::io::Error),
}

/// A database this process created; dropped with its connections when this is dropped.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl PgDatabase {
    /// Creates database `name` on the server of `admin_url` (a URL of a database there that the
    /// user may connect to and create databases from).
    pub fn create(admin_url: &str, name: &str) -> Result<PgDatabase, PgError> {
        let url = database_url(admin_url, name)?;
        if !is_plain_name(name) {
            return Err(PgError::Name { name: name.into() });
        }
        let create = format!("CREATE DATABASE {name}");
        on_a_thread(async {
            let mut admin =
                PgConnection::connect(admin_url)
                    .await
                    .map_err(|source| PgError::Connect {
                        url: admin_url.into(),
                        source,
                    })?;
            sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&mut admin)
                .await
                .map_err(|source| PgError::Create {
                    name: name.into(),
                    source,
                })?;
            Ok::<(), PgError>(())
        })??;
        Ok(PgDatabase {
            name: name.into(),
            url,
            admin_url: admin_url.into(),
        })
    }

    /// A database on the local test server ([`LOCAL_ADMIN_URL`]) named `<label>_<pid>_<ns>`:
    /// no other process, nor another call of this one, makes the same. Panics (a test's
    /// failure) when the server cannot be reached.
    pub fn unique(label: &str) -> PgDatabase {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .subsec_nanos();
        let name = format!("{label}_{}_{nanos}", std::process::id());
        PgDatabase::create(LOCAL_ADMIN_URL, &name).unwrap_or_else(|error| {
            panic!("{error} (is PostgreSQL on 127.0.0.1:5432? scripts/services starts it)")
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this database, as the same user.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let admin_url = &self.admin_url;
        let _ = on_a_thread(async {
            if let Ok(mut admin) = PgConnection::connect(admin_url).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&mut admin)
                    .await;
            }
        });
    }
}

/// The URL of database `name` on the server of `url` (a database URL).
pub fn database_url(url: &str, name: &str) -> Result<String, PgError> {
    let (server, _) = url
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://"))
        .ok_or_else(|| PgError::Url { url: url.into() })?;
    Ok(format!("{server}/{name}"))
}

/// A name that needs no quoting in SQL and that PostgreSQL keeps as it is.
fn is_plain_name(name: &str) -> bool {
    (1..=NAME_BYTES_MAX).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Runs `work` to its end on a current-thread runtime on a thread of its own (a runtime cannot
/// be blocked on from inside another).
fn on_a_thread<T: Send>(work: impl Future<Output = T> + Send) -> Result<T, PgError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(work))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_lives_on_the_given_server() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/test", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert!(database_url("nonsense", "x").is_err());
    }

    #[test]
    fn only_plain_names_are_taken() {
        assert!(is_plain_name("fincore_bench_123_0"));
        for name in [
            "",
            "1abc",
            "a-b",
            "A",
            "a;drop",
            &"a".repeat(NAME_BYTES_MAX + 1),
        ] {
            assert!(!is_plain_name(name), "{name:?}");
        }
    }

    #[test]
    fn a_unique_database_is_made_and_dropped_with_its_handle() {
        let (a, b) = (PgDatabase::unique("testkit"), PgDatabase::unique("testkit"));
        assert_ne!(a.name(), b.name());
        let exists = |name: String| {
            on_a_thread(async move {
                let mut admin = PgConnection::connect(LOCAL_ADMIN_URL).await.unwrap();
                sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                )
                .bind(name)
                .fetch_one(&mut admin)
                .await
                .unwrap()
            })
            .unwrap()
        };
        let name = a.name().to_string();
        assert!(exists(name.clone()));
        // Dropped even with a connection open to it.
        let open = on_a_thread(async { PgConnection::connect(a.url()).await.unwrap() }).unwrap();
        drop(a);
        assert!(!exists(name));
        assert!(exists(b.name().to_string()));
        drop(open);
    }
}
