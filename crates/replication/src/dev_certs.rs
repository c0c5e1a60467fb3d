//! Development certificate authorities kept in a directory, and the certificates they sign
//! (rcgen): the group's authority for peer certificates ([`crate::peer_tls`]) and an authority
//! for the client listeners' certificates (`fincore certs --api-names`) and for the
//! certificates clients present to them (`fincore certs --client-names`, a gateway's identity).
//!
//! For development and tests; production operators issue from their own authority. This module
//! owns creating or reusing an authority (`<stem>.pem`, `<stem>.key`), signing leaf
//! certificates and writing keys readable by their owner only. It must not decide what a
//! certificate names (the callers do).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Why an authority or a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevCertificateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("issuing a certificate failed: {0}")]
    Issue(String),
    #[error(transparent)]
    Secret(#[from] crate::secret_file::SecretFileError),
}

fn issue(error: rcgen::Error) -> DevCertificateError {
    DevCertificateError::Issue(error.to_string())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevCertificateError + use<> {
    let path = path.to_path_buf();
    move |source| DevCertificateError::Io { path, source }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A server only (a client listener).
    Server,
    /// A client only (a gateway presenting itself to the client listeners of its groups).
    Client,
    /// Both ends of mutual TLS (a replica dials its peers and is dialled by them).
    ServerAndClient,
}

/// An authority that signs certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    days: u32,
}

/// The certificate and key files of one leaf.
pub struct LeafFiles<'a> {
    pub certificate: &'a Path,
    pub key: &'a Path,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

impl Authority {
    /// The authority `dir/<stem>.pem` with its key `dir/<stem>.key`, created (with `common_name`)
    /// if the key is not there yet, else reused: certificates it signs chain to the stored
    /// `<stem>.pem`. Its certificates are valid for `days` days.
    pub fn open_or_create(
        dir: &Path,
        stem: &str,
        common_name: &str,
        days: u32,
    ) -> Result<Authority, DevCertificateError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // The authority's name and key identify it; recreating its parameters from them signs
        // certificates that chain to the stored certificate.
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, days);
        let certificate_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        let key = match crate::secret_file::read_text(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|error| DevCertificateError::BadFile {
                path: key_path.clone(),
                reason: error.to_string(),
            })?,
            Err(crate::secret_file::SecretFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let key = KeyPair::generate().map_err(issue)?;
                let certificate = params.self_signed(&key).map_err(issue)?;
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                std::fs::write(&certificate_path, certificate.pem())
                    .map_err(io(&certificate_path))?;
                key
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Authority {
            issuer: Issuer::new(params, key),
            days,
        })
    }

    /// Signs a new certificate naming `names` (DNS names; IP addresses become IP address
    /// names) for `purpose`, with a new key; writes both (replacing what was there).
    pub fn issue(
        &self,
        names: &[String],
        purpose: Purpose,
        files: LeafFiles<'_>,
    ) -> Result<(), DevCertificateError> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(issue)?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.clone());
        }
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match purpose {
            Purpose::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Purpose::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Purpose::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        validity(&mut params, self.days);
        let key = KeyPair::generate().map_err(issue)?;
        let certificate = params.signed_by(&key, &self.issuer).map_err(issue)?;
        write_private(files.key, key.serialize_pem().as_bytes())?;
        std::fs::write(files.certificate, certificate.pem()).map_err(io(files.certificate))
    }
}

/// Writes `bytes` to a new file at `path` readable and writable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DevCertificateError> {
    crate::secret_file::write(path, bytes).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_authority_signs_certificates_that_chain_to_its_stored_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::open_or_create(dir.path(), "ca", "test authority", 30).unwrap();
        let stored = std::fs::read(dir.path().join("ca.pem")).unwrap();
        drop(first);
        let again = Authority::open_or_create(dir.path(), "ca", "test authority", 30).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), stored);
        let (certificate, key) = (dir.path().join("leaf.pem"), dir.path().join("leaf.key"));
        again
            .issue(
                &["localhost".to_string(), "127.0.0.1".to_string()],
                Purpose::Server,
                LeafFiles {
                    certificate: &certificate,
                    key: &key,
                },
            )
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The leaf verifies against the stored authority for both names.
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
        let ca = CertificateDer::from_pem_slice(&stored).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
        let leaf = CertificateDer::from_pem_file(&certificate).unwrap();
        let leaf = webpki::EndEntityCert::try_from(&leaf).unwrap();
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap();
        for name in ["localhost", "127.0.0.1"] {
            let name = ServerName::try_from(name).unwrap();
            leaf.verify_is_valid_for_subject_name(&name).unwrap();
        }
        let other = ServerName::try_from("example.com").unwrap();
        assert!(leaf.verify_is_valid_for_subject_name(&other).is_err());
    }

    #[test]
    fn a_client_certificate_proves_a_client_and_cannot_serve() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::open_or_create(dir.path(), "ca", "test authority", 30).unwrap();
        let (certificate, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
        authority
            .issue(
                &["gateway-1".to_string()],
                Purpose::Client,
                LeafFiles {
                    certificate: &certificate,
                    key: &key,
                },
            )
            .unwrap();
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, UnixTime};
        let ca = CertificateDer::from_pem_file(dir.path().join("ca.pem")).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
        let leaf = CertificateDer::from_pem_file(&certificate).unwrap();
        let leaf = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let verify = |usage| {
            leaf.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .map(|_| ())
        };
        verify(webpki::KeyUsage::client_auth()).unwrap();
        assert!(verify(webpki::KeyUsage::server_auth()).is_err());
        assert_eq!(leaf.valid_dns_names().collect::<Vec<_>>(), ["gateway-1"]);
    }
}
