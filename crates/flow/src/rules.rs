//! The rules, as an operator writes them (JSON) and as they are checked before use: a rule set
//! that fails a check is refused whole, naming the field and the reason, and the rules in use
//! stay.
//!
//! ```json
//! {
//!   "pools": { "write": { "max_in_flight": 512, "per_caller_max_in_flight": 128,
//!                         "adaptive": { "latency_ms": 50 } } },
//!   "limits": [
//!     { "api": "create_transfers", "caller": "*", "rate_per_second": 200, "burst": 20 },
//!     { "api": "get_account_transfers", "rate_per_second": 50, "max_wait_ms": 200 },
//!     { "caller": "reports", "rate_per_second": 10, "warm_up_seconds": 30, "cold_factor": 3 }
//!   ],
//!   "switches": { "read_only": false, "disabled_apis": ["get_account_balances"] },
//!   "breaker": { "error_ratio_percent": 50, "slow_ratio_percent": 50, "slow_call_ms": 500 }
//! }
//! ```
//!
//! Owns the format and its checks. It must not keep any state of the limits it describes.

use serde::{Deserialize, Serialize};

use crate::api::{Api, Kind};

/// A whole rule set. Every field may be left out: the defaults limit nothing but the pools'
/// sizes (`limits::FLOW_*_DEFAULT`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub pools: Pools,
    #[serde(default)]
    pub limits: Vec<RateRule>,
    #[serde(default)]
    pub switches: Switches,
    /// A gateway's circuit breaker on each group it calls (`breaker.rs`); left out, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerRule>,
    /// A limit on the transfers naming any one account (`hot.rs`); left out, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_accounts: Option<HotAccountRule>,
}

/// At most `rate_per_second` transfers a second, after `burst` at once, may name any one
/// account (as debit or credit); a batch that would pass it for some account is refused whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotAccountRule {
    pub rate_per_second: u32,
    #[serde(default = "hot_burst_default")]
    pub burst: u32,
}

fn hot_burst_default() -> u32 {
    limits::BATCH_EVENTS_MAX as u32
}

/// When a gateway stops calling a group for a while (opens its breaker), and how it tries
/// again. Counted per group over the last `window_seconds`: it opens once at least
/// `min_calls` calls were made and failed calls (the group did not answer) reach
/// `error_ratio_percent` of them, or calls still unanswered after `slow_call_ms` reach
/// `slow_ratio_percent`; or, whatever the count, once `error_count` calls failed. Open, it
/// refuses calls to the group at once for `open_ms`, then lets `half_open_probes` calls
/// through: all answered in time closes it, one failing or slow opens it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_ratio_percent: Option<u32>,
    #[serde(default = "slow_call_ms_default")]
    pub slow_call_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u32>,
    #[serde(default = "min_calls_default")]
    pub min_calls: u32,
    #[serde(default = "window_seconds_default")]
    pub window_seconds: u32,
    #[serde(default = "open_ms_default")]
    pub open_ms: u32,
    #[serde(default = "half_open_probes_default")]
    pub half_open_probes: u32,
}

fn slow_call_ms_default() -> u32 {
    1_000
}

fn min_calls_default() -> u32 {
    10
}

fn window_seconds_default() -> u32 {
    10
}

fn open_ms_default() -> u32 {
    5_000
}

fn half_open_probes_default() -> u32 {
    3
}

impl BreakerRule {
    fn check(&self) -> Result<(), RulesError> {
        let at = |name: &str| format!("breaker.{name}");
        if self.error_ratio_percent.is_none()
            && self.slow_ratio_percent.is_none()
            && self.error_count.is_none()
        {
            return Err(refuse(
                "breaker",
                "opens on nothing: give error_ratio_percent, slow_ratio_percent or error_count",
            ));
        }
        if let Some(percent) = self.error_ratio_percent {
            within(at("error_ratio_percent"), percent, 1, 100)?;
        }
        if let Some(percent) = self.slow_ratio_percent {
            within(at("slow_ratio_percent"), percent, 1, 100)?;
        }
        if let Some(count) = self.error_count {
            within(at("error_count"), count, 1, limits::FLOW_BREAKER_CALLS_MAX)?;
        }
        within(
            at("slow_call_ms"),
            self.slow_call_ms,
            1,
            limits::FLOW_BREAKER_MS_MAX,
        )?;
        within(
            at("min_calls"),
            self.min_calls,
            1,
            limits::FLOW_BREAKER_CALLS_MAX,
        )?;
        within(
            at("window_seconds"),
            self.window_seconds,
            1,
            limits::FLOW_BREAKER_WINDOW_SECONDS_MAX,
        )?;
        within(at("open_ms"), self.open_ms, 1, limits::FLOW_BREAKER_MS_MAX)?;
        within(
            at("half_open_probes"),
            self.half_open_probes,
            1,
            limits::FLOW_BREAKER_CALLS_MAX,
        )
    }
}

/// One pool per kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pools {
    #[serde(default)]
    pub write: PoolRule,
    #[serde(default)]
    pub read: PoolRule,
    #[serde(default)]
    pub admin: PoolRule,
}

impl Pools {
    pub fn of(&self, kind: Kind) -> PoolRule {
        match kind {
            Kind::Write => self.write,
            Kind::Read => self.read,
            Kind::Admin => self.admin,
        }
    }
}

/// How many requests of one kind run at once, and what happens to the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRule {
    /// Requests served at once.
    #[serde(default = "in_flight_default")]
    pub max_in_flight: u32,
    /// Requests one caller may have in the pool at once, waiting or served (0: no share of
    /// its own, as behind a gateway, which is its nodes' one caller). A caller past its share is
    /// refused at once, so that one caller's flood cannot fill the pool and its queue in front
    /// of the others.
    #[serde(default)]
    pub per_caller_max_in_flight: u32,
    /// Requests that may wait for a place; beyond it they are refused at once.
    #[serde(default = "queue_default")]
    pub max_queue: u32,
    /// How long a request waits for a place before it is refused (0: refused at once when the
    /// pool is full).
    #[serde(default = "wait_default")]
    pub max_wait_ms: u32,
    /// Adaptive protection (`adaptive.rs`); left out, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveRule>,
}

/// While a pool's calls take longer than `latency_ms` (the mean of those just completed, or the
/// mean age of those served now), it admits only as many calls, served
/// and waiting, as it served at once in the last second without queueing (its most calls a
/// second times their shortest mean time), and at least `min_in_flight`; the rest are refused
/// at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveRule {
    pub latency_ms: u32,
    #[serde(default = "adaptive_min_in_flight_default")]
    pub min_in_flight: u32,
}

fn adaptive_min_in_flight_default() -> u32 {
    limits::FLOW_ADAPTIVE_MIN_IN_FLIGHT_DEFAULT
}

fn in_flight_default() -> u32 {
    limits::FLOW_IN_FLIGHT_DEFAULT
}

fn queue_default() -> u32 {
    limits::FLOW_QUEUE_DEFAULT
}

fn wait_default() -> u32 {
    limits::FLOW_WAIT_MS_DEFAULT
}

impl Default for PoolRule {
    fn default() -> PoolRule {
        PoolRule {
            max_in_flight: in_flight_default(),
            per_caller_max_in_flight: 0,
            max_queue: queue_default(),
            max_wait_ms: wait_default(),
            adaptive: None,
        }
    }
}

impl PoolRule {
    /// The share of one caller, with 0 read as the whole pool and its queue.
    pub fn caller_share(&self) -> u32 {
        if self.per_caller_max_in_flight == 0 {
            self.max_in_flight.saturating_add(self.max_queue)
        } else {
            self.per_caller_max_in_flight
        }
    }
}

/// A rate limit: GCRA (a request every `1 / rate_per_second`, `burst` at once), optionally
/// warming up from a lower rate after a quiet spell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// The API it limits (a name of `Api`); left out, every API, counted together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Whose calls it limits: a key's name (that caller), `"*"` (each caller on its own), or
    /// left out (all callers together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    pub rate_per_second: u32,
    /// Requests admitted at once after a quiet spell (1: none above the rate).
    #[serde(default = "burst_default")]
    pub burst: u32,
    /// How long traffic at the limit takes to warm the limiter from `rate / cold_factor` to
    /// the full rate (0: no warm-up, the full rate at once).
    #[serde(default)]
    pub warm_up_seconds: u32,
    #[serde(default = "cold_factor_default")]
    pub cold_factor: u32,
    /// How long a request over the rate may wait for its turn (queueing, as a leaky bucket);
    /// 0 refuses it at once.
    #[serde(default)]
    pub max_wait_ms: u32,
}

fn burst_default() -> u32 {
    1
}

fn cold_factor_default() -> u32 {
    3
}

/// Who a rate rule limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// Every caller's calls, counted together.
    Everyone,
    /// Each caller's calls, counted apart.
    EachCaller,
    /// The named caller's calls.
    Caller(String),
}

impl RateRule {
    pub(crate) fn scope(&self) -> Scope {
        match self.caller.as_deref() {
            None => Scope::Everyone,
            Some("*") => Scope::EachCaller,
            Some(name) => Scope::Caller(name.to_string()),
        }
    }

    /// The API it limits (`None`: all); the name is checked by [`Rules::check`].
    pub(crate) fn api(&self) -> Option<Api> {
        self.api.as_deref().and_then(Api::from_name)
    }
}

/// Run-time switches: degrade the service without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switches {
    /// Refuse the calls that start a change of the ledger (`create_accounts`,
    /// `create_transfers`); reads, saga settlements and membership changes go on.
    #[serde(default)]
    pub read_only: bool,
    /// APIs refused outright (for example `get_account_transfers` and
    /// `get_account_balances`: history queries off).
    #[serde(default)]
    pub disabled_apis: Vec<String>,
}

/// Why a rule set was refused: the field (`limits[2].rate_per_second`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RulesError {
    pub field: String,
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> RulesError {
    RulesError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn within(field: String, value: u32, low: u32, high: u32) -> Result<(), RulesError> {
    if value < low || value > high {
        return Err(refuse(
            field,
            format!("{value} is not within {low} to {high}"),
        ));
    }
    Ok(())
}

fn known_api(field: String, name: &str) -> Result<(), RulesError> {
    if Api::from_name(name).is_none() {
        let names: Vec<&str> = Api::ALL.iter().map(|api| api.name()).collect();
        return Err(refuse(
            field,
            format!("unknown API {name:?}; the APIs are {}", names.join(", ")),
        ));
    }
    Ok(())
}

impl Rules {
    /// Reads and checks a rule set from JSON; an unknown field is refused, named.
    pub fn from_json(text: &str) -> Result<Rules, RulesError> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let rules: Rules = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." { "rules".into() } else { path };
            refuse(field, error.into_inner().to_string())
        })?;
        rules.check()?;
        Ok(rules)
    }

    /// Reads and checks the rules file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Rules, RulesError> {
        let field = || path.display().to_string();
        let size = std::fs::metadata(path)
            .map_err(|error| refuse(field(), error.to_string()))?
            .len();
        if size > limits::FLOW_RULES_FILE_BYTES_MAX {
            return Err(refuse(
                field(),
                format!(
                    "{size} bytes, more than the {} a rules file may hold",
                    limits::FLOW_RULES_FILE_BYTES_MAX
                ),
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|error| refuse(field(), error.to_string()))?;
        Rules::from_json(&text)
            .map_err(|error| refuse(format!("{}: {}", field(), error.field), error.reason))
    }

    /// Checks every value against its bounds.
    pub fn check(&self) -> Result<(), RulesError> {
        for kind in Kind::ALL {
            let pool = self.pools.of(kind);
            let at = |name: &str| format!("pools.{}.{name}", kind.name());
            within(
                at("max_in_flight"),
                pool.max_in_flight,
                1,
                limits::FLOW_POOL_SIZE_MAX,
            )?;
            within(
                at("per_caller_max_in_flight"),
                pool.per_caller_max_in_flight,
                0,
                pool.max_in_flight.saturating_add(pool.max_queue),
            )?;
            within(
                at("max_queue"),
                pool.max_queue,
                0,
                limits::FLOW_POOL_SIZE_MAX,
            )?;
            within(
                at("max_wait_ms"),
                pool.max_wait_ms,
                0,
                limits::FLOW_WAIT_MS_MAX,
            )?;
            if let Some(adaptive) = pool.adaptive {
                within(
                    at("adaptive.latency_ms"),
                    adaptive.latency_ms,
                    1,
                    limits::FLOW_ADAPTIVE_LATENCY_MS_MAX,
                )?;
                within(
                    at("adaptive.min_in_flight"),
                    adaptive.min_in_flight,
                    1,
                    limits::FLOW_POOL_SIZE_MAX,
                )?;
            }
        }
        if self.limits.len() > limits::FLOW_LIMIT_RULES_MAX {
            return Err(refuse(
                "limits",
                format!(
                    "{} rules, more than the {} allowed",
                    self.limits.len(),
                    limits::FLOW_LIMIT_RULES_MAX
                ),
            ));
        }
        for (i, rule) in self.limits.iter().enumerate() {
            let at = |name: &str| format!("limits[{i}].{name}");
            if let Some(api) = &rule.api {
                known_api(at("api"), api)?;
            }
            if let Some(caller) = &rule.caller
                && (caller.is_empty() || caller.len() > limits::FLOW_NAME_BYTES_MAX)
            {
                return Err(refuse(
                    at("caller"),
                    format!(
                        "a key's name, \"*\" or left out, of 1 to {} bytes",
                        limits::FLOW_NAME_BYTES_MAX
                    ),
                ));
            }
            within(
                at("rate_per_second"),
                rule.rate_per_second,
                1,
                limits::FLOW_RATE_PER_SECOND_MAX,
            )?;
            within(at("burst"), rule.burst, 1, limits::FLOW_BURST_MAX)?;
            within(
                at("warm_up_seconds"),
                rule.warm_up_seconds,
                0,
                limits::FLOW_WARM_UP_SECONDS_MAX,
            )?;
            within(
                at("cold_factor"),
                rule.cold_factor,
                1,
                limits::FLOW_COLD_FACTOR_MAX,
            )?;
            within(
                at("max_wait_ms"),
                rule.max_wait_ms,
                0,
                limits::FLOW_WAIT_MS_MAX,
            )?;
        }
        for (i, name) in self.switches.disabled_apis.iter().enumerate() {
            known_api(format!("switches.disabled_apis[{i}]"), name)?;
        }
        if let Some(breaker) = &self.breaker {
            breaker.check()?;
        }
        if let Some(hot) = &self.hot_accounts {
            within(
                "hot_accounts.rate_per_second".into(),
                hot.rate_per_second,
                1,
                limits::FLOW_RATE_PER_SECOND_MAX,
            )?;
            within(
                "hot_accounts.burst".into(),
                hot.burst,
                1,
                limits::FLOW_BURST_MAX,
            )?;
        }
        Ok(())
    }

    /// The rules as JSON (what `Rules::from_json` reads back).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("rules always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_given_means_default_pools_and_no_limits() {
        let rules = Rules::from_json("{}").unwrap();
        assert_eq!(rules, Rules::default());
        assert_eq!(
            rules.pools.write.max_in_flight,
            limits::FLOW_IN_FLIGHT_DEFAULT
        );
        assert_eq!(
            rules.pools.read.caller_share(),
            limits::FLOW_IN_FLIGHT_DEFAULT + limits::FLOW_QUEUE_DEFAULT
        );
        assert!(!rules.switches.read_only);
    }

    #[test]
    fn the_documented_example_reads_and_round_trips() {
        let text = r#"{
          "pools": { "write": { "max_in_flight": 512, "per_caller_max_in_flight": 128,
                                "adaptive": { "latency_ms": 50 } } },
          "limits": [
            { "api": "create_transfers", "caller": "*", "rate_per_second": 200, "burst": 20 },
            { "api": "get_account_transfers", "rate_per_second": 50, "max_wait_ms": 200 },
            { "caller": "reports", "rate_per_second": 10, "warm_up_seconds": 30, "cold_factor": 3 }
          ],
          "switches": { "read_only": false, "disabled_apis": ["get_account_balances"] },
          "breaker": { "error_ratio_percent": 50, "slow_ratio_percent": 50, "slow_call_ms": 500 }
        }"#;
        let rules = Rules::from_json(text).unwrap();
        let breaker = rules.breaker.unwrap();
        assert_eq!(
            (
                breaker.slow_call_ms,
                breaker.min_calls,
                breaker.open_ms,
                breaker.error_count
            ),
            (500, 10, 5_000, None)
        );
        assert_eq!(rules.pools.write.caller_share(), 128);
        assert_eq!(
            rules.pools.write.adaptive,
            Some(AdaptiveRule {
                latency_ms: 50,
                min_in_flight: limits::FLOW_ADAPTIVE_MIN_IN_FLIGHT_DEFAULT
            })
        );
        assert_eq!(rules.pools.read, PoolRule::default());
        assert_eq!(rules.limits[0].scope(), Scope::EachCaller);
        assert_eq!(rules.limits[1].scope(), Scope::Everyone);
        assert_eq!(rules.limits[2].scope(), Scope::Caller("reports".into()));
        assert_eq!(rules.limits[2].api(), None);
        assert_eq!(Rules::from_json(&rules.to_json()).unwrap(), rules);
    }

    #[test]
    fn a_bad_rule_set_is_refused_naming_the_field() {
        for (text, field) in [
            (
                r#"{"limits":[{"rate_per_second":0}]}"#,
                "limits[0].rate_per_second",
            ),
            (
                r#"{"limits":[{"rate_per_second":5},{"api":"drop_all","rate_per_second":5}]}"#,
                "limits[1].api",
            ),
            (
                r#"{"limits":[{"caller":"","rate_per_second":5}]}"#,
                "limits[0].caller",
            ),
            (
                r#"{"limits":[{"rate_per_second":5,"burst":0}]}"#,
                "limits[0].burst",
            ),
            (
                r#"{"limits":[{"rate_per_second":5,"cold_factor":0}]}"#,
                "limits[0].cold_factor",
            ),
            (
                r#"{"limits":[{"rate_per_second":5,"max_wait_ms":60000}]}"#,
                "limits[0].max_wait_ms",
            ),
            (
                r#"{"pools":{"read":{"max_in_flight":0}}}"#,
                "pools.read.max_in_flight",
            ),
            (
                r#"{"pools":{"admin":{"max_wait_ms":99999}}}"#,
                "pools.admin.max_wait_ms",
            ),
            (
                r#"{"pools":{"write":{"adaptive":{"latency_ms":0}}}}"#,
                "pools.write.adaptive.latency_ms",
            ),
            (
                r#"{"pools":{"write":{"adaptive":{"min_in_flight":4}}}}"#,
                "pools.write.adaptive",
            ),
            (
                r#"{"switches":{"disabled_apis":["nope"]}}"#,
                "switches.disabled_apis[0]",
            ),
            (
                r#"{"limits":[{"rate_per_second":5,"rate":1}]}"#,
                "limits[0].rate",
            ),
            (r#"{"pool":{}}"#, "pool"),
            (r#"{"breaker":{}}"#, "breaker"),
            (
                r#"{"hot_accounts":{"rate_per_second":0}}"#,
                "hot_accounts.rate_per_second",
            ),
            (
                r#"{"breaker":{"error_ratio_percent":101}}"#,
                "breaker.error_ratio_percent",
            ),
            (
                r#"{"breaker":{"error_count":3,"open_ms":0}}"#,
                "breaker.open_ms",
            ),
        ] {
            let error = Rules::from_json(text).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
    }
}
