//! `fincore bench --cdc`: what the change-event path costs the ledger and what it delivers.
//! Each round runs the network workload on a group started here three ways, in turn: events off
//! (`FINCORE_EVENTS=off`), events on with no consumer (the default node), and events on with a
//! `fincore cdc` publishing to NATS JetStream and a `fincore project` projecting into
//! PostgreSQL (child processes of this executable, started before the load, as an operator
//! would run them).
//!
//! While the load runs, a sampler reads every `SAMPLE_INTERVAL_MS` the last event the leader
//! has, the last message in the stream and the projector's stored offset; the lag of an event
//! is the time from the first sample where the leader had it to the first where the consumer
//! had it (so the figures are within a sample interval of the truth), taken for every
//! `LAG_STRIDE_EVENTS`-th event. After the load the run waits (bounded) until both consumers
//! have every event. Owns the consumers' processes, their database and stream (made for the
//! run and removed after it) and the figures; must not judge the ledger's results (`network`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, PgConnection};

/// How often the sampler looks.
const SAMPLE_INTERVAL_MS: u64 = 10;
/// The lag is taken for every this many events.
const LAG_STRIDE_EVENTS: u64 = 97;
/// How long the consumers may take, after the load, to have every event.
const CATCH_UP_SECONDS_MAX: u64 = 600;
/// Samples kept per series (a sample is kept only when the value moved): hours at 10 ms.
const SAMPLES_MAX: usize = 4_000_000;
/// The group's name for the publisher and the projector.
const GROUP: &str = "bench";

/// Where the consumers of a `--cdc` run send the events.
#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    /// NATS server URL.
    pub nats: String,
    /// A PostgreSQL URL whose server gets a database of the run's own (created, then dropped).
    pub postgres: String,
    /// Distinguishes this run's database and stream from any other's.
    pub label: String,
}

/// What one consumer delivered.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerFigures {
    /// Events it had at the end (every event of the run).
    pub events: u64,
    /// Those events over the time from the start of the load until it had them all.
    pub events_per_second: f64,
    /// The most events it took in in any one second.
    pub peak_events_per_second: f64,
    /// How long after the last acknowledgement it had every event.
    pub caught_up_after_load_ms: f64,
    /// Commit (the leader has the event) to the consumer having it.
    pub lag_ms_p50: f64,
    pub lag_ms_p99: f64,
    pub lag_ms_max: f64,
    /// CPU seconds of its process over the run.
    pub cpu_seconds: f64,
}

/// The publisher's and the projector's figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct CdcFigures {
    pub publisher: ConsumerFigures,
    pub projector: ConsumerFigures,
}

/// One value over time: the instants (since the sampler's origin) at which it first showed
/// each new value.
#[derive(Default)]
struct Series {
    at: Vec<Duration>,
    value: Vec<u64>,
}

impl Series {
    fn push(&mut self, at: Duration, value: u64) {
        if self.value.last().is_none_or(|&last| value > last) && self.at.len() < SAMPLES_MAX {
            self.at.push(at);
            self.value.push(value);
        }
    }

    /// When the value first reached `seq` (none if it never did).
    fn reached(&self, seq: u64) -> Option<Duration> {
        let at = self.value.partition_point(|&value| value < seq);
        self.at.get(at).copied()
    }

    fn last(&self) -> u64 {
        self.value.last().copied().unwrap_or(0)
    }

    /// The most the value rose within any window of one second ending at a sample: from the
    /// value it had when the window opened (the last sample before it) to the window's last.
    fn peak_per_second(&self) -> f64 {
        let window = Duration::from_secs(1);
        let mut start = 0;
        let mut peak = 0u64;
        for end in 0..self.at.len() {
            while self.at[end] - self.at[start] >= window {
                start += 1;
            }
            let before = start.checked_sub(1).map_or(0, |at| self.value[at]);
            peak = peak.max(self.value[end] - before);
        }
        peak as f64
    }
}

/// The three series the sampler keeps.
#[derive(Default)]
struct Samples {
    ledger: Series,
    stream: Series,
    projected: Series,
}

/// The publisher and projector of one run, and the sampler watching them.
pub(super) struct Consumers {
    publisher: Child,
    projector: Child,
    /// The run's database: held only to be dropped (after the consumers stop) with this.
    _database: testkit::postgres::PgDatabase,
    stream: String,
    nats: String,
    origin: Instant,
    /// Set once the load is over: the sampler then ends when both consumers have every event.
    load_over: Arc<AtomicBool>,
    /// Set to make the sampler end at once.
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<anyhow::Result<Samples>>>,
}

fn block_on<T>(work: impl Future<Output = T>) -> anyhow::Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work))
}

impl Consumers {
    /// Makes the run's database, starts `fincore cdc` and `fincore project` on the group
    /// (`grpc_urls`, any replica) and the sampler reading the leader at `leader_http`. Their
    /// output goes to `dir/cdc.log` and `dir/project.log`.
    pub fn start(
        plan: &ConsumerPlan,
        grpc_urls: &[String],
        leader_http: &str,
        api_key: Option<&str>,
        dir: &Path,
    ) -> anyhow::Result<Consumers> {
        let name = format!("fincore_bench_{}", plan.label);
        let database =
            testkit::postgres::PgDatabase::create(&plan.postgres, &name).with_context(|| {
                format!("making the run's database on --postgres {}", plan.postgres)
            })?;
        let url = database.url().to_string();
        let prefix = format!("fincore-bench-{}", plan.label);
        let stream = format!("{prefix}-{GROUP}-events");
        let group = format!("{GROUP}={}", grpc_urls.join(","));
        let key: Vec<String> = api_key
            .map(|key| vec!["--api-key".to_string(), key.to_string()])
            .unwrap_or_default();
        let publisher = spawn(
            dir,
            "cdc",
            &[
                "cdc",
                "--nats",
                &plan.nats,
                "--group",
                &group,
                "--subject-prefix",
                &prefix,
            ],
            &key,
        )?;
        let projector = match spawn(
            dir,
            "project",
            &["project", "--postgres", &url, "--group", &group],
            &key,
        ) {
            Ok(child) => child,
            Err(error) => {
                stop_child(publisher);
                return Err(error);
            }
        };
        let origin = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let load_over = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (flags, leader, nats, stream) = (
                (Arc::clone(&load_over), Arc::clone(&stop)),
                leader_http.to_string(),
                plan.nats.clone(),
                stream.clone(),
            );
            let url = url.clone();
            std::thread::spawn(move || sample(origin, &flags, &leader, &nats, &stream, &url))
        };
        Ok(Consumers {
            publisher,
            projector,
            _database: database,
            stream,
            nats: plan.nats.clone(),
            origin,
            load_over,
            stop,
            sampler: Some(sampler),
        })
    }

    /// Waits (bounded) until the stream and the read model have every event the leader has,
    /// then gives the figures; `load` is when the transfers started and ended.
    pub fn finish(mut self, load: (Instant, Instant)) -> anyhow::Result<CdcFigures> {
        self.load_over.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(CATCH_UP_SECONDS_MAX);
        let cpu = |child: &Child| super::groups::process_cpu_seconds(&child.id().to_string());
        loop {
            if let Some(status) = self.publisher.try_wait()? {
                anyhow::bail!("fincore cdc exited ({status}) during the run: see cdc.log");
            }
            if let Some(status) = self.projector.try_wait()? {
                anyhow::bail!("fincore project exited ({status}) during the run: see project.log");
            }
            let sampler = self.sampler.as_ref().expect("running");
            if sampler.is_finished() {
                break;
            }
            if Instant::now() > deadline {
                self.stop.store(true, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (publisher_cpu, projector_cpu) = (cpu(&self.publisher), cpu(&self.projector));
        let samples = self
            .sampler
            .take()
            .expect("running")
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))??;
        let events = samples.ledger.last();
        for (name, series) in [
            ("stream", &samples.stream),
            ("read model", &samples.projected),
        ] {
            if series.last() < events {
                anyhow::bail!(
                    "the {name} had {} of the {events} events {CATCH_UP_SECONDS_MAX} s after the load",
                    series.last()
                );
            }
        }
        let since = |instant: Instant| instant.saturating_duration_since(self.origin);
        let (load_start, load_end) = (since(load.0), since(load.1));
        let figures = |series: &Series, cpu_seconds: f64| {
            let done = series.reached(events).unwrap_or_default();
            let mut lags: Vec<Duration> = (1..=events)
                .step_by(LAG_STRIDE_EVENTS as usize)
                .chain([events])
                .filter_map(|seq| {
                    let committed = samples.ledger.reached(seq)?;
                    Some(series.reached(seq)?.saturating_sub(committed))
                })
                .collect();
            lags.sort_unstable();
            let at = |fraction: f64| {
                lags.get(((lags.len().max(1) - 1) as f64 * fraction).round() as usize)
                    .map_or(0.0, |lag| lag.as_secs_f64() * 1e3)
            };
            ConsumerFigures {
                events,
                events_per_second: events as f64
                    / done.saturating_sub(load_start).as_secs_f64().max(1e-9),
                peak_events_per_second: series.peak_per_second(),
                caught_up_after_load_ms: done.saturating_sub(load_end).as_secs_f64() * 1e3,
                lag_ms_p50: at(0.50),
                lag_ms_p99: at(0.99),
                lag_ms_max: at(1.0),
                cpu_seconds,
            }
        };
        Ok(CdcFigures {
            publisher: figures(&samples.stream, publisher_cpu),
            projector: figures(&samples.projected, projector_cpu),
        })
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
        for child in [&mut self.publisher, &mut self.projector] {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let (nats, stream) = (self.nats.clone(), self.stream.clone());
        // The database goes after this, with the field.
        let _ = block_on(async move {
            if let Ok(client) = async_nats::connect(&nats).await {
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(&stream)
                    .await;
            }
        });
    }
}

/// Starts `fincore ARGS… KEY_ARGS` with its output in `dir/NAME.log`.
fn spawn(dir: &Path, name: &str, args: &[&str], key_args: &[String]) -> anyhow::Result<Child> {
    let log: PathBuf = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let exe = std::env::current_exe().context("finding the fincore executable")?;
    Command::new(exe)
        .args(args)
        .args(key_args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting fincore {name}"))
}

fn stop_child(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Samples the three series until the stream and the read model have every event the leader
/// has once the load is over (`flags.0`), or until told to stop (`flags.1`).
fn sample(
    origin: Instant,
    (load_over, stop): &(Arc<AtomicBool>, Arc<AtomicBool>),
    leader_http: &str,
    nats: &str,
    stream: &str,
    database_url: &str,
) -> anyhow::Result<Samples> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let jetstream = async_nats::jetstream::new(
            async_nats::connect(nats)
                .await
                .with_context(|| format!("connecting to NATS at {nats}"))?,
        );
        let mut database: Option<PgConnection> = None;
        let mut samples = Samples::default();
        let tick = Duration::from_millis(SAMPLE_INTERVAL_MS);
        while !stop.load(Ordering::Relaxed) {
            // Read before the leader: once set, the leader's value read next is its last.
            let over = load_over.load(Ordering::Relaxed);
            let now = origin.elapsed();
            let ledger = leader_last_seq(leader_http).unwrap_or(samples.ledger.last());
            samples.ledger.push(now, ledger);
            let in_stream = match jetstream.get_stream(stream).await {
                Ok(mut found) => found
                    .info()
                    .await
                    .map_or(samples.stream.last(), |info| info.state.last_sequence),
                Err(_) => 0,
            };
            samples.stream.push(origin.elapsed(), in_stream);
            if database.is_none() {
                database = PgConnection::connect(database_url).await.ok();
            }
            let projected = match database.as_mut() {
                Some(conn) => sqlx::query_scalar::<_, i64>(
                    "SELECT last_seq FROM projection_offsets WHERE group_id = $1",
                )
                .bind(GROUP)
                .fetch_optional(conn)
                .await
                .ok()
                .flatten()
                .unwrap_or(0) as u64,
                None => 0,
            };
            samples.projected.push(origin.elapsed(), projected);
            // Done when the load is over (so the leader has its last event: `finish` is called
            // once every replica applied the last batch) and both consumers have it.
            if over && ledger > 0 && in_stream >= ledger && projected >= ledger {
                break;
            }
            tokio::time::sleep(tick).await;
        }
        anyhow::Ok(samples)
    })
}

/// The last event the node at `http` has (`/v1/events`' `last_seq`).
fn leader_last_seq(http: &str) -> Option<u64> {
    let page = testkit::http::get_json(http, "/v1/events?after=0&limit=1").ok()?;
    page["last_seq"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(u64, u64)]) -> Series {
        let mut series = Series::default();
        for &(ms, value) in points {
            series.push(Duration::from_millis(ms), value);
        }
        series
    }

    #[test]
    fn a_series_keeps_when_each_value_was_first_reached() {
        let s = series(&[(0, 0), (10, 5), (20, 5), (30, 9), (40, 7)]);
        assert_eq!(
            s.value,
            vec![0, 5, 9],
            "repeats and regressions are not kept"
        );
        assert_eq!(s.reached(1), Some(Duration::from_millis(10)));
        assert_eq!(s.reached(5), Some(Duration::from_millis(10)));
        assert_eq!(s.reached(6), Some(Duration::from_millis(30)));
        assert_eq!(s.reached(10), None);
    }

    #[test]
    fn the_peak_rate_is_the_largest_rise_within_one_second() {
        // Steps of 100 every 400 ms: a window of one second holds three steps.
        let s = series(&[(0, 0), (400, 100), (800, 200), (1200, 300), (1600, 400)]);
        assert_eq!(s.peak_per_second(), 300.0);
        let s = series(&[(0, 0), (500, 100), (1000, 1000), (1500, 1100), (3000, 1200)]);
        assert_eq!(s.peak_per_second(), 1000.0);
    }
}
