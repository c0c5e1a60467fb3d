//! A fault-injecting TCP proxy for one directed link between replicas: it forwards bytes, or
//! delays every chunk (a slow link), or cuts the link (drops its connections and refuses new
//! ones) until told otherwise.
//!
//! Runs on the caller's tokio runtime (start it inside one, e.g. with `Runtime::block_on`);
//! dropping the proxy closes its listener and every connection through it. It must not parse
//! or alter what it forwards: faults are timing and loss only.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes read at once from one side before they are forwarded (and delayed) as one chunk.
pub const CHUNK_BYTES_MAX: usize = 64 << 10;
/// Pause after a failed accept before the next.
const ACCEPT_RETRY_MS: u64 = 10;

/// What the link does now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Drop every connection and refuse new ones.
    pub cut: bool,
    /// Hold each chunk this long before forwarding it.
    pub delay: Duration,
}

/// One running proxy.
pub struct LinkProxy {
    /// Where to connect to go through it (`127.0.0.1:PORT`).
    pub addr: String,
    state: watch::Sender<LinkState>,
}

impl LinkProxy {
    /// Starts a proxy on a free loopback port that forwards to `target`.
    pub async fn start(target: String) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (state, watcher) = watch::channel(LinkState::default());
        tokio::spawn(accept(listener, target, watcher));
        Ok(LinkProxy { addr, state })
    }

    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }

    /// Cuts the link (until [`LinkProxy::heal`]).
    pub fn cut(&self) {
        self.set(LinkState {
            cut: true,
            delay: Duration::ZERO,
        });
    }

    /// Delays every chunk by `delay` (until [`LinkProxy::heal`]).
    pub fn slow(&self, delay: Duration) {
        self.set(LinkState { cut: false, delay });
    }

    /// Forwards promptly again.
    pub fn heal(&self) {
        self.set(LinkState::default());
    }
}

/// Accepts connections until the proxy is dropped; each is forwarded both ways unless cut.
async fn accept(listener: TcpListener, target: String, mut watcher: watch::Receiver<LinkState>) {
    let mut closed = watcher.clone();
    loop {
        let inbound = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => inbound,
                Err(_) => {
                    // Out of descriptors, or a connection aborted before it was taken: the
                    // link stays up; try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            },
            // `changed` fails only once the `LinkProxy` (the sender) is gone.
            gone = closed.changed() => match gone {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        if watcher.borrow_and_update().cut {
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
}

/// Copies one direction, delaying each chunk by the link's delay; ends when either side
/// closes, the link is cut or the proxy is dropped.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: &str) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"ping").await?;
        let mut answer = vec![0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_proxy_forwards_refuses_while_cut_delays_while_slow_and_heals() {
        let target = echo_server().await;
        let proxy = LinkProxy::start(target).await.unwrap();
        assert_eq!(round_trip(&proxy.addr).await.unwrap(), b"ping");

        proxy.cut();
        assert!(
            round_trip(&proxy.addr).await.is_err(),
            "a cut link answered"
        );

        proxy.slow(Duration::from_millis(200));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&proxy.addr).await.unwrap(), b"ping");
        // The request and the answer are each one delayed chunk.
        assert!(started.elapsed() >= Duration::from_millis(400));

        proxy.heal();
        assert_eq!(round_trip(&proxy.addr).await.unwrap(), b"ping");
    }
}
