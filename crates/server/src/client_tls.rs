//! TLS on the client listeners (`serve --tls-cert FILE --tls-key FILE`): the node presents a
//! certificate to its clients on both the gRPC and the HTTP listener, as any HTTPS server does.
//! With `--tls-client-ca FILE` it is mutual: both listeners then demand of every client a
//! certificate issued by that authority, and a connection without one fails its handshake.
//! That certificate is the connection's transport identity ([`ClientIdentity`], its first DNS
//! name, put on each request for handlers and logged at debug); API keys ([`crate::auth`])
//! still decide what a caller may do, with or without it.
//!
//! This module owns reading and checking the certificates and keys of both ends (the listeners'
//! and a client's, [`read_client_identity`]), making each listener's TLS configuration from
//! them, and naming a client by its certificate. It must not accept connections
//! ([`crate::connections`] does) nor know the peer listener's mutual TLS
//! (`replication::peer_tls`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Why the client listeners' certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Secret(#[from] replication::secret_file::SecretFileError),
    #[error("the key {key} does not go with the certificate {certificate}: {reason}")]
    Mismatch {
        certificate: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificate (PEM: the node's certificate first, then any intermediates) and private key
/// (PEM) the client listeners present, and the authority (PEM) whose certificates they demand
/// of clients, if any.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// `Some`: mutual TLS, clients must present a certificate issued by this authority.
    pub client_ca: Option<PathBuf>,
}

/// A checked certificate and key (and client authority), ready for both listeners.
#[derive(Clone)]
pub struct ClientTls {
    files: ClientTlsFiles,
    certificate_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    http: Arc<rustls::ServerConfig>,
}

/// Who a client connection is, by its verified certificate: the certificate's first DNS name
/// (subject alternative name). Put on every request of a mutual-TLS connection as a request
/// extension (HTTP: `axum::Extension<ClientIdentity>` or `request.extensions()`; gRPC:
/// `tonic::Request::extensions`). It identifies, it does not authorize: roles come from API
/// keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub name: String,
}

impl std::fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl ClientIdentity {
    /// The identity of a client that presented `certificates` (leaf first, already verified by
    /// the handshake): its leaf's first DNS name. `None` without a certificate, or for one
    /// that names no DNS name.
    pub fn of(certificates: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
        let leaf = certificates.first()?;
        let certificate = webpki::EndEntityCert::try_from(leaf).ok()?;
        let name = certificate.valid_dns_names().next()?;
        Some(ClientIdentity {
            name: name.to_string(),
        })
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientTlsError> {
    std::fs::read(path).map_err(|source| ClientTlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate chain and its private key, as read (PEM) and parsed.
struct Pair {
    certificate_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Reads a certificate chain and its private key (PEM each), and checks that there is at least
/// one certificate and a key.
fn read_pair(certificate: &Path, key: &Path) -> Result<Pair, ClientTlsError> {
    let certificate_pem = read(certificate)?;
    let key_pem = replication::secret_file::read(key)?;
    let chain = certificates(certificate, &certificate_pem)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| bad(key, format!("no PEM private key: {error}")))?;
    Ok(Pair {
        certificate_pem,
        key_pem,
        chain,
        key: key_der,
    })
}

fn bad(path: &Path, reason: String) -> ClientTlsError {
    ClientTlsError::BadFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// The PEM certificates in `pem` (read from `path`), at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(path, format!("not PEM certificates: {error}")))?;
    if chain.is_empty() {
        return Err(bad(
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(chain)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The verifier of clients' certificates: issued by the authority in `pem` (read from `path`),
/// for client authentication, and required.
fn client_verifier(
    path: &Path,
    pem: &[u8],
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(path, pem)? {
        roots
            .add(certificate)
            .map_err(|error| bad(path, format!("not a usable authority: {error}")))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|error| bad(path, format!("not a usable authority: {error}")))
}

/// A client certificate and its key (`ClientBuilder::tls_identity_pem`; a gateway's
/// `--group-tls-cert/--group-tls-key`), checked: PEM, and the key is the certificate's.
/// Answers both PEM texts (certificate, key).
pub fn read_client_identity(
    certificate: &Path,
    key: &Path,
) -> Result<(Vec<u8>, Vec<u8>), ClientTlsError> {
    let pair = read_pair(certificate, key)?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| bad(certificate, error.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(pair.chain, pair.key)
        .map_err(|error| ClientTlsError::Mismatch {
            certificate: certificate.to_path_buf(),
            key: key.to_path_buf(),
            reason: error.to_string(),
        })?;
    Ok((pair.certificate_pem, pair.key_pem))
}

impl ClientTls {
    /// Reads the files and checks them: at least one PEM certificate, one PEM private key, the
    /// key is the certificate's, and the client authority (if any) holds PEM certificates.
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls, ClientTlsError> {
        let Pair {
            certificate_pem,
            key_pem,
            chain,
            key,
        } = read_pair(&files.certificate, &files.key)?;
        let client_ca_pem = match &files.client_ca {
            Some(path) => Some(read(path)?),
            None => None,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| bad(&files.certificate, error.to_string()))?;
        let builder = match (&files.client_ca, &client_ca_pem) {
            (Some(path), Some(pem)) => {
                builder.with_client_cert_verifier(client_verifier(path, pem)?)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut http =
            builder
                .with_single_cert(chain, key)
                .map_err(|error| ClientTlsError::Mismatch {
                    certificate: files.certificate.clone(),
                    key: files.key.clone(),
                    reason: error.to_string(),
                })?;
        // The HTTP listener speaks HTTP/1.1 only.
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            files,
            certificate_pem,
            key_pem,
            client_ca_pem,
            http: Arc::new(http),
        })
    }

    /// The certificate file presented.
    pub fn certificate_path(&self) -> &Path {
        &self.files.certificate
    }

    /// For the gRPC listener: present the certificate; a client slower than
    /// `limits::CLIENT_TLS_HANDSHAKE_SECONDS_MAX` to complete the handshake is disconnected.
    pub fn grpc_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.certificate_pem, &self.key_pem))
            .timeout(Duration::from_secs(
                limits::CLIENT_TLS_HANDSHAKE_SECONDS_MAX,
            ));
        match &self.client_ca_pem {
            // Required (tonic's default): a client without a certificate fails the handshake.
            Some(pem) => config.client_ca_root(Certificate::from_pem(pem)),
            None => config,
        }
    }

    /// The authority clients' certificates must come from, if the listeners demand them.
    pub fn client_ca_path(&self) -> Option<&Path> {
        self.files.client_ca.as_deref()
    }

    /// For the HTTP listener (see `connections::serve_http`).
    pub fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.http))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> ClientTlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let files = ClientTlsFiles {
            certificate: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            client_ca: None,
        };
        std::fs::write(&files.certificate, certificate.pem()).unwrap();
        replication::secret_file::write(&files.key, key.serialize_pem().as_bytes()).unwrap();
        files
    }

    #[test]
    fn a_key_every_user_may_read_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "a");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = ClientTls::load(files.clone()).unwrap_err().to_string();
        assert!(
            error.contains(&files.key.display().to_string()) && error.contains("chmod o-rwx"),
            "{error}"
        );
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "a");
        let tls = ClientTls::load(files.clone()).unwrap();
        assert_eq!(tls.certificate_path(), files.certificate);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a");
        let b = write_pair(dir.path(), "b");
        let error = ClientTls::load(ClientTlsFiles {
            certificate: a.certificate.clone(),
            key: b.key.clone(),
            client_ca: None,
        })
        .unwrap_err();
        assert!(matches!(error, ClientTlsError::Mismatch { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("a.pem") && text.contains("b.key"), "{text}");
    }

    #[test]
    fn files_that_are_not_pem_or_missing_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_pair(dir.path(), "a");
        let junk = dir.path().join("junk.pem");
        // Owner-only, so that as a key it is refused for its text, not its mode.
        replication::secret_file::write(&junk, b"not a certificate").unwrap();
        let no_certificate = ClientTls::load(ClientTlsFiles {
            certificate: junk.clone(),
            key: good.key.clone(),
            client_ca: None,
        })
        .unwrap_err();
        assert!(
            no_certificate.to_string().contains("junk.pem"),
            "{no_certificate}"
        );
        let no_key = ClientTls::load(ClientTlsFiles {
            certificate: good.certificate.clone(),
            key: junk.clone(),
            client_ca: None,
        })
        .unwrap_err();
        assert!(no_key.to_string().contains("junk.pem"), "{no_key}");
        let missing = ClientTls::load(ClientTlsFiles {
            certificate: dir.path().join("absent.pem"),
            key: good.key.clone(),
            client_ca: None,
        })
        .unwrap_err();
        assert!(matches!(missing, ClientTlsError::Io { .. }), "{missing}");
    }

    #[test]
    fn a_client_authority_that_is_not_pem_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_pair(dir.path(), "a");
        let junk = dir.path().join("junk-ca.pem");
        std::fs::write(&junk, "not an authority").unwrap();
        let error = ClientTls::load(ClientTlsFiles {
            client_ca: Some(junk),
            ..good.clone()
        })
        .unwrap_err();
        assert!(error.to_string().contains("junk-ca.pem"), "{error}");
        let tls = ClientTls::load(ClientTlsFiles {
            client_ca: Some(good.certificate.clone()),
            ..good
        })
        .unwrap();
        assert!(tls.client_ca_path().is_some());
    }

    #[test]
    fn a_client_identity_must_be_a_certificate_and_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a");
        let b = write_pair(dir.path(), "b");
        let (certificate, key) = read_client_identity(&a.certificate, &a.key).unwrap();
        assert!(
            String::from_utf8(certificate)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert!(String::from_utf8(key).unwrap().contains("PRIVATE KEY"));
        let mismatch = read_client_identity(&a.certificate, &b.key).unwrap_err();
        let text = mismatch.to_string();
        assert!(text.contains("a.pem") && text.contains("b.key"), "{text}");
        let missing = read_client_identity(&dir.path().join("absent.pem"), &a.key).unwrap_err();
        assert!(missing.to_string().contains("absent.pem"), "{missing}");
    }

    #[test]
    fn a_client_is_named_by_its_certificates_first_dns_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![
            "gateway-1".to_string(),
            "gateway-1.example.com".to_string(),
        ])
        .unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let der = certificate.der().clone();
        assert_eq!(
            ClientIdentity::of(&[der]).map(|identity| identity.to_string()),
            Some("gateway-1".to_string())
        );
        assert_eq!(ClientIdentity::of(&[]), None);
        let ip_only = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(ClientIdentity::of(&[ip_only.der().clone()]), None);
    }
}
