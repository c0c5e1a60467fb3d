//! A blocking HTTP/1.1 client, one request per fresh connection (`Connection: close`), enough
//! to drive a node's HTTP API from tests and operator commands; and a node's `/v1/status`.
//!
//! Deliberately tiny: no keep-alive, no redirects followed (callers see 307 and its
//! `Location`); HTTPS only through a [`Transport`] trusting a given authority. It must not be
//! used where throughput matters; the bench measures over gRPC.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::KitError;

/// How long an answer may take. Long enough for `/v1/status?digest=true` on a large state
/// (about a second at 10M transfers) on a machine also running the group.
pub const ANSWER_SECONDS_MAX: u64 = 120;
/// The largest answer read (a page of 8,189 transfers as JSON is about 4 MiB).
pub const ANSWER_BYTES_MAX: u64 = 64 << 20;

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The status line and headers, as received.
    pub head: String,
    /// The body (de-chunked if it came chunked).
    pub body: String,
    addr: String,
    path: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, KitError> {
        serde_json::from_str(&self.body).map_err(|source| KitError::NotJson {
            addr: self.addr.clone(),
            path: self.path.clone(),
            body: self.body.clone(),
            source,
        })
    }

    /// The value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// How this process reaches the nodes it started by default: [`Transport::Plain`] unless set
/// with [`use_transport`] (a bench whose nodes serve TLS).
static TRANSPORT: std::sync::RwLock<Option<Transport>> = std::sync::RwLock::new(None);

/// From now on, [`request`] and [`request_as`] (and so every helper here) reach nodes over
/// `transport`.
pub fn use_transport(transport: Transport) {
    *TRANSPORT.write().unwrap_or_else(|e| e.into_inner()) = Some(transport);
}

fn process_transport() -> Transport {
    TRANSPORT
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// One request over a fresh connection to `addr` (`HOST:PORT`) with the API key of the nodes
/// this process started ([`crate::keys::token`]), if any; see [`request_as`].
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Result<Answer, KitError> {
    request_as(crate::keys::token(), addr, method, path, content_type, body)
}

/// How requests reach a node's HTTP listener: plaintext, or TLS trusting one authority.
#[derive(Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(Arc<rustls::ClientConfig>),
}

impl Transport {
    /// HTTPS, accepting only certificates issued by the authority in `ca_pem` (PEM) that name
    /// the host dialled (`serve --tls-cert`; `fincore certs --api-names` writes `api-ca.pem`).
    pub fn tls_trusting(ca_pem: &[u8]) -> Result<Transport, KitError> {
        Transport::tls(ca_pem, None)
    }

    /// HTTPS as [`Transport::tls_trusting`], presenting the client certificate
    /// `certificate_pem` (PEM chain) with its key `key_pem` (PEM) to nodes that demand one
    /// (`serve --tls-client-ca`).
    pub fn tls_presenting(
        ca_pem: &[u8],
        certificate_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Transport, KitError> {
        Transport::tls(ca_pem, Some((certificate_pem, key_pem)))
    }

    fn tls(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Transport, KitError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |reason: String| KitError::Io {
            what: "reading the authority's certificate or the client's certificate and key".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        };
        let mut roots = rustls::RootCertStore::empty();
        let mut any = false;
        for certificate in CertificateDer::pem_slice_iter(ca_pem) {
            let certificate = certificate.map_err(|error| invalid(error.to_string()))?;
            roots
                .add(certificate)
                .map_err(|error| invalid(error.to_string()))?;
            any = true;
        }
        if !any {
            return Err(invalid("no PEM certificate in it".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid(error.to_string()))?
            .with_root_certificates(roots);
        let config = match identity {
            None => config.with_no_client_auth(),
            Some((certificate_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(certificate_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| invalid(error.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|error| invalid(error.to_string()))?;
                config
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| invalid(error.to_string()))?
            }
        };
        Ok(Transport::Tls(Arc::new(config)))
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls(_) => "https",
        }
    }
}

/// One request over a fresh connection to `addr` (`HOST:PORT`), over the process's transport
/// ([`use_transport`]); `Authorization: Bearer KEY` is sent when `api_key` is given,
/// `content_type` when given, `Content-Length` always.
pub fn request_as(
    api_key: Option<&str>,
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Result<Answer, KitError> {
    let request = Request {
        method,
        path,
        content_type,
        body,
        headers: &[],
    };
    request_over(&process_transport(), api_key, addr, &request)
}

/// One request, as [`request_over`] sends it.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a str,
    /// More headers, as (name, value).
    pub headers: &'a [(&'a str, &'a str)],
}

/// A byte stream to a node: TCP, or TLS over TCP.
trait Connection: Read + Write {}
impl<T: Read + Write> Connection for T {}

/// Like [`request_as`], over `transport` (over TLS, the certificate must name the host of
/// `addr`).
pub fn request_over(
    transport: &Transport,
    api_key: Option<&str>,
    addr: &str,
    request: &Request<'_>,
) -> Result<Answer, KitError> {
    let Request {
        method,
        path,
        content_type,
        body,
        headers,
    } = *request;
    let tcp = TcpStream::connect(addr).map_err(KitError::io(format!("connecting to {addr}")))?;
    tcp.set_read_timeout(Some(Duration::from_secs(ANSWER_SECONDS_MAX)))
        .map_err(KitError::io("setting a read timeout"))?;
    let mut stream: Box<dyn Connection> = match transport {
        Transport::Plain => Box::new(tcp),
        Transport::Tls(config) => {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_string()).map_err(|error| KitError::Io {
                what: format!("connecting to {addr} over TLS"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error),
            })?;
            let session =
                rustls::ClientConnection::new(Arc::clone(config), name).map_err(|error| {
                    KitError::Io {
                        what: format!("connecting to {addr} over TLS"),
                        source: std::io::Error::other(error),
                    }
                })?;
            Box::new(rustls::StreamOwned::new(session, tcp))
        }
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if let Some(key) = api_key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
    sent.map_err(KitError::io(format!("sending {method} {path} to {addr}")))?;
    let mut raw = Vec::new();
    match stream.take(ANSWER_BYTES_MAX).read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closed without its close_notify after a whole answer.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(error) => {
            return Err(KitError::io(format!(
                "reading the answer to {method} {path} from {addr}"
            ))(error));
        }
    }
    parse(addr, path, &raw)
}

fn parse(addr: &str, path: &str, raw: &[u8]) -> Result<Answer, KitError> {
    let malformed = |reason: &str| KitError::MalformedAnswer {
        addr: addr.to_string(),
        path: path.to_string(),
        reason: reason.to_string(),
    };
    // A TLS record (an alert: content type 21, version 3.x) where HTTP was expected.
    if raw.starts_with(&[0x15, 0x03]) {
        return Err(malformed(
            "a TLS alert: the node serves HTTPS (`serve --tls-cert`); trust its authority (admin --tls-ca)",
        ));
    }
    let raw = std::str::from_utf8(raw).map_err(|_| malformed("not UTF-8"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("no status code"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body).ok_or_else(|| malformed("a broken chunked body"))?
    } else {
        body.to_string()
    };
    Ok(Answer {
        status,
        head: head.to_string(),
        body,
        addr: addr.to_string(),
        path: path.to_string(),
    })
}

/// The payload of a chunked body; `None` if it is cut short or a size is not hex.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// The value of the series `series` (its name and labels exactly as exposed, such as
/// `fincore_sagas_total{outcome="confirmed"}`) in the text of a `/metrics` answer; `None` when
/// absent or not a number.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

pub fn get(addr: &str, path: &str) -> Result<Answer, KitError> {
    request(addr, "GET", path, None, "")
}

pub fn post_json(addr: &str, path: &str, body: &str) -> Result<Answer, KitError> {
    request(addr, "POST", path, Some("application/json"), body)
}

/// GET, the body as JSON (whatever the status code).
pub fn get_json(addr: &str, path: &str) -> Result<serde_json::Value, KitError> {
    get(addr, path)?.json()
}

/// One replica's view, from `/v1/status` (the `replica` object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    pub id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: u64,
    /// Only when asked for (`with_digest`): a pass over the node's whole state.
    pub state_digest: Option<String>,
}

/// The node at `addr`'s view of itself, with the state digest if `with_digest`.
pub fn replica_status(addr: &str, with_digest: bool) -> Result<ReplicaView, KitError> {
    let path = if with_digest {
        "/v1/status?digest=true"
    } else {
        "/v1/status"
    };
    let status = get_json(addr, path)?;
    let replica = &status["replica"];
    let field = |field: &'static str| KitError::StatusField {
        addr: addr.to_string(),
        field,
        status: status.to_string(),
    };
    Ok(ReplicaView {
        id: replica["id"].as_u64().ok_or_else(|| field("replica.id"))?,
        term: replica["term"]
            .as_u64()
            .ok_or_else(|| field("replica.term"))?,
        leader: replica["leader"].as_u64(),
        last_log_index: replica["last_log_index"].as_u64(),
        applied_index: replica["applied_index"]
            .as_u64()
            .ok_or_else(|| field("replica.applied_index"))?,
        state_digest: match (with_digest, replica["state_digest"].as_str()) {
            (true, None) => return Err(field("replica.state_digest")),
            (_, digest) => digest.map(String::from),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_answer_is_reassembled_and_headers_are_found_by_any_case() {
        let raw = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/v1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        let answer = parse("here", "/x", raw).unwrap();
        assert_eq!(answer.status, 307);
        assert_eq!(answer.header("location"), Some("http://127.0.0.1:9/v1"));
        assert_eq!(answer.json().unwrap()["a"], 1);
    }

    #[test]
    fn a_truncated_chunked_body_is_a_malformed_answer_not_a_panic() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort";
        assert!(matches!(
            parse("here", "/x", raw),
            Err(KitError::MalformedAnswer { .. })
        ));
    }

    #[test]
    fn a_request_reaches_a_server_and_its_answer_is_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).unwrap();
            let request = String::from_utf8_lossy(&request[..n]).to_string();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"b\":2}")
                .unwrap();
            request
        });
        let answer = post_json(&addr, "/v1/things", "{}").unwrap();
        assert_eq!(
            (answer.status, answer.json().unwrap()["b"].as_u64()),
            (200, Some(2))
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /v1/things HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Content-Type: application/json\r\n"),
            "{request}"
        );
    }
}
