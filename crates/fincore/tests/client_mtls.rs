//! Mutual TLS on the client listeners (`serve --tls-client-ca`), against the real binary: a
//! node demanding client certificates serves, over gRPC and HTTPS, only clients presenting one
//! from its authority (API keys still decide what they may do); a gateway presenting its
//! certificate (`gateway --group-tls-cert/--group-tls-key`) writes through groups that demand
//! one, and a gateway without it cannot reach them and says so.

mod support;

use std::path::{Path, PathBuf};

use client::{Client, ClientError};
use ledger::CreateAccountResult;
use support::{ChildNode, fincore, fincore_exe, get, post_json};
use testkit::cluster::LocalGroups;
use testkit::http::Transport;

/// What `fincore certs --api-names … --client-names NAME` wrote in `dir`.
struct Certificates {
    dir: PathBuf,
    /// The authority of the listeners' and the client's certificates (PEM).
    ca: Vec<u8>,
    /// The client certificate and its key (PEM).
    client: (Vec<u8>, Vec<u8>),
    client_files: (PathBuf, PathBuf),
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
            client_files,
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
                // The server's TLS alert, or (when the client writes before reading it, as
                // it may on a loaded machine) the connection it closed: a transport failure.
                Err(ClientError::GaveUp { last, .. }) => assert!(
                    (last.contains("fatal alert") || last.contains("transport error"))
                        && !last.contains("Unauthenticated"),
                    "{who}: {last}"
                ),
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

#[test]
fn a_gateway_presenting_its_certificate_writes_through_groups_that_demand_one_and_one_without_cannot()
 {
    let dir = tempfile::tempdir().unwrap();
    let certificates = Certificates::issue(&dir.path().join("certs"), "gateway-1");
    let groups = LocalGroups::start(fincore_exe(), dir.path(), 2, 1, &certificates.serve_args())
        .unwrap_or_else(|error| panic!("{error}"));
    let ca = certificates.path("api-ca.pem");
    let (certificate, private) = &certificates.client_files;
    let (certificate, private) = (
        certificate.display().to_string(),
        private.display().to_string(),
    );
    let listen = ["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    let start_gateway = |name: &str, extra: &[&str]| {
        let args: Vec<&str> = listen.iter().chain(extra).copied().collect();
        ChildNode::start_gateway(
            fincore_exe(),
            &dir.path().join(name),
            &groups.map_path,
            &args,
        )
        .unwrap_or_else(|error| panic!("{error}"))
    };
    let gateway = start_gateway(
        "gateway",
        &[
            "--group-tls-ca",
            &ca,
            "--group-tls-cert",
            &certificate,
            "--group-tls-key",
            &private,
        ],
    );

    // Accounts and a transfer in each group, end to end.
    let map = &groups.map;
    let group_ids: Vec<_> = map.groups().keys().copied().collect();
    let ids: Vec<Vec<u128>> = group_ids
        .iter()
        .map(|&group| {
            (1u128..)
                .filter(|&id| map.group_of(id) == group)
                .take(2)
                .collect()
        })
        .collect();
    let accounts: Vec<String> = ids
        .iter()
        .flatten()
        .map(|id| format!(r#"{{"id":"{id}","ledger":1,"code":1}}"#))
        .collect();
    let answer = post_json(
        &gateway.http_addr,
        "/v1/accounts",
        &format!("[{}]", accounts.join(",")),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body.matches(r#""result":"created""#).count(), 4);
    for (n, pair) in ids.iter().enumerate() {
        let id = cluster::id_in_slot(cluster::slot_of(pair[0]), 1_000, n as u128 + 1).unwrap();
        let transfer = format!(
            r#"[{{"id":"{id}","debit_account_id":"{}","credit_account_id":"{}","amount":"7","ledger":1,"code":1}}]"#,
            pair[0], pair[1]
        );
        let answer = post_json(&gateway.http_addr, "/v1/transfers", &transfer);
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer.body.contains(r#""result":"created""#),
            "{}",
            answer.body
        );
        let credited = get(&gateway.http_addr, &format!("/v1/accounts/{}", pair[1]));
        assert_eq!(credited.status, 200, "{}", credited.body);
        assert_eq!(credited.json().unwrap()["credits_posted"], "7");
    }

    // A gateway trusting the groups but presenting no certificate cannot reach them: its
    // callers get a retryable 503 naming the group and the refused handshake, and nothing
    // changes.
    let anonymous = start_gateway("anonymous", &["--group-tls-ca", &ca]);
    let unwritten = (1u128..)
        .filter(|&id| map.group_of(id) == group_ids[0])
        .nth(2)
        .unwrap();
    let answer = post_json(
        &anonymous.http_addr,
        "/v1/accounts",
        &format!(r#"[{{"id":"{unwritten}","ledger":1,"code":1}}]"#),
    );
    assert_eq!(answer.status, 503, "{}", answer.body);
    let body = answer.body.to_lowercase();
    assert!(
        body.contains(&group_ids[0].to_string()) && body.contains("certificate"),
        "{}",
        answer.body
    );
    let absent = get(&gateway.http_addr, &format!("/v1/accounts/{unwritten}"));
    assert_eq!(absent.status, 404, "{}", absent.body);

    anonymous.stop().unwrap();
    gateway.stop().unwrap();
    groups.stop().unwrap();
}

#[test]
fn a_gateway_given_half_an_identity_or_a_key_of_another_certificate_refuses_to_start_naming_the_flags()
 {
    let dir = tempfile::tempdir().unwrap();
    let ours = Certificates::issue(&dir.path().join("ours"), "gateway-1");
    let theirs = Certificates::issue(&dir.path().join("theirs"), "gateway-2");
    let layout = testkit::group::GroupLayout::on_free_ports(1).unwrap();
    let map = testkit::cluster::map_of(&[layout]).unwrap();
    let map_path = dir.path().join("cluster-map.json");
    std::fs::write(&map_path, map.to_json()).unwrap();
    let map_arg = map_path.display().to_string();
    let ca = ours.path("api-ca.pem");
    let certificate = ours.client_files.0.display().to_string();
    let stranger_key = theirs.client_files.1.display().to_string();
    let gateway = |extra: &[&str]| {
        let mut args = vec![
            "gateway",
            "--map",
            &map_arg,
            "--insecure-no-auth",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        fincore(&args)
    };

    let (ok, text) = gateway(&["--group-tls-ca", &ca, "--group-tls-cert", &certificate]);
    assert!(!ok && text.contains("--group-tls-key"), "{text}");
    let (ok, text) = gateway(&[
        "--group-tls-cert",
        &certificate,
        "--group-tls-key",
        &stranger_key,
    ]);
    assert!(!ok && text.contains("--group-tls-ca"), "{text}");
    let (ok, text) = gateway(&[
        "--group-tls-ca",
        &ca,
        "--group-tls-cert",
        &certificate,
        "--group-tls-key",
        &stranger_key,
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("--group-tls-cert/--group-tls-key")
            && text.contains("client-gateway-1.pem")
            && text.contains("client-gateway-2.key"),
        "{text}"
    );

    // A client name becomes a file name: only DNS names are taken.
    let dir_arg = dir.path().join("bad").display().to_string();
    let (ok, text) = fincore(&["certs", "--dir", &dir_arg, "--client-names", "../escape"]);
    assert!(!ok && text.contains("not a DNS name"), "{text}");
}
