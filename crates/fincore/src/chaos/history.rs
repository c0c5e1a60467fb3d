//! Records the history of a chaos run: every operation's invocation and completion (ok, fail
//! or unknown) and every fault, in memory for the checker and as JSON lines in a file. The
//! history's types and its checker live in `testkit::bank_checker`.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use ledger::Account;
use serde_json::json;
pub use testkit::bank_checker::{Action, Op, Outcome};

/// Collects operations and faults, writing each line as it happens.
pub struct History {
    started: Instant,
    inner: Mutex<(Vec<Op>, std::io::BufWriter<std::fs::File>)>,
}

fn account_json(a: &Account) -> serde_json::Value {
    json!({
        "id": a.id.to_string(),
        "debits_pending": a.debits_pending.to_string(),
        "debits_posted": a.debits_posted.to_string(),
        "credits_pending": a.credits_pending.to_string(),
        "credits_posted": a.credits_posted.to_string(),
    })
}

impl History {
    pub fn create(path: &std::path::Path) -> anyhow::Result<History> {
        Ok(History {
            started: Instant::now(),
            inner: Mutex::new((
                Vec::new(),
                std::io::BufWriter::new(std::fs::File::create(path)?),
            )),
        })
    }

    pub fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn write(&self, line: serde_json::Value) {
        let mut inner = self.inner.lock().expect("never poisoned");
        let _ = writeln!(inner.1, "{line}");
    }

    /// Records an invocation; returns its time.
    pub fn invoke(&self, client: u64, action: &Action) -> u64 {
        let at = self.now();
        let what = match action {
            Action::Transfer {
                id,
                debit,
                credit,
                amount,
            } => json!({"f": "transfer", "id": id.to_string(), "debit": debit.to_string(),
                        "credit": credit.to_string(), "amount": amount.to_string()}),
            Action::Read => json!({"f": "read"}),
        };
        self.write(json!({"type": "invoke", "client": client, "t_ns": at, "op": what}));
        at
    }

    /// Records a completion.
    pub fn complete(&self, client: u64, action: Action, invoked: u64, outcome: Outcome) {
        let completed = self.now();
        let (kind, detail) = match &outcome {
            Outcome::Applied { timestamp } => ("ok", json!({"timestamp": timestamp.to_string()})),
            Outcome::Failed { code } => ("fail", json!({"result": code})),
            Outcome::Read { accounts } => (
                "ok",
                json!({"accounts": accounts.iter().map(account_json).collect::<Vec<_>>()}),
            ),
            Outcome::Unknown { error } => ("unknown", json!({"error": error})),
        };
        let id = match &action {
            Action::Transfer { id, .. } => json!(id.to_string()),
            Action::Read => json!("read"),
        };
        self.write(
            json!({"type": kind, "client": client, "t_ns": completed, "op": id, "detail": detail}),
        );
        self.inner.lock().expect("never poisoned").0.push(Op {
            client,
            action,
            invoked,
            completed,
            outcome,
        });
    }

    /// Records a fault the nemesis injected or healed.
    pub fn fault(&self, what: &str, node: Option<usize>) {
        self.fault_in(what, None, node);
    }

    /// Records a fault in one of several groups (`group` numbered from 1 in the file; the
    /// field is left out for a run of one group, as before).
    pub fn fault_in(&self, what: &str, group: Option<usize>, node: Option<usize>) {
        let mut line = json!({"type": "nemesis", "t_ns": self.now(), "fault": what,
                              "node": node.map(|n| n + 1)});
        if let Some(group) = group {
            line["group"] = json!(group + 1);
        }
        self.write(line);
    }

    /// Records a fault done to gateway `gateway` (numbered from 1 in the file); returns its time.
    pub fn gateway_fault(&self, what: &str, gateway: usize) -> u64 {
        let at = self.now();
        self.write(json!({"type": "nemesis", "t_ns": at, "fault": what,
                          "gateway": gateway + 1}));
        at
    }

    /// Everything recorded so far (the file is flushed).
    pub fn ops(&self) -> Vec<Op> {
        let mut inner = self.inner.lock().expect("never poisoned");
        let _ = inner.1.flush();
        inner.0.clone()
    }
}
