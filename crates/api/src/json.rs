//! HTTP/JSON types: what people and scripts send and get back.
//!
//! Field names are the ledger's. Integers of 64 bits and wider (ids, amounts, user data,
//! timestamps) are written as decimal strings, so JavaScript loses nothing, and accepted as
//! strings or as whole JSON numbers up to 2^64-1 (see `json_number`). Flags are arrays of
//! snake_case names. Unknown fields are refused, so a typo is an error instead of a silently
//! ignored field. With the `openapi` feature each type also describes itself (`ToSchema`).

use serde::{Deserialize, Serialize};

use ledger::{
    Account, AccountBalance, AccountFlags, CreateAccountResult, CreateTransferResult, EventResult,
    Transfer, TransferFlags, TransferOutcome,
};

pub use crate::json_number::{JSON_INTEGER_MAX, parse_decimal};
use crate::json_number::{u16_number, u32_number, u64_text, u128_text};

macro_rules! flag_names {
    ($name:ident, $flags:ty { $($variant:ident = $bit:ident,)+ }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn flag(self) -> $flags {
                match self {
                    $($name::$variant => <$flags>::$bit,)+
                }
            }

            pub fn to_flags(names: &[$name]) -> $flags {
                names.iter().fold(<$flags>::empty(), |flags, name| flags | name.flag())
            }

            /// Names of the known bits (unknown bits cannot be stored, so none are lost).
            pub fn from_flags(flags: $flags) -> Vec<$name> {
                Self::ALL.iter().copied().filter(|name| flags.contains(name.flag())).collect()
            }
        }
    };
}

flag_names!(AccountFlagName, AccountFlags {
    Linked = LINKED,
    DebitsMustNotExceedCredits = DEBITS_MUST_NOT_EXCEED_CREDITS,
    CreditsMustNotExceedDebits = CREDITS_MUST_NOT_EXCEED_DEBITS,
    History = HISTORY,
    Imported = IMPORTED,
    Closed = CLOSED,
});

flag_names!(TransferFlagName, TransferFlags {
    Linked = LINKED,
    Pending = PENDING,
    PostPendingTransfer = POST_PENDING_TRANSFER,
    VoidPendingTransfer = VOID_PENDING_TRANSFER,
    BalancingDebit = BALANCING_DEBIT,
    BalancingCredit = BALANCING_CREDIT,
    ClosingDebit = CLOSING_DEBIT,
    ClosingCredit = CLOSING_CREDIT,
    Imported = IMPORTED,
});

/// An account, as sent to `POST /v1/accounts` and returned by the lookups.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Account))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountJson {
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub id: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub debits_pending: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub debits_posted: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub credits_pending: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub credits_posted: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub user_data_128: u128,
    #[serde(default, with = "u64_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U64))]
    pub user_data_64: u64,
    #[serde(default, with = "u32_number")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U32))]
    pub user_data_32: u32,
    #[serde(default, with = "u32_number")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U32))]
    pub ledger: u32,
    #[serde(default, with = "u16_number")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U16))]
    pub code: u16,
    #[serde(default)]
    pub flags: Vec<AccountFlagName>,
    #[serde(default, with = "u64_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U64))]
    pub timestamp: u64,
}

impl From<&AccountJson> for Account {
    fn from(a: &AccountJson) -> Account {
        Account {
            id: a.id,
            debits_pending: a.debits_pending,
            debits_posted: a.debits_posted,
            credits_pending: a.credits_pending,
            credits_posted: a.credits_posted,
            user_data_128: a.user_data_128,
            user_data_64: a.user_data_64,
            user_data_32: a.user_data_32,
            ledger: a.ledger,
            code: a.code,
            flags: AccountFlagName::to_flags(&a.flags),
            timestamp: a.timestamp,
        }
    }
}

impl From<&Account> for AccountJson {
    fn from(a: &Account) -> AccountJson {
        AccountJson {
            id: a.id,
            debits_pending: a.debits_pending,
            debits_posted: a.debits_posted,
            credits_pending: a.credits_pending,
            credits_posted: a.credits_posted,
            user_data_128: a.user_data_128,
            user_data_64: a.user_data_64,
            user_data_32: a.user_data_32,
            ledger: a.ledger,
            code: a.code,
            flags: AccountFlagName::from_flags(a.flags),
            timestamp: a.timestamp,
        }
    }
}

/// A transfer, as sent to `POST /v1/transfers` and returned by the lookups.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Transfer))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferJson {
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub id: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub debit_account_id: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub credit_account_id: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub amount: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub pending_id: u128,
    #[serde(default, with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub user_data_128: u128,
    #[serde(default, with = "u64_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U64))]
    pub user_data_64: u64,
    #[serde(default, with = "u32_number")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U32))]
    pub user_data_32: u32,
    #[serde(default, with = "u32_number")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U32))]
    pub timeout: u32,
    #[serde(default, with = "u32_number")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U32))]
    pub ledger: u32,
    #[serde(default, with = "u16_number")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U16))]
    pub code: u16,
    #[serde(default)]
    pub flags: Vec<TransferFlagName>,
    #[serde(default, with = "u64_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U64))]
    pub timestamp: u64,
}

impl From<&TransferJson> for Transfer {
    fn from(t: &TransferJson) -> Transfer {
        Transfer {
            id: t.id,
            debit_account_id: t.debit_account_id,
            credit_account_id: t.credit_account_id,
            amount: t.amount,
            pending_id: t.pending_id,
            user_data_128: t.user_data_128,
            user_data_64: t.user_data_64,
            user_data_32: t.user_data_32,
            timeout: t.timeout,
            ledger: t.ledger,
            code: t.code,
            flags: TransferFlagName::to_flags(&t.flags),
            timestamp: t.timestamp,
        }
    }
}

impl From<&Transfer> for TransferJson {
    fn from(t: &Transfer) -> TransferJson {
        TransferJson {
            id: t.id,
            debit_account_id: t.debit_account_id,
            credit_account_id: t.credit_account_id,
            amount: t.amount,
            pending_id: t.pending_id,
            user_data_128: t.user_data_128,
            user_data_64: t.user_data_64,
            user_data_32: t.user_data_32,
            timeout: t.timeout,
            ledger: t.ledger,
            code: t.code,
            flags: TransferFlagName::from_flags(t.flags),
            timestamp: t.timestamp,
        }
    }
}

/// One event's result in a create response.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = EventResult))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultJson {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U32))]
    pub index: usize,
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub id: u128,
    pub result: String,
    #[serde(with = "u64_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U64))]
    pub timestamp: u64,
}

/// The body of a create response: one result per event, in order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Results))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultsJson {
    pub results: Vec<ResultJson>,
}

impl ResultsJson {
    pub fn accounts(ids: &[u128], results: &[EventResult<CreateAccountResult>]) -> ResultsJson {
        Self::build(
            ids,
            results.iter().map(|r| (r.result.as_str(), r.timestamp)),
        )
    }

    pub fn transfers(ids: &[u128], results: &[EventResult<CreateTransferResult>]) -> ResultsJson {
        Self::build(
            ids,
            results.iter().map(|r| (r.result.as_str(), r.timestamp)),
        )
    }

    fn build<'a>(ids: &[u128], results: impl Iterator<Item = (&'a str, u64)>) -> ResultsJson {
        ResultsJson {
            results: ids
                .iter()
                .zip(results)
                .enumerate()
                .map(|(index, (id, (result, timestamp)))| ResultJson {
                    index,
                    id: *id,
                    result: result.to_string(),
                    timestamp,
                })
                .collect(),
        }
    }
}

/// A balance row of `GET /v1/accounts/{id}/balances`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Balance))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceJson {
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub debits_pending: u128,
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub debits_posted: u128,
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub credits_pending: u128,
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub credits_posted: u128,
    #[serde(with = "u64_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U64))]
    pub timestamp: u64,
}

impl From<&AccountBalance> for BalanceJson {
    fn from(b: &AccountBalance) -> BalanceJson {
        BalanceJson {
            debits_pending: b.debits_pending,
            debits_posted: b.debits_posted,
            credits_pending: b.credits_pending,
            credits_posted: b.credits_posted,
            timestamp: b.timestamp,
        }
    }
}

/// `{"accounts": [...]}`: lookups of accounts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Accounts))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountsJson {
    pub accounts: Vec<AccountJson>,
}

/// `{"transfers": [...]}`: lookups of transfers and an account's transfers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Transfers))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransfersJson {
    pub transfers: Vec<TransferJson>,
}

/// `{"balances": [...]}`: an account's balance history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Balances))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancesJson {
    pub balances: Vec<BalanceJson>,
}

/// The body of `POST /v1/accounts/lookup` and `POST /v1/transfers/lookup`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Lookup))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupJson {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::lookup_ids))]
    pub ids: Vec<IdJson>,
}

/// The body of `POST /v1/transfers/outcomes`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = OutcomesLookup))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesLookupJson {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::outcome_ids))]
    pub ids: Vec<IdJson>,
    /// How long to wait while any outcome is `pending` (0, the default, does not wait).
    #[serde(default, with = "u32_number")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::outcome_wait_ms))]
    pub wait_ms: u32,
}

/// Where one transfer id stands: `not_found`, `pending`, `created` (with the transfer's
/// timestamp) or `failed`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Outcome))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeJson {
    #[serde(with = "u128_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U128))]
    pub id: u128,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::outcome_kind))]
    pub outcome: String,
    /// The transfer's timestamp when `created`, else 0.
    #[serde(with = "u64_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::U64))]
    pub timestamp: u64,
}

impl OutcomeJson {
    pub fn new(id: u128, outcome: TransferOutcome) -> OutcomeJson {
        OutcomeJson {
            id,
            outcome: outcome.as_str().to_string(),
            timestamp: match outcome {
                TransferOutcome::Created { timestamp } => timestamp,
                _ => 0,
            },
        }
    }
}

/// The answer of `POST /v1/transfers/outcomes`: one outcome per id, in the order asked.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Outcomes))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomesJson {
    pub outcomes: Vec<OutcomeJson>,
}

/// An id inside a lookup body or a list of minted ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdJson(#[serde(with = "u128_text")] pub u128);

/// `{"ids": [...]}`: fresh ids minted in one slot (`GET /v1/ids`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Ids))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdsJson {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::minted_ids))]
    pub ids: Vec<IdJson>,
}

/// Every error answer: what is wrong and, where it applies, which field.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Error))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorJson {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    /// True when the same request may simply be sent again later.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub retryable: bool,
    /// When this node is not the leader: the leader's id and addresses, if known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::NodeInteger>))]
    pub leader_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub leader_grpc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub leader_http: Option<String>,
}

// Operator endpoints (`/healthz`, `/v1/status`, `/v1/admin/replicas`). Their integers are node
// ids, terms and log indexes: plain JSON integers, unlike the ledger's decimal strings. Fields
// are declared in alphabetical order, the order these bodies have always been written in.

/// The body of `GET /healthz`: `{"status": "ok"}`, or `{"status": "failed", "error": ...}`
/// when a storage failure stopped the node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Health))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthJson {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    pub status: HealthStatusJson,
}

/// Whether the node serves.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = HealthStatus))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatusJson {
    Ok,
    Failed,
}

/// What a replica is doing in its group, as a stable lower-case word.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Role))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleJson {
    /// Takes writes and replicates them.
    Leader,
    /// Votes and follows a leader.
    Follower,
    /// Campaigns to become the leader.
    Candidate,
    /// Receives the log but does not vote (catching up before it becomes a voter).
    Learner,
    /// Raft has stopped (shutting down, or stopped by a storage failure).
    Shutdown,
}

/// One replica of the group and how to reach it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Member))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJson {
    /// gRPC address of the ledger API, `HOST:PORT`.
    pub grpc: String,
    /// HTTP address, `HOST:PORT`; empty when the replica was added without one.
    pub http: String,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::NodeInteger))]
    pub id: u64,
    /// Address of its peer listener (the replica transport), `HOST:PORT`.
    pub peer: String,
}

/// `{"members": [...]}`: the group after a membership change.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Members))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersJson {
    pub members: Vec<MemberJson>,
}

/// One replica's view of itself, in `GET /v1/status`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ReplicaStatus))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatusJson {
    /// The last log index applied to this replica's ledger.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::NodeInteger))]
    pub applied_index: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::NodeInteger))]
    pub id: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::NodeInteger>))]
    pub last_log_index: Option<u64>,
    /// The leader this replica knows of.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::NodeInteger>))]
    pub leader: Option<u64>,
    pub role: RoleJson,
    /// The state digest at `applied_index` (64 hex digits); `null` unless `?digest=true`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub state_digest: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::NodeInteger))]
    pub term: u64,
}

/// The body of `GET /v1/status`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Status))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusJson {
    pub members: Vec<MemberJson>,
    pub replica: ReplicaStatusJson,
}

/// The body of `POST /v1/admin/replicas`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = AddReplica))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddReplicaJson {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::NodeInteger))]
    pub id: u64,
    /// The new replica's gRPC address, `HOST:PORT`.
    pub grpc: String,
    /// The new replica's HTTP address, `HOST:PORT` (optional).
    #[serde(default)]
    pub http: String,
    /// The new replica's peer listener (`serve --peer`), `HOST:PORT`.
    pub peer: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widest::{widest_account, widest_transfer};

    #[test]
    fn a_compact_json_event_at_its_widest_fits_json_event_bytes_max() {
        let (transfer, account) = (widest_transfer(), widest_account());
        let transfer = serde_json::to_string(&TransferJson::from(&transfer)).unwrap();
        let account = serde_json::to_string(&AccountJson::from(&account)).unwrap();
        for json in [transfer, account] {
            assert!(
                json.len() <= limits::JSON_EVENT_BYTES_MAX,
                "{} bytes: {json}",
                json.len()
            );
        }
    }

    fn parse(json: &str) -> Result<TransferJson, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn operator_bodies_are_written_with_sorted_keys_plain_integers_and_lower_case_roles() {
        let status = StatusJson {
            members: vec![MemberJson {
                grpc: "127.0.0.1:7001".into(),
                http: String::new(),
                peer: "127.0.0.1:7091".into(),
                id: 1,
            }],
            replica: ReplicaStatusJson {
                applied_index: 9,
                id: 1,
                last_log_index: Some(9),
                leader: None,
                role: RoleJson::Candidate,
                state_digest: None,
                term: 3,
            },
        };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"members":[{"grpc":"127.0.0.1:7001","http":"","id":1,"peer":"127.0.0.1:7091"}],"replica":{"applied_index":9,"id":1,"last_log_index":9,"leader":null,"role":"candidate","state_digest":null,"term":3}}"#
        );
        let failed = HealthJson {
            error: Some("disk".into()),
            status: HealthStatusJson::Failed,
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"error":"disk","status":"failed"}"#
        );
        let ok = HealthJson {
            error: None,
            status: HealthStatusJson::Ok,
        };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"status":"ok"}"#);
    }

    #[test]
    fn a_new_replica_without_http_is_accepted_and_an_unknown_field_is_refused() {
        let new: AddReplicaJson =
            serde_json::from_str(r#"{"id":4,"grpc":"h:1","peer":"h:2"}"#).unwrap();
        assert_eq!((new.http.as_str(), new.peer.as_str()), ("", "h:2"));
        let error = serde_json::from_str::<AddReplicaJson>(
            r#"{"id":4,"grpc":"h:1","peer":"h:2","htp":""}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("unknown field `htp`"), "{error}");
        // The peer address is required: without it the group could not reach the new member.
        let error = serde_json::from_str::<AddReplicaJson>(r#"{"id":4,"grpc":"h:1"}"#).unwrap_err();
        assert!(
            error.to_string().contains("missing field `peer`"),
            "{error}"
        );
    }

    #[test]
    fn big_numbers_are_accepted_as_strings_or_integers_up_to_2_64_and_emitted_as_strings() {
        let max = u128::MAX.to_string();
        let t = parse(&format!(
            r#"{{"id":"{max}","amount":{max},"flags":["linked","pending"]}}"#
        ))
        .unwrap_err();
        assert!(
            t.contains("give a wider integer as a decimal string"),
            "{t}"
        );
        let t = parse(&format!(
            r#"{{"id":"{max}","amount":"{max}","user_data_64":{},"code":7.0,"flags":["linked","pending"]}}"#,
            u64::MAX
        ))
        .unwrap();
        assert_eq!((t.id, t.amount), (u128::MAX, u128::MAX));
        assert_eq!((t.user_data_64, t.code), (u64::MAX, 7));
        assert_eq!(
            Transfer::from(&t).flags,
            TransferFlags::LINKED | TransferFlags::PENDING
        );
        let out = serde_json::to_value(&t).unwrap();
        assert_eq!(out["amount"], serde_json::Value::String(max));
        assert_eq!(out["flags"], serde_json::json!(["linked", "pending"]));
    }

    #[test]
    fn an_outcomes_lookup_takes_wait_ms_as_a_whole_number_and_waits_for_nothing_by_default() {
        let read = |json: &str| serde_json::from_str::<OutcomesLookupJson>(json);
        let lookup = read(r#"{"ids":["5"],"wait_ms":239.0}"#).unwrap();
        assert_eq!((lookup.ids[0].0, lookup.wait_ms), (5, 239));
        assert_eq!(read(r#"{"ids":[5]}"#).unwrap().wait_ms, 0);
        for refused in [
            r#"{"ids":["5"],"wait_ms":2.5}"#,
            r#"{"ids":["5"],"wait_ms":-1}"#,
            r#"{"ids":["5"],"wait_ms":"7"}"#,
        ] {
            assert!(read(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn negative_fractional_overflowing_and_unknown_values_are_refused_with_a_reason() {
        assert!(parse(r#"{"id":-1}"#).unwrap_err().contains("negative"));
        assert!(
            parse(r#"{"id":1.5}"#)
                .unwrap_err()
                .contains("has a fraction")
        );
        assert!(
            parse(r#"{"id":true}"#)
                .unwrap_err()
                .contains("not an unsigned integer")
        );
        assert!(
            parse(r#"{"id":1,"code":"7"}"#)
                .unwrap_err()
                .contains("give a JSON integer")
        );
        let too_big = format!("{}0", u128::MAX);
        assert!(
            parse(&format!(r#"{{"id":"{too_big}"}}"#))
                .unwrap_err()
                .contains("does not fit in 128 bits")
        );
        assert!(
            parse(r#"{"id":1,"user_data_64":"18446744073709551616"}"#)
                .unwrap_err()
                .contains("64 bits")
        );
        assert!(
            parse(r#"{"id":1,"flags":["pendng"]}"#)
                .unwrap_err()
                .contains("unknown variant `pendng`")
        );
        assert!(
            parse(r#"{"id":1,"amout":5}"#)
                .unwrap_err()
                .contains("unknown field `amout`")
        );
    }
}
