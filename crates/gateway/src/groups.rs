//! The gateway's connections to the ledger groups: one [`client::Client`] per group of the
//! cluster map, dialling every member and following the group's leader (the client does that),
//! with the gateway's own API key, TLS trust and, for groups that demand one, client
//! certificate (its transport identity). Every call names the group it is meant for, so a node
//! of another group (a map with wrong addresses) refuses it instead of serving it.
//!
//! Owns turning a group's failure into the gateway's answer ([`PipelineError`]): a group that
//! cannot answer is unavailable (retryable), a full group is a capacity refusal naming its
//! limit. Must not route (the router does) nor retry beyond the client's policy.

use std::collections::BTreeMap;
use std::time::Duration;

use client::{Client, ClientError, RetryPolicy};
use cluster::{ClusterMap, GroupId};
use ledger::{Account, SagaStep, Transfer};
use limits::GATEWAY_GROUP_CALL_SECONDS_MAX as GROUP_CALL_SECONDS_MAX;
use server::PipelineError;

use crate::coalesce::GroupWriter;

/// How the gateway reaches the groups: the key it presents (a key of the groups' keys files
/// with the `admin` role, which the saga steps of cross-group transfers need; a `write` key
/// serves single-group traffic only), the authority it trusts for their TLS and the
/// certificate it presents to them.
#[derive(Debug, Clone, Default)]
pub struct GroupAccess {
    pub api_key: Option<String>,
    /// PEM of the authority that signed the groups' client-listener certificates: dial them
    /// over TLS (`https://`). `None`: plaintext.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// The name their certificates carry, when it is not the host dialled.
    pub tls_domain: Option<String>,
    /// The gateway's client certificate and key (PEM each), presented to every group (nodes
    /// serving `--tls-client-ca` demand one). Needs `tls_ca_pem`.
    pub tls_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl GroupAccess {
    /// A client of the servers at `addrs` (`HOST:PORT` each; dialled `https://` when TLS is
    /// set up), with this access's key, TLS and identity, naming `group` on every call if
    /// given: how a gateway reaches a ledger group, and the meta group.
    pub fn client(
        &self,
        addrs: &[&str],
        policy: RetryPolicy,
        group: Option<String>,
    ) -> Result<Client, ClientError> {
        let scheme = if self.tls_ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        let addrs: Vec<String> = addrs
            .iter()
            .map(|addr| format!("{scheme}://{addr}"))
            .collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let mut builder = Client::builder(&addrs)
            .retry_policy(policy)
            .api_key_opt(self.api_key.clone());
        if let Some(group) = group {
            builder = builder.group(group);
        }
        if let Some(pem) = &self.tls_ca_pem {
            builder = builder.tls_ca_pem(pem.clone());
        }
        if let Some(domain) = &self.tls_domain {
            builder = builder.tls_domain(domain.clone());
        }
        if let Some((certificate, key)) = &self.tls_identity_pem {
            builder = builder.tls_identity_pem(certificate.clone(), key.clone());
        }
        builder.connect()
    }
}

/// Why the groups could not be connected.
#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    #[error("group {group}: {source}")]
    Connect {
        group: GroupId,
        #[source]
        source: ClientError,
    },
}

/// One group's connection: its client (reads go straight through it), a writer per event
/// kind (writes coalesce there across callers), and a client of each member alone (what the
/// console asks for each replica's own status).
pub(crate) struct Group {
    pub(crate) client: Client,
    pub(crate) members: Vec<MemberClient>,
    pub(crate) accounts: GroupWriter<Account>,
    pub(crate) transfers: GroupWriter<Transfer>,
    pub(crate) sagas: GroupWriter<SagaStep>,
}

/// One member of a group, reached alone: no leader following, one attempt.
pub(crate) struct MemberClient {
    pub(crate) id: u64,
    pub(crate) address: String,
    pub(crate) client: Client,
}

/// One connection per group of the map.
pub struct Groups {
    groups: BTreeMap<GroupId, Group>,
}

impl Groups {
    /// Makes a client for every group in `map`, dialling its members' gRPC addresses, and its
    /// writers. Must run inside a Tokio runtime (clients and writers start tasks).
    pub fn connect(map: &ClusterMap, access: &GroupAccess) -> Result<Groups, GroupsError> {
        let policy = RetryPolicy {
            elapsed_max: Duration::from_secs(GROUP_CALL_SECONDS_MAX),
            attempt_timeout: Duration::from_secs(GROUP_CALL_SECONDS_MAX / 2),
            ..RetryPolicy::default()
        };
        let status_timeout = Duration::from_millis(limits::CONSOLE_REPLICA_STATUS_TIMEOUT_MS);
        let status_policy = RetryPolicy {
            attempts_max: 1,
            elapsed_max: status_timeout,
            attempt_timeout: status_timeout,
            ..RetryPolicy::default()
        };
        let mut groups = BTreeMap::new();
        for (&group, members) in map.groups() {
            let member_clients = members
                .iter()
                .map(|(&id, member)| {
                    let client = access.client(
                        &[member.grpc.as_str()],
                        status_policy.clone(),
                        Some(group.to_string()),
                    )?;
                    Ok(MemberClient {
                        id,
                        address: member.grpc.clone(),
                        client,
                    })
                })
                .collect::<Result<Vec<_>, ClientError>>()
                .map_err(|source| GroupsError::Connect { group, source })?;
            let addrs: Vec<&str> = members
                .values()
                .map(|member| member.grpc.as_str())
                .collect();
            let client = access
                .client(&addrs, policy.clone(), Some(group.to_string()))
                .map_err(|source| GroupsError::Connect { group, source })?;
            let name: std::sync::Arc<str> = group.to_string().into();
            let connection = Group {
                accounts: GroupWriter::start(name.clone(), client.clone(), |client, events| {
                    Box::pin(async move { client.create_accounts(&events).await })
                }),
                transfers: GroupWriter::start(name.clone(), client.clone(), |client, events| {
                    Box::pin(async move { client.create_transfers(&events).await })
                }),
                sagas: GroupWriter::start(name, client.clone(), |client, steps| {
                    Box::pin(async move { client.saga_steps(&steps).await })
                }),
                client,
                members: member_clients,
            };
            groups.insert(group, connection);
        }
        Ok(Groups { groups })
    }

    /// Every group with its members' own clients, in group order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&GroupId, &Group)> {
        self.groups.iter()
    }

    /// The client of `group` (for reads).
    pub fn client(&self, group: GroupId) -> Result<&Client, PipelineError> {
        self.group(group).map(|group| &group.client)
    }

    /// The connection of `group`; every group of the map the gateway routes by has one.
    pub(crate) fn group(&self, group: GroupId) -> Result<&Group, PipelineError> {
        self.groups.get(&group).ok_or_else(|| {
            PipelineError::Unavailable(format!(
                "group {group} is in the cluster map but this gateway has no connection to it"
            ))
        })
    }
}

/// The gateway's answer when `group` did not give one.
pub(crate) fn group_failed(group: GroupId, error: ClientError) -> PipelineError {
    match error {
        ClientError::CapacityReached { limit, message } => {
            let field = match limit.as_str() {
                "accounts_max" => "accounts_max",
                _ => "transfers_max",
            };
            PipelineError::GroupCapacityReached {
                field,
                message: format!("group {group}: {message}"),
            }
        }
        // The gateway validated the request as a node does: a group refusing it as invalid,
        // or refusing the gateway's own key, is the operator's to fix, not the caller's.
        other => PipelineError::Unavailable(format!("group {group} did not answer: {other}")),
    }
}
