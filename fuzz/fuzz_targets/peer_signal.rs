//! The sealed peer-to-peer signalling: what one peer opens of what the server forwarded from
//! the other (`protocol::crypto::Channel`), and the `PeerSignal` JSON behind it.
//!
//! Three ways in, all from one input:
//! 1. the input as ciphertext (raw and base64) for `Channel::open`/`open_b64`: a forger's
//!    bytes, which must fail cleanly;
//! 2. the input sealed properly by the other peer, then opened: the JSON parser behind the
//!    crypto, as a peer holding the secret reaches it;
//! 3. a rendezvous machine that agreed a key with this harness (playing the server and the
//!    other peer honestly up to there), sent each line of the input sealed by that peer,
//!    with lines starting with 0xFF standing for what its driver does (files picked, ICE
//!    events, deadlines, the socket closing…). The first byte picks which machine.
//!
//! Never panics; what opens is what was sealed; what parses re-serialises to the same
//! signal; everything the machine seals opens at the other peer as a `PeerSignal`.
#![no_main]

use core::time::Duration;
use libfuzzer_sys::fuzz_target;
use protocol::crypto::{Channel, Handshake, RoomRole};
use protocol::event::Event;
use protocol::invite::{Invitation, ShareLink};
use protocol::rendezvous::{Config, IceCandidate, LocalIce, Output, Rendezvous, Want};
use protocol::signal::{AuthKind, ClientMessage, IceServer, PeerSignal, ServerMessage};
use std::sync::{LazyLock, Mutex};

const SERVER: &str = "http://127.0.0.1:8080";
const ROOM: &str = "room1234";
const SECRET: &str = "AAECAwQFBgcICQoLDA0ODw";

/// One agreed channel pair for ways 1 and 2: sealing and opening advance both ends together,
/// so the pair stays in step across runs.
static PAIR: LazyLock<Mutex<(Channel, Channel)>> = LazyLock::new(|| {
    let (a, ma) = Handshake::start(b"secret", ROOM, RoomRole::Creator);
    let (b, mb) = Handshake::start(b"secret", ROOM, RoomRole::Joiner);
    Mutex::new((a.finish(&mb).unwrap(), b.finish(&ma).unwrap()))
});

fn check_signal(plain: &[u8]) {
    if let Ok(sig) = serde_json::from_slice::<PeerSignal>(plain) {
        let json = serde_json::to_vec(&sig).expect("peer signals serialise");
        let back: PeerSignal = serde_json::from_slice(&json).expect("serialised signal parses");
        assert_eq!(back, sig);
    }
}

/// The harness's side of a rendezvous: the other peer's channel.
struct Peer {
    channel: Channel,
}

const SDP: &str = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
a=candidate:1 1 udp 2130706431 192.0.2.7 5000 typ host\r\n\
a=candidate:2 1 udp 16777215 203.0.113.9 6000 typ relay raddr 0.0.0.0 rport 0\r\na=mid:0\r\n";

fn candidate(kind: &str) -> IceCandidate {
    IceCandidate {
        candidate: format!("candidate:3 1 udp 1 198.51.100.3 7000 typ {kind}"),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
    }
}

/// Take outputs up to the next timeout, answering as a driver would (descriptions created,
/// read and applied at once); check what goes to the server. Returns that timeout.
fn drive(r: &mut Rendezvous, peer: &mut Option<Peer>, now: Duration) -> Duration {
    for _ in 0..1000 {
        let mut answers = Vec::new();
        let at = loop {
            match r.poll_output() {
                Output::Timeout(at) => break at,
                Output::ToServer(ClientMessage::Sealed { data }) => {
                    if let Some(p) = peer.as_mut() {
                        let plain = p.channel.open_b64(&data).expect("the peer opens it");
                        serde_json::from_slice::<PeerSignal>(&plain).expect("a peer signal");
                    }
                }
                Output::CreateDescription(_) => answers.push(LocalIce::DescriptionCreated),
                Output::ReadLocalDescription => answers.push(LocalIce::Description(SDP.into())),
                Output::ApplyDescription { .. } => answers.push(LocalIce::RemoteApplied),
                _ => {}
            }
        };
        if answers.is_empty() {
            return at;
        }
        for a in answers {
            r.handle_local(a, now);
        }
    }
    panic!("a rendezvous machine kept producing outputs");
}

/// A machine past the key exchange, and the other peer's channel.
fn machine(selector: u8, now: Duration) -> (Rendezvous, Peer) {
    let want = [Want::Send, Want::Receive, Want::Opposite][usize::from(selector % 3)];
    let ice = ServerMessage::IceServers {
        servers: vec![IceServer {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            username: Some("1:r".into()),
            credential: Some("c".into()),
        }],
        expires_in_secs: 600,
    };
    let mut none = None;
    if selector & 0x80 == 0 {
        // This side creates the room; the harness joins with the link.
        let mut r = Rendezvous::create(SERVER, want, Config::default(), now);
        r.server_open(now);
        drive(&mut r, &mut none, now);
        r.handle_server(
            ServerMessage::Created {
                room: ROOM.into(),
                number: None,
                expires_in_secs: 600,
                reclaim: None,
            },
            now,
        );
        let mut link = None;
        while let Some(o) = poll(&mut r) {
            if let Output::Event(Event::Ready(ready)) = o {
                link = Some(ShareLink::parse(&ready.link).expect("the machine's link parses"));
            }
        }
        let link = link.expect("a ready event");
        r.handle_server(ice, now);
        r.handle_server(ServerMessage::PeerJoined, now);
        let (hs, msg) = Handshake::start_b64(&link.password(), ROOM, RoomRole::Joiner);
        r.handle_server(
            ServerMessage::Pake {
                auth: AuthKind::Link,
                msg,
            },
            now,
        );
        let (theirs, sealed) = pake_sent(&mut r);
        let mut peer = Peer {
            channel: hs.finish_b64(&theirs).expect("the machine's PAKE message"),
        };
        // Its hello went out with the PAKE message, when it knows its role.
        for data in sealed {
            let plain = peer.channel.open_b64(&data).expect("the peer opens it");
            serde_json::from_slice::<PeerSignal>(&plain).expect("a peer signal");
        }
        (r, peer)
    } else {
        // This side joins the harness's room with its link.
        let link = ShareLink::new(SERVER, ROOM, SECRET);
        let invitation = Invitation::parse(&link.to_string()).expect("a valid link");
        let mut r = Rendezvous::join(&invitation, SERVER, want, Config::default(), now);
        r.server_open(now);
        drive(&mut r, &mut none, now);
        r.handle_server(
            ServerMessage::Joined {
                room: ROOM.into(),
                reclaim: None,
            },
            now,
        );
        r.handle_server(ice, now);
        let (theirs, sealed) = pake_sent(&mut r);
        assert!(sealed.is_empty(), "nothing sealed before the key");
        let (hs, msg) = Handshake::start_b64(&link.password(), ROOM, RoomRole::Creator);
        let peer = Peer {
            channel: hs.finish_b64(&theirs).expect("the machine's PAKE message"),
        };
        r.handle_server(
            ServerMessage::Pake {
                auth: AuthKind::Link,
                msg,
            },
            now,
        );
        (r, peer)
    }
}

fn poll(r: &mut Rendezvous) -> Option<Output> {
    match r.poll_output() {
        Output::Timeout(_) => None,
        o => Some(o),
    }
}

/// The PAKE message the machine sent to the server, and the sealed messages it sent (its
/// other outputs are dropped).
fn pake_sent(r: &mut Rendezvous) -> (String, Vec<String>) {
    let (mut msg, mut sealed) = (None, Vec::new());
    while let Some(o) = poll(r) {
        match o {
            Output::ToServer(ClientMessage::Pake { msg: m, .. }) => msg = Some(m),
            Output::ToServer(ClientMessage::Sealed { data }) => sealed.push(data),
            _ => {}
        }
    }
    (msg.expect("the machine sent its PAKE message"), sealed)
}

fn driver_op(r: &mut Rendezvous, op: &[u8], now: &mut Duration, next: Duration) {
    let arg = op.get(1..).unwrap_or_default();
    match op.first().copied().unwrap_or(0) % 14 {
        0 => r.files_picked(*now),
        1 => r.channel_open(*now),
        2 => r.handle_local(LocalIce::GatheringDone, *now),
        3 => r.handle_local(LocalIce::Candidate(candidate("host")), *now),
        4 => r.handle_local(LocalIce::Candidate(candidate("srflx")), *now),
        5 => r.handle_local(LocalIce::Candidate(candidate("relay")), *now),
        6 => r.advertise(candidate("host"), *now),
        7 => {
            *now = (*now).max(next);
            r.handle_timeout(*now);
        }
        8 => r.server_closed(*now),
        9 => r.connection_failed(*now),
        10 => r.cancel(*now),
        11 => r.local_error("boom", *now),
        12 => r.handle_server_text(&String::from_utf8_lossy(arg), *now),
        _ => r.show_code(*now),
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. A forger's ciphertext.
    {
        let mut pair = PAIR.lock().unwrap_or_else(|e| e.into_inner());
        let (creator, joiner) = &mut *pair;
        if let Ok(plain) = creator.open(data) {
            check_signal(&plain);
        }
        if let Ok(plain) = joiner.open_b64(&String::from_utf8_lossy(data)) {
            check_signal(&plain);
        }
        // 2. Sealed by the other peer: the parser behind the crypto.
        let sealed = joiner.seal_b64(data);
        let plain = creator
            .open_b64(&sealed)
            .expect("what the peer sealed opens");
        assert_eq!(plain, data);
        check_signal(&plain);
    }

    // 3. A rendezvous machine past the key exchange.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut now = Duration::from_secs(1000);
    let (mut r, peer) = machine(selector, now);
    let mut peer = Some(peer);
    let mut next = drive(&mut r, &mut peer, now);
    for line in rest.split(|&b| b == b'\n').take(32) {
        now += Duration::from_millis(10);
        if let Some(op) = line.strip_prefix(&[0xFF]) {
            driver_op(&mut r, op, &mut now, next);
        } else {
            let data = peer.as_mut().expect("a peer").channel.seal_b64(line);
            r.handle_server(ServerMessage::Sealed { data }, now);
        }
        next = drive(&mut r, &mut peer, now);
    }
});
