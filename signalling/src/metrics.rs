//! Counters exposed at `/metrics` in Prometheus text format. Counts only: no addresses, room
//! ids, secrets or names ever appear here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::admission::Refusal;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub rooms_created: AtomicU64,
    pub rooms_joined: AtomicU64,
    pub rooms_rejoined: AtomicU64,
    pub rooms_reclaimed: AtomicU64,
    pub messages_relayed: AtomicU64,
    pub bytes_relayed: AtomicU64,
    pub pake_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rejected_messages: AtomicU64,
    pub rooms_expired: AtomicU64,
    pub rooms_ended: AtomicU64,
    pub idle_closed: AtomicU64,
    pub code_misses: AtomicU64,
    /// With `--redis`: this node's clients that entered a room on another node…
    pub cluster_forwarded: AtomicU64,
    /// …and other nodes' clients that entered a room here.
    pub cluster_served: AtomicU64,
    refused_origin: AtomicU64,
    refused_client_cap: AtomicU64,
    refused_total_cap: AtomicU64,
    refused_http: AtomicU64,
}

/// Values of the moment, next to the counters.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub rooms_active: usize,
    pub connections_open: usize,
}

impl Metrics {
    pub fn refused(&self, why: Refusal) {
        let counter = match why {
            Refusal::ForeignOrigin => &self.refused_origin,
            Refusal::TooManyFromClient => &self.refused_client_cap,
            Refusal::TooMany => &self.refused_total_cap,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A TCP connection closed at accept (its client holds too many HTTP connections, or
    /// the server does).
    pub fn refused_http(&self) {
        self.refused_http.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, gauges: Gauges) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, values: &[(&str, u64)]| {
            let _ = writeln!(
                out,
                "# HELP punchdrop_{name} {help}\n# TYPE punchdrop_{name} {kind}"
            );
            for (labels, v) in values {
                let _ = writeln!(out, "punchdrop_{name}{labels} {v}");
            }
        };
        let one = |v: u64| [("", v)];
        family(
            "rooms_active",
            "gauge",
            "Rooms currently open.",
            &one(gauges.rooms_active as u64),
        );
        family(
            "connections_open",
            "gauge",
            "WebSocket connections open now.",
            &one(gauges.connections_open as u64),
        );
        let counters: [(&str, &str, &AtomicU64); 16] = [
            (
                "connections_total",
                "WebSocket connections accepted.",
                &self.connections,
            ),
            ("rooms_created_total", "Rooms created.", &self.rooms_created),
            (
                "rooms_joined_total",
                "Rooms a second peer joined.",
                &self.rooms_joined,
            ),
            (
                "rooms_rejoined_total",
                "Joins of a held room whose joiner had left (a restarted peer coming back).",
                &self.rooms_rejoined,
            ),
            (
                "rooms_reclaimed_total",
                "Held rooms whose creator took its place back after its connection died.",
                &self.rooms_reclaimed,
            ),
            (
                "rooms_expired_total",
                "Rooms closed unjoined at expiry.",
                &self.rooms_expired,
            ),
            (
                "rooms_lifetime_ended_total",
                "Joined rooms closed at the end of their lifetime.",
                &self.rooms_ended,
            ),
            (
                "signal_messages_total",
                "Sealed messages relayed.",
                &self.messages_relayed,
            ),
            (
                "signal_bytes_total",
                "Sealed payload bytes relayed.",
                &self.bytes_relayed,
            ),
            (
                "pake_failures_total",
                "Rooms aborted for a wrong secret.",
                &self.pake_failures,
            ),
            (
                "rate_limited_total",
                "Requests refused by rate limits.",
                &self.rate_limited,
            ),
            (
                "rejected_messages_total",
                "Malformed or oversized messages.",
                &self.rejected_messages,
            ),
            (
                "idle_connections_closed_total",
                "Connections closed for not creating or joining a room in time.",
                &self.idle_closed,
            ),
            (
                "code_join_misses_total",
                "Joins by a room number no waiting room has (sweeping shows here).",
                &self.code_misses,
            ),
            (
                "cluster_forwarded_total",
                "Clients of this node that entered a room on another node (--redis).",
                &self.cluster_forwarded,
            ),
            (
                "cluster_served_total",
                "Clients of other nodes that entered a room on this node (--redis).",
                &self.cluster_served,
            ),
        ];
        for (name, help, counter) in counters {
            family(name, "counter", help, &one(get(counter)));
        }
        family(
            "connections_refused_total",
            "counter",
            "WebSocket connections refused, by reason.",
            &[
                ("{reason=\"origin\"}", get(&self.refused_origin)),
                ("{reason=\"client_cap\"}", get(&self.refused_client_cap)),
                ("{reason=\"total_cap\"}", get(&self.refused_total_cap)),
                ("{reason=\"http_cap\"}", get(&self.refused_http)),
            ],
        );
        out
    }
}
