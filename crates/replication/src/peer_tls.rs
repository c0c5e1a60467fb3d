//! Who a peer is: the identities replicas prove to each other with mutual TLS.
//!
//! A replica's certificate names its group and node id as one DNS name,
//! `n<ID>.<GROUP>.peer.fincore` ([`peer_dns_name`]), signed by the group's certificate authority.
//! A connection is accepted only with a certificate from that authority (the TLS handshake checks
//! it), and a message is accepted only when the certificate names the sender the message claims
//! ([`PeerTls::check_sender`]); a node dialling peer N checks that the answer comes from a
//! certificate naming N. [`issue_development_certificates`] makes a development authority and node
//! certificates (`fincore certs`, `fincore dev`); production operators may use their own authority
//! as long as the names follow [`peer_dns_name`].
//!
//! This module owns the naming, the loading of certificate files and the checks. It must not
//! decide membership (the caller says which senders are current members).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, CertificateDer, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::types::NodeId;

/// The DNS suffix every peer name ends with.
pub const PEER_NAME_SUFFIX: &str = "peer.fincore";

/// Why certificates could not be issued or loaded, or a sender was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error(
        "group name {0:?} is not usable in a certificate: use 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    GroupName(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Issue(#[from] crate::dev_certs::DevCertificateError),
    #[error(transparent)]
    Secret(#[from] crate::secret_file::SecretFileError),
    #[error("the peer presented no client certificate")]
    NoCertificate,
    #[error("the peer's certificate does not name node {claimed} of group {group}")]
    WrongSender { claimed: NodeId, group: String },
}

/// Checks that `group` can be one label of a DNS name.
pub fn check_group_name(group: &str) -> Result<(), PeerTlsError> {
    let ok = (1..=63).contains(&group.len())
        && group
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !group.starts_with('-')
        && !group.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(PeerTlsError::GroupName(group.to_string()))
    }
}

/// The name node `node` of group `group` has in its certificate.
pub fn peer_dns_name(group: &str, node: NodeId) -> String {
    format!("n{node}.{group}.{PEER_NAME_SUFFIX}")
}

/// The files of one node's identity in a certificate directory.
pub struct CertificateFiles {
    pub ca: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    /// The layout `fincore certs` writes: `ca.pem`, `node-N.pem`, `node-N.key`.
    pub fn in_dir(dir: &Path, node: NodeId) -> CertificateFiles {
        CertificateFiles {
            ca: dir.join("ca.pem"),
            certificate: dir.join(format!("node-{node}.pem")),
            key: dir.join(format!("node-{node}.key")),
        }
    }
}

/// One node's TLS material for talking to its peers.
#[derive(Clone)]
pub struct PeerTls {
    group: String,
    ca: Certificate,
    identity: Identity,
}

fn read(path: &Path) -> Result<Vec<u8>, PeerTlsError> {
    std::fs::read(path).map_err(|source| PeerTlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The first certificate in PEM text, as DER.
fn first_certificate(path: &Path, pem_text: &[u8]) -> Result<Vec<u8>, PeerTlsError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem_text)
        .map(|der| der.to_vec())
        .map_err(|error| PeerTlsError::BadFile {
            path: path.to_path_buf(),
            reason: format!("no PEM certificate: {error}"),
        })
}

impl PeerTls {
    /// Loads node `node`'s identity: its certificate must name it as node `node` of one group
    /// (`n<node>.<GROUP>.peer.fincore`), which becomes [`PeerTls::group`].
    pub fn load(node: NodeId, files: &CertificateFiles) -> Result<PeerTls, PeerTlsError> {
        let ca = read(&files.ca)?;
        first_certificate(&files.ca, &ca)?;
        let certificate = read(&files.certificate)?;
        let key = crate::secret_file::read(&files.key)?;
        let leaf = first_certificate(&files.certificate, &certificate)?;
        let group = named_group(&leaf, node).map_err(|reason| PeerTlsError::BadFile {
            path: files.certificate.clone(),
            reason,
        })?;
        Ok(PeerTls {
            group,
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(certificate, key),
        })
    }

    /// The group this node's certificate names it a member of.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// For the peer listener: present this node's certificate, and require one from the group's
    /// authority of every connecting peer.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// For dialling peer `peer`: present this node's certificate, and accept only the group's
    /// authority's certificate naming `peer`.
    pub fn client_config(&self, peer: NodeId) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(peer_dns_name(&self.group, peer))
    }

    /// Accepts a message claiming to come from node `claimed` only if the connection's client
    /// certificate (`certificates`, leaf first, already verified against the group's authority
    /// by the handshake) names that node of this group.
    pub fn check_sender(
        &self,
        certificates: Option<&[CertificateDer<'static>]>,
        claimed: NodeId,
    ) -> Result<(), PeerTlsError> {
        let leaf = certificates
            .and_then(<[_]>::first)
            .ok_or(PeerTlsError::NoCertificate)?;
        if names(leaf.as_ref(), &self.group, claimed) {
            Ok(())
        } else {
            Err(PeerTlsError::WrongSender {
                claimed,
                group: self.group.clone(),
            })
        }
    }
}

/// The group of which the DER certificate `leaf` names node `node` a member: its one DNS name
/// of the form `n<node>.<GROUP>.peer.fincore`.
fn named_group(leaf: &[u8], node: NodeId) -> Result<String, String> {
    let der = CertificateDer::from(leaf);
    let certificate = webpki::EndEntityCert::try_from(&der)
        .map_err(|error| format!("not a usable certificate: {error:?}"))?;
    let prefix = format!("n{node}.");
    let suffix = format!(".{PEER_NAME_SUFFIX}");
    let groups: Vec<&str> = certificate
        .valid_dns_names()
        .filter_map(|name| name.strip_prefix(&prefix)?.strip_suffix(&suffix))
        .collect();
    match groups.as_slice() {
        [group] if check_group_name(group).is_ok() => Ok(group.to_string()),
        [] => Err(format!(
            "the certificate does not name node {node} of any group ({})",
            peer_dns_name("GROUP", node)
        )),
        _ => Err(format!(
            "the certificate names node {node} in several groups or in an invalid one ({groups:?}); a node's certificate names one group"
        )),
    }
}

/// Whether the DER certificate `leaf` names node `node` of group `group`.
fn names(leaf: &[u8], group: &str, node: NodeId) -> bool {
    let der = CertificateDer::from(leaf);
    let Ok(certificate) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let Ok(name) = rustls_pki_types::ServerName::try_from(peer_dns_name(group, node)) else {
        return false;
    };
    certificate.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Makes a development certificate authority for group `group` in `dir` (`ca.pem`, `ca.key`;
/// kept if already there) and a certificate for each of `nodes` (`node-N.pem`, `node-N.key`;
/// replaced), valid for `days` days. Keys are written readable by their owner only.
pub fn issue_development_certificates(
    dir: &Path,
    group: &str,
    nodes: &[NodeId],
    days: u32,
) -> Result<(), PeerTlsError> {
    use crate::dev_certs::{Authority, LeafFiles, Purpose};
    check_group_name(group)?;
    let common_name = format!("fincore development authority of group {group}");
    let authority = Authority::open_or_create(dir, "ca", &common_name, days)?;
    for &node in nodes {
        let files = CertificateFiles::in_dir(dir, node);
        authority.issue(
            &[peer_dns_name(group, node)],
            Purpose::ServerAndClient,
            LeafFiles {
                certificate: &files.certificate,
                key: &files.key,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(dir: &Path, node: NodeId) -> CertificateDer<'static> {
        let path = CertificateFiles::in_dir(dir, node).certificate;
        CertificateDer::from(first_certificate(&path, &std::fs::read(&path).unwrap()).unwrap())
    }

    #[test]
    fn a_node_certificate_names_its_own_node_and_group_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        issue_development_certificates(dir.path(), "payments-1", &[1, 2], 30).unwrap();
        let tls = PeerTls::load(1, &CertificateFiles::in_dir(dir.path(), 1)).unwrap();
        assert_eq!(tls.group(), "payments-1");
        let two = [leaf(dir.path(), 2)];
        tls.check_sender(Some(&two), 2).unwrap();
        assert!(matches!(
            tls.check_sender(Some(&two), 1),
            Err(PeerTlsError::WrongSender { claimed: 1, .. })
        ));
        assert!(matches!(
            tls.check_sender(Some(&two), 22),
            Err(PeerTlsError::WrongSender { claimed: 22, .. })
        ));
        assert!(matches!(
            tls.check_sender(None, 2),
            Err(PeerTlsError::NoCertificate)
        ));
        // The same node id in another group is someone else.
        let other = tempfile::tempdir().unwrap();
        issue_development_certificates(other.path(), "payments-2", &[2], 30).unwrap();
        assert!(tls.check_sender(Some(&[leaf(other.path(), 2)]), 2).is_err());
        // Loading a certificate as another node's identity is refused, naming the file.
        let error = PeerTls::load(
            3,
            &CertificateFiles {
                certificate: CertificateFiles::in_dir(dir.path(), 2).certificate,
                ..CertificateFiles::in_dir(dir.path(), 2)
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("node-2.pem") && error.contains("does not name node 3"),
            "{error}"
        );
    }

    #[test]
    fn issuing_again_keeps_the_authority_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        issue_development_certificates(dir.path(), "g", &[1], 30).unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        issue_development_certificates(dir.path(), "g", &[4], 30).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        for key in ["ca.key", "node-1.key", "node-4.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        PeerTls::load(4, &CertificateFiles::in_dir(dir.path(), 4)).unwrap();
    }

    /// A peer service that accepts a message only from node 1, as `check_sender` judges it.
    struct FromNodeOne(PeerTls);

    type Answer = Result<tonic::Response<crate::proto::RaftMessage>, tonic::Status>;

    impl FromNodeOne {
        fn judge<T>(&self, request: &tonic::Request<T>) -> Answer {
            let certificates = request.peer_certs();
            match self
                .0
                .check_sender(certificates.as_deref().map(Vec::as_slice), 1)
            {
                Ok(()) => Ok(tonic::Response::new(crate::proto::RaftMessage::default())),
                Err(error) => Err(tonic::Status::permission_denied(error.to_string())),
            }
        }
    }

    #[tonic::async_trait]
    impl crate::proto::raft_transport_server::RaftTransport for FromNodeOne {
        async fn append_entries(
            &self,
            request: tonic::Request<crate::proto::RaftMessage>,
        ) -> Answer {
            self.judge(&request)
        }
        async fn vote(&self, request: tonic::Request<crate::proto::RaftMessage>) -> Answer {
            self.judge(&request)
        }
        async fn install_snapshot(
            &self,
            request: tonic::Request<tonic::Streaming<crate::proto::RaftMessage>>,
        ) -> Answer {
            self.judge(&request)
        }
        async fn transfer_leader(
            &self,
            request: tonic::Request<crate::proto::RaftMessage>,
        ) -> Answer {
            self.judge(&request)
        }
    }

    /// Dials `addr` with `tls` (or in plaintext) and sends one message.
    async fn send(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<(), String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .unwrap()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        crate::proto::raft_transport_client::RaftTransportClient::new(channel)
            .append_entries(crate::proto::RaftMessage::default())
            .await
            .map(drop)
            .map_err(|status| format!("{status:?}"))
    }

    #[tokio::test]
    async fn only_the_claimed_member_of_the_group_gets_a_message_through_and_the_dialler_checks_whom_it_reached()
     {
        let dir = tempfile::tempdir().unwrap();
        issue_development_certificates(dir.path(), "g", &[1, 2, 3], 30).unwrap();
        let stranger = tempfile::tempdir().unwrap();
        issue_development_certificates(stranger.path(), "g", &[1], 30).unwrap();
        let node = |dir: &Path, id| PeerTls::load(id, &CertificateFiles::in_dir(dir, id)).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = crate::proto::raft_transport_server::RaftTransportServer::new(FromNodeOne(
            node(dir.path(), 2),
        ));
        let server = tonic::transport::Server::builder()
            .tls_config(node(dir.path(), 2).server_config())
            .unwrap()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        let server = tokio::spawn(server);

        // Node 1 dialling node 2: through.
        send(addr, Some(node(dir.path(), 1).client_config(2)))
            .await
            .unwrap();
        // Node 3 is a member but not the sender the service expects: refused by the check.
        let refused = send(addr, Some(node(dir.path(), 3).client_config(2)))
            .await
            .unwrap_err();
        assert!(
            refused.contains("PermissionDenied") && refused.contains("node 1"),
            "{refused}"
        );
        // A "node 1" certificate from another authority: the handshake refuses it.
        let trusting = || {
            ClientTlsConfig::new()
                .ca_certificate(node(dir.path(), 2).ca)
                .domain_name(peer_dns_name("g", 2))
        };
        let forged = trusting().identity(node(stranger.path(), 1).identity);
        let refused = send(addr, Some(forged)).await.unwrap_err();
        assert!(refused.contains("alert"), "{refused}");
        // No certificate at all, or plaintext: refused.
        let refused = send(addr, Some(trusting())).await.unwrap_err();
        assert!(refused.contains("CertificateRequired"), "{refused}");
        send(addr, None).await.unwrap_err();
        // Node 1 meaning to reach node 3 but reaching node 2: the dialler refuses.
        let refused = send(addr, Some(node(dir.path(), 1).client_config(3)))
            .await
            .unwrap_err();
        assert!(refused.contains("NotValidForName"), "{refused}");
        server.abort();
    }

    #[test]
    fn group_names_must_be_one_dns_label() {
        for good in ["g", "payments-eu-1", &"a".repeat(63)] {
            check_group_name(good).unwrap();
        }
        for bad in ["", "-g", "g-", "G", "a.b", "a_b", &"a".repeat(64)] {
            assert!(check_group_name(bad).is_err(), "{bad:?}");
        }
    }
}
