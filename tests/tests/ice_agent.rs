//! The vendored ICE agent (`patches/rtc-ice`) driven on virtual time through its sans-IO
//! interface: two agents with host candidates, datagrams carried with a fixed one-way delay,
//! optionally through port-restricted NATs and a wire that is cut for a while.
//!
//! - Outage (`rtc-ice-0.21.1-disconnected-checks.patch`): once the path is back, both agents
//!   say `connected` again within a few check intervals, wherever the cut ended relative to
//!   their timers. Before it, a disconnected agent ticked (and checked) at the keepalive
//!   interval, so the state came back up to a second after the path did, and SCTP's
//!   path-restored retransmission (`patches/rtc-sctp`) waited for it.
//! - Nomination (`rtc-ice-0.21.1-early-nomination.patch`): as in a session, the controlled
//!   agent (the answerer) starts checking half a round trip before the controlling one (the
//!   offerer, when the answer reaches it), and both sit behind port-restricted NATs, so the
//!   controlled agent's first checks are dropped. The controlling agent's first check
//!   nominates, and the controlled agent uses the pair it nominates at once: it is connected
//!   (and starts DTLS) half a round trip after the controlling agent started, where it took
//!   a round trip and a half.
//!
//! The agents are configured as native-peer configures them (`native-peer/src/rtc.rs`):
//! 50 ms between checks, no acceptance wait for direct pairs, a keepalive every second,
//! disconnected after 5 s of silence, failed 15 s later.

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

const CHECK_INTERVAL: Duration = Duration::from_millis(50);
const KEEPALIVE: Duration = Duration::from_secs(1);
const OUTAGE: Duration = Duration::from_secs(8);

/// Agent `agent`'s `n`th host address (agent 0 is the controlling one).
fn addr(agent: usize, n: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, agent as u8, n as u8 + 1], 5000))
}

fn agent(start: Instant, who: usize, hosts: usize) -> Agent {
    let config = AgentConfig {
        network_types: vec![NetworkType::Udp4],
        check_interval: CHECK_INTERVAL,
        keepalive_interval: Some(KEEPALIVE),
        disconnected_timeout: Some(Duration::from_secs(5)),
        failed_timeout: Some(Duration::from_secs(15)),
        max_binding_requests: Some(40),
        host_acceptance_min_wait: Some(Duration::ZERO),
        srflx_acceptance_min_wait: Some(Duration::ZERO),
        prflx_acceptance_min_wait: Some(Duration::ZERO),
        multicast_dns_mode: ice::mdns::MulticastDnsMode::Disabled,
        ..Default::default()
    };
    let provider = ice::crypto::default_provider().expect("a crypto provider");
    let mut a = Agent::new(start, Arc::new(config), provider).expect("an agent");
    for n in 0..hosts {
        let c = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: addr(who, n).ip().to_string(),
                port: addr(who, n).port(),
                component: 1,
                // The first address is the most preferred (as a multi-homed host ranks
                // its interfaces).
                priority: (126 << 24) + ((65535 - 1000 * n as u32) << 8) + 255,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .expect("a host candidate");
        a.add_local_candidate(c).expect("local candidate");
    }
    a
}

/// How the two agents meet.
struct Setup {
    one_way: Duration,
    /// Host addresses of each agent.
    hosts: [usize; 2],
    /// When each agent starts its checks, from the start.
    starts: [Duration; 2],
    /// Each agent sits behind a port-restricted NAT: a datagram reaches it only from an
    /// address it has sent to before the datagram arrives.
    restricted: bool,
    /// An address whose datagrams, both ways, take three times as long.
    slow: Option<SocketAddr>,
}

impl Setup {
    fn lan(one_way: Duration) -> Self {
        Self {
            one_way,
            hosts: [1, 1],
            starts: [Duration::ZERO; 2],
            restricted: false,
            slow: None,
        }
    }
}

impl Setup {
    fn delay(&self, from: SocketAddr, to: SocketAddr) -> Duration {
        if self.slow.is_some_and(|slow| slow == from || slow == to) {
            3 * self.one_way
        } else {
            self.one_way
        }
    }
}

/// A datagram on the wire.
struct Datagram {
    arrival: Instant,
    from: SocketAddr,
    to: SocketAddr,
    message: BytesMut,
}

/// The two agents and the datagrams between them.
struct Wire {
    setup: Setup,
    agents: [Agent; 2],
    started: [bool; 2],
    remote_credentials: [(String, String); 2],
    states: [ConnectionState; 2],
    /// When each agent was first `connected`.
    connected_at: [Option<Instant>; 2],
    /// The pair each agent selected last (local, remote).
    selected: [Option<(SocketAddr, SocketAddr)>; 2],
    in_flight: Vec<Datagram>,
    /// (from, to) with when it was first sent: what the sender's NAT lets back in.
    sent: Vec<(SocketAddr, SocketAddr, Instant)>,
    start: Instant,
    now: Instant,
    cut: bool,
}

fn owner(a: SocketAddr) -> usize {
    match a {
        SocketAddr::V4(v4) => v4.ip().octets()[2] as usize,
        SocketAddr::V6(_) => unreachable!("the wire is IPv4"),
    }
}

impl Wire {
    fn new(setup: Setup) -> Self {
        let now = Instant::now();
        let mut agents = [agent(now, 0, setup.hosts[0]), agent(now, 1, setup.hosts[1])];
        for (i, j) in [(0, 1), (1, 0)] {
            let remotes = agents[j].get_local_candidates().to_vec();
            for remote in remotes {
                agents[i]
                    .add_remote_candidate(remote)
                    .expect("remote candidate");
            }
        }
        let creds = |a: &Agent| {
            let c = a.get_local_credentials();
            (c.ufrag.clone(), c.pwd.clone())
        };
        let remote_credentials = [creds(&agents[1]), creds(&agents[0])];
        let mut w = Self {
            setup,
            agents,
            started: [false; 2],
            remote_credentials,
            states: [ConnectionState::Checking; 2],
            connected_at: [None; 2],
            selected: [None; 2],
            in_flight: Vec::new(),
            sent: Vec::new(),
            start: now,
            now,
            cut: false,
        };
        w.start_due();
        w
    }

    /// Starts the checks of each agent whose start has come.
    fn start_due(&mut self) {
        for i in 0..2 {
            if !self.started[i] && self.now >= self.start + self.setup.starts[i] {
                let (ufrag, pwd) = self.remote_credentials[i].clone();
                self.agents[i]
                    .start_connectivity_checks(self.now, i == 0, ufrag, pwd)
                    .expect("checks start");
                self.started[i] = true;
            }
        }
    }

    /// Whether the NAT in front of `to` lets in what arrives from `from` at `at`.
    fn admitted(&self, from: SocketAddr, to: SocketAddr, at: Instant) -> bool {
        !self.setup.restricted
            || self
                .sent
                .iter()
                .any(|(f, t, when)| *f == to && *t == from && *when <= at)
    }

    /// Runs until `until`, handling timers, carrying datagrams and noting state changes.
    fn run_until(&mut self, until: Instant) {
        loop {
            self.collect();
            let next_timer = self
                .agents
                .iter_mut()
                .zip(self.started)
                .filter(|(_, started)| *started)
                .filter_map(|(a, _)| a.poll_timeout())
                .min();
            let next_start = (0..2)
                .filter(|i| !self.started[*i])
                .map(|i| self.start + self.setup.starts[i])
                .min();
            let next_arrival = self.in_flight.iter().map(|d| d.arrival).min();
            let next = [next_timer, next_start, next_arrival, Some(until)]
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
            self.start_due();
            let (arrived, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|d| d.arrival <= now);
            self.in_flight = later;
            for d in arrived {
                if !self.admitted(d.from, d.to, d.arrival) {
                    continue;
                }
                let transport = TransportContext {
                    local_addr: d.to,
                    peer_addr: d.from,
                    transport_protocol: TransportProtocol::UDP,
                    ecn: None,
                };
                let _ = self.agents[owner(d.to)].handle_read(TaggedBytesMut {
                    now,
                    transport,
                    message: d.message,
                });
            }
            for (a, started) in self.agents.iter_mut().zip(self.started) {
                if started && a.poll_timeout().is_some_and(|t| t <= now) {
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
                let (from, to) = (out.transport.local_addr, out.transport.peer_addr);
                if !self.sent.iter().any(|(f, t, _)| *f == from && *t == to) {
                    self.sent.push((from, to, self.now));
                }
                if !self.cut {
                    self.in_flight.push(Datagram {
                        arrival: self.now + self.setup.delay(from, to),
                        from,
                        to,
                        message: out.message,
                    });
                }
            }
            while let Some(e) = a.poll_event() {
                match e.event {
                    Event::ConnectionStateChange(s) => {
                        self.states[i] = s;
                        if s == ConnectionState::Connected && self.connected_at[i].is_none() {
                            self.connected_at[i] = Some(self.now);
                        }
                    }
                    Event::SelectedCandidatePairChange(local, remote) => {
                        self.selected[i] = Some((local.addr(), remote.addr()));
                    }
                    _ => {}
                }
            }
        }
    }

    fn both(&self, s: ConnectionState) -> bool {
        self.states.iter().all(|x| *x == s)
    }

    /// Runs for `d` and then requires both agents in state `s` (`what` says why).
    fn run_into(&mut self, d: Duration, s: ConnectionState, what: &str) {
        let until = self.now + d;
        self.run_until(until);
        assert!(self.both(s), "{what}: {:?}", self.states);
    }
}

/// Cuts the wire once both are connected, restores it `OUTAGE` later plus `phase`, and
/// returns how long after the restore both said `connected` again.
fn back_after(phase: Duration) -> Duration {
    let one_way = Duration::from_millis(10);
    let mut w = Wire::new(Setup::lan(one_way));
    w.run_into(
        Duration::from_secs(2),
        ConnectionState::Connected,
        "not connected",
    );
    w.cut = true;
    w.run_into(
        OUTAGE + phase,
        ConnectionState::Disconnected,
        &format!("an {OUTAGE:?} outage is not a disconnection"),
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
    let one_way = Duration::from_millis(10);
    let mut worst = Duration::ZERO;
    for tenth in 0..10 {
        let phase = KEEPALIVE * tenth / 10;
        let back = back_after(phase);
        eprintln!("path back {phase:?} into a keepalive period: connected {back:?} later");
        worst = worst.max(back);
    }
    assert!(
        worst <= 3 * CHECK_INTERVAL + 2 * one_way,
        "connected again up to {worst:?} after the path came back"
    );
}

/// Runs a session's start (the controlled agent half a round trip ahead) and returns when
/// each agent was first connected, counted from the controlling agent's start.
fn session_start(setup: Setup) -> (Wire, [Duration; 2]) {
    let mut w = Wire::new(setup);
    let start = w.now;
    w.run_into(
        Duration::from_secs(3),
        ConnectionState::Connected,
        "not connected",
    );
    let controlling_start = start + w.setup.starts[0];
    let at = w
        .connected_at
        .map(|t| t.expect("connected") - controlling_start);
    (w, at)
}

/// Behind port-restricted NATs at 100 ms round trip, the controlled agent (the DTLS
/// client) is connected half a round trip after the controlling agent starts: its first
/// check nominates, and the nomination is used as it arrives; the controlling agent is
/// connected when that check's answer comes back. It was a round trip and a half for the
/// controlled agent and two for the controlling one (a check, its answer, then a
/// nominating check and its answer).
#[test]
fn the_controlled_agent_is_connected_by_the_first_nominating_check() {
    let one_way = Duration::from_millis(50);
    // The answer reaches the controlling agent a little later than a datagram sent
    // straight would (it passes the signalling server).
    let (_, at) = session_start(Setup {
        one_way,
        hosts: [1, 1],
        starts: [one_way + Duration::from_millis(10), Duration::ZERO],
        restricted: true,
        slow: None,
    });
    eprintln!(
        "connected after the controlling agent started: controlling {:?}, controlled {:?}",
        at[0], at[1]
    );
    let slack = Duration::from_millis(5);
    assert!(
        at[1] <= one_way + slack,
        "the controlled agent was connected {:?} after the controlling one started",
        at[1]
    );
    assert!(
        at[0] <= 2 * one_way + slack,
        "the controlling agent was connected {:?} after it started",
        at[0]
    );
}

/// With several pairs that work, every check nominates until one succeeds, and the pair of
/// highest priority is the slowest: whichever pair each agent selected first, both end on
/// that one (RFC 5245 §8.1.1.2: the highest-priority nominated pair), as they do without
/// a slow pair.
#[test]
fn both_agents_end_on_the_best_nominated_pair() {
    for one_way in [1, 10, 50].map(Duration::from_millis) {
        for slow in [None, Some(addr(0, 0))] {
            let (mut w, _) = session_start(Setup {
                one_way,
                hosts: [3, 2],
                starts: [one_way, Duration::ZERO],
                restricted: false,
                slow,
            });
            let later = w.now + Duration::from_secs(2);
            w.run_until(later);
            let [Some(controlling), Some(controlled)] = w.selected else {
                panic!("no pair selected: {:?}", w.selected);
            };
            assert_eq!(
                controlling,
                (controlled.1, controlled.0),
                "{one_way:?} one way, {slow:?} slow: the two agents use different pairs"
            );
            assert_eq!(
                controlling,
                (addr(0, 0), addr(1, 0)),
                "{one_way:?} one way, {slow:?} slow: not the pair of highest priority"
            );
        }
    }
}
