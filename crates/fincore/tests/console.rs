//! The live console, looked at through a real headless Chromium (Debian's `chromium`,
//! installed by `scripts/services`): against `fincore dev --groups 4 --replicas 3`, the page
//! goes live with every group and its leader, saves a screenshot, drills into a group, and
//! after a group's leader is killed with SIGKILL shows the new leader within 2 s.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::browser::Browser;

/// Evaluates `expression` every 50 ms until it gives something other than `null`, for at most
/// `within`; the value, or a failure naming what never held.
async fn wait_for(browser: &mut Browser, within: Duration, what: &str, expression: &str) -> Value {
    let started = Instant::now();
    loop {
        let value = browser
            .evaluate(expression)
            .await
            .expect("evaluate in the page");
        if !value.is_null() {
            return value;
        }
        assert!(
            started.elapsed() < within,
            "the console never showed {what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid of the `fincore serve` child listening for clients on `grpc` (its command line
/// names it: `--grpc ADDR`).
fn serve_pid(grpc: &str) -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
            args.first().is_some_and(|exe| exe.ends_with(b"fincore"))
                && args.contains(&b"serve".as_slice())
                && args
                    .windows(2)
                    .any(|pair| pair[0] == b"--grpc" && pair[1] == grpc.as_bytes())
        })
        .unwrap_or_else(|| panic!("no fincore serve listens on {grpc}"))
}

/// Accounts, then transfers among them through the gateway (same-group and cross-group), 64 at
/// a time, for at most a minute: what makes the sparklines move. Failures (the killed leader's
/// group electing) are ignored: this is scenery, not the subject.
async fn traffic(gateway: String, key: String) {
    let client = client::Client::builder(&[gateway.as_str()])
        .api_key(key.trim())
        .connect()
        .unwrap();
    let accounts = 64;
    while client
        .create_accounts(&support::ledger_accounts(accounts))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let mut next_id = 1;
    while started.elapsed() < Duration::from_secs(60) {
        let transfers: Vec<ledger::Transfer> = (0..accounts)
            .map(|i| {
                next_id += 1;
                testkit::transfer(next_id, 1 + i, 1 + (i + 1) % accounts, 1)
            })
            .collect();
        let _ = client.create_transfers(&transfers).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `--grpc`, `--http` and `--peer` bases of `dev --groups 4 --replicas 3`, each port it
/// derives from them free now: group g's node i at 100 · g + i − 1 above each, the meta group's
/// at 50 + i − 1 (so the bases sit 10 apart).
fn dev_bases() -> Vec<String> {
    let offsets: Vec<u16> = (0..3)
        .chain(50..53)
        .chain((1..=4).flat_map(|g| 100 * g..100 * g + 3))
        .collect();
    for _ in 0..50 {
        let addr = &testkit::free_addrs(1).unwrap()[0];
        let base: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let ports: Vec<u16> = (0..3)
            .flat_map(|b| offsets.iter().map(move |offset| base + 10 * b + offset))
            .collect();
        if ports
            .iter()
            .all(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        {
            return (0..3)
                .map(|b| format!("127.0.0.1:{}", base + 10 * b))
                .collect();
        }
    }
    panic!("no free range of ports for fincore dev --groups 4 --replicas 3");
}

/// Every group card with its leader, once the stream is live and all 4 have one.
const ALL_GROUPS_LED: &str = r#"(() => {
  // Until the page has loaded there is no body.
  if (!document.body || document.body.dataset.connected !== 'true') return null;
  const cards = [...document.querySelectorAll('.group')];
  if (cards.length !== 4) return null;
  if (cards.some((card) => card.dataset.leader === '')) return null;
  return cards.map((card) => [card.dataset.group, card.dataset.leader]);
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_every_group_live_and_a_new_leader_within_two_seconds_of_a_kill() {
    let data = tempfile::tempdir().unwrap();
    let (mut args, _) = support::dev_groups_args(4, data.path());
    let addrs = dev_bases();
    for (flag, addr) in ["--grpc", "--http", "--peer"].iter().zip(&addrs) {
        let at = args.iter().position(|arg| arg == flag).unwrap();
        args[at + 1] = addr.clone();
    }
    args.extend(["--replicas", "3", "--read-model", "off"].map(String::from));
    let mut dev = support::DevRun::start(&args);
    dev.line_with("ledger groups of 3 replicas behind a gateway");
    let load = tokio::spawn(traffic(
        format!("http://{}", addrs[0]),
        std::fs::read_to_string(data.path().join("dev-api-key")).unwrap(),
    ));

    let mut browser = Browser::launch(1440, 1100).await.expect("start chromium");
    browser
        .navigate(&format!("http://{}/console", addrs[1]))
        .await
        .unwrap();
    let led = wait_for(
        &mut browser,
        Duration::from_secs(60),
        "4 groups, each with a leader",
        ALL_GROUPS_LED,
    )
    .await;
    let (group, leader) = (
        led[0][0].as_str().unwrap().to_string(),
        led[0][1].as_str().unwrap().to_string(),
    );
    // Live data: the transfers show as events per second, the replicas with their roles.
    wait_for(
        &mut browser,
        Duration::from_secs(30),
        "events committed",
        "[...document.querySelectorAll('.group')].some((card) => Number(card.dataset.eventsPerSecond) > 0) || null",
    )
    .await;
    wait_for(
        &mut browser,
        Duration::from_secs(10),
        "4 groups of a leader and 2 followers",
        "document.querySelectorAll('.replica[data-role=\"follower\"]').length === 8 || null",
    )
    .await;

    // Drill down into the group: its replicas' table and the leader's followers.
    let card = format!("document.querySelector('.group[data-group=\"{group}\"]')");
    browser.evaluate(&format!("{card}.click()")).await.unwrap();
    let leader_address = wait_for(
        &mut browser,
        Duration::from_secs(5),
        "the group's detail",
        &format!(
            r#"(() => {{
  if (document.getElementById('detail').hidden) return null;
  const rows = document.querySelectorAll('#detail-replicas tr');
  const lag = document.querySelectorAll('#detail-followers tr');
  if (rows.length !== 3 || lag.length !== 2) return null;
  return document.querySelector('#detail-replicas tr[data-replica="{leader}"] td:nth-child(2)').textContent;
}})()"#
        ),
    )
    .await;
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let bytes = browser.screenshot(&screenshot).await.unwrap();
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && bytes > 20_000);
    println!(
        "console screenshot: {} ({bytes} bytes)",
        screenshot.display()
    );

    // Kill the leader; the page must name another within 2 s.
    let pid = serve_pid(leader_address.as_str().unwrap());
    let killed = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let new_leader = wait_for(
        &mut browser,
        Duration::from_secs(10),
        "a new leader",
        &format!(
            r#"(() => {{
  const leader = {card}.dataset.leader;
  return leader !== '' && leader !== '{leader}' ? leader : null;
}})()"#
        ),
    )
    .await;
    let shown_after = killed.elapsed();
    println!(
        "group {group}: leader {leader} killed, the console showed leader {new_leader} after {shown_after:?}"
    );
    assert!(
        shown_after <= Duration::from_secs(2),
        "the new leader showed only after {shown_after:?}"
    );
    // The killed replica shows as down.
    let down = browser
        .evaluate(&format!(
            "{card}.querySelector('.replica[data-replica=\"{leader}\"]').dataset.reachable"
        ))
        .await
        .unwrap();
    assert_eq!(down, "false");
    let after = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-after-kill.png");
    browser.screenshot(&after).await.unwrap();
    drop(browser);
    load.abort();
    dev.stop();
}

/// Opens a `/console/events` stream on `addr` and reads its status line and headers; the
/// connection stays open (the stream) until the socket is dropped.
fn open_stream(addr: &str) -> (std::net::TcpStream, String) {
    use std::io::{Read as _, Write as _};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "GET /console/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16_384 {
        socket.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (socket, String::from_utf8(head).unwrap())
}

/// The next `data:` line of a stream, as JSON.
fn read_event(socket: &mut std::net::TcpStream) -> Value {
    use std::io::BufRead as _;
    let mut lines = std::io::BufReader::new(socket);
    for _ in 0..1_000 {
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        // Chunked framing puts size lines between the event's lines: skip all but data.
        if let Some(json) = line.strip_prefix("data:") {
            return serde_json::from_str(json.trim()).expect("an event is a view");
        }
    }
    panic!("no event in a thousand lines");
}

#[test]
fn a_nodes_console_is_open_shows_its_own_replica_and_bounds_its_streams() {
    let data = tempfile::tempdir().unwrap();
    let node = support::start_node(data.path());
    // Open without a key, like /metrics; the page pulls nothing from elsewhere.
    let page = support::get(&node.http_addr, "/console");
    assert_eq!(page.status, 200);
    assert!(
        page.head
            .contains("content-security-policy: default-src 'none'; script-src 'self'")
    );
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    let state: Value = serde_json::from_str(&support::get(&node.http_addr, "/console/state").body)
        .expect("the view is JSON");
    assert_eq!(state["service"], "node");
    let group = &state["groups"][0];
    assert_eq!(group["leader"], 1);
    assert_eq!(group["replicas"][0]["role"], "leader");
    assert_eq!(group["replicas"][0]["address"], node.grpc_addr.as_str());

    // A stream's events are the views.
    let (mut socket, _) = open_stream(&node.http_addr);
    let event = read_event(&mut socket);
    assert_eq!(event["service"], "node");
    assert_eq!(event["groups"][0]["leader"], 1);
    drop(socket);

    // The console's gRPC source needs a key, like every gRPC call.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut replica = api::proto::replica_client::ReplicaClient::new(channel);
        replica
            .status(api::proto::ReplicaStatusRequest {})
            .await
            .unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Every stream is bounded: past the limit, busy, and a freed one is taken again.
    let mut streams: Vec<_> = (0..limits::CONSOLE_STREAMS_MAX)
        .map(|_| open_stream(&node.http_addr))
        .collect();
    assert!(
        streams
            .iter()
            .all(|(_, head)| head.starts_with("HTTP/1.1 200")
                && head.contains("content-type: text/event-stream"))
    );
    let refused = support::get(&node.http_addr, "/console/events");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("busy"));
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_socket, head) = open_stream(&node.http_addr);
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a freed stream was never taken again: {head}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
