//! Writes the seed inputs of every fuzz target under `corpus/<target>/seed-*`, made with the
//! crates' own encoders (golden JSON, real sealed messages, encoded frames, links and codes,
//! signed STUN requests). Run from `fuzz/`: `cargo +nightly run --release --example
//! seed_corpus`. The committed corpora grew from these; rerun only to reseed.

use protocol::crypto::{Handshake, RoomRole};
use protocol::invite::{ShareLink, ShortCode, generate_secret};
use protocol::signal::{
    AbortReason, AuthKind, ClientMessage, ErrorCode, IceServer, PeerSignal, RoomRef, SdpKind,
    ServerMessage, TransferRole,
};
use protocol::transfer::frame::{self, Control};
use protocol::transfer::{CancelReason, DATA_HEADER_LEN, OfferEntry, Role, TRANSFER_VERSION};
use std::path::Path;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, MAGIC_COOKIE, METHOD_ALLOCATE, METHOD_BINDING, METHOD_CREATE_PERMISSION,
    Message, MessageType, Setter,
};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn client_messages() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Create {
            version: 2,
            code: false,
            hold: false,
        },
        ClientMessage::Create {
            version: 2,
            code: true,
            hold: false,
        },
        ClientMessage::ShowCode,
        ClientMessage::Join {
            version: 2,
            room: RoomRef::Id("abcd1234".into()),
            reclaim: None,
        },
        ClientMessage::Join {
            version: 4,
            room: RoomRef::Id("abcd1234".into()),
            reclaim: Some("t0k3n".into()),
        },
        ClientMessage::Reclaim {
            version: 5,
            room: "abcd1234".into(),
            token: "t0k3n".into(),
            lost: true,
        },
        ClientMessage::Join {
            version: 2,
            room: RoomRef::Number(42),
            reclaim: None,
        },
        ClientMessage::Pake {
            auth: AuthKind::Code,
            msg: "QUJD".into(),
        },
        ClientMessage::Sealed {
            data: "eHl6".into(),
        },
        ClientMessage::Abort {
            reason: AbortReason::WrongSecret,
        },
    ]
}

fn server_messages() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Created {
            room: "room1234".into(),
            number: Some(7),
            expires_in_secs: 600,
            reclaim: None,
        },
        ServerMessage::Created {
            room: "room1234".into(),
            number: None,
            expires_in_secs: 600,
            reclaim: Some("t0k3n".into()),
        },
        ServerMessage::Numbered { number: 7 },
        ServerMessage::Joined {
            room: "room1234".into(),
            reclaim: Some("t0k3n".into()),
        },
        ServerMessage::Reclaimed {
            room: "room1234".into(),
        },
        ServerMessage::PeerJoined,
        ServerMessage::Pake {
            auth: AuthKind::Link,
            msg: "QQ".into(),
        },
        ServerMessage::Sealed { data: "QQ".into() },
        ServerMessage::PeerLeft,
        ServerMessage::PeerLost,
        ServerMessage::PeerAborted {
            reason: AbortReason::Cancelled,
        },
        ServerMessage::IceServers {
            servers: vec![
                IceServer {
                    urls: vec!["stun:h:3478".into()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec!["turn:h:3478?transport=udp".into()],
                    username: Some("1700000000:r1".into()),
                    credential: Some("c2VjcmV0".into()),
                },
            ],
            expires_in_secs: 86400,
        },
        ServerMessage::Error {
            code: ErrorCode::NoSuchRoom,
            message: "x".into(),
        },
    ]
}

fn peer_signals() -> Vec<PeerSignal> {
    vec![
        PeerSignal::Hello {
            version: 2,
            role: TransferRole::Sender,
        },
        PeerSignal::Hello {
            version: 2,
            role: TransferRole::Receiver,
        },
        PeerSignal::Description {
            kind: SdpKind::Offer,
            sdp: "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n".into(),
        },
        PeerSignal::Description {
            kind: SdpKind::Answer,
            sdp: "v=0".into(),
        },
        PeerSignal::Candidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: None,
        },
        PeerSignal::EndOfCandidates,
    ]
}

fn json(v: &PeerSignal) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn main() {
    for (i, m) in client_messages().iter().enumerate() {
        write("client_message", &i.to_string(), m.to_json().as_bytes());
    }

    // server_message: one frame per line; a whole creator's and joiner's conversation too.
    let server = server_messages();
    for (i, m) in server.iter().enumerate() {
        write("server_message", &i.to_string(), m.to_json().as_bytes());
    }
    // A real SPAKE2 message: a joiner finishes its key exchange with it.
    let (_, pake) = Handshake::start_b64(b"pw", "room1234", RoomRole::Creator);
    let pake = ServerMessage::Pake {
        auth: AuthKind::Link,
        msg: pake,
    };
    let creator = [
        &server[1],
        &server[9],
        &server[4],
        &pake,
        &ServerMessage::Sealed { data: "QQ".into() },
    ];
    let joiner = [&server[3], &server[9], &pake, &server[7]];
    for (name, convo) in [("creator", &creator[..]), ("joiner", &joiner[..])] {
        let text: Vec<String> = convo.iter().map(|m| m.to_json()).collect();
        write("server_message", name, text.join("\n").as_bytes());
    }

    // peer_signal: first byte picks the machine (bit 7: joiner; % 3: send, receive,
    // opposite), then sealed lines; 0xFF lines are driver events.
    let signals = peer_signals();
    let (a, ma) = Handshake::start(b"secret", "room1234", RoomRole::Creator);
    let (b, mb) = Handshake::start(b"secret", "room1234", RoomRole::Joiner);
    let (mut a, _b) = (a.finish(&mb).unwrap(), b.finish(&ma).unwrap());
    write("peer_signal", "sealed-hello", &a.seal(&json(&signals[0])));
    write(
        "peer_signal",
        "sealed-hello-b64",
        a.seal_b64(&json(&signals[0])).as_bytes(),
    );
    for (i, s) in signals.iter().enumerate() {
        let mut input = vec![0u8];
        input.extend(json(s));
        write("peer_signal", &format!("signal-{i}"), &input);
    }
    let line = |s: &PeerSignal| json(s);
    let script = |selector: u8, lines: Vec<Vec<u8>>| {
        let mut v = vec![selector];
        v.extend(lines.join(&b'\n'));
        v
    };
    // A receiving creator: the sender says hello, offers, trickles a candidate.
    write(
        "peer_signal",
        "receiver-creator",
        &script(
            1,
            vec![
                line(&signals[0]),
                line(&signals[2]),
                line(&signals[4]),
                line(&signals[5]),
                vec![0xFF, 1],
            ],
        ),
    );
    // A sending joiner: the receiver says hello, the offer goes out, an answer comes back.
    write(
        "peer_signal",
        "sender-joiner",
        &script(
            0x80,
            vec![
                line(&signals[1]),
                vec![0xFF, 4],
                vec![0xFF, 7],
                vec![0xFF, 2],
                line(&signals[3]),
                line(&signals[4]),
                vec![0xFF, 1],
            ],
        ),
    );
    // A page opened on a link: the other side receives, files are picked.
    write(
        "peer_signal",
        "opposite-pick",
        &script(
            0x82,
            vec![line(&signals[1]), vec![0xFF, 0], line(&signals[3])],
        ),
    );

    // transfer_receiver: single frames, and length-prefixed sequences (first byte even).
    let hello = Control::Hello {
        version: TRANSFER_VERSION,
        role: Role::Sender,
        seen_peer: false,
        max_frame: frame::MAX_FRAME as u32,
        path: None,
    };
    let offer = Control::Offer {
        total_files: 3,
        total_bytes: 5,
        files: vec![
            OfferEntry::file("a/b.txt", 5),
            OfferEntry::dir("a/empty"),
            OfferEntry::file("c", 0),
        ],
    };
    let payload = b"hello";
    let mut data = vec![0u8; DATA_HEADER_LEN + payload.len()];
    data[DATA_HEADER_LEN..].copy_from_slice(payload);
    frame::write_data_header(&mut data, 0, 0);
    let hash = blake3::hash(payload).to_hex().to_string();
    let empty_hash = blake3::hash(b"").to_hex().to_string();
    let frames: Vec<Vec<u8>> = vec![
        frame::encode_control(&hello),
        frame::encode_control(&offer),
        data.clone(),
        frame::encode_control(&Control::FileEnd {
            index: 0,
            blake3: hash,
        }),
        frame::encode_control(&Control::FileEnd {
            index: 2,
            blake3: empty_hash,
        }),
        frame::encode_control(&Control::Cancel {
            reason: CancelReason::NoSpace,
            message: "disk full".into(),
        }),
    ];
    for (i, f) in frames.iter().enumerate() {
        let mut input = vec![0u8, 0, 0];
        write("transfer_receiver", &format!("frame-{i}"), &{
            input.truncate(0);
            input.extend(f);
            input
        });
    }
    let mut whole = vec![0u8];
    for f in &frames[..5] {
        whole.extend((f.len() as u16).to_be_bytes());
        whole.extend(f);
    }
    write("transfer_receiver", "whole-transfer", &whole);
    write("transfer_receiver", "script", &[1u8; 64]);

    // names
    for (i, n) in [
        "a.txt",
        "dir/sub/file.bin",
        ".hidden",
        "naïve café.pdf",
        "日本語/ファイル.txt",
        "emoji 🎉 ok.png",
        "CONSOLE",
        "com0",
        "../x",
        "con.txt",
        "cod\u{202E}fdp.exe",
    ]
    .iter()
    .enumerate()
    {
        write("names", &i.to_string(), n.as_bytes());
    }

    // invitation: real links and codes.
    let secret = generate_secret();
    let links = [
        ShareLink::new("http://127.0.0.1:8080/", "abcDEF12", &secret),
        ShareLink::new("https://ex.org/drop", "room1234", &secret),
        ShareLink::new("https://[2001:db8::1]:8443", "r_-9abcd", &secret),
    ];
    for (i, l) in links.iter().enumerate() {
        write("invitation", &format!("link-{i}"), l.to_string().as_bytes());
    }
    write(
        "invitation",
        "code",
        ShortCode::generate(417).to_string().as_bytes(),
    );
    write(
        "invitation",
        "code-spaces",
        ShortCode::generate(999_999)
            .to_string()
            .to_uppercase()
            .replace('-', " ")
            .as_bytes(),
    );
    write("invitation", "server", b"https://ex.org/drop/");

    // turn_gate: real STUN requests, signed with the gate's credential.
    let gate = signalling::turn::fuzzing::FuzzGate::new();
    let (user, key) = gate.credential();
    let peer = |m: &mut Message, ip: [u8; 4], port: u16| {
        let mut v = vec![0, 1];
        v.extend((port ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
        v.extend(
            ip.iter()
                .zip(MAGIC_COOKIE.to_be_bytes())
                .map(|(a, b)| a ^ b),
        );
        m.add(ATTR_XOR_PEER_ADDRESS, &v);
    };
    let build = |method, peers: &[([u8; 4], u16)], sign: bool| {
        let mut m = Message::new();
        m.typ = MessageType::new(method, CLASS_REQUEST);
        m.transaction_id = TransactionId([7; 12]);
        m.write_header();
        for (ip, port) in peers {
            peer(&mut m, *ip, *port);
        }
        if sign {
            m.add(ATTR_USERNAME, user.as_bytes());
            MessageIntegrity(key.clone()).add_to(&mut m).unwrap();
            FINGERPRINT.add_to(&mut m).unwrap();
        }
        m.raw
    };
    write("turn_gate", "binding", &build(METHOD_BINDING, &[], false));
    write("turn_gate", "allocate", &build(METHOD_ALLOCATE, &[], true));
    write(
        "turn_gate",
        "permission-public",
        &build(METHOD_CREATE_PERMISSION, &[([198, 51, 100, 7], 4000)], true),
    );
    write(
        "turn_gate",
        "permission-private",
        &build(
            METHOD_CREATE_PERMISSION,
            &[([198, 51, 100, 7], 4000), ([10, 0, 0, 1], 9)],
            true,
        ),
    );
    write(
        "turn_gate",
        "permission-unsigned",
        &build(
            METHOD_CREATE_PERMISSION,
            &[([198, 51, 100, 7], 4000)],
            false,
        ),
    );
    // ChannelData (not STUN) and a structured (odd first byte) input.
    write("turn_gate", "channel-data", &[0x40, 0, 0, 4, 1, 2, 3, 4]);
    write("turn_gate", "structured", &[1u8; 96]);
}
