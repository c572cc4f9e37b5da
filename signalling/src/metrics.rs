//! Counters exposed at `/metrics` in Prometheus text format. Counts only: no addresses, room
//! ids, secrets or names ever appear here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub rooms_created: AtomicU64,
    pub rooms_joined: AtomicU64,
    pub messages_relayed: AtomicU64,
    pub bytes_relayed: AtomicU64,
    pub pake_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rejected_messages: AtomicU64,
    pub rooms_expired: AtomicU64,
}

impl Metrics {
    pub fn render(&self, rooms_active: usize) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP punchdrop_{name} {help}\n# TYPE punchdrop_{name} {kind}\npunchdrop_{name} {v}"
            );
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        put(
            "rooms_active",
            "gauge",
            "Rooms currently open.",
            rooms_active as u64,
        );
        put(
            "connections_total",
            "counter",
            "WebSocket connections accepted.",
            get(&self.connections),
        );
        put(
            "rooms_created_total",
            "counter",
            "Rooms created.",
            get(&self.rooms_created),
        );
        put(
            "rooms_joined_total",
            "counter",
            "Rooms a second peer joined.",
            get(&self.rooms_joined),
        );
        put(
            "rooms_expired_total",
            "counter",
            "Rooms closed unjoined at expiry.",
            get(&self.rooms_expired),
        );
        put(
            "signal_messages_total",
            "counter",
            "Sealed messages relayed.",
            get(&self.messages_relayed),
        );
        put(
            "signal_bytes_total",
            "counter",
            "Sealed payload bytes relayed.",
            get(&self.bytes_relayed),
        );
        put(
            "pake_failures_total",
            "counter",
            "Rooms aborted for a wrong secret.",
            get(&self.pake_failures),
        );
        put(
            "rate_limited_total",
            "counter",
            "Messages refused by rate limits.",
            get(&self.rate_limited),
        );
        put(
            "rejected_messages_total",
            "counter",
            "Malformed or oversized messages.",
            get(&self.rejected_messages),
        );
        out
    }
}
