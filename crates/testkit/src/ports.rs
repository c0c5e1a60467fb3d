//! Free loopback ports for nodes that must keep their address across restarts (a replica
//! group's members name each other by address).
//!
//! A port the kernel picks with `bind(:0)` comes from the ephemeral range, the same range every
//! outgoing connection's local port is drawn from: once a killed node's port is free, any
//! client connection on the machine may take it, and the node cannot restart there. So the
//! ports handed out here lie below the ephemeral range (read from
//! `/proc/sys/net/ipv4/ip_local_port_range`), where only explicit binds land. Each process
//! draws from its own block of that range (chosen by its pid) and walks it with a counter, so
//! tests running side by side in separate processes (nextest) rarely meet, and a port still
//! bound by anyone is skipped.
//!
//! Owns only the choice of port numbers; it holds nothing open and starts nothing.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::KitError;

/// The lowest port handed out: clear of the well-known and registered service ports the
/// machine's own servers use (PostgreSQL 5432, NATS 4222 and 8222, Redis 6379, RabbitMQ 5672,
/// MariaDB 3306, Mosquitto 1883).
const PORT_MIN: u16 = 10_000;

/// Ports of services that may run on the machine above [`PORT_MIN`] (RabbitMQ's management,
/// Prometheus and distribution ports); never handed out even when free at the moment.
const PORTS_RESERVED: [u16; 3] = [15_672, 15_692, 25_672];

/// How many ports one process's block holds (a test with three groups of five behind
/// proxies uses under a hundred).
const BLOCK_PORTS: usize = 160;

/// Where the ephemeral range starts; 32,768 (Linux's default) if the file cannot be read.
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

/// The ports this process may hand out: its own block of `[PORT_MIN, ephemeral start)`.
fn this_process_block() -> std::ops::Range<usize> {
    let end = usize::from(ephemeral_range_start().max(PORT_MIN + BLOCK_PORTS as u16));
    let blocks = (end - usize::from(PORT_MIN)) / BLOCK_PORTS;
    let block = std::process::id() as usize % blocks.max(1);
    let start = usize::from(PORT_MIN) + block * BLOCK_PORTS;
    start..start + BLOCK_PORTS
}

/// `count` distinct loopback addresses (`127.0.0.1:PORT`) free at the moment, below the
/// ephemeral range. Every candidate is bound (and all are held until the last is chosen), so a
/// port anyone listens on is never returned.
pub fn free_addrs(count: usize) -> Result<Vec<String>, KitError> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let block = this_process_block();
    let mut held: Vec<TcpListener> = Vec::with_capacity(count);
    let mut tried = 0;
    while held.len() < count {
        if tried == block.len() {
            return Err(KitError::Io {
                what: format!(
                    "finding {count} free loopback ports in {}..{}",
                    block.start, block.end
                ),
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
        }
        tried += 1;
        let port = (block.start + NEXT.fetch_add(1, Ordering::Relaxed) % block.len()) as u16;
        if PORTS_RESERVED.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    held.iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|addr| addr.to_string())
                .map_err(KitError::io("reading a listener's address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addrs_are_distinct_loopback_addresses_below_the_ephemeral_range() {
        let addrs = free_addrs(16).unwrap();
        let distinct: std::collections::BTreeSet<&String> = addrs.iter().collect();
        assert_eq!(distinct.len(), 16);
        let start = ephemeral_range_start();
        for addr in &addrs {
            let port: u16 = addr.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
            assert!((PORT_MIN..start).contains(&port), "{addr}");
        }
    }

    #[test]
    fn a_port_someone_listens_on_is_skipped() {
        let first = free_addrs(1).unwrap().remove(0);
        let _taken = TcpListener::bind(&first).unwrap();
        // Walk the whole block once: the taken port never comes back.
        for _ in 0..BLOCK_PORTS {
            assert_ne!(free_addrs(1).unwrap()[0], first);
        }
    }
}
