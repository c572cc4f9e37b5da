//! The vendored ICE agent (`patches/rtc-ice`) driven on virtual time through its sans-IO
//! interface: two agents with one host candidate each, datagrams carried with a fixed
//! one-way delay, the wire cut for a while and then restored. It checks
//! `rtc-ice-0.21.1-disconnected-checks.patch`: once the path is back, both agents say
//! `connected` again within a few check intervals, wherever the cut ended relative to their
//! timers. Before it, a disconnected agent ticked (and checked) at the keepalive interval, so
//! the state came back up to a second after the path did, and SCTP's path-restored
//! retransmission (`patches/rtc-sctp`) waited for it.
//!
//! The agents are configured as native-peer configures them (`native-peer/src/rtc.rs`):
//! 50 ms between checks, a keepalive every second, disconnected after 5 s of silence,
//! failed 15 s later.

use bytes::BytesMut;
use ice::agent::agent_config::AgentConfig;
use ice::agent::{Agent, Event};
use ice::candidate::CandidateConfig;
use ice::candidate::candidate_host::CandidateHostConfig;
use ice::network_type::NetworkType;
use ice::state::ConnectionState;
use sansio::Protocol;
use shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ONE_WAY: Duration = Duration::from_millis(10);
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
const KEEPALIVE: Duration = Duration::from_secs(1);
const OUTAGE: Duration = Duration::from_secs(8);

fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], 5000))
}

fn agent(start: Instant, host: u8) -> Agent {
    let config = AgentConfig {
        network_types: vec![NetworkType::Udp4],
        check_interval: CHECK_INTERVAL,
        keepalive_interval: Some(KEEPALIVE),
        disconnected_timeout: Some(Duration::from_secs(5)),
        failed_timeout: Some(Duration::from_secs(15)),
        max_binding_requests: Some(40),
        multicast_dns_mode: ice::mdns::MulticastDnsMode::Disabled,
        ..Default::default()
    };
    let provider = ice::crypto::default_provider().expect("a crypto provider");
    let mut a = Agent::new(start, Arc::new(config), provider).expect("an agent");
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: addr(host).ip().to_string(),
            port: addr(host).port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .expect("a host candidate");
    a.add_local_candidate(c).expect("local candidate");
    a
}

/// The two agents and the datagrams between them.
struct Wire {
    agents: [Agent; 2],
    states: [ConnectionState; 2],
    /// (arrival, to which agent, datagram)
    in_flight: Vec<(Instant, usize, BytesMut)>,
    now: Instant,
    cut: bool,
}

impl Wire {
    fn new() -> Self {
        let now = Instant::now();
        let mut agents = [agent(now, 1), agent(now, 2)];
        for (i, j) in [(0, 1), (1, 0)] {
            let remote = agents[j].get_local_candidates()[0].clone();
            agents[i]
                .add_remote_candidate(remote)
                .expect("remote candidate");
        }
        let creds: Vec<_> = agents
            .iter()
            .map(|a| {
                let c = a.get_local_credentials();
                (c.ufrag.clone(), c.pwd.clone())
            })
            .collect();
        for (i, j) in [(0, 1), (1, 0)] {
            let (ufrag, pwd) = creds[j].clone();
            agents[i]
                .start_connectivity_checks(now, i == 0, ufrag, pwd)
                .expect("checks start");
        }
        Self {
            agents,
            states: [ConnectionState::Checking; 2],
            in_flight: Vec::new(),
            now,
            cut: false,
        }
    }

    /// Runs until `until`, handling timers, carrying datagrams and noting state changes.
    fn run_until(&mut self, until: Instant) {
        loop {
            self.collect();
            let next_timer = self
                .agents
                .iter_mut()
                .filter_map(|a| a.poll_timeout())
                .min();
            let next_arrival = self.in_flight.iter().map(|(t, _, _)| *t).min();
            let next = [next_timer, next_arrival, Some(until)]
                .into_iter()
                .flatten()
                .min()
                .expect("until is there");
            if next > until {
                self.now = until;
                return;
            }
            self.now = next.max(self.now);
            let now = self.now;
            let (arrived, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(t, _, _)| *t <= now);
            self.in_flight = later;
            for (_, to, message) in arrived {
                let transport = TransportContext {
                    local_addr: addr(to as u8 + 1),
                    peer_addr: addr(2 - to as u8),
                    transport_protocol: TransportProtocol::UDP,
                    ecn: None,
                };
                let _ = self.agents[to].handle_read(TaggedBytesMut {
                    now,
                    transport,
                    message,
                });
            }
            for a in &mut self.agents {
                if a.poll_timeout().is_some_and(|t| t <= now) {
                    a.handle_timeout(now).expect("timeout handled");
                }
            }
            if self.now >= until {
                self.collect();
                return;
            }
        }
    }

    /// Takes out what the agents want sent (lost while the wire is cut) and their events.
    fn collect(&mut self) {
        for (i, a) in self.agents.iter_mut().enumerate() {
            while let Some(out) = a.poll_write() {
                if !self.cut {
                    self.in_flight
                        .push((self.now + ONE_WAY, 1 - i, out.message));
                }
            }
            while let Some(e) = a.poll_event() {
                if let Event::ConnectionStateChange(s) = e.event {
                    self.states[i] = s;
                }
            }
        }
    }

    fn both(&self, s: ConnectionState) -> bool {
        self.states.iter().all(|x| *x == s)
    }
}

/// Cuts the wire once both are connected, restores it `OUTAGE` later plus `phase`, and
/// returns how long after the restore both said `connected` again.
fn back_after(phase: Duration) -> Duration {
    let mut w = Wire::new();
    let start = w.now;
    w.run_until(start + Duration::from_secs(2));
    assert!(
        w.both(ConnectionState::Connected),
        "not connected: {:?}",
        w.states
    );
    w.cut = true;
    let cut_at = w.now;
    w.run_until(cut_at + OUTAGE + phase);
    assert!(
        w.both(ConnectionState::Disconnected),
        "an {OUTAGE:?} outage is not a disconnection: {:?}",
        w.states
    );
    w.cut = false;
    let restored = w.now;
    let step = Duration::from_millis(5);
    while !w.both(ConnectionState::Connected) {
        assert!(
            w.now - restored < Duration::from_secs(10),
            "still {:?} 10 s after the path came back",
            w.states
        );
        let next = w.now + step;
        w.run_until(next);
    }
    w.now - restored
}

/// Wherever in the keepalive period the path comes back, both agents see it within a few
/// check intervals and a round trip (it was up to a keepalive period and more).
#[test]
fn a_path_that_comes_back_is_seen_within_a_few_check_intervals() {
    let mut worst = Duration::ZERO;
    for tenth in 0..10 {
        let phase = KEEPALIVE * tenth / 10;
        let back = back_after(phase);
        eprintln!("path back {phase:?} into a keepalive period: connected {back:?} later");
        worst = worst.max(back);
    }
    assert!(
        worst <= 3 * CHECK_INTERVAL + 2 * ONE_WAY,
        "connected again up to {worst:?} after the path came back"
    );
}
