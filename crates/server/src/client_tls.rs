//! TLS on the client listeners (`serve --tls-cert FILE --tls-key FILE`): the node presents a
//! certificate to its clients on both the gRPC and the HTTP listener, as any HTTPS server does.
//! Clients prove who they are with API keys ([`crate::auth`]), not certificates.
//!
//! This module owns reading and checking the certificate chain and key, and making each
//! listener's TLS configuration from them. It must not accept connections
//! ([`crate::connections`] does) nor know the peer listener's mutual TLS
//! (`replication::peer_tls`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tonic::transport::{Identity, ServerTlsConfig};

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
    #[error("the key {key} does not go with the certificate {certificate}: {reason}")]
    Mismatch {
        certificate: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificate (PEM: the node's certificate first, then any intermediates) and private key
/// (PEM) the client listeners present.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// A checked certificate and key, ready for both listeners.
#[derive(Clone)]
pub struct ClientTls {
    files: ClientTlsFiles,
    certificate_pem: Vec<u8>,
    key_pem: Vec<u8>,
    http: Arc<rustls::ServerConfig>,
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

impl ClientTls {
    /// Reads the files and checks them: at least one PEM certificate, one PEM private key, and
    /// the key is the certificate's.
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls, ClientTlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certificate_pem = read(&files.certificate)?;
        let key_pem = read(&files.key)?;
        let bad = |path: &Path, reason: String| ClientTlsError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(&certificate_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| bad(&files.certificate, format!("not PEM certificates: {error}")))?;
        if chain.is_empty() {
            return Err(bad(
                &files.certificate,
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|error| bad(&files.key, format!("no PEM private key: {error}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut http = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| bad(&files.certificate, error.to_string()))?
            .with_no_client_auth()
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
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.certificate_pem, &self.key_pem))
            .timeout(Duration::from_secs(
                limits::CLIENT_TLS_HANDSHAKE_SECONDS_MAX,
            ))
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
        };
        std::fs::write(&files.certificate, certificate.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
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
        std::fs::write(&junk, "not a certificate").unwrap();
        let no_certificate = ClientTls::load(ClientTlsFiles {
            certificate: junk.clone(),
            key: good.key.clone(),
        })
        .unwrap_err();
        assert!(
            no_certificate.to_string().contains("junk.pem"),
            "{no_certificate}"
        );
        let no_key = ClientTls::load(ClientTlsFiles {
            certificate: good.certificate.clone(),
            key: junk.clone(),
        })
        .unwrap_err();
        assert!(no_key.to_string().contains("junk.pem"), "{no_key}");
        let missing = ClientTls::load(ClientTlsFiles {
            certificate: dir.path().join("absent.pem"),
            key: good.key,
        })
        .unwrap_err();
        assert!(matches!(missing, ClientTlsError::Io { .. }), "{missing}");
    }
}
