//! A fault-injecting TCP proxy for one directed link between replicas: it forwards bytes, or
//! delays every chunk (a slow link), or cuts the link (drops its connections and refuses new
//! ones) until told otherwise.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    pub cut: bool,
    pub delay: Duration,
}

/// One running proxy.
pub struct LinkProxy {
    pub addr: String,
    state: watch::Sender<LinkState>,
}

/// Copies one direction, delaying each chunk by the link's delay; ends when either side
/// closes or the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = state.wait_for(|s| s.cut) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = state.borrow().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if state.borrow().cut || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl LinkProxy {
    /// Starts a proxy on a free loopback port that forwards to `target`.
    pub async fn start(target: String) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (state, watcher) = watch::channel(LinkState::default());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if watcher.borrow().cut {
                    continue; // refused: dropped at once
                }
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, watcher.clone()));
                tokio::spawn(pump(out_read, in_write, watcher.clone()));
            }
        });
        Ok(LinkProxy { addr, state })
    }

    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }
}
