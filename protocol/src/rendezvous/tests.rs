//! Two rendezvous machines, a stand-in signalling server and two stand-in ICE stacks, on
//! virtual time: every path through the rendezvous, with server messages lost, duplicated,
//! delayed and reordered, and every deadline run out, before any socket exists.

use super::*;
use crate::event::Payload;
use crate::invite::Invitation;
use std::collections::BTreeMap;

const HOP: Duration = Duration::from_millis(10);
const T0: Duration = Duration::from_secs(1000);
const SERVER: &str = "https://drop.example";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    A,
    B,
}

impl Who {
    fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// What happens to one server → peer message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Deliver this much later (which reorders it behind later messages).
    Delay(Duration),
}

/// Decides the fate of the n-th message the server sends to a peer (n counts per peer).
type Faults = Box<dyn FnMut(Who, usize, &ServerMessage) -> Fate>;

#[derive(Debug)]
enum Wire {
    ToServer(Who, ClientMessage),
    ToPeer(Who, ServerMessage),
    /// A peer's socket closed (as the server sees it).
    Closed(Who),
    /// The server's socket to a peer closed (as the peer sees it).
    ServerGone(Who),
    Local(Who, LocalIce),
    Open(Who),
    /// A socket the peer asked for opened (or, for a peer that cannot connect, failed).
    SocketOpen(Who),
}

/// The server's one room.
#[derive(Debug, Default)]
struct Room {
    creator: Option<Who>,
    /// Only a room whose creator shows a code has one.
    number: Option<u32>,
    joiner: Option<Who>,
    pake_sent: Vec<Who>,
    gone: bool,
    /// Created with `hold`: the joiner leaving frees its place instead of ending the room,
    /// the creator leaving keeps its place for a reclaim.
    hold: bool,
    /// Held rooms: the tokens handed out for the two places (joiners get a new one each).
    creator_token: Option<String>,
    joiner_token: Option<String>,
    joins: u32,
    /// The away creator's connection closed long enough ago: it stopped (`peer_gone`).
    creator_stopped: bool,
}

/// A peer: its machine, its stand-in ICE stack, and what it showed.
struct Peer {
    rv: Rendezvous,
    /// `None` for a peer whose socket never opens.
    connects: bool,
    events: Vec<Event>,
    failed: Option<RendezvousError>,
    sent: Vec<ClientMessage>,
    setup: Option<PeerSetup>,
    /// Local candidates gathered so far (what a description read now contains).
    local: Vec<String>,
    remote_description: Option<String>,
    remote_applied: bool,
    remote_candidates: Vec<String>,
    /// Candidates this ICE stack gathers after a description is created: (delay, line).
    gathers: Vec<(Duration, &'static str)>,
    gathering_done_after: Option<Duration>,
    /// When the local description was created, and when it was read and sent.
    created_at: Option<Duration>,
    described_at: Option<Duration>,
    open: bool,
    /// How many times the driver was told to close its peer connection.
    closed: usize,
    /// How many times it was told to restart ICE.
    restarts: usize,
}

impl Peer {
    fn new(rv: Rendezvous) -> Self {
        Self {
            rv,
            connects: true,
            events: Vec::new(),
            failed: None,
            sent: Vec::new(),
            setup: None,
            local: Vec::new(),
            remote_description: None,
            remote_applied: false,
            remote_candidates: Vec::new(),
            gathers: vec![
                (
                    Duration::from_millis(1),
                    "candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host",
                ),
                (
                    Duration::from_millis(40),
                    "candidate:2 1 udp 1694498815 198.51.100.2 6000 typ srflx",
                ),
                (
                    Duration::from_millis(90),
                    "candidate:3 1 udp 16777215 203.0.113.9 7000 typ relay",
                ),
            ],
            gathering_done_after: Some(Duration::from_millis(91)),
            created_at: None,
            described_at: None,
            open: false,
            closed: 0,
            restarts: 0,
        }
    }

    /// The driver closed its peer connection: the stand-in ICE stack starts from nothing.
    fn close_peer(&mut self) {
        self.closed += 1;
        self.setup = None;
        self.local.clear();
        self.remote_description = None;
        self.remote_applied = false;
        self.remote_candidates.clear();
        self.created_at = None;
        self.described_at = None;
        self.open = false;
    }

    fn event<T: Payload + Clone>(&self) -> Option<T> {
        crate::event::find::<T>(&self.events).cloned()
    }

    fn names(&self) -> Vec<&'static str> {
        self.events.iter().map(Event::name).collect()
    }

    /// The failure as a person reads it.
    fn error(&self) -> String {
        self.failed.as_ref().expect("failed").to_string()
    }

    fn aborted(&self) -> Option<AbortReason> {
        self.sent.iter().find_map(|m| match m {
            ClientMessage::Abort { reason } => Some(*reason),
            _ => None,
        })
    }
}

struct World {
    now: Duration,
    peers: BTreeMap<Who, Peer>,
    /// (delivery time, sequence, what): delivered in time order, then sending order.
    wire: Vec<(Duration, u64, Wire)>,
    seq: u64,
    room: Room,
    faults: Faults,
    sent_to: BTreeMap<Who, usize>,
    ice_servers: Vec<IceServer>,
    /// Direct pairs fail: ICE connects only once one side knows a relay candidate of the other.
    direct_fails: bool,
    /// The server never hears this peer's sockets close (its network went away under them).
    unheard_closes: Option<Who>,
}

fn link_and_code(world: &World) -> (String, String) {
    let r = world.peers[&Who::A]
        .event::<event::Ready>()
        .expect("A made a room");
    (r.link, r.code.expect("A shows a code"))
}

impl World {
    /// A creates a room (wanting `a`) and shows a code; B will join with whatever `join`
    /// returns from A's link and code.
    fn new(a: Want) -> Self {
        let mut w = Self::link_only(a);
        w.peers.get_mut(&Who::A).unwrap().rv.show_code(T0);
        w
    }

    /// A creates a room (wanting `a`) that shows only its link.
    fn link_only(a: Want) -> Self {
        Self::created_with(a, Config::default())
    }

    fn created_with(a: Want, config: Config) -> Self {
        let rv = Rendezvous::create(SERVER, a, config, T0);
        let mut peers = BTreeMap::new();
        peers.insert(Who::A, Peer::new(rv));
        Self {
            now: T0,
            peers,
            wire: Vec::new(),
            seq: 0,
            room: Room::default(),
            faults: Box::new(|_, _, _| Fate::Deliver),
            sent_to: BTreeMap::new(),
            ice_servers: vec![
                IceServer {
                    urls: vec!["stun:drop.example:3478".into()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec!["turn:drop.example:3478?transport=udp".into()],
                    username: Some("1:tag".into()),
                    credential: Some("pw".into()),
                },
            ],
            direct_fails: false,
            unheard_closes: None,
        }
    }

    /// Open A's socket and run until A has a link and code (or gave up).
    fn with_room(a: Want) -> Self {
        Self::open_room(Self::new(a))
    }

    fn open_room(mut w: Self) -> Self {
        w.open_socket(Who::A);
        w.run_until(|w| {
            w.peers[&Who::A].event::<event::Ready>().is_some() || w.peers[&Who::A].failed.is_some()
        });
        w
    }

    /// A wants `a` and made a room; B joins it by link wanting `b` (nothing runs yet).
    fn pair(a: Want, b: Want) -> Self {
        let mut w = Self::with_room(a);
        let (link, _) = link_and_code(&w);
        w.join(&link, b);
        w
    }

    /// B joins by `how` (the link, the code, or anything else) wanting `b`.
    fn join(&mut self, invitation: &str, b: Want) {
        let inv = Invitation::parse(invitation).expect("a valid invitation");
        let rv = Rendezvous::join(&inv, SERVER, b, Config::default(), self.now);
        self.peers.insert(Who::B, Peer::new(rv));
        self.open_socket(Who::B);
    }

    fn open_socket(&mut self, who: Who) {
        let now = self.now;
        let p = self.peers.get_mut(&who).unwrap();
        if p.connects {
            p.rv.server_open(now);
        }
    }

    fn schedule(&mut self, after: Duration, what: Wire) {
        self.seq += 1;
        self.wire.push((self.now + after, self.seq, what));
    }

    fn tell(&mut self, who: Who, msg: ServerMessage) {
        let n = self.sent_to.entry(who).or_default();
        let fate = (self.faults)(who, *n, &msg);
        *n += 1;
        match fate {
            Fate::Deliver => self.schedule(HOP, Wire::ToPeer(who, msg)),
            Fate::Drop => {}
            Fate::Duplicate => {
                self.schedule(HOP, Wire::ToPeer(who, msg.clone()));
                self.schedule(HOP, Wire::ToPeer(who, msg));
            }
            Fate::Delay(d) => self.schedule(HOP + d, Wire::ToPeer(who, msg)),
        }
    }

    /// The stand-in signalling server: one room, the real server's rules.
    fn server(&mut self, from: Who, msg: ClientMessage) {
        let other = from.other();
        let in_room = |r: &Room, w: Who| r.creator == Some(w) || r.joiner == Some(w);
        // A knock makes a room as a create does; the stand-in inbox joins it by hand.
        let msg = match msg {
            ClientMessage::Knock { hold, version, .. } => ClientMessage::Create {
                version,
                code: false,
                hold,
            },
            ClientMessage::Register { .. }
            | ClientMessage::Prove { .. }
            | ClientMessage::Look { .. } => {
                panic!("a rendezvous never registers or looks up an inbox")
            }
            other => other,
        };
        match msg {
            ClientMessage::Knock { .. }
            | ClientMessage::Register { .. }
            | ClientMessage::Prove { .. }
            | ClientMessage::Look { .. } => unreachable!("handled above"),
            ClientMessage::Create { code, hold, .. } => {
                self.room.creator = Some(from);
                self.room.hold = hold;
                self.room.number = code.then_some(7);
                self.room.creator_token = hold.then(|| "ctok".to_string());
                let number = self.room.number;
                let reclaim = self.room.creator_token.clone();
                self.tell(
                    from,
                    ServerMessage::Created {
                        room: "room1234".into(),
                        number,
                        expires_in_secs: 1800,
                        reclaim,
                    },
                );
            }
            ClientMessage::Reclaim { room, token, .. }
                if self.room.joiner_token.as_ref() == Some(&token) =>
            {
                if self.room.gone || room != "room1234" {
                    return self.error(from, ErrorCode::NoSuchRoom);
                }
                if self.room.joiner.is_some_and(|j| j != from) {
                    return self.error(from, ErrorCode::RoomFull);
                }
                self.room.joiner = Some(from);
                self.tell(from, ServerMessage::Reclaimed { room });
                if self.room.creator.is_some() {
                    self.tell(other, ServerMessage::PeerBack);
                }
            }
            ClientMessage::Reclaim {
                room, token, lost, ..
            } => {
                if self.room.gone
                    || room != "room1234"
                    || self.room.creator_token.as_ref() != Some(&token)
                {
                    return self.error(from, ErrorCode::NoSuchRoom);
                }
                self.room.creator = Some(from);
                self.room.pake_sent.clear();
                self.tell(from, ServerMessage::Reclaimed { room });
                if self.room.joiner.is_some() {
                    let told = match lost {
                        true => ServerMessage::PeerLost,
                        false => ServerMessage::PeerLeft,
                    };
                    self.tell(other, told);
                    if !lost {
                        self.tell(other, ServerMessage::PeerBack);
                    }
                }
            }
            ClientMessage::ShowCode => {
                if self.room.creator == Some(from) && self.room.joiner.is_none() {
                    self.room.number = Some(7);
                    self.tell(from, ServerMessage::Numbered { number: 7 });
                }
            }
            ClientMessage::Join { room, reclaim, .. } => {
                let ok = match room {
                    RoomRef::Id(id) => id == "room1234",
                    RoomRef::Number(n) => self.room.number == Some(n),
                };
                if !ok || self.room.gone {
                    return self.error(from, ErrorCode::NoSuchRoom);
                }
                if self.room.creator.is_none() && self.room.creator_stopped {
                    self.room.gone = true;
                    return self.error(from, ErrorCode::PeerGone);
                }
                if self.room.creator.is_none() {
                    return self.error(from, ErrorCode::PeerAway);
                }
                if self.room.joiner.is_some() {
                    if reclaim.is_none() || reclaim != self.room.joiner_token {
                        return self.error(from, ErrorCode::RoomFull);
                    }
                    // Its own old socket, still counted in the room: the place is taken back.
                    self.room.joiner = None;
                    self.room.pake_sent.clear();
                    self.tell(other, ServerMessage::PeerLeft);
                }
                self.room.joiner = Some(from);
                self.room.joins += 1;
                self.room.joiner_token = self.room.hold.then(|| format!("jtok{}", self.room.joins));
                let reclaim = self.room.joiner_token.clone();
                self.tell(
                    from,
                    ServerMessage::Joined {
                        room: "room1234".into(),
                        reclaim,
                    },
                );
                self.ice(from);
                self.tell(other, ServerMessage::PeerJoined);
                // Credentials only once both are in (a `create` alone buys none).
                self.ice(other);
            }
            ClientMessage::Pake { auth, msg } => {
                if self.room.gone || !in_room(&self.room, other) {
                    return self.error(from, ErrorCode::NoPeer);
                }
                if self.room.pake_sent.contains(&from) {
                    return self.error(from, ErrorCode::PakeAlreadySent);
                }
                self.room.pake_sent.push(from);
                self.tell(other, ServerMessage::Pake { auth, msg });
            }
            ClientMessage::Sealed { data } => {
                if !self.room.gone && in_room(&self.room, other) {
                    self.tell(other, ServerMessage::Sealed { data });
                }
            }
            // A held room outlives a joiner with the wrong secret: it only leaves.
            ClientMessage::Abort {
                reason: AbortReason::WrongSecret,
            } if self.room.hold && self.room.joiner == Some(from) && self.room.joins > 1 => {
                self.room.joiner = None;
                self.room.pake_sent.clear();
                if in_room(&self.room, other) {
                    self.tell(other, ServerMessage::PeerLeft);
                }
            }
            ClientMessage::Abort { reason } => {
                if !self.room.gone && in_room(&self.room, other) {
                    self.tell(other, ServerMessage::PeerAborted { reason });
                }
                self.room.gone = true;
            }
        }
    }

    fn ice(&mut self, to: Who) {
        let servers = self.ice_servers.clone();
        self.tell(
            to,
            ServerMessage::IceServers {
                servers,
                expires_in_secs: 3600,
            },
        );
    }

    fn error(&mut self, to: Who, code: ErrorCode) {
        self.tell(
            to,
            ServerMessage::Error {
                code,
                message: code.explain().into(),
            },
        );
    }

    /// Carry out everything the machines asked for.
    fn drain(&mut self) {
        loop {
            let mut did = false;
            for who in [Who::A, Who::B] {
                while let Some(p) = self.peers.get_mut(&who) {
                    let out = p.rv.poll_output();
                    if matches!(out, Output::Timeout(_)) {
                        break;
                    }
                    did = true;
                    self.act(who, out);
                }
            }
            if !did {
                return;
            }
        }
    }

    /// The stand-in driver and ICE stack.
    fn act(&mut self, who: Who, out: Output) {
        let now = self.now;
        match out {
            Output::ToServer(m) => {
                self.peers.get_mut(&who).unwrap().sent.push(m.clone());
                self.schedule(HOP, Wire::ToServer(who, m));
            }
            Output::Event(e) => self.peers.get_mut(&who).unwrap().events.push(e),
            Output::Failed(e) => {
                let p = self.peers.get_mut(&who).unwrap();
                assert!(p.failed.is_none(), "{who:?} failed twice");
                p.failed = Some(e);
            }
            Output::StartPeer(setup) => {
                let p = self.peers.get_mut(&who).unwrap();
                assert!(p.setup.is_none(), "{who:?} started two peer connections");
                p.setup = Some(setup);
            }
            Output::CreateDescription(_) | Output::RestartIce => {
                let p = self.peers.get_mut(&who).unwrap();
                if matches!(out, Output::RestartIce) {
                    // New credentials: the other side's description and candidates are of
                    // the old generation.
                    p.restarts += 1;
                    p.remote_description = None;
                    p.remote_applied = false;
                    p.remote_candidates.clear();
                }
                if p.open {
                    p.local.clear();
                }
                self.schedule(
                    Duration::from_millis(1),
                    Wire::Local(who, LocalIce::DescriptionCreated),
                );
                let p = &self.peers[&who];
                let gathers = p.gathers.clone();
                let done = p.gathering_done_after;
                for (after, line) in gathers {
                    let c = IceCandidate {
                        candidate: line.into(),
                        sdp_mid: Some("0".into()),
                        sdp_mline_index: Some(0),
                    };
                    self.schedule(after, Wire::Local(who, LocalIce::Candidate(c)));
                }
                if let Some(after) = done {
                    self.schedule(after, Wire::Local(who, LocalIce::GatheringDone));
                }
            }
            Output::ReadLocalDescription => {
                let p = self.peers.get_mut(&who).unwrap();
                // A description as ICE stacks write them: one media section, its candidates.
                let candidates: String = p.local.iter().map(|c| format!("a={c}\r\n")).collect();
                let sdp = format!(
                    "v=0\r\ns={who:?}\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
                     a=mid:0\r\n{candidates}"
                );
                p.described_at = Some(now);
                p.rv.handle_local(LocalIce::Description(sdp), now);
            }
            Output::ApplyDescription { sdp, .. } => {
                let p = self.peers.get_mut(&who).unwrap();
                assert!(
                    p.remote_description.is_none() || p.open,
                    "{who:?}: two remote descriptions before connecting"
                );
                if p.open {
                    // An ICE restart: candidates of the old generation go.
                    p.remote_applied = false;
                    p.remote_candidates.clear();
                }
                p.remote_description = Some(sdp);
                self.schedule(
                    Duration::from_millis(1),
                    Wire::Local(who, LocalIce::RemoteApplied),
                );
            }
            Output::AddCandidate(c) => {
                let p = self.peers.get_mut(&who).unwrap();
                assert!(
                    p.remote_applied,
                    "{who:?}: a remote candidate before the remote description"
                );
                p.remote_candidates.push(c.candidate);
            }
            Output::ClosePeer => self.peers.get_mut(&who).unwrap().close_peer(),
            Output::CloseServer => self.schedule(HOP, Wire::Closed(who)),
            Output::OpenServer => self.schedule(HOP, Wire::SocketOpen(who)),
            Output::Timeout(_) => unreachable!(),
        }
    }

    /// B's program dies: its machine is gone and the server sees its socket close.
    fn kill_b(&mut self) {
        self.peers.remove(&Who::B);
        self.schedule(HOP, Wire::Closed(Who::B));
    }

    /// B's connection died too: its driver closes the old socket and joins `link` again.
    fn b_rejoins(&mut self, link: &str) {
        self.schedule(HOP, Wire::Closed(Who::B));
        let inv = Invitation::parse(link).expect("a valid invitation");
        let config = Config {
            rejoin_wait: Some(REJOIN_WAIT),
            ..Config::default()
        };
        let place = self.peers.get(&Who::B).and_then(|p| p.rv.place());
        let rv = Rendezvous::rejoin(
            &inv,
            place.as_ref(),
            SERVER,
            Want::Receive,
            config,
            self.now,
        );
        let connects = self.peers.get(&Who::B).is_none_or(|p| p.connects);
        let mut b = Peer::new(rv);
        b.connects = connects;
        self.peers.insert(Who::B, b);
        self.open_socket(Who::B);
    }

    /// A's driver finds its connection dead: it closes it and tells the machine.
    fn a_loses_link(&mut self) -> bool {
        let now = self.now;
        let a = self.peers.get_mut(&Who::A).unwrap();
        a.close_peer();
        let waits = a.rv.link_lost(now);
        self.drain();
        waits
    }

    fn deliver(&mut self, what: Wire) {
        let now = self.now;
        match what {
            Wire::ToServer(from, m) => self.server(from, m),
            Wire::ToPeer(to, m) => {
                if let Some(p) = self.peers.get_mut(&to) {
                    p.rv.handle_server(m, now);
                }
            }
            Wire::Closed(who) if self.unheard_closes == Some(who) => {}
            Wire::Closed(who) if self.room.hold && self.room.joiner == Some(who) => {
                self.room.joiner = None;
                self.room.pake_sent.clear();
                if self.room.creator.is_some() {
                    self.tell(who.other(), ServerMessage::PeerLeft);
                }
            }
            Wire::Closed(who) if self.room.hold && self.room.creator == Some(who) => {
                self.room.creator = None;
                self.room.pake_sent.clear();
                if self.room.joiner.is_some() {
                    self.tell(who.other(), ServerMessage::PeerLeft);
                }
            }
            Wire::Closed(who) => {
                let other = who.other();
                // A socket that never got into the room leaves nothing behind.
                let member = self.room.creator == Some(who) || self.room.joiner == Some(who);
                if member && !self.room.gone {
                    self.room.gone = true;
                    if self.peers.contains_key(&other) {
                        self.tell(other, ServerMessage::PeerLeft);
                    }
                }
            }
            Wire::ServerGone(who) => {
                if let Some(p) = self.peers.get_mut(&who) {
                    p.rv.server_closed(now);
                }
            }
            Wire::Local(who, ev) => {
                // (A program that went away takes its ICE stack with it.)
                let Some(p) = self.peers.get_mut(&who) else {
                    return;
                };
                match &ev {
                    LocalIce::Candidate(c) => p.local.push(c.candidate.clone()),
                    LocalIce::RemoteApplied => p.remote_applied = true,
                    LocalIce::DescriptionCreated => p.created_at = Some(now),
                    _ => {}
                }
                p.rv.handle_local(ev, now);
            }
            Wire::Open(who) => {
                let p = self.peers.get_mut(&who).unwrap();
                p.open = true;
                p.rv.channel_open(now);
            }
            Wire::SocketOpen(who) => {
                if let Some(p) = self.peers.get_mut(&who) {
                    match p.connects {
                        true => p.rv.server_open(now),
                        false => p.rv.server_closed(now),
                    }
                }
            }
        }
    }

    /// ICE connects once both sides applied the other's description and know one of its
    /// candidates; the channel opens a few milliseconds later on both sides.
    fn maybe_connect(&mut self) {
        let wanted = if self.direct_fails {
            "typ relay"
        } else {
            "typ"
        };
        let ready = |p: &Peer| {
            p.remote_applied
                && !p.open
                && (p
                    .remote_description
                    .as_ref()
                    .is_some_and(|d| d.contains(wanted))
                    || p.remote_candidates.iter().any(|c| c.contains(wanted)))
        };
        let (Some(a), Some(b)) = (self.peers.get(&Who::A), self.peers.get(&Who::B)) else {
            return;
        };
        if ready(a) && ready(b) && !self.wire.iter().any(|(_, _, w)| matches!(w, Wire::Open(_))) {
            self.schedule(Duration::from_millis(5), Wire::Open(Who::A));
            self.schedule(Duration::from_millis(5), Wire::Open(Who::B));
        }
    }

    fn settled(&self) -> bool {
        self.peers
            .values()
            .all(|p| p.failed.is_some() || p.rv.is_connected())
    }

    /// Run until `done` holds, nothing is left to happen, or 20 virtual minutes passed.
    fn run_until(&mut self, done: impl Fn(&World) -> bool) {
        let limit = self.now + Duration::from_secs(20 * 60);
        self.run_until_at(done, limit);
    }

    /// Run for `d` of virtual time, whatever happens.
    fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        self.run_until_at(|_| false, limit);
        self.now = limit;
    }

    fn run_until_at(&mut self, done: impl Fn(&World) -> bool, limit: Duration) {
        loop {
            self.drain();
            self.maybe_connect();
            if done(self) {
                return;
            }
            let timers = self.peers.values_mut().map(|p| match p.rv.poll_output() {
                Output::Timeout(t) => t,
                other => panic!("undrained output {other:?}"),
            });
            let timer = timers.min();
            let next_wire = self.wire.iter().map(|(t, s, _)| (*t, *s)).min();
            let next = match (next_wire, timer) {
                (Some((tw, _)), Some(tt)) => tw.min(tt),
                (Some((tw, _)), None) => tw,
                (None, Some(tt)) => tt,
                (None, None) => return,
            };
            if next > limit {
                return;
            }
            self.now = self.now.max(next);
            if let Some((_, seq)) = next_wire.filter(|(t, _)| *t <= self.now) {
                let i = self.wire.iter().position(|(_, s, _)| *s == seq).unwrap();
                let (_, _, what) = self.wire.remove(i);
                self.deliver(what);
            } else {
                let now = self.now;
                for p in self.peers.values_mut() {
                    p.rv.handle_timeout(now);
                }
            }
        }
    }

    /// Run until both sides connected or failed and nothing is in flight any more.
    fn run(&mut self) {
        self.run_until(|w| w.settled() && w.wire.is_empty());
    }

    fn a(&self) -> &Peer {
        &self.peers[&Who::A]
    }

    fn b(&self) -> &Peer {
        &self.peers[&Who::B]
    }
}

fn connected(w: &World) {
    for (who, p) in &w.peers {
        assert!(
            p.rv.is_connected(),
            "{who:?} did not connect: failed {:?}, events {:?}",
            p.failed,
            p.names()
        );
    }
}

/// Faults for the sealed messages the server forwards to `to`: `fate(n)` for the n-th (from 1).
/// No description or candidate of either side was handed to the other's ICE stack.
fn nothing_reached_the_other_side(w: &World) -> bool {
    w.peers
        .values()
        .all(|p| p.remote_description.is_none() && p.remote_candidates.is_empty())
}

fn sealed_to(to: Who, fate: impl Fn(usize) -> Fate + 'static) -> Faults {
    let mut n = 0;
    Box::new(move |who, _, m| match m {
        ServerMessage::Sealed { .. } if who == to => {
            n += 1;
            fate(n)
        }
        _ => Fate::Deliver,
    })
}

/// A sender shares, a receiver joins by link.
fn share_and_receive(faults: Faults) -> World {
    let mut w = World::pair(Want::Send, Want::Receive);
    w.faults = faults;
    w.run();
    w
}

/// A drop: the knocker's room, joined by the inbox with the secret of its link; the
/// knocker shows no link or code of its own.
#[test]
fn a_knock_makes_a_room_the_inbox_joins_with_its_secret() {
    let inbox = crate::inbox::InboxLink::new(
        SERVER,
        crate::inbox::InboxId::parse("mfrggzdfmztwq2lk").unwrap(),
        &crate::invite::generate_secret(),
    );
    let mut w = World::created_with(Want::Send, Config::default());
    w.peers.get_mut(&Who::A).unwrap().rv =
        Rendezvous::knock(&inbox, Want::Send, Config::default(), T0);
    w.open_socket(Who::A);
    w.run_until(|w| w.room.creator.is_some());
    w.join(&inbox.room_link("room1234").to_string(), Want::Receive);
    w.run();
    connected(&w);
    assert_eq!(
        w.a().names(),
        ["joined", "verify"],
        "no link or code to show"
    );
    assert_eq!(
        w.a().event::<event::Verify>(),
        w.b().event::<event::Verify>()
    );
    assert_eq!(w.a().setup.as_ref().unwrap().role, TransferRole::Sender);
}

#[test]
fn sender_shares_receiver_joins_by_link() {
    let w = share_and_receive(Box::new(|_, _, _| Fate::Deliver));
    connected(&w);
    assert_eq!(w.a().names(), ["ready", "joined", "verify"]);
    assert_eq!(w.b().names(), ["joined", "verify"]);
    let (a, b) = (
        w.a().event::<event::Verify>(),
        w.b().event::<event::Verify>(),
    );
    assert_eq!(a, b, "both sides show the same words");
    assert_eq!(w.a().setup.as_ref().unwrap().role, TransferRole::Sender);
    assert_eq!(w.b().setup.as_ref().unwrap().role, TransferRole::Receiver);
    assert_eq!(w.a().setup.as_ref().unwrap().ice_servers, w.ice_servers);
    // The offer waited for the srflx candidate (40 ms), not for the relay (90 ms).
    let offer = w.b().remote_description.as_ref().unwrap();
    assert!(
        offer.contains("typ srflx") && !offer.contains("typ relay"),
        "{offer}"
    );
    // The answer went out at once, its candidates trickled.
    let answer = w.a().remote_description.as_ref().unwrap();
    assert!(!answer.contains("typ"), "{answer}");
    // Direct candidates trickled at once; relay candidates are held back (next test).
    assert_eq!(w.a().remote_candidates.len(), 2);
    // Link, code and times.
    let ready = w.a().event::<event::Ready>().unwrap();
    assert!(
        ready.link.starts_with("https://drop.example/r/room1234#"),
        "{}",
        ready.link
    );
    let code = ready.code.unwrap();
    assert!(code.starts_with("7-"), "{code}");
    let ms = w.b().rv.ms_since_room(w.now);
    assert!(ms > 0.0 && ms < 500.0, "{ms}");
    // Nothing was sealed before the hello: the hello is each side's first sealed message.
    for p in w.peers.values() {
        assert!(p.aborted().is_none());
    }
}

/// The file sender starts its connection and offer when both are in the room, so its
/// gathering overlaps the key exchange and the hellos: the offer reaches the receiver right
/// behind the sender's hello, not a hello round trip and a gathering later.
#[test]
fn the_offer_goes_out_right_behind_the_senders_hello() {
    let mut w = World::pair(Want::Send, Want::Receive);
    w.run_until(|w| w.b().remote_description.is_some());
    let joined = w.b().rv.both_in_room().expect("B is in the room");
    // Four hops for B's key exchange message and A's hello (HOP each way through the
    // server), A's srflx candidate at 40 ms (gathered meanwhile), then two more hops.
    let took = w.now - joined;
    assert!(took <= 40 * Duration::from_millis(1) + 3 * HOP, "{took:?}");
    let offer = w.b().remote_description.as_ref().unwrap();
    assert!(offer.contains("typ srflx"), "{offer}");
    // A started before it had the key, and nothing it sealed went before its hello (B
    // opened it: its words are shown).
    let a = w.a();
    assert!(
        a.created_at.unwrap() < joined + 2 * HOP,
        "{:?}",
        a.created_at
    );
    assert!(w.b().event::<event::Verify>().is_some());
    w.run();
    connected(&w);
}

#[test]
fn relay_candidates_are_held_back_on_both_sides() {
    let mut w = World::pair(Want::Send, Want::Receive);
    // A's relay candidate is gathered before its srflx one, so it would be in the offer.
    w.peers.get_mut(&Who::A).unwrap().gathers = vec![
        (
            Duration::from_millis(1),
            "candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host",
        ),
        (
            Duration::from_millis(5),
            "candidate:3 1 udp 16777215 203.0.113.9 7000 typ relay raddr 0.0.0.0 rport 0",
        ),
        (
            Duration::from_millis(40),
            "candidate:2 1 udp 1694498815 198.51.100.2 6000 typ srflx",
        ),
    ];
    w.run();
    connected(&w);
    let relayed = |cs: &[String]| cs.iter().any(|c| c.contains("typ relay"));
    let offer = w.b().remote_description.clone().unwrap();
    assert!(
        !offer.contains("typ relay") && offer.contains("typ srflx"),
        "{offer}"
    );
    assert!(!relayed(&w.b().remote_candidates) && !relayed(&w.a().remote_candidates));
    // A second after each description they follow as trickled candidates (a pair to fall
    // back on), and only then the end of candidates.
    w.run_for(Duration::from_secs(2));
    assert!(
        relayed(&w.b().remote_candidates),
        "{:?}",
        w.b().remote_candidates
    );
    assert!(
        relayed(&w.a().remote_candidates),
        "{:?}",
        w.a().remote_candidates
    );
}

#[test]
fn relay_candidates_follow_after_the_wait_when_nothing_direct_works() {
    let mut w = World::pair(Want::Send, Want::Receive);
    w.direct_fails = true;
    w.run();
    connected(&w);
    let relayed = |cs: &[String]| cs.iter().any(|c| c.contains("typ relay"));
    assert!(
        relayed(&w.b().remote_candidates),
        "{:?}",
        w.b().remote_candidates
    );
    assert!(
        relayed(&w.a().remote_candidates),
        "{:?}",
        w.a().remote_candidates
    );
    // Only after the wait: both opened a second or more after their descriptions.
    let a = w.a();
    assert!(w.now >= a.described_at.unwrap() + Config::default().relay_wait);

    // Relay-only peers hold nothing back.
    let mut w = World::pair(Want::Send, Want::Receive);
    w.direct_fails = true;
    for p in w.peers.values_mut() {
        p.rv.config.relay_wait = Duration::ZERO;
    }
    w.run();
    connected(&w);
    assert!(w.now < T0 + Duration::from_secs(1), "{:?}", w.now - T0);
}

#[test]
fn relay_candidate_lines_leave_the_sdp_and_keep_their_section() {
    let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
               a=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\n\
               a=candidate:3 1 udp 16777215 203.0.113.9 7000 typ relay raddr 198.51.100.2 rport 6000\r\n\
               a=mid:0\r\na=sctp-port:5000\r\n";
    let (kept, relays) = split_relay_candidates(sdp);
    assert!(
        !kept.contains("typ relay")
            && kept.contains("typ host")
            && kept.ends_with("a=sctp-port:5000\r\n")
    );
    assert_eq!(
        kept.len() + relays[0].candidate.len() + "a=\r\n".len(),
        sdp.len()
    );
    assert_eq!(
        relays,
        [IceCandidate {
            candidate: "candidate:3 1 udp 16777215 203.0.113.9 7000 typ relay raddr 198.51.100.2 rport 6000".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        }]
    );
}

#[test]
fn receiver_creates_the_room_sender_joins_by_code() {
    let mut w = World::with_room(Want::Receive);
    let (_, code) = link_and_code(&w);
    w.join(&code, Want::Send);
    w.run();
    connected(&w);
    assert_eq!(w.a().setup.as_ref().unwrap().role, TransferRole::Receiver);
    assert!(w.a().event::<event::Verify>() == w.b().event::<event::Verify>());
    // The creator followed the joiner's choice of password.
    assert!(w.b().sent.iter().any(|m| matches!(
        m,
        ClientMessage::Pake {
            auth: AuthKind::Code,
            ..
        }
    )));
    assert!(w.a().sent.iter().any(|m| matches!(
        m,
        ClientMessage::Pake {
            auth: AuthKind::Code,
            ..
        }
    )));
}

#[test]
fn a_link_only_share_has_no_number_and_refuses_a_code_join() {
    let mut w = World::open_room(World::link_only(Want::Send));
    let ready = w.a().event::<event::Ready>().unwrap();
    assert_eq!(ready.code, None);
    assert!(
        w.a()
            .sent
            .iter()
            .any(|m| matches!(m, ClientMessage::Create { code: false, .. }))
    );
    // Someone guessing numbers finds no room here.
    w.join("7-acid-acorn-actor", Want::Receive);
    w.run();
    assert_eq!(
        w.b().failed,
        Some(RendezvousError::Server(ErrorCode::NoSuchRoom))
    );
    assert!(w.a().failed.is_none(), "the share lives on");

    // Should a server let a code join in anyway, the creator refuses it: it showed none.
    let mut w = World::open_room(World::link_only(Want::Send));
    w.room.number = Some(7);
    w.join("7-acid-acorn-actor", Want::Receive);
    w.run();
    assert_eq!(
        w.a().failed,
        Some(RendezvousError::Unexpected(
            Party::Peer,
            "a typed code, but this share shows none"
        ))
    );
    assert!(nothing_reached_the_other_side(&w));
}

#[test]
fn a_code_asked_for_while_waiting_joins() {
    let mut w = World::open_room(World::link_only(Want::Send));
    assert_eq!(w.a().event::<event::Ready>().unwrap().code, None);
    let now = w.now;
    w.peers.get_mut(&Who::A).unwrap().rv.show_code(now);
    w.run_until(|w| w.a().event::<event::Code>().is_some());
    let code = w.a().event::<event::Code>().unwrap().code;
    assert!(code.starts_with("7-"), "{code}");
    w.join(&code, Want::Receive);
    w.run();
    connected(&w);
    // Asking again, or once the peer is in, sends nothing more.
    let asked = |w: &World| {
        w.a()
            .sent
            .iter()
            .filter(|m| matches!(m, ClientMessage::ShowCode))
            .count()
    };
    assert_eq!(asked(&w), 1);
    let now = w.now;
    w.peers.get_mut(&Who::A).unwrap().rv.show_code(now);
    w.run();
    assert_eq!(asked(&w), 1);
}

#[test]
fn a_page_on_a_link_takes_the_other_side() {
    // The creator sends: the page receives without being asked.
    let mut w = World::pair(Want::Send, Want::Opposite);
    w.run();
    connected(&w);
    assert_eq!(w.b().setup.as_ref().unwrap().role, TransferRole::Receiver);
    assert!(!w.b().names().contains(&"pick"));

    // The creator receives (the NAS case): the page asks its person for files, and nothing
    // is negotiated until they are picked.
    let mut w = World::pair(Want::Receive, Want::Opposite);
    w.run_until(|w| w.b().names().contains(&"pick"));
    w.run_for(Duration::from_secs(300));
    assert!(
        w.peers
            .values()
            .all(|p| p.setup.is_none() && p.failed.is_none())
    );
    let now = w.now;
    w.peers.get_mut(&Who::B).unwrap().rv.files_picked(now);
    w.run();
    connected(&w);
    assert_eq!(w.b().setup.as_ref().unwrap().role, TransferRole::Sender);
    assert_eq!(w.b().names(), ["joined", "verify", "pick"]);
}

#[test]
fn a_description_while_picking_files_is_out_of_turn() {
    // Found by the `peer_signal` fuzz target (fuzz/regressions/peer_signal/): a page on a
    // link, told by the other peer that it receives, waits for its person to pick files; a
    // description then arrived before this side had a role, and the machine panicked.
    let link = ShareLink::new(SERVER, "room1234", "AAECAwQFBgcICQoLDA0ODw");
    let inv = Invitation::Link(link.clone());
    let mut rv = Rendezvous::join(&inv, SERVER, Want::Opposite, Config::default(), T0);
    rv.server_open(T0);
    rv.handle_server(
        ServerMessage::Joined {
            room: "room1234".into(),
            reclaim: None,
        },
        T0,
    );
    let drain = |rv: &mut Rendezvous| -> Vec<Output> {
        std::iter::from_fn(|| match rv.poll_output() {
            Output::Timeout(_) => None,
            o => Some(o),
        })
        .collect()
    };
    let theirs = drain(&mut rv)
        .into_iter()
        .find_map(|o| match o {
            Output::ToServer(ClientMessage::Pake { msg, .. }) => Some(msg),
            _ => None,
        })
        .expect("the joiner's key exchange message");
    let (hs, msg) = Handshake::start_b64(&link.password(), "room1234", RoomRole::Creator);
    let mut peer = hs.finish_b64(&theirs).unwrap();
    rv.handle_server(
        ServerMessage::Pake {
            auth: AuthKind::Link,
            msg,
        },
        T0,
    );
    let hello = format!(r#"{{"type":"hello","version":{SIGNAL_VERSION},"role":"receiver"}}"#);
    let sealed: [&[u8]; 2] = [
        hello.as_bytes(),
        b"{\"type\":\"description\",\"kind\":\"answer\",\"sdp\":\"v=0\"}",
    ];
    for plain in sealed {
        let data = peer.seal_b64(plain);
        rv.handle_server(ServerMessage::Sealed { data }, T0);
    }
    let outputs = drain(&mut rv);
    assert!(outputs.contains(&Output::Event(Event::Pick)), "{outputs:?}");
    assert!(outputs.contains(&Output::ToServer(ClientMessage::Abort {
        reason: AbortReason::Failed
    })));
    assert_eq!(
        outputs.last(),
        Some(&Output::Failed(RendezvousError::Unexpected(
            Party::Peer,
            "a description out of turn"
        )))
    );
}

#[test]
fn a_person_who_never_picks_is_given_up_on_by_the_other_side() {
    let mut w = World::pair(Want::Receive, Want::Opposite);
    w.run();
    assert_eq!(
        w.a().failed,
        Some(RendezvousError::NoHello(Config::default().hello_wait))
    );
    assert_eq!(w.a().aborted(), Some(AbortReason::Failed));
    assert_eq!(w.b().failed, Some(RendezvousError::PeerGaveUp));
}

#[test]
fn wrong_code_fails_on_both_sides_with_the_same_words() {
    let mut w = World::with_room(Want::Send);
    let (_, code) = link_and_code(&w);
    let mut parts: Vec<&str> = code.split('-').collect();
    parts[1] = if parts[1] == "acid" { "acorn" } else { "acid" };
    w.join(&parts.join("-"), Want::Receive);
    w.run();
    for p in w.peers.values() {
        assert_eq!(p.failed, Some(RendezvousError::WrongSecret));
        assert!(p.event::<event::Verify>().is_none());
        assert!(p.error().contains("wrong code or link"));
    }
    // Both started their connections early (`Rendezvous::start_early`); nothing of them
    // reached the other side.
    assert!(nothing_reached_the_other_side(&w));
    // Whoever noticed first told the room, so the other side learnt it without a timeout.
    assert!(w.now < T0 + Duration::from_secs(1));
    assert!(
        w.peers
            .values()
            .any(|p| p.aborted() == Some(AbortReason::WrongSecret))
    );
}

#[test]
fn both_want_to_send() {
    let mut w = World::pair(Want::Send, Want::Send);
    w.run();
    for p in w.peers.values() {
        let e = p.failed.clone().expect("failed");
        assert!(
            e == RendezvousError::SameRole(TransferRole::Sender)
                || e == RendezvousError::PeerGaveUp,
            "{e:?}"
        );
    }
    assert!(nothing_reached_the_other_side(&w));
    assert!(
        w.peers
            .values()
            .any(|p| p.failed == Some(RendezvousError::SameRole(TransferRole::Sender)))
    );
    assert!(w.a().error().contains("also sending"));
}

#[test]
fn joiner_leaving_mid_pake() {
    let mut w = World::pair(Want::Send, Want::Receive);
    // The creator never gets B's key exchange message; B's socket then closes.
    w.faults = Box::new(|to, _, m| match (to, m) {
        (Who::A, ServerMessage::Pake { .. }) => Fate::Drop,
        _ => Fate::Deliver,
    });
    w.run_until(|w| w.b().rv.stage == Stage::AwaitPake);
    w.peers.remove(&Who::B);
    w.schedule(HOP, Wire::Closed(Who::B));
    w.run();
    assert_eq!(w.a().failed, Some(RendezvousError::PeerLeft));
    assert_eq!(w.a().names(), ["ready", "joined"]);
}

#[test]
fn creator_leaving_mid_pake() {
    let mut w = World::pair(Want::Send, Want::Receive);
    // B's PAKE reaches A; A's answer (and its hello after it) are lost, then A goes away.
    w.faults = Box::new(|to, _, m| match (to, m) {
        (Who::B, ServerMessage::Pake { .. } | ServerMessage::Sealed { .. }) => Fate::Drop,
        _ => Fate::Deliver,
    });
    w.run_until(|w| w.a().rv.stage == Stage::Hello);
    w.peers.remove(&Who::A);
    w.schedule(HOP, Wire::Closed(Who::A));
    w.run();
    assert_eq!(w.b().failed, Some(RendezvousError::PeerLeft));
}

#[test]
fn lost_key_exchange_answer_shows_at_the_next_message() {
    // The creator's PAKE message is lost; its sealed hello right behind it is then a sealed
    // message before any key: the server lost something, said at once.
    let w = share_and_receive(Box::new(|to, _, m| match (to, m) {
        (Who::B, ServerMessage::Pake { .. }) => Fate::Drop,
        _ => Fate::Deliver,
    }));
    assert_eq!(
        w.b().failed,
        Some(RendezvousError::Unexpected(
            Party::Server,
            "a sealed message before the key exchange"
        ))
    );
    assert_eq!(w.b().aborted(), Some(AbortReason::Failed));
    assert_eq!(w.a().failed, Some(RendezvousError::PeerGaveUp));
    assert!(w.now < T0 + Duration::from_secs(1));
}

#[test]
fn silent_creator_times_out_and_tells_the_room() {
    let w = share_and_receive(Box::new(|to, _, m| match (to, m) {
        (Who::B, ServerMessage::Pake { .. } | ServerMessage::Sealed { .. }) => Fate::Drop,
        _ => Fate::Deliver,
    }));
    assert_eq!(w.b().failed, Some(RendezvousError::PeerSilent));
    assert_eq!(w.b().aborted(), Some(AbortReason::Failed));
    // A learns from the room, long before its own 10-minute hello wait.
    assert_eq!(w.a().failed, Some(RendezvousError::PeerGaveUp));
    assert!(w.now < T0 + Config::default().peer_answer + Duration::from_secs(1));
}

#[test]
fn lost_hello_ends_in_seconds_not_minutes() {
    // B's hello to A is lost (the first sealed message the server sends to A).
    let w = share_and_receive(sealed_to(Who::A, |n| {
        if n == 1 { Fate::Drop } else { Fate::Deliver }
    }));
    // B had A's hello and offer and answered; A, still waiting for B's hello, opens B's
    // answer in its place: the key is right and the hello is missing, which A says (not
    // "wrong secret") and tells the room; B learns it from there.
    assert_eq!(
        w.a().failed,
        Some(RendezvousError::Crypto(CryptoError::FirstLost))
    );
    assert_eq!(w.a().aborted(), Some(AbortReason::Failed));
    assert_eq!(w.b().failed, Some(RendezvousError::PeerGaveUp));
    assert!(
        w.a().error().contains("lost on the way"),
        "{}",
        w.a().error()
    );
    assert!(w.now < T0 + Duration::from_secs(1));
}

#[test]
fn lost_description_times_out_with_the_likely_cause() {
    // A's offer (its second sealed message, after the hello) and all after it never reach
    // B. (Dropping the offer alone shows at the next message: see the tampering test.)
    let w = share_and_receive(sealed_to(Who::B, |n| {
        if n >= 2 { Fate::Drop } else { Fate::Deliver }
    }));
    let timed_out: Vec<String> = w
        .peers
        .values()
        .filter_map(|p| match p.failed.clone().unwrap() {
            e @ RendezvousError::ConnectTimeout {
                relay_offered: true,
                ..
            } => Some(e.to_string()),
            RendezvousError::PeerGaveUp => None,
            e => panic!("{e:?}"),
        })
        .collect();
    // B negotiated first (it had A's hello first), so its deadline came first.
    assert!(!timed_out.is_empty());
    let msg = &timed_out[0];
    assert!(
        msg.contains("within 30 s") && msg.contains("firewall"),
        "{msg}"
    );
}

#[test]
fn server_that_never_opens_or_never_answers() {
    // The socket never opens.
    let mut w = World::new(Want::Send);
    w.peers.get_mut(&Who::A).unwrap().connects = false;
    w.run();
    assert_eq!(
        w.a().failed,
        Some(RendezvousError::Unreachable(SERVER.into()))
    );
    assert_eq!(w.now, T0 + Config::default().server_answer);

    // It opens, and `created` is lost.
    let mut w = World::new(Want::Send);
    w.faults = Box::new(|_, _, m| match m {
        ServerMessage::Created { .. } => Fate::Drop,
        _ => Fate::Deliver,
    });
    w.open_socket(Who::A);
    w.run();
    assert_eq!(
        w.a().failed,
        Some(RendezvousError::ServerSilent(SERVER.into()))
    );

    // The socket closes before it ever opened: unreachable at once.
    let mut w = World::new(Want::Send);
    w.peers.get_mut(&Who::A).unwrap().connects = false;
    w.schedule(Duration::from_millis(3), Wire::ServerGone(Who::A));
    w.run();
    assert_eq!(w.now, T0 + Duration::from_millis(3));
    assert!(w.a().error() == "cannot reach the signalling server at https://drop.example");
}

#[test]
fn server_errors_are_explained() {
    let mut w = World::with_room(Want::Send);
    w.join(
        "https://drop.example/r/nosuchroom#AAAAAAAAAAAAAAAAAAAAAA",
        Want::Receive,
    );
    w.run_until(|w| w.b().failed.is_some());
    assert_eq!(
        w.b().failed,
        Some(RendezvousError::Server(ErrorCode::NoSuchRoom))
    );
    assert!(w.b().aborted().is_none(), "not in a room: nothing to abort");
    assert!(w.b().error().starts_with("server: no such room"));
}

#[test]
fn server_lost_before_connecting_is_fatal_after_is_not() {
    let mut w = World::pair(Want::Send, Want::Receive);
    w.run_until(|w| w.b().event::<event::Verify>().is_some());
    w.schedule(Duration::ZERO, Wire::ServerGone(Who::B));
    w.run_until(|w| w.b().failed.is_some());
    assert_eq!(w.b().failed, Some(RendezvousError::ServerLost));

    let mut w = share_and_receive(Box::new(|_, _, _| Fate::Deliver));
    connected(&w);
    for who in [Who::A, Who::B] {
        w.schedule(Duration::ZERO, Wire::ServerGone(who));
    }
    w.schedule(HOP, Wire::Closed(Who::A));
    w.run_until(|w| w.wire.is_empty());
    connected(&w);
    assert!(w.peers.values().all(|p| p.failed.is_none()));
}

#[test]
fn repeated_server_messages_change_nothing() {
    let w = share_and_receive(Box::new(|_, _, m| match m {
        ServerMessage::Sealed { .. } => Fate::Deliver,
        _ => Fate::Duplicate,
    }));
    connected(&w);
    assert_eq!(w.a().names(), ["ready", "joined", "verify"]);
}

#[test]
fn lost_peer_joined_is_no_loss() {
    let w = share_and_receive(Box::new(|_, _, m| match m {
        ServerMessage::PeerJoined | ServerMessage::IceServers { .. } => Fate::Drop,
        _ => Fate::Deliver,
    }));
    connected(&w);
    assert_eq!(w.a().names(), ["ready", "joined", "verify"]);
    // B never had ICE servers (A had its own before the faults began): it goes without.
    assert!(w.b().setup.as_ref().unwrap().ice_servers.is_empty());
}

#[test]
fn a_replayed_or_reordered_sealed_message_is_tampering() {
    // Duplicate the second sealed message to B (the offer): the copy fails to open; or hold
    // it back behind A's first trickled candidate.
    // (Held back longer than the relay wait: behind A's relay candidates.)
    for fate in [Fate::Duplicate, Fate::Delay(Duration::from_millis(1500))] {
        let w = share_and_receive(sealed_to(
            Who::B,
            move |n| {
                if n == 2 { fate } else { Fate::Deliver }
            },
        ));
        assert_eq!(
            w.b().failed,
            Some(RendezvousError::Crypto(CryptoError::Tampered)),
            "{fate:?}"
        );
        assert_eq!(w.b().aborted(), Some(AbortReason::Failed));
        assert_eq!(w.a().failed, Some(RendezvousError::PeerGaveUp));
    }
}

#[test]
fn a_late_joined_only_delays() {
    let mut w = World::pair(Want::Send, Want::Receive);
    w.faults = Box::new(|to, _, m| match (to, m) {
        (Who::B, ServerMessage::Joined { .. }) => Fate::Delay(Duration::from_millis(200)),
        _ => Fate::Deliver,
    });
    w.run();
    connected(&w);
}

#[test]
fn key_exchange_before_joined_is_refused() {
    // A server that forwards a key exchange message before saying the peer joined the room
    // (a joiner cannot start its PAKE without the room id a code does not carry).
    let inv = Invitation::parse("7-acid-acorn-actor").unwrap();
    let mut rv = Rendezvous::join(&inv, SERVER, Want::Receive, Config::default(), T0);
    rv.server_open(T0);
    assert!(matches!(
        rv.poll_output(),
        Output::ToServer(ClientMessage::Join { .. })
    ));
    rv.handle_server(
        ServerMessage::Pake {
            auth: AuthKind::Code,
            msg: "QUJD".into(),
        },
        T0,
    );
    assert_eq!(
        rv.poll_output(),
        Output::Failed(RendezvousError::Unexpected(
            Party::Server,
            "a key exchange message before joining"
        ))
    );
}

#[test]
fn offer_goes_out_after_the_gather_wait_without_a_srflx_candidate() {
    let mut w = World::pair(Want::Send, Want::Receive);
    // A has a host candidate only and gathering never says it is done.
    let a = w.peers.get_mut(&Who::A).unwrap();
    a.gathers.truncate(1);
    a.gathering_done_after = None;
    w.run();
    connected(&w);
    let a = w.a();
    assert_eq!(
        a.described_at.unwrap() - a.created_at.unwrap(),
        Config::default().gather_wait
    );
    assert!(
        w.b()
            .remote_description
            .as_ref()
            .unwrap()
            .contains("typ host")
    );

    // With gathering complete quickly, it goes at once.
    let mut w = World::pair(Want::Send, Want::Receive);
    let a = w.peers.get_mut(&Who::A).unwrap();
    a.gathers.truncate(1);
    a.gathering_done_after = Some(Duration::from_millis(2));
    w.run();
    connected(&w);
    let a = w.a();
    assert_eq!(
        a.described_at.unwrap() - a.created_at.unwrap(),
        Duration::from_millis(1)
    );
    assert!(
        w.b()
            .remote_description
            .as_ref()
            .unwrap()
            .contains("typ host")
    );
}

#[test]
fn remote_candidates_wait_for_the_remote_description() {
    // A advertises a mapped port before the hellos are through: it is held, sent once
    // negotiating, and B keeps it until A's offer is applied (the stand-in ICE stack fails
    // the test on any candidate before the description).
    let mut w = World::pair(Want::Send, Want::Receive);
    let now = w.now;
    let mapped = IceCandidate {
        candidate: "candidate:4000000001 1 udp 1 198.51.100.7 4000 typ srflx raddr 0.0.0.0 rport 0"
            .into(),
        sdp_mid: Some(String::new()),
        sdp_mline_index: Some(0),
    };
    w.peers
        .get_mut(&Who::A)
        .unwrap()
        .rv
        .advertise(mapped.clone(), now);
    w.run();
    connected(&w);
    assert!(w.b().remote_candidates.contains(&mapped.candidate));
    // The hello was A's first sealed message (B opened it, so it was).
    assert!(w.b().event::<event::Verify>().is_some());
}

#[test]
fn cancelling_tells_the_other_side() {
    let mut w = World::pair(Want::Send, Want::Receive);
    w.run_until(|w| w.b().event::<event::Verify>().is_some());
    let now = w.now;
    w.peers.get_mut(&Who::B).unwrap().rv.cancel(now);
    w.run();
    assert_eq!(w.b().failed, Some(RendezvousError::Cancelled));
    assert_eq!(w.b().aborted(), Some(AbortReason::Cancelled));
    assert_eq!(w.a().failed, Some(RendezvousError::PeerGaveUp));
}

#[test]
fn ice_failure_and_local_errors_end_the_room() {
    let mut w = World::pair(Want::Send, Want::Receive);
    w.run_until(|w| w.b().remote_description.is_some());
    let now = w.now;
    w.peers.get_mut(&Who::B).unwrap().rv.connection_failed(now);
    w.run();
    assert_eq!(
        w.b().failed,
        Some(RendezvousError::NoPath {
            relay_offered: true
        })
    );
    assert_eq!(w.a().failed, Some(RendezvousError::PeerGaveUp));

    let mut w = World::pair(Want::Send, Want::Receive);
    w.run_until(|w| w.a().setup.is_some());
    let now = w.now;
    w.peers
        .get_mut(&Who::A)
        .unwrap()
        .rv
        .local_error("cannot create an offer: boom", now);
    w.run();
    assert_eq!(
        w.a().failed,
        Some(RendezvousError::Local(
            "cannot create an offer: boom".into()
        ))
    );
    assert_eq!(w.b().failed, Some(RendezvousError::PeerGaveUp));
}

#[test]
fn unreadable_server_text_is_an_error_not_a_hang() {
    let mut rv = Rendezvous::create(SERVER, Want::Send, Config::default(), T0);
    rv.server_open(T0);
    assert!(matches!(
        rv.poll_output(),
        Output::ToServer(ClientMessage::Create { .. })
    ));
    rv.handle_server_text("{not json", T0);
    assert_eq!(
        rv.poll_output(),
        Output::Failed(RendezvousError::Unreadable)
    );
    assert!(matches!(rv.poll_output(), Output::Timeout(_)));
}

#[test]
fn timeouts_point_at_the_next_deadline() {
    let mut rv = Rendezvous::create(SERVER, Want::Send, Config::default(), T0);
    assert_eq!(
        rv.poll_output(),
        Output::Timeout(T0 + Config::default().server_answer)
    );
    rv.handle_timeout(T0 + Duration::from_secs(1));
    assert_eq!(
        rv.poll_output(),
        Output::Timeout(T0 + Config::default().server_answer)
    );
}

// ── a creator holding its room for the joiner to come back ────────────────────────────────

const REJOIN_WAIT: Duration = Duration::from_secs(300);

/// A sends and holds its link-only room; B receives on the link; both connected.
fn held_and_connected() -> (World, String) {
    let config = Config {
        rejoin_wait: Some(REJOIN_WAIT),
        ..Config::default()
    };
    let mut w = World::open_room(World::created_with(Want::Send, config));
    let link = w.a().event::<event::Ready>().unwrap().link;
    w.join(&link, Want::Receive);
    w.run();
    connected(&w);
    (w, link)
}

fn reconnecting(p: &Peer) -> Vec<ReconnectReason> {
    p.events
        .iter()
        .filter_map(|e| event::Reconnecting::of(e).map(|r| r.reason))
        .collect()
}

#[test]
fn a_holding_creator_waits_for_a_restarted_joiner_and_connects_again() {
    let (mut w, link) = held_and_connected();
    assert!(
        w.a()
            .sent
            .iter()
            .any(|m| matches!(m, ClientMessage::Create { hold: true, .. }))
    );
    let first_words = w.a().event::<event::Verify>().unwrap();
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert!(
        w.a().rv.is_connected(),
        "the server's word alone ends nothing"
    );
    assert!(w.a_loses_link(), "a holding creator waits");
    assert_eq!(reconnecting(w.a()), [ReconnectReason::PeerLeft]);
    // Minutes later the receiver runs the same link again: a fresh key exchange, hello and
    // connection, all through the same room.
    w.run_for(Duration::from_secs(120));
    assert!(w.a().failed.is_none());
    w.join(&link, Want::Receive);
    w.run();
    connected(&w);
    assert_eq!(
        w.a().names(),
        [
            "ready",
            "joined",
            "verify",
            "reconnecting",
            "joined",
            "verify"
        ]
    );
    assert_ne!(
        w.a().events.last(),
        Some(&Event::from(first_words)),
        "a new key, new words"
    );
    assert_eq!(w.a().setup.as_ref().unwrap().role, TransferRole::Sender);
    assert_eq!(w.b().setup.as_ref().unwrap().role, TransferRole::Receiver);
    // A loss after the reconnection waits again, for a full wait.
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert!(w.a_loses_link());
    w.run_for(REJOIN_WAIT - Duration::from_secs(1));
    assert!(w.a().failed.is_none());
}

/// A joiner that goes before the key exchange is through takes the connection the file
/// sender started early for it (`Rendezvous::start_early`); the next joiner gets a new one.
#[test]
fn a_joiner_gone_mid_key_exchange_takes_the_early_connection_with_it() {
    let config = Config {
        rejoin_wait: Some(REJOIN_WAIT),
        ..Config::default()
    };
    let mut w = World::open_room(World::created_with(Want::Send, config));
    let link = w.a().event::<event::Ready>().unwrap().link;
    // B's key exchange message never reaches A; B's program then dies.
    w.faults = Box::new(|to, _, m| match (to, m) {
        (Who::A, ServerMessage::Pake { .. }) => Fate::Drop,
        _ => Fate::Deliver,
    });
    w.join(&link, Want::Receive);
    w.run_until(|w| w.a().setup.is_some() && w.a().created_at.is_some());
    assert_eq!(w.a().rv.stage, Stage::AwaitPeer, "started before the key");
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert_eq!(
        w.a().closed,
        1,
        "the half-made connection went with the joiner"
    );
    assert!(w.a().setup.is_none() && w.a().failed.is_none());
    w.faults = Box::new(|_, _, _| Fate::Deliver);
    w.join(&link, Want::Receive);
    w.run();
    connected(&w);
    assert_eq!(w.a().names(), ["ready", "joined", "joined", "verify"]);
}

/// A holding creator waiting for its joiner back: the joiner's hello lost on the way is a
/// setback like a wrong secret, not the end of the room.
#[test]
fn a_rejoiners_lost_hello_keeps_the_room() {
    let (mut w, link) = held_and_connected();
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert!(w.a_loses_link());
    let sealed_before = w.sent_to.get(&Who::A).copied().unwrap_or(0);
    let mut n = 0;
    w.faults = Box::new(move |to, i, m| match (to, m) {
        (Who::A, ServerMessage::Sealed { .. }) if i >= sealed_before => {
            n += 1;
            if n == 1 { Fate::Drop } else { Fate::Deliver }
        }
        _ => Fate::Deliver,
    });
    w.join(&link, Want::Receive);
    w.run_for(Duration::from_secs(5));
    assert!(w.a().failed.is_none(), "{:?}", w.a().failed);
    assert!(w.a().aborted().is_none(), "the room lives on");
}

/// The early offer may be read before the key is agreed; the relay candidates still follow
/// the offer by the wait from when it goes out, not in one burst behind it.
#[test]
fn relay_candidates_wait_from_when_the_early_offer_goes_out() {
    let mut w = World::pair(Want::Send, Want::Receive);
    // B's key exchange message reaches A 3 s late (longer than the relay wait).
    w.faults = Box::new(|to, _, m| match (to, m) {
        (Who::A, ServerMessage::Pake { .. }) => Fate::Delay(Duration::from_secs(3)),
        _ => Fate::Deliver,
    });
    w.run_until(|w| w.b().remote_description.is_some());
    let offered = w.now;
    let relayed = |w: &World| {
        w.b()
            .remote_candidates
            .iter()
            .any(|c| c.contains("typ relay"))
    };
    assert!(!relayed(&w));
    w.run_until(relayed);
    assert!(
        w.now >= offered + Config::default().relay_wait - HOP,
        "{:?} after the offer",
        w.now - offered
    );
}

#[test]
fn a_room_the_server_ended_during_the_transfer_is_not_waited_in() {
    let ended = [
        ServerMessage::PeerAborted {
            reason: AbortReason::Cancelled,
        },
        ServerMessage::Error {
            code: ErrorCode::Expired,
            message: "held no more".into(),
        },
    ];
    for msg in ended {
        let (mut w, _) = held_and_connected();
        w.schedule(HOP, Wire::ToPeer(Who::A, msg.clone()));
        w.run_for(Duration::from_secs(1));
        assert!(w.a().rv.is_connected(), "the transfer goes on: {msg:?}");
        assert!(
            !w.a_loses_link(),
            "nobody can come back into an ended room: {msg:?}"
        );
        assert!(reconnecting(w.a()).is_empty(), "{msg:?}");
    }
}

#[test]
fn a_joiner_back_before_the_loss_is_noticed_replaces_the_old_connection() {
    let (mut w, link) = held_and_connected();
    w.kill_b();
    w.run_for(Duration::from_millis(50));
    w.join(&link, Want::Receive);
    // A still believes in its old connection when the new joiner arrives: it drops it.
    w.run_until(|w| w.a().closed == 1);
    assert_eq!(reconnecting(w.a()), [ReconnectReason::PeerLeft]);
    // The driver's transfer then fails on the dead connection; the machine is already on it.
    let now = w.now;
    assert!(w.peers.get_mut(&Who::A).unwrap().rv.link_lost(now));
    w.run();
    connected(&w);
    assert_eq!(reconnecting(w.a()).len(), 1, "one loss, said once");
}

#[test]
fn no_return_within_the_wait_fails_plainly_and_ends_the_room() {
    let (mut w, _) = held_and_connected();
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert!(w.a_loses_link());
    assert_eq!(reconnecting(w.a()), [ReconnectReason::PeerLeft]);
    w.run();
    assert_eq!(w.a().failed, Some(RendezvousError::NoRejoin(REJOIN_WAIT)));
    assert_eq!(w.a().aborted(), Some(AbortReason::Failed));
    assert!(
        w.a().error().contains("did not come back within 300 s"),
        "{}",
        w.a().error()
    );
}

#[test]
fn a_link_lost_while_the_joiner_is_still_in_the_room_says_so() {
    let (mut w, _) = held_and_connected();
    // The connection dies but B's program lives on (its own driver sees the same).
    assert!(w.a_loses_link());
    assert_eq!(reconnecting(w.a()), [ReconnectReason::LinkLost]);
    let now = w.now;
    assert!(
        !w.peers.get_mut(&Who::B).unwrap().rv.link_lost(now),
        "a joiner has no room to hold"
    );
}

#[test]
fn a_rejoiner_that_goes_again_mid_setup_keeps_the_first_deadline() {
    let (mut w, link) = held_and_connected();
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert!(w.a_loses_link());
    let lost_at = w.now;
    w.run_for(Duration::from_secs(60));
    w.join(&link, Want::Receive);
    w.run_until(|w| w.a().setup.is_some());
    w.kill_b();
    w.run_until(|w| w.a().closed == 2);
    assert!(w.a().failed.is_none(), "still waiting");
    w.run();
    assert_eq!(w.a().failed, Some(RendezvousError::NoRejoin(REJOIN_WAIT)));
    assert!(
        w.now < lost_at + REJOIN_WAIT + Duration::from_secs(1),
        "{:?}",
        w.now - lost_at
    );
}

#[test]
fn without_holding_a_lost_link_ends_the_transfer() {
    let mut w = World::pair(Want::Send, Want::Receive);
    w.run();
    connected(&w);
    assert!(
        w.a()
            .sent
            .iter()
            .any(|m| matches!(m, ClientMessage::Create { hold: false, .. }))
    );
    assert!(!w.a_loses_link());
    assert!(reconnecting(w.a()).is_empty());
}

// ── a joiner that joins again by itself ───────────────────────────────────────────────────

#[test]
fn a_joiner_whose_connection_died_joins_again_and_both_connect() {
    let (mut w, link) = held_and_connected();
    // Both drivers see the connection fail: A waits in its room, B joins it again.
    assert!(w.a_loses_link());
    w.b_rejoins(&link);
    w.run();
    connected(&w);
    assert_eq!(w.b().names(), ["reconnecting", "joined", "verify"]);
    assert_eq!(reconnecting(w.b()), [ReconnectReason::LinkLost]);
    assert_eq!(reconnecting(w.a()), [ReconnectReason::LinkLost]);
    assert!(w.b().aborted().is_none() && w.a().aborted().is_none());
}

#[test]
fn a_rejoining_joiner_tries_again_while_the_server_is_out_of_reach() {
    let (mut w, link) = held_and_connected();
    assert!(w.a_loses_link());
    w.peers.get_mut(&Who::B).unwrap().connects = false;
    w.b_rejoins(&link);
    w.run_for(Duration::from_secs(40));
    assert!(w.b().failed.is_none() && w.a().failed.is_none());
    // Its attempts back off but keep coming: the network returning is noticed in seconds.
    let back = w.now;
    w.peers.get_mut(&Who::B).unwrap().connects = true;
    w.run();
    connected(&w);
    assert!(
        w.now - back < RETRY_MAX + Duration::from_secs(1),
        "{:?}",
        w.now - back
    );
}

#[test]
fn a_rejoining_joiner_that_never_gets_through_says_so_in_time() {
    let (mut w, link) = held_and_connected();
    assert!(w.a_loses_link());
    w.peers.get_mut(&Who::B).unwrap().connects = false;
    let lost_at = w.now;
    w.b_rejoins(&link);
    w.run_until(|w| w.b().failed.is_some());
    assert_eq!(w.b().failed, Some(RendezvousError::NoReturn(REJOIN_WAIT)));
    assert!(w.now - lost_at <= REJOIN_WAIT + Duration::from_secs(1));
    assert!(
        w.b()
            .error()
            .contains("could not reach the other peer again within 300 s"),
        "{}",
        w.b().error()
    );
}

#[test]
fn a_rejoining_joiner_waits_for_a_creator_that_is_away_then_says_so() {
    let (mut w, link) = held_and_connected();
    // The creator's program ended without a word: the server keeps its place (it cannot
    // tell a crash from a network gone away), and the joiner keeps trying in its wait.
    w.peers.remove(&Who::A);
    w.schedule(HOP, Wire::Closed(Who::A));
    w.run_for(Duration::from_secs(1));
    let t = w.now;
    w.b_rejoins(&link);
    w.run_until(|w| w.b().failed.is_some());
    assert_eq!(w.b().failed, Some(RendezvousError::NoReturn(REJOIN_WAIT)));
    assert!(w.now - t <= REJOIN_WAIT + Duration::from_secs(1));
    assert!(w.b().error().contains("lost"), "{}", w.b().error());
}

#[test]
fn a_rejoining_joiner_stops_at_once_when_the_room_is_gone() {
    let (mut w, link) = held_and_connected();
    // The creator gave up: the room went with it.
    w.peers.remove(&Who::A);
    w.schedule(
        HOP,
        Wire::ToServer(
            Who::A,
            ClientMessage::Abort {
                reason: AbortReason::Cancelled,
            },
        ),
    );
    w.run_for(Duration::from_secs(1));
    let t = w.now;
    w.b_rejoins(&link);
    w.run_until(|w| w.b().failed.is_some());
    assert_eq!(
        w.b().failed,
        Some(RendezvousError::Server(ErrorCode::NoSuchRoom))
    );
    assert!(w.now - t < Duration::from_secs(1));
}

/// The creator's program died (its socket closed, and it did not come back): the server
/// says so to the joiner coming back, which stops at once rather than waiting its timeout.
#[test]
fn a_rejoining_joiner_stops_at_once_when_the_creator_stopped() {
    let (mut w, link) = held_and_connected();
    w.peers.remove(&Who::A);
    w.schedule(HOP, Wire::Closed(Who::A));
    w.run_for(Duration::from_secs(1));
    w.room.creator_stopped = true;
    let t = w.now;
    w.b_rejoins(&link);
    w.run_until(|w| w.b().failed.is_some());
    assert_eq!(
        w.b().failed,
        Some(RendezvousError::Server(ErrorCode::PeerGone))
    );
    assert!(w.now - t < Duration::from_secs(1));
}

#[test]
fn a_rejoin_whose_new_connection_fails_is_tried_again_not_ended() {
    let (mut w, link) = held_and_connected();
    assert!(w.a_loses_link());
    // The path between the peers is still down: ICE finds nothing the first time.
    w.direct_fails = true;
    w.b_rejoins(&link);
    for p in w.peers.values_mut() {
        p.gathers.retain(|(_, line)| !line.contains("typ relay"));
    }
    w.run_for(Duration::from_secs(45));
    assert!(w.a().failed.is_none(), "{:?}", w.a().failed);
    assert!(w.b().failed.is_none(), "{:?}", w.b().failed);
    assert!(w.a().aborted().is_none() && w.b().aborted().is_none());
    assert!(
        w.a().closed >= 2,
        "A dropped the failed attempt's connection: {} {:?} {:?} {:?}",
        w.a().closed,
        w.a().names(),
        w.a().rv.stage,
        w.b().rv.stage
    );
    // The path is back: the next attempt connects.
    w.direct_fails = false;
    w.run();
    connected(&w);
}

#[test]
fn a_joiner_that_typed_a_code_comes_back_by_the_room_id() {
    let config = Config {
        rejoin_wait: Some(REJOIN_WAIT),
        ..Config::default()
    };
    let mut w = World::created_with(Want::Send, config);
    w.peers.get_mut(&Who::A).unwrap().rv.show_code(T0);
    let mut w = World::open_room(w);
    let (_, code) = link_and_code(&w);
    w.join(&code, Want::Receive);
    w.run();
    connected(&w);
    assert!(w.a_loses_link());
    w.b_rejoins(&code);
    w.run();
    connected(&w);
    let joins: Vec<&RoomRef> = w
        .b()
        .sent
        .iter()
        .filter_map(|m| match m {
            ClientMessage::Join { room, .. } => Some(room),
            _ => None,
        })
        .collect();
    // (The creator taking its place back meanwhile may turn the first try away.)
    assert!(!joins.is_empty());
    assert!(
        joins.iter().all(|r| **r == RoomRef::Id("room1234".into())),
        "{joins:?}"
    );
}

#[test]
fn a_holding_creator_shrugs_off_what_its_last_joiner_left_behind() {
    let (mut w, _) = held_and_connected();
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert!(w.a_loses_link());
    let now = w.now;
    let a = &mut w.peers.get_mut(&Who::A).unwrap().rv;
    // A message of its own that crossed the joiner leaving, and a stale candidate.
    a.handle_server(
        ServerMessage::Error {
            code: ErrorCode::NoPeer,
            message: ErrorCode::NoPeer.explain().into(),
        },
        now,
    );
    a.handle_server(
        ServerMessage::Sealed {
            data: "c3RhbGU=".into(),
        },
        now,
    );
    w.run_for(Duration::from_secs(1));
    assert!(w.a().failed.is_none(), "{:?}", w.a().failed);
    assert!(w.a().aborted().is_none());
}

#[test]
fn a_rejoiner_that_never_says_hello_does_not_outlast_the_wait() {
    let (mut w, link) = held_and_connected();
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert!(w.a_loses_link());
    let lost_at = w.now;
    // Someone comes back, runs the key exchange, and then nothing sealed gets through
    // either way: the hello wait is ten minutes, the rejoin wait shorter.
    w.faults = Box::new(|_, _, m| match m {
        ServerMessage::Sealed { .. } => Fate::Drop,
        _ => Fate::Deliver,
    });
    w.join(&link, Want::Receive);
    w.run_until(|w| w.a().failed.is_some());
    assert_eq!(w.a().failed, Some(RendezvousError::NoRejoin(REJOIN_WAIT)));
    assert!(w.now - lost_at <= REJOIN_WAIT + Duration::from_secs(1));
}

// ── a place in a held room taken back ─────────────────────────────────────────────────────

fn reclaims(p: &Peer) -> Vec<(String, String)> {
    p.sent
        .iter()
        .filter_map(|m| match m {
            ClientMessage::Reclaim { room, token, .. } => Some((room.clone(), token.clone())),
            _ => None,
        })
        .collect()
}

fn joins(p: &Peer) -> Vec<Option<String>> {
    p.sent
        .iter()
        .filter_map(|m| match m {
            ClientMessage::Join { reclaim, .. } => Some(reclaim.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_holding_creator_whose_socket_dies_takes_its_place_back_and_the_transfer_goes_on() {
    let (mut w, link) = held_and_connected();
    // The server's socket to A closes (a proxy's idle cut, the path to the server broken).
    w.schedule(HOP, Wire::Closed(Who::A));
    w.schedule(HOP, Wire::ServerGone(Who::A));
    w.run_for(Duration::from_secs(5));
    assert!(w.a().rv.is_connected() && w.a().failed.is_none());
    assert_eq!(reclaims(w.a()), [("room1234".into(), "ctok".into())]);
    assert_eq!(w.room.creator, Some(Who::A), "back in its place");
    assert!(reconnecting(w.a()).is_empty(), "the transfer never stopped");
    // The room is there for a loss later.
    assert!(w.a_loses_link());
    w.b_rejoins(&link);
    w.run();
    connected(&w);
}

#[test]
fn a_creator_whose_network_changed_takes_its_place_back_past_its_dead_socket() {
    let (mut w, link) = held_and_connected();
    // A's address changed: the server never hears its old socket close (it would only drop
    // it once its pings went unanswered).
    w.unheard_closes = Some(Who::A);
    assert!(w.a_loses_link());
    w.run_for(Duration::from_millis(100));
    assert_eq!(reclaims(w.a()).len(), 1, "at once, on a new socket");
    w.unheard_closes = None;
    w.b_rejoins(&link);
    w.run();
    connected(&w);
    assert_eq!(reconnecting(w.a()), [ReconnectReason::LinkLost]);
}

/// The creator's network changed: it takes its place back saying its connection is lost,
/// and the joiner — whose connection may look alive for seconds yet — hears `peer_lost`,
/// stops counting itself connected, and joins again; both connect.
#[test]
fn a_creator_whose_network_changed_calls_its_joiner_back_at_once() {
    let (mut w, link) = held_and_connected();
    w.unheard_closes = Some(Who::A);
    assert!(w.a_loses_link());
    w.run_for(Duration::from_millis(100));
    w.unheard_closes = None;
    called_back_and_back(&mut w, &link);
}

/// A's reclaim said its connection to B is lost; B heard it, counts itself no longer
/// connected (nothing failed), joins again, and both connect.
fn called_back_and_back(w: &mut World, link: &str) {
    assert!(said_reclaim(w.a(), true));
    assert!(!w.b().rv.is_connected(), "told its connection is gone");
    assert!(w.b().failed.is_none(), "nothing failed: it comes back");
    w.b_rejoins(link);
    w.run();
    connected(w);
}

/// `p` sent a reclaim saying its connection was lost (`lost`) or fine.
fn said_reclaim(p: &Peer, lost: bool) -> bool {
    p.sent
        .iter()
        .any(|m| matches!(m, ClientMessage::Reclaim { lost: l, .. } if *l == lost))
}

/// The creator's socket dropped and its reclaim went out saying the connection was fine;
/// then the connection is lost too: it takes its place back once more, saying so, and the
/// joiner comes back.
#[test]
fn a_connection_lost_while_a_reclaim_is_out_is_still_told() {
    let (mut w, link) = held_and_connected();
    w.schedule(HOP, Wire::Closed(Who::A));
    w.schedule(HOP, Wire::ServerGone(Who::A));
    w.run_until(|w| !reclaims(w.a()).is_empty());
    assert!(said_reclaim(w.a(), false));
    assert!(w.a_loses_link());
    w.run_for(Duration::from_millis(500));
    called_back_and_back(&mut w, &link);
}

/// A creator whose socket alone dropped (its connection to the joiner fine) takes its place
/// back without calling the joiner back.
#[test]
fn a_creator_whose_socket_alone_dropped_leaves_its_joiner_connected() {
    let (mut w, _) = held_and_connected();
    w.schedule(HOP, Wire::Closed(Who::A));
    w.schedule(HOP, Wire::ServerGone(Who::A));
    w.run_for(Duration::from_secs(5));
    assert!(said_reclaim(w.a(), false));
    assert!(w.b().rv.is_connected() && w.a().rv.is_connected());
}

#[test]
fn a_joiner_meets_an_away_creator_and_tries_again_until_it_is_back() {
    let (mut w, link) = held_and_connected();
    // A's network is gone for a while: its new sockets do not open.
    w.peers.get_mut(&Who::A).unwrap().connects = false;
    assert!(w.a_loses_link());
    w.b_rejoins(&link);
    w.run_for(Duration::from_secs(30));
    assert!(w.a().failed.is_none() && w.b().failed.is_none());
    assert_eq!(w.room.creator, None, "A is away");
    assert!(joins(w.b()).len() > 3, "B keeps trying: {:?}", joins(w.b()));
    let back = w.now;
    w.peers.get_mut(&Who::A).unwrap().connects = true;
    w.run();
    connected(&w);
    assert!(
        w.now - back < RETRY_MAX * 2 + Duration::from_secs(1),
        "{:?}",
        w.now - back
    );
}

#[test]
fn a_room_gone_from_the_server_ends_a_creators_wait_plainly() {
    // Connected: the transfer goes on, but nothing can come back into the room.
    let (mut w, _) = held_and_connected();
    w.room.gone = true;
    w.schedule(HOP, Wire::ServerGone(Who::A));
    w.run_for(Duration::from_secs(3));
    assert!(w.a().rv.is_connected() && w.a().failed.is_none());
    assert_eq!(reclaims(w.a()).len(), 1);
    assert!(!w.a_loses_link(), "no room to wait in");
    // Waiting for the joiner: the wait ends, saying why.
    let (mut w, _) = held_and_connected();
    assert!(w.a_loses_link());
    w.room.gone = true;
    w.run();
    assert_eq!(
        w.a().failed,
        Some(RendezvousError::RoomGone(ErrorCode::NoSuchRoom))
    );
    assert!(
        w.a().error().contains("no longer has the room"),
        "{}",
        w.a().error()
    );
}

#[test]
fn a_joiner_whose_network_changed_takes_its_place_back_with_its_token() {
    let (mut w, link) = held_and_connected();
    // B's old socket stays in the room as far as the server knows.
    w.unheard_closes = Some(Who::B);
    assert!(w.a_loses_link());
    w.run_for(Duration::from_millis(500));
    w.b_rejoins(&link);
    w.run();
    connected(&w);
    assert_eq!(
        joins(w.b()),
        [Some("jtok1".to_string())],
        "in at the first try"
    );
    // The new place has a new token, for the next time.
    assert_eq!(
        w.b().rv.place(),
        Some(Place {
            room: "room1234".into(),
            token: Some("jtok2".into())
        })
    );
}

#[test]
fn a_shared_link_outlives_its_creators_socket_dropping_before_anyone_joined() {
    let config = Config {
        rejoin_wait: Some(REJOIN_WAIT),
        ..Config::default()
    };
    let mut w = World::open_room(World::created_with(Want::Send, config));
    let link = w.a().event::<event::Ready>().unwrap().link;
    w.schedule(HOP, Wire::Closed(Who::A));
    w.schedule(HOP, Wire::ServerGone(Who::A));
    w.run_for(Duration::from_secs(3));
    assert_eq!(reclaims(w.a()).len(), 1);
    w.join(&link, Want::Receive);
    w.run();
    connected(&w);
    assert_eq!(w.a().names(), ["ready", "joined", "verify"]);
}

#[test]
fn a_newcomer_must_prove_the_secret_before_the_live_connection_is_given_up() {
    let (mut w, link) = held_and_connected();
    // B's socket to the server drops, its connection to A lives on; someone who knows the
    // room but not the secret joins it.
    w.schedule(HOP, Wire::Closed(Who::B));
    w.run_for(Duration::from_secs(1));
    let wrong = ShareLink::new(SERVER, "room1234", "AAECAwQFBgcICQoLDA0ODw").to_string();
    assert_ne!(wrong, link);
    w.join(&wrong, Want::Receive);
    w.run_until(|w| w.b().failed.is_some());
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.b().failed, Some(RendezvousError::WrongSecret));
    let a = w.a();
    assert!(a.rv.is_connected(), "the live connection stays");
    assert_eq!(a.closed, 0);
    assert!(reconnecting(a).is_empty(), "{:?}", a.names());
    assert!(a.failed.is_none());
}

/// While a holding creator waits for its joiner to come back, someone who has the room id
/// but not the secret joins: it fails, the creator waits on (no abort, the room stays), and
/// the real joiner gets back in.
#[test]
fn a_stranger_with_the_wrong_secret_cannot_end_the_way_back() {
    let (mut w, link) = held_and_connected();
    w.kill_b();
    w.run_for(Duration::from_secs(1));
    assert!(w.a_loses_link());
    let wrong = ShareLink::new(SERVER, "room1234", "AAECAwQFBgcICQoLDA0ODw").to_string();
    w.join(&wrong, Want::Receive);
    w.run_until(|w| w.b().failed.is_some());
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.b().failed, Some(RendezvousError::WrongSecret));
    assert!(w.a().failed.is_none(), "{:?}", w.a().names());
    assert_eq!(w.a().aborted(), None);
    assert!(!w.room.gone);
    w.b_rejoins(&link);
    w.run();
    connected(&w);
}

#[test]
fn a_newcomer_with_the_secret_takes_over_from_a_connection_that_looks_open() {
    let (mut w, link) = held_and_connected();
    w.schedule(HOP, Wire::Closed(Who::B));
    w.run_for(Duration::from_secs(1));
    // A page opened on the link again (it takes whichever side the creator does not).
    w.join(&link, Want::Opposite);
    w.run();
    connected(&w);
    assert_eq!(
        w.a().closed,
        1,
        "the old connection goes once the newcomer proved the key"
    );
    assert_eq!(reconnecting(w.a()), [ReconnectReason::PeerLeft]);
    assert_eq!(w.b().setup.as_ref().unwrap().role, TransferRole::Receiver);
}

/// A's room, held, with A's socket gone and its next ones not opening (its network changing):
/// B opens the link meanwhile.
fn creator_between_sockets() -> World {
    let config = Config {
        rejoin_wait: Some(REJOIN_WAIT),
        ..Config::default()
    };
    let mut w = World::open_room(World::created_with(Want::Send, config));
    let link = w.a().event::<event::Ready>().unwrap().link;
    w.peers.get_mut(&Who::A).unwrap().connects = false;
    w.schedule(HOP, Wire::Closed(Who::A));
    w.schedule(HOP, Wire::ServerGone(Who::A));
    w.run_for(Duration::from_secs(1));
    w.join(&link, Want::Receive);
    w
}

#[test]
fn a_first_join_that_meets_the_creator_between_sockets_waits_for_it() {
    let mut w = creator_between_sockets();
    w.run_for(Duration::from_secs(10));
    assert!(w.b().failed.is_none(), "{:?}", w.b().failed);
    assert!(joins(w.b()).len() >= 3, "{:?}", joins(w.b()));
    w.peers.get_mut(&Who::A).unwrap().connects = true;
    w.run();
    connected(&w);
    assert_eq!(
        w.b().names(),
        ["joined", "verify"],
        "nothing to say: it got in"
    );
}

#[test]
fn a_first_join_gives_up_on_a_creator_that_stays_away() {
    let mut w = creator_between_sockets();
    let t = w.now;
    w.run_until(|w| w.b().failed.is_some());
    assert_eq!(
        w.b().failed,
        Some(RendezvousError::Server(ErrorCode::PeerAway))
    );
    assert!(w.now - t <= PEER_AWAY_WAIT + Duration::from_secs(1));
    assert!(w.b().error().contains("lost its connection to the server"));
}

// ── the path going down under a live connection: ICE restart ──────────────────────────────

/// Both drivers say the path went down at once (ICE `disconnected`).
fn path_down(w: &mut World) {
    let now = w.now;
    for p in w.peers.values_mut() {
        p.rv.path_down(now);
    }
}

fn path_up(w: &mut World) {
    let now = w.now;
    for p in w.peers.values_mut() {
        p.rv.path_up(now, PathReport::unknown());
    }
}

/// The restart went through: both sides hold the other's new description.
fn restarted(w: &World) -> bool {
    w.peers
        .values()
        .all(|p| p.remote_applied && p.remote_description.is_some())
}

#[test]
fn the_file_sender_restarts_ice_when_the_path_goes_down_and_the_receiver_answers() {
    let (mut w, _) = held_and_connected();
    path_down(&mut w);
    w.run_until(|w| w.a().restarts > 0 && restarted(w) && w.wire.is_empty());
    assert_eq!(w.a().restarts, 1);
    assert_eq!(w.b().restarts, 0, "only the offerer restarts (no glare)");
    // Both took their places back on new sockets on the way (a network change may have
    // killed the old ones without a word), and both still count themselves connected.
    for p in [w.a(), w.b()] {
        assert!(
            p.sent
                .iter()
                .any(|m| matches!(m, ClientMessage::Reclaim { lost: false, .. })),
            "{:?}",
            p.sent
        );
        assert!(p.rv.is_connected());
        // The person sees it: reconnecting, on the same connection (not given up).
        assert_eq!(reconnecting(p), [ReconnectReason::PathDown]);
        assert!(!p.events.iter().any(|e| e.name() == "reconnected"));
    }
    // Once the path is up, no more restarts; each side says it is back, once.
    path_up(&mut w);
    path_up(&mut w);
    w.run_for(Duration::from_secs(60));
    assert_eq!(w.a().restarts, 1);
    connected(&w);
    for p in [w.a(), w.b()] {
        assert_eq!(reconnecting(p), [ReconnectReason::PathDown]);
        let names: Vec<&str> = p.events.iter().map(Event::name).collect();
        assert_eq!(
            names.iter().filter(|n| **n == "reconnected").count(),
            1,
            "{names:?}"
        );
        assert!(names.ends_with(&["reconnected"]), "{names:?}");
    }
}

#[test]
fn the_sender_restarts_when_the_receiver_noticed_first() {
    let (mut w, _) = held_and_connected();
    // B's socket to the server dies with its path; A's path goes down a moment later.
    w.schedule(Duration::ZERO, Wire::ServerGone(Who::B));
    w.run_for(Duration::from_secs(2));
    let now = w.now;
    w.peers.get_mut(&Who::A).unwrap().rv.path_down(now);
    w.peers.get_mut(&Who::B).unwrap().rv.path_down(now);
    w.run_until(|w| w.a().restarts > 0 && restarted(w) && w.wire.is_empty());
    assert_eq!(w.a().restarts, 1);
    connected(&w);
}

#[test]
fn the_sender_restarts_when_the_receiver_took_its_place_back_first() {
    // Both paths go down, the receiver's first: its old socket closes and the sender hears
    // `peer_left`; then both take their places back, the receiver first, so the server
    // has no `peer_back` for the sender (the receiver was there before it). The receiver's
    // sealed `path_down` is what tells the sender it is back (the NAT lab's router remap).
    let (mut w, _) = held_and_connected();
    let now = w.now;
    w.peers.get_mut(&Who::B).unwrap().rv.path_down(now);
    w.run_for(HOP * 2 + Duration::from_millis(1));
    assert!(
        w.a().rv.peer_away,
        "the sender heard the receiver's socket close"
    );
    let now = w.now;
    w.peers.get_mut(&Who::A).unwrap().rv.path_down(now);
    let limit = w.now + Duration::from_secs(10);
    w.run_until_at(
        |w| w.a().restarts > 0 && restarted(w) && w.wire.is_empty(),
        limit,
    );
    assert_eq!(w.a().restarts, 1, "restarted within 10 s, once");
    connected(&w);
}

#[test]
fn a_receiver_whose_path_is_down_asks_the_sender_to_restart() {
    // Only the receiver's side sees the path down (its NAT mapped anew; the sender still
    // hears its checks from the new port): once back in the room it says so, and the
    // sender restarts though its own path looks up.
    let (mut w, _) = held_and_connected();
    let now = w.now;
    w.peers.get_mut(&Who::B).unwrap().rv.path_down(now);
    w.run_until(|w| w.a().restarts > 0 && restarted(w) && w.wire.is_empty());
    assert_eq!(w.a().restarts, 1, "path_down and peer_back: one restart");
    connected(&w);
    // Still down on B's side: it asks again, and A restarts again.
    w.run_for(RESTART_AGAIN + Duration::from_millis(200));
    assert_eq!(w.a().restarts, 2);
    let now = w.now;
    w.peers
        .get_mut(&Who::B)
        .unwrap()
        .rv
        .path_up(now, PathReport::unknown());
    w.run_for(RESTART_AGAIN * 3);
    assert_eq!(w.a().restarts, 2, "no more once B's path is up");
}

#[test]
fn the_sender_restarts_again_while_the_path_stays_down() {
    let (mut w, _) = held_and_connected();
    path_down(&mut w);
    w.run_for(RESTART_AGAIN * 2 + Duration::from_millis(500));
    assert_eq!(w.a().restarts, 3);
    assert!(w.a().rv.is_connected() && w.b().rv.is_connected());
}

#[test]
fn a_path_down_too_long_is_given_up_and_recovered_through_the_room() {
    let (mut w, link) = held_and_connected();
    path_down(&mut w);
    let down_at = w.now;
    w.run_until(|w| !w.a().rv.is_connected() && !w.b().rv.is_connected());
    assert!(
        w.now - down_at <= PATH_GIVE_UP + HOP,
        "{:?}",
        w.now - down_at
    );
    // The drivers now do what they do for any lost link: the creator waits in its room,
    // the joiner joins again, and a new connection comes up.
    assert!(w.a_loses_link());
    w.b_rejoins(&link);
    w.run();
    connected(&w);
}

#[test]
fn a_joiner_whose_socket_died_takes_its_place_back_quietly() {
    let (mut w, _) = held_and_connected();
    w.schedule(Duration::ZERO, Wire::ServerGone(Who::B));
    w.run_for(Duration::from_secs(2));
    assert!(
        w.b().sent.iter().any(|m| matches!(
            m,
            ClientMessage::Reclaim { token, lost: false, .. } if token == "jtok1"
        )),
        "{:?}",
        w.b().sent
    );
    assert_eq!(w.room.joiner, Some(Who::B));
    assert!(w.a().rv.is_connected() && w.b().rv.is_connected());
    assert!(reconnecting(w.a()).is_empty() && reconnecting(w.b()).is_empty());
    assert!(!w.a().rv.peer_away, "the creator heard it is back");
}

#[test]
fn the_sender_restarts_only_once_the_receiver_is_back_and_its_signals_open_after_a_gap() {
    let (mut w, _) = held_and_connected();
    // The receiver's network changed: its socket to the server is dead and its path too;
    // the server notices at once, the receiver only a while later.
    w.unheard_closes = None;
    w.schedule(Duration::ZERO, Wire::Closed(Who::B));
    let now = w.now;
    w.peers.get_mut(&Who::A).unwrap().rv.path_down(now);
    w.peers.get_mut(&Who::B).unwrap().connects = false;
    w.run_for(Duration::from_secs(10));
    assert_eq!(
        w.a().restarts,
        0,
        "no restart while nothing says B can hear it (the old pair may still come back)"
    );
    // B's network is back: it finds its socket dead and takes its place back; A hears it and
    // restarts, and the offer opens although the signals before it never arrived.
    // The first restart's signals are lost on the way (B's new socket dropped too).
    w.faults = sealed_to(Who::B, |n| match n {
        1..=3 => Fate::Drop,
        _ => Fate::Deliver,
    });
    let now = w.now;
    w.peers.get_mut(&Who::B).unwrap().rv.path_down(now);
    w.peers.get_mut(&Who::B).unwrap().connects = true;
    w.schedule(Duration::ZERO, Wire::ServerGone(Who::B));
    w.run_until(|w| w.a().restarts >= 2 && restarted(w) && w.wire.is_empty());
    assert_eq!(w.a().restarts, 2, "the second restart went through");
    assert!(w.a().rv.is_connected() && w.b().rv.is_connected());
    assert!(w.b().failed.is_none());
}

#[test]
fn the_sender_restarts_when_it_hears_the_receiver_at_a_new_address() {
    // Only the sender sees the path down; the receiver's side still hears the sender's
    // answers to its checks from a new port, so it neither reclaims nor asks.
    let (mut w, _) = held_and_connected();
    let now = w.now;
    w.peers.get_mut(&Who::A).unwrap().rv.path_down(now);
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.a().restarts, 0, "nothing says the receiver is reachable");
    let now = w.now;
    w.peers.get_mut(&Who::A).unwrap().rv.peer_moved(now);
    w.run_until(|w| w.a().restarts > 0 && restarted(w) && w.wire.is_empty());
    assert_eq!(w.a().restarts, 1);
    connected(&w);
    // Up again: a later move while up is nothing to act on.
    path_up(&mut w);
    let now = w.now;
    w.peers.get_mut(&Who::A).unwrap().rv.peer_moved(now);
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.a().restarts, 1);
}
