//! Mutual TLS on the client listeners (`serve --tls-client-ca`), against the real binary: a
//! node demanding client certificates serves, over gRPC and HTTPS, only clients presenting one
//! from its authority (API keys still decide what they may do), and logs who they are.

mod support;

use std::path::{Path, PathBuf};

use client::{Client, ClientError};
use ledger::CreateAccountResult;
use support::{ChildNode, fincore, fincore_exe};
use testkit::http::Transport;

/// What `fincore certs --api-names … --client-names NAME` wrote in `dir`.
struct Certificates {
    dir: PathBuf,
    /// The authority of the listeners' and the client's certificates (PEM).
    ca: Vec<u8>,
    /// The client certificate and its key (PEM).
    client: (Vec<u8>, Vec<u8>),
}

impl Certificates {
    fn issue(dir: &Path, client: &str) -> Certificates {
        let dir_arg = dir.display().to_string();
        let (ok, text) = fincore(&[
            "certs",
            "--dir",
            &dir_arg,
            "--api-names",
            "127.0.0.1,localhost",
            "--client-names",
            client,
        ]);
        assert!(ok, "fincore certs: {text}");
        let client_files = (
            dir.join(format!("client-{client}.pem")),
            dir.join(format!("client-{client}.key")),
        );
        Certificates {
            dir: dir.to_path_buf(),
            ca: std::fs::read(dir.join("api-ca.pem")).unwrap(),
            client: (
                std::fs::read(&client_files.0).unwrap(),
                std::fs::read(&client_files.1).unwrap(),
            ),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// `serve` flags: TLS with the listeners' certificate, demanding clients' certificates
    /// from this authority.
    fn serve_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("api.pem"),
            "--tls-key".into(),
            self.path("api.key"),
            "--tls-client-ca".into(),
            self.path("api-ca.pem"),
        ]
    }
}

/// Enough attempts that a refused handshake shows its alert on one (others may end only
/// "connection closed").
const REFUSED_ATTEMPTS_MAX: u32 = 10;

#[test]
fn a_node_demanding_client_certificates_serves_only_clients_holding_one_from_its_authority() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Certificates::issue(&dir.path().join("ours"), "gateway-1");
    let theirs = Certificates::issue(&dir.path().join("theirs"), "intruder");
    let data_dir = dir.path().join("node");
    let mut args = ours.serve_args();
    args.extend(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"].map(String::from));
    args.extend(testkit::group::single_node_args(&data_dir));
    // At debug, the node logs each client's certificate name as it connects.
    let node = ChildNode::start_logging(fincore_exe(), &data_dir, &args, "info,server=debug")
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(node.client_tls);
    let node_log = node.log_path.clone();
    let key = testkit::keys::token();
    let addr = node.http_addr.as_str();

    // HTTPS: the right certificate is served; the key still decides what it may do.
    let (certificate, private) = &ours.client;
    let holder = Transport::tls_presenting(&ours.ca, certificate, private).unwrap();
    let answer = support::request_over(&holder, key, addr, "GET", "/v1/status", "").unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let account = r#"[{"id":"1","ledger":1,"code":1}]"#;
    let answer =
        support::request_over(&holder, None, addr, "POST", "/v1/accounts", account).unwrap();
    assert_eq!(answer.status, 401, "{}", answer.body);
    let answer =
        support::request_over(&holder, key, addr, "POST", "/v1/accounts", account).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);

    // Without a certificate, or with one from another authority, the handshake fails: not
    // even the open routes answer.
    let anonymous = Transport::tls_trusting(&ours.ca).unwrap();
    let (certificate, private) = &theirs.client;
    let stranger = Transport::tls_presenting(&ours.ca, certificate, private).unwrap();
    for (who, transport) in [("no certificate", &anonymous), ("a stranger", &stranger)] {
        let refused = support::request_over(transport, key, addr, "GET", "/v1/status", "");
        let error = refused.expect_err(&format!("{who} was answered over HTTPS"));
        assert!(error.to_string().contains("fatal alert"), "{who}: {error}");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = |identity: Option<&(Vec<u8>, Vec<u8>)>| {
            let mut builder = Client::builder(&[&node.grpc_url()])
                .api_key_opt(key)
                .tls_ca_pem(ours.ca.clone())
                .retry_policy(support::impatient(REFUSED_ATTEMPTS_MAX));
            if let Some((certificate, private)) = identity {
                builder = builder.tls_identity_pem(certificate.clone(), private.clone());
            }
            builder.connect().unwrap()
        };
        // gRPC: the right certificate is served.
        let holder = client(Some(&ours.client));
        let created = holder
            .create_accounts(&[testkit::account(2)])
            .await
            .unwrap();
        assert_eq!(created[0].result, CreateAccountResult::Created);
        let found = holder.lookup_accounts(&[1, 2]).await.unwrap();
        assert_eq!(found.len(), 2);
        // Without a certificate, or with a stranger's: no answer, and not a key refusal (the
        // connection never got as far as the key).
        for (who, identity) in [
            ("no certificate", None),
            ("a stranger", Some(&theirs.client)),
        ] {
            let refused = client(identity).lookup_accounts(&[1]).await;
            match refused {
                Err(ClientError::GaveUp { last, .. }) => {
                    assert!(last.contains("fatal alert"), "{who}: {last}")
                }
                other => panic!("{who} over gRPC: {other:?}"),
            }
        }
    });
    drop(runtime);
    node.stop().unwrap();

    // The identity reached both listeners' requests: each logged the client's certificate name.
    let log = std::fs::read_to_string(&node_log).unwrap();
    for listener in ["HTTP", "gRPC"] {
        assert!(
            log.lines().any(|line| line.contains("identity=gateway-1")
                && line.contains(&format!("listener=\"{listener}\""))),
            "no {listener} client named gateway-1 in {}",
            node_log.display()
        );
    }
}
