//! The gate: the rules in use, compiled into limiters and pools, and the decision on each call.
//!
//! A call passes, in this order: the switches (read-only, disabled APIs), every rate rule that
//! applies to it (its API's and its caller's; a call refused by one gives back the slots the
//! others gave it), then its kind's pool. Replacing the rules keeps the state of every rate
//! rule that is unchanged and of every pool whose rule is unchanged, so a reload does not hand
//! a flooding caller a fresh burst; requests in an old pool finish there.
//!
//! Owns the compiled rules and the decision. It must not know protocols (see `layer`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::api::{Api, Kind};
use crate::hot::{AccountCounts, HotAccounts, HotRefusal};
use crate::pool::{Full, Pool, PoolPlace};
use crate::rate::{Grant, RateLimiter, Verdict};
use crate::rules::{RateRule, Rules, Scope};

/// Why a call was refused: a closed set (metrics label with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Read-only mode is on.
    ReadOnly,
    /// The API is switched off.
    Disabled,
    /// Over a rate limit.
    Rate,
    /// The caller already has its share of its kind's pool.
    CallerShare,
    /// The pool's queue is full.
    QueueFull,
    /// It waited the pool's longest wait without a place.
    QueueTimeout,
    /// The pool's calls are slow and it holds what it can serve (adaptive protection).
    Overload,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::ReadOnly,
        Reason::Disabled,
        Reason::Rate,
        Reason::CallerShare,
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::Overload,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::ReadOnly => "read_only",
            Reason::Disabled => "disabled",
            Reason::Rate => "rate",
            Reason::CallerShare => "caller_share",
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::Overload => "overload",
        }
    }
}

/// A refused call: what, why, and when trying again may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub api: Api,
    pub reason: Reason,
    pub retry_after: Duration,
    /// The rule that refused (`limits[2]`, `pools.write`, `switches.read_only`, …).
    pub rule: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            Reason::ReadOnly => "the service is read-only".to_string(),
            Reason::Disabled => format!("{} is switched off", self.api),
            Reason::Rate => "over the rate limit".to_string(),
            Reason::CallerShare => {
                "this caller already has its share of the requests served at once".to_string()
            }
            Reason::QueueFull => "too many requests are waiting".to_string(),
            Reason::QueueTimeout => "no place was free within the longest wait".to_string(),
            Reason::Overload => {
                "the service is overloaded (its calls take longer than the rule allows)".to_string()
            }
        };
        write!(
            f,
            "flow control refused {} ({}, rule {}): {what}; retry after {} ms",
            self.api,
            self.reason.label(),
            self.rule,
            self.retry_after.as_millis().max(1)
        )
    }
}

/// What an admitted call holds while it runs: its place in its pool.
#[derive(Debug)]
pub struct Permit {
    _place: PoolPlace,
}

/// The limiter(s) of one rate rule.
#[derive(Debug)]
enum Limiters {
    Shared(Arc<RateLimiter>),
    PerCaller(Mutex<HashMap<Arc<str>, Arc<RateLimiter>>>, Arc<RateLimiter>),
}

#[derive(Debug)]
struct CompiledRule {
    rule: RateRule,
    api: Option<Api>,
    scope: Scope,
    limiters: Arc<Limiters>,
}

impl CompiledRule {
    fn applies(&self, api: Api, caller: &str) -> bool {
        self.api.is_none_or(|limited| limited == api)
            && match &self.scope {
                Scope::Caller(name) => name == caller,
                Scope::Everyone | Scope::EachCaller => true,
            }
    }

    fn limiter(&self, caller: &Arc<str>) -> Arc<RateLimiter> {
        match &*self.limiters {
            Limiters::Shared(limiter) => Arc::clone(limiter),
            Limiters::PerCaller(callers, overflow) => {
                let mut callers = callers.lock().expect("never poisoned");
                if let Some(limiter) = callers.get(caller) {
                    return Arc::clone(limiter);
                }
                if callers.len() >= limits::FLOW_CALLERS_TRACKED_MAX {
                    return Arc::clone(overflow);
                }
                let limiter = Arc::new(RateLimiter::new(&self.rule));
                callers.insert(Arc::clone(caller), Arc::clone(&limiter));
                limiter
            }
        }
    }
}

#[derive(Debug)]
struct Compiled {
    rules: Rules,
    limits: Vec<CompiledRule>,
    pools: [Arc<Pool>; 3],
    disabled: [bool; Api::ALL.len()],
    hot: Option<Arc<HotAccounts>>,
}

impl Compiled {
    /// Compiles `rules`, reusing the state of `before`'s unchanged rules and pools.
    fn new(rules: Rules, before: Option<&Compiled>) -> Compiled {
        let mut kept: HashMap<&RateRule, &Arc<Limiters>> = HashMap::new();
        if let Some(before) = before {
            for compiled in &before.limits {
                kept.entry(&compiled.rule).or_insert(&compiled.limiters);
            }
        }
        let limits = rules
            .limits
            .iter()
            .map(|rule| {
                let scope = rule.scope();
                let limiters = kept.remove(rule).map(Arc::clone).unwrap_or_else(|| {
                    Arc::new(match scope {
                        Scope::EachCaller => Limiters::PerCaller(
                            Mutex::new(HashMap::new()),
                            Arc::new(RateLimiter::new(rule)),
                        ),
                        Scope::Everyone | Scope::Caller(_) => {
                            Limiters::Shared(Arc::new(RateLimiter::new(rule)))
                        }
                    })
                });
                CompiledRule {
                    rule: rule.clone(),
                    api: rule.api(),
                    scope,
                    limiters,
                }
            })
            .collect();
        let pools = Kind::ALL.map(|kind| {
            let rule = rules.pools.of(kind);
            match before {
                Some(before) if before.pools[kind.index()].rule() == rule => {
                    Arc::clone(&before.pools[kind.index()])
                }
                _ => Pool::new(rule, before.map(|before| &*before.pools[kind.index()])),
            }
        });
        let hot = rules.hot_accounts.map(|rule| match before {
            Some(before) if before.rules.hot_accounts == Some(rule) => {
                before.hot.clone().expect("compiled with its rule")
            }
            _ => Arc::new(HotAccounts::new(&rule)),
        });
        let mut disabled = [false; Api::ALL.len()];
        for name in &rules.switches.disabled_apis {
            if let Some(api) = Api::from_name(name) {
                disabled[api.index()] = true;
            }
        }
        Compiled {
            hot,
            rules,
            limits,
            pools,
            disabled,
        }
    }
}

/// The rules in use and their state; shared by every listener of a process.
#[derive(Debug)]
pub struct Gate {
    origin: Instant,
    compiled: RwLock<Arc<Compiled>>,
}

/// The slots a call's rate rules granted it, given back when dropped unless the call was
/// admitted: a call refused later (by another rule or its pool) or abandoned while it waited
/// uses up no rate.
struct Taken(Vec<(Arc<RateLimiter>, Grant)>);

impl Drop for Taken {
    fn drop(&mut self) {
        for (limiter, grant) in self.0.drain(..) {
            limiter.give_back(grant);
        }
    }
}

/// The name of an anonymous caller (a server running without keys).
const ANONYMOUS: &str = "";

impl Gate {
    /// A gate with `rules` (already checked: [`Rules::check`]).
    pub fn new(rules: Rules) -> Gate {
        Gate {
            origin: Instant::now(),
            compiled: RwLock::new(Arc::new(Compiled::new(rules, None))),
        }
    }

    /// Replaces the rules (already checked); calls under way finish under the old ones.
    pub fn set_rules(&self, rules: Rules) {
        let mut compiled = self.compiled.write().expect("never poisoned");
        let next = Compiled::new(rules, Some(&compiled));
        *compiled = Arc::new(next);
    }

    /// Admits a batch of transfers naming each account of `counts` that many times (as debit
    /// or credit) under the hot-account limit in use (none: admitted), or refuses it whole.
    pub fn admit_accounts(&self, counts: &AccountCounts) -> Result<(), HotRefusal> {
        let Some(hot) = self.current().hot.clone() else {
            return Ok(());
        };
        hot.admit(counts, self.now())
    }

    /// Whether a hot-account limit is in use (callers then count the accounts a batch names).
    pub fn limits_accounts(&self) -> bool {
        self.compiled
            .read()
            .expect("never poisoned")
            .rules
            .hot_accounts
            .is_some()
    }

    /// The circuit breaker rule in use (`None`: no breakers).
    pub fn breaker(&self) -> Option<crate::BreakerRule> {
        self.compiled.read().expect("never poisoned").rules.breaker
    }

    /// The rules in use.
    pub fn rules(&self) -> Rules {
        self.current().rules.clone()
    }

    fn current(&self) -> Arc<Compiled> {
        Arc::clone(&self.compiled.read().expect("never poisoned"))
    }

    /// Requests of `kind` served now.
    pub fn in_flight(&self, kind: Kind) -> u32 {
        self.current().pools[kind.index()].in_flight()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Admits a call of `api` by `caller` (a key's name; `None` when the server has no keys),
    /// waiting if a rule lets it wait, or says why not.
    pub async fn admit(&self, api: Api, caller: Option<&str>) -> Result<Permit, Rejection> {
        let compiled = self.current();
        let refuse = |reason, retry_after, rule: String| Rejection {
            api,
            reason,
            retry_after,
            rule,
        };
        if compiled.rules.switches.read_only && api.starts_a_write() {
            return Err(refuse(
                Reason::ReadOnly,
                Duration::from_secs(1),
                "switches.read_only".into(),
            ));
        }
        if compiled.disabled[api.index()] {
            return Err(refuse(
                Reason::Disabled,
                Duration::from_secs(1),
                "switches.disabled_apis".into(),
            ));
        }
        let caller: Arc<str> = Arc::from(caller.unwrap_or(ANONYMOUS));
        let mut wait = Duration::ZERO;
        let mut taken = Taken(Vec::new());
        if !compiled.limits.is_empty() {
            let now = self.now();
            for (i, rule) in compiled.limits.iter().enumerate() {
                if !rule.applies(api, &caller) {
                    continue;
                }
                let limiter = rule.limiter(&caller);
                match limiter.check_granting(now) {
                    (Verdict::Refused { retry_after }, _) => {
                        return Err(refuse(Reason::Rate, retry_after, format!("limits[{i}]")));
                    }
                    (verdict, grant) => {
                        if let Verdict::After(after) = verdict {
                            wait = wait.max(after);
                        }
                        if let Some(grant) = grant {
                            taken.0.push((limiter, grant));
                        }
                    }
                }
            }
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let kind = api.kind();
        let pool = &compiled.pools[kind.index()];
        match pool.enter(&caller, api.adaptive_treatment()).await {
            Ok(place) => {
                // Admitted: the slots stay spent.
                taken.0.clear();
                Ok(Permit { _place: place })
            }
            Err(full) => {
                // A place frees when a request ends: a short wait, not a long one.
                let place_frees = Duration::from_millis(10);
                let (reason, retry_after, rule) = match full {
                    Full::CallerShare => (Reason::CallerShare, place_frees, ""),
                    Full::Queue => (Reason::QueueFull, place_frees, ""),
                    Full::Waited => (Reason::QueueTimeout, place_frees, ""),
                    Full::Overloaded(after) => (Reason::Overload, after, ".adaptive"),
                };
                Err(refuse(
                    reason,
                    retry_after,
                    format!("pools.{}{rule}", kind.name()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::from_json(text).unwrap()
    }

    async fn passes(gate: &Gate, api: Api, caller: &str) -> bool {
        gate.admit(api, Some(caller)).await.is_ok()
    }

    #[tokio::test]
    async fn switches_refuse_what_they_name_and_nothing_else() {
        let gate = Gate::new(rules(
            r#"{"switches":{"read_only":true,"disabled_apis":["get_account_transfers"]}}"#,
        ));
        let refused = gate
            .admit(Api::CreateTransfers, Some("k"))
            .await
            .unwrap_err();
        assert_eq!(refused.reason, Reason::ReadOnly);
        assert!(refused.to_string().contains("read-only"), "{refused}");
        assert_eq!(
            gate.admit(Api::GetAccountTransfers, Some("k"))
                .await
                .unwrap_err()
                .reason,
            Reason::Disabled
        );
        for api in [
            Api::LookupAccounts,
            Api::SagaSteps,
            Api::Admin,
            Api::GetAccountBalances,
        ] {
            assert!(passes(&gate, api, "k").await, "{api}");
        }
        gate.set_rules(Rules::default());
        assert!(passes(&gate, Api::CreateTransfers, "k").await);
    }

    #[tokio::test]
    async fn each_caller_has_its_own_limit_and_a_named_caller_its_own_rule() {
        let gate = Gate::new(rules(
            r#"{"limits":[
                {"api":"create_transfers","caller":"*","rate_per_second":1,"burst":2},
                {"caller":"batch-job","rate_per_second":1}
            ]}"#,
        ));
        for caller in ["a", "b"] {
            assert!(passes(&gate, Api::CreateTransfers, caller).await);
            assert!(passes(&gate, Api::CreateTransfers, caller).await);
            let refused = gate
                .admit(Api::CreateTransfers, Some(caller))
                .await
                .unwrap_err();
            assert_eq!(
                (refused.reason, refused.rule.as_str()),
                (Reason::Rate, "limits[0]")
            );
            assert!(
                refused.retry_after > Duration::from_millis(400),
                "{refused}"
            );
            // Other APIs are not limited for them.
            assert!(passes(&gate, Api::LookupAccounts, caller).await);
        }
        // The batch job: one call of any API, then refused by its own rule; the slot the
        // per-caller rule gave that refused call was given back.
        assert!(passes(&gate, Api::LookupAccounts, "batch-job").await);
        let refused = gate
            .admit(Api::CreateTransfers, Some("batch-job"))
            .await
            .unwrap_err();
        assert_eq!(refused.rule, "limits[1]");
        // Its own rule relaxed (limits[0] unchanged keeps its state): the per-caller rule's
        // burst of two is all there, since the refused call gave its slot back.
        gate.set_rules(rules(
            r#"{"limits":[
                {"api":"create_transfers","caller":"*","rate_per_second":1,"burst":2},
                {"caller":"batch-job","rate_per_second":1000,"burst":10}
            ]}"#,
        ));
        assert!(passes(&gate, Api::CreateTransfers, "batch-job").await);
        assert!(passes(&gate, Api::CreateTransfers, "batch-job").await);
    }

    #[tokio::test]
    async fn a_call_its_pool_refuses_gives_its_rate_back() {
        let gate = Gate::new(rules(
            r#"{"limits":[{"api":"lookup_accounts","caller":"*","rate_per_second":1}],
                "pools":{"read":{"max_in_flight":1,"max_queue":0}}}"#,
        ));
        let reading = gate.admit(Api::LookupAccounts, Some("a")).await.unwrap();
        let refused = gate
            .admit(Api::LookupAccounts, Some("b"))
            .await
            .unwrap_err();
        assert_eq!(refused.reason, Reason::QueueFull);
        drop(reading);
        // b's one call a second was not spent by the refusal.
        assert!(passes(&gate, Api::LookupAccounts, "b").await);
    }

    #[tokio::test]
    async fn a_reload_keeps_the_state_of_unchanged_rules() {
        let limit = r#"{"api":"lookup_accounts","rate_per_second":1}"#;
        let gate = Gate::new(rules(&format!(r#"{{"limits":[{limit}]}}"#)));
        assert!(passes(&gate, Api::LookupAccounts, "k").await);
        assert!(!passes(&gate, Api::LookupAccounts, "k").await);
        // Reordered beside a new rule: still the same limiter, still spent.
        gate.set_rules(rules(&format!(
            r#"{{"limits":[{{"api":"mint_ids","rate_per_second":5}},{limit}]}}"#
        )));
        assert!(!passes(&gate, Api::LookupAccounts, "k").await);
        // Changed: a new limiter.
        gate.set_rules(rules(
            r#"{"limits":[{"api":"lookup_accounts","rate_per_second":2}]}"#,
        ));
        assert!(passes(&gate, Api::LookupAccounts, "k").await);
    }

    #[tokio::test]
    async fn a_stalled_pool_sheds_what_it_cannot_serve_even_across_a_rule_change() {
        let rule = |latency_ms: u32| {
            rules(&format!(
                r#"{{"pools":{{"write":{{"adaptive":{{"latency_ms":{latency_ms},"min_in_flight":2}}}}}}}}"#
            ))
        };
        let gate = Gate::new(rule(300));
        let first = gate.admit(Api::CreateTransfers, Some("a")).await.unwrap();
        let second = gate.admit(Api::CreateTransfers, Some("b")).await.unwrap();
        // Young calls: nothing is slow, so the pool takes all it holds.
        let third = gate.admit(Api::CreateTransfers, Some("c")).await.unwrap();
        drop(third);
        std::thread::sleep(Duration::from_millis(400));
        // Two calls 400 ms old and nothing completed that slowly: only the floor of two.
        let refused = gate
            .admit(Api::CreateTransfers, Some("c"))
            .await
            .unwrap_err();
        assert_eq!(
            (refused.reason, refused.rule.as_str()),
            (Reason::Overload, "pools.write.adaptive")
        );
        assert!(
            refused.retry_after >= Duration::from_millis(400),
            "{refused}"
        );
        assert!(refused.to_string().contains("overloaded"), "{refused}");
        // A changed rule replaces the pool, not what it knows: the old calls still count.
        gate.set_rules(rule(350));
        assert_eq!(
            gate.admit(Api::CreateTransfers, Some("c"))
                .await
                .unwrap_err()
                .reason,
            Reason::Overload
        );
        // Saga steps settle what was admitted before: never shed. Reads have a pool of their
        // own, without the rule.
        assert!(passes(&gate, Api::SagaSteps, "c").await);
        assert!(passes(&gate, Api::LookupAccounts, "c").await);
        // The old calls end: the pool holds nothing, so the next call gets in.
        drop((first, second));
        assert!(passes(&gate, Api::CreateTransfers, "c").await);
    }

    #[tokio::test]
    async fn kinds_have_separate_pools() {
        let gate = Gate::new(rules(
            r#"{"pools":{"read":{"max_in_flight":1,"max_queue":0}}}"#,
        ));
        let _reading = gate.admit(Api::LookupAccounts, Some("a")).await.unwrap();
        assert_eq!(
            gate.admit(Api::GetAccountBalances, Some("b"))
                .await
                .unwrap_err()
                .reason,
            Reason::QueueFull
        );
        // Writes do not wait behind reads.
        let _writing = gate.admit(Api::CreateTransfers, Some("b")).await.unwrap();
        assert_eq!(gate.in_flight(Kind::Read), 1);
        assert_eq!(gate.in_flight(Kind::Write), 1);
    }
}
