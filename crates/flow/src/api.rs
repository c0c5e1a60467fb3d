//! The calls flow control tells apart: every client API operation by name, and the kind of
//! pool it runs in.
//!
//! Owns the closed set of names rules may use (and metrics label with). It must not map
//! protocols' paths to them: each front end does that for its own routes.

use std::fmt;

use crate::adaptive::Treatment;

/// The pool a call runs in: writes, reads and administration never wait behind each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Write,
    Read,
    Admin,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Write, Kind::Read, Kind::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Read => "read",
            Kind::Admin => "admin",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One operation of the client API, as rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    CreateAccounts,
    CreateTransfers,
    LookupAccounts,
    LookupTransfers,
    LookupOutcomes,
    GetAccountTransfers,
    GetAccountBalances,
    ReadEvents,
    SubscribeEvents,
    MintIds,
    Status,
    ReplicaStatus,
    /// A gateway's saga steps on a node (they book money: a write).
    SagaSteps,
    OpenSagaCopies,
    /// Every other call needing the admin role (membership changes, the state digest, …).
    Admin,
}

impl Api {
    pub const ALL: [Api; 15] = [
        Api::CreateAccounts,
        Api::CreateTransfers,
        Api::LookupAccounts,
        Api::LookupTransfers,
        Api::LookupOutcomes,
        Api::GetAccountTransfers,
        Api::GetAccountBalances,
        Api::ReadEvents,
        Api::SubscribeEvents,
        Api::MintIds,
        Api::Status,
        Api::ReplicaStatus,
        Api::SagaSteps,
        Api::OpenSagaCopies,
        Api::Admin,
    ];

    /// The name rules and metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Api::CreateAccounts => "create_accounts",
            Api::CreateTransfers => "create_transfers",
            Api::LookupAccounts => "lookup_accounts",
            Api::LookupTransfers => "lookup_transfers",
            Api::LookupOutcomes => "lookup_outcomes",
            Api::GetAccountTransfers => "get_account_transfers",
            Api::GetAccountBalances => "get_account_balances",
            Api::ReadEvents => "read_events",
            Api::SubscribeEvents => "subscribe_events",
            Api::MintIds => "mint_ids",
            Api::Status => "status",
            Api::ReplicaStatus => "replica_status",
            Api::SagaSteps => "saga_steps",
            Api::OpenSagaCopies => "open_saga_copies",
            Api::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|api| api.name() == name)
    }

    /// The pool it runs in.
    pub fn kind(self) -> Kind {
        match self {
            Api::CreateAccounts | Api::CreateTransfers | Api::SagaSteps => Kind::Write,
            Api::Admin => Kind::Admin,
            _ => Kind::Read,
        }
    }

    /// Whether read-only mode refuses it: the calls that start a change of the ledger. A
    /// gateway's saga steps pass, so that sagas already under way settle (their holds are
    /// released or posted) and new ones are refused where they start; membership changes
    /// pass, so an operator can still repair a group.
    pub fn starts_a_write(self) -> bool {
        matches!(self, Api::CreateAccounts | Api::CreateTransfers)
    }

    /// How adaptive protection meets its calls: saga steps settle what was admitted before
    /// (never shed, as read-only mode lets them through); a lookup of outcomes may wait for
    /// them by design (`wait_ms`), which says nothing of how the service does.
    pub(crate) fn adaptive_treatment(self) -> Treatment {
        match self {
            Api::SagaSteps => Treatment::TimedOnly,
            Api::LookupOutcomes => Treatment::Untimed,
            _ => Treatment::Shed,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_is_named_once_and_found_by_its_name() {
        for (index, api) in Api::ALL.into_iter().enumerate() {
            assert_eq!(api.index(), index);
            assert_eq!(Api::from_name(api.name()), Some(api));
        }
        assert_eq!(Api::from_name("drop_everything"), None);
    }
}
