//! The signalling server under load and abuse (`punchdrop_e2e::load`): idle peers cost little
//! memory, and while one address floods creates, number sweeps, connections, half-sent
//! requests or TURN allocations, honest clients on other addresses are all served.
//!
//! The sizes are small enough for the test suite; `cargo xtask load` runs the full 10,000.

use punchdrop_e2e::{bin, load};
use std::time::Duration;

/// The bound the server is built to: an idle peer (a WebSocket waiting in its room) costs at
/// most this much of the server's memory. (tungstenite's default buffers made it ≈ 134 KiB.)
const MAX_KIB_PER_IDLE_PEER: f64 = 16.0;

#[test]
fn idle_peers_are_cheap_and_floods_leave_honest_clients_served() {
    let dir = bin("signalling").parent().unwrap().to_path_buf();
    let report = load::run(
        &dir,
        &load::Args {
            idle: 2_000,
            pairs: 10,
            round_trips: 20,
            abuse: true,
            deadline: Duration::from_secs(180),
            tls: false,
            redis: false,
        },
    )
    .unwrap();
    println!("{}", report.markdown());
    assert!(
        report.kib_per_idle_peer() <= MAX_KIB_PER_IDLE_PEER,
        "{:.1} KiB per idle peer",
        report.kib_per_idle_peer()
    );
    for row in &report.abuse {
        assert_eq!(row.honest_ok, row.honest_total, "{}: {row:?}", row.scenario);
    }
    assert_eq!(report.round_trips.len(), 10 * 20);
}

/// Two nodes sharing rooms through Redis carry many pairs at once, each pair's creator on one
/// node and joiner on the other, with idle peers waiting on the first.
#[test]
fn pairs_across_two_nodes_all_meet_and_signal() {
    let dir = bin("signalling").parent().unwrap().to_path_buf();
    let report = load::run(
        &dir,
        &load::Args {
            idle: 500,
            pairs: 20,
            round_trips: 10,
            abuse: false,
            deadline: Duration::from_secs(120),
            tls: false,
            redis: true,
        },
    )
    .unwrap();
    println!("{}", report.markdown());
    assert_eq!(report.round_trips.len(), 20 * 10);
    assert_eq!(report.cross_round_trips.len(), 20 * 10);
}
