//! A real headless Chromium driven over the DevTools protocol (CDP, JSON over a WebSocket on
//! loopback): open a page, evaluate JavaScript in it, save a screenshot. What the live
//! console's end-to-end test looks through, as a person would.
//!
//! Owns the browser process (its own throw-away profile, killed with the handle) and the CDP
//! session of one page. Only behind the `browser` feature, which only tests enable: the
//! binary never drives a browser. Must not know what page it shows.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the browser may take to start and open its DevTools port.
const START_SECONDS_MAX: u64 = 30;
/// How long one DevTools command may take.
const COMMAND_SECONDS_MAX: u64 = 30;
/// Events arriving between a command and its answer that are skipped at most (a bound on a
/// chatty page, so a lost answer fails instead of looping).
const EVENTS_SKIPPED_MAX: usize = 100_000;

/// Why the browser could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "no chromium found (looked for {0}): run scripts/services, which installs Debian's chromium, or set FINCORE_CHROMIUM"
    )]
    NotInstalled(String),
    #[error("chromium: {0}")]
    Io(#[from] std::io::Error),
    #[error("chromium did not open its DevTools port within {START_SECONDS_MAX} s")]
    NoDevTools,
    #[error("the DevTools connection: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("DevTools command {method}: {reason}")]
    Command { method: String, reason: String },
}

/// A running headless Chromium with one page open.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

fn chromium_path() -> Result<std::path::PathBuf, BrowserError> {
    if let Some(path) = std::env::var_os("FINCORE_CHROMIUM") {
        return Ok(path.into());
    }
    let names = ["chromium", "chromium-browser", "google-chrome"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    names
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| BrowserError::NotInstalled(names.join(", ")))
}

impl Browser {
    /// Starts a headless Chromium (window `width` × `height`) on a blank page.
    pub async fn launch(width: u32, height: u32) -> Result<Browser, BrowserError> {
        let profile = tempfile::tempdir()?;
        let child = Command::new(chromium_path()?)
            .args([
                "--headless=new",
                // As root (CI), Chromium refuses to start sandboxed.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut browser_guard = KillOnDrop(Some(child));
        let endpoint = devtools_endpoint(profile.path()).await?;
        let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str()).await?;
        let mut browser = Browser {
            child: browser_guard.0.take().expect("taken once"),
            _profile: profile,
            socket,
            session: String::new(),
            next_id: 0,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"].clone();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Command {
                method: "Target.attachToTarget".into(),
                reason: format!("no sessionId in {attached}"),
            })?
            .to_string();
        browser.page_call("Page.enable", json!({})).await?;
        Ok(browser)
    }

    /// Loads `url` in the page (returns once the navigation is committed, not loaded).
    pub async fn navigate(&mut self, url: &str) -> Result<(), BrowserError> {
        let answer = self.page_call("Page.navigate", json!({"url": url})).await?;
        match answer.get("errorText") {
            Some(error) => Err(BrowserError::Command {
                method: "Page.navigate".into(),
                reason: error.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The value of the JavaScript `expression` in the page (JSON-serializable values only);
    /// an exception thrown by it is an error.
    pub async fn evaluate(&mut self, expression: &str) -> Result<Value, BrowserError> {
        let answer = self
            .page_call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        if let Some(exception) = answer.get("exceptionDetails") {
            return Err(BrowserError::Command {
                method: "Runtime.evaluate".into(),
                reason: format!("{expression}: {exception}"),
            });
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Saves what the page shows now as a PNG at `path`; returns its size in bytes.
    pub async fn screenshot(&mut self, path: &Path) -> Result<usize, BrowserError> {
        let answer = self
            .page_call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let png = answer["data"]
            .as_str()
            .and_then(|data| base64::engine::general_purpose::STANDARD.decode(data).ok())
            .ok_or_else(|| BrowserError::Command {
                method: "Page.captureScreenshot".into(),
                reason: "no PNG in the answer".into(),
            })?;
        std::fs::write(path, &png)?;
        Ok(png.len())
    }

    async fn page_call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        let session = self.session.clone();
        self.send(method, params, Some(session)).await
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.send(method, params, None).await
    }

    async fn send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<String>,
    ) -> Result<Value, BrowserError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = Value::String(session);
        }
        let failed = |reason: String| BrowserError::Command {
            method: method.to_string(),
            reason,
        };
        self.socket
            .send(Message::Text(command.to_string().into()))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(COMMAND_SECONDS_MAX);
        for _ in 0..EVENTS_SKIPPED_MAX {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| failed(format!("no answer within {COMMAND_SECONDS_MAX} s")))?
                .ok_or_else(|| failed("the browser closed the connection".into()))??;
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(failed(error.to_string()));
            }
            return Ok(answer["result"].clone());
        }
        Err(failed(format!(
            "more than {EVENTS_SKIPPED_MAX} events before the answer"
        )))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a browser that failed to start properly.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The browser's DevTools WebSocket URL, from the `DevToolsActivePort` file Chromium writes in
/// its profile (the port on the first line, the path on the second).
async fn devtools_endpoint(profile: &Path) -> Result<String, BrowserError> {
    let file = profile.join("DevToolsActivePort");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(START_SECONDS_MAX) {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return Ok(format!("ws://127.0.0.1:{port}{path}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BrowserError::NoDevTools)
}
