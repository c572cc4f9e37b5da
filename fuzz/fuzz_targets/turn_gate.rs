//! What the bundled TURN server's gate reads from every datagram a client sends, before the
//! turn crate: the STUN message decode, the MESSAGE-INTEGRITY check against our credentials,
//! the XOR-PEER-ADDRESS decoding, the caps on Allocate (`signalling::turn::fuzzing`, behind
//! the `fuzzing` feature).
//!
//! The input goes in raw; when its first byte is odd (a STUN message starting so is a
//! response, which the gate passes without decoding) the rest is also read with `arbitrary`
//! as a request signed with a valid credential, so the checks after the integrity check are
//! reached. Never panics.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use signalling::turn::fuzzing::{self, FuzzGate};
use std::net::SocketAddr;
use std::sync::LazyLock;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS, AttrType};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_INDICATION, CLASS_REQUEST, MAGIC_COOKIE, METHOD_ALLOCATE, METHOD_BINDING,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND, Message,
    MessageType, Setter,
};

static GATE: LazyLock<(FuzzGate, String, Vec<u8>)> = LazyLock::new(|| {
    let gate = FuzzGate::new();
    let (user, key) = gate.credential();
    (gate, user, key)
});

#[derive(Arbitrary, Debug)]
struct Request {
    method: u8,
    indication: bool,
    tid: [u8; 12],
    attrs: Vec<Attr>,
    /// Another username than the valid credential.
    username: Option<String>,
    /// Sign with another key than the credential's.
    wrong_key: bool,
    after: Vec<Attr>,
    fingerprint: bool,
    from: ([u8; 4], u16),
}

#[derive(Arbitrary, Debug)]
enum Attr {
    /// A well-formed XOR-PEER-ADDRESS.
    Peer {
        v6: bool,
        ip: [u8; 16],
        port: u16,
    },
    /// An XOR-PEER-ADDRESS with any value.
    PeerRaw(Vec<u8>),
    Raw(u16, Vec<u8>),
}

impl Attr {
    fn add_to(&self, m: &mut Message, tid: &[u8; 12]) {
        match self {
            Self::Peer { v6, ip, port } => {
                let mut pad = [0u8; 16];
                pad[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                pad[4..].copy_from_slice(tid);
                let n = if *v6 { 16 } else { 4 };
                let mut v = vec![0, if *v6 { 2 } else { 1 }];
                v.extend_from_slice(&(port ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
                v.extend(ip[..n].iter().zip(&pad).map(|(a, b)| a ^ b));
                m.add(ATTR_XOR_PEER_ADDRESS, &v);
            }
            Self::PeerRaw(v) => m.add(ATTR_XOR_PEER_ADDRESS, &v[..v.len().min(256)]),
            Self::Raw(t, v) => m.add(AttrType(*t), &v[..v.len().min(256)]),
        }
    }
}

fn signed(r: &Request, user: &str, key: &[u8]) -> Option<Vec<u8>> {
    let method = [
        METHOD_ALLOCATE,
        METHOD_CREATE_PERMISSION,
        METHOD_CHANNEL_BIND,
        METHOD_REFRESH,
        METHOD_BINDING,
        METHOD_SEND,
    ][usize::from(r.method % 6)];
    let class = if r.indication {
        CLASS_INDICATION
    } else {
        CLASS_REQUEST
    };
    let mut m = Message::new();
    m.typ = MessageType::new(method, class);
    m.transaction_id = TransactionId(r.tid);
    m.write_header();
    for a in r.attrs.iter().take(16) {
        a.add_to(&mut m, &r.tid);
    }
    let user = r.username.as_deref().unwrap_or(user);
    m.add(ATTR_USERNAME, &user.as_bytes()[..user.len().min(256)]);
    let key = if r.wrong_key {
        b"not the key".to_vec()
    } else {
        key.to_vec()
    };
    MessageIntegrity(key).add_to(&mut m).ok()?;
    for a in r.after.iter().take(4) {
        a.add_to(&mut m, &r.tid);
    }
    if r.fingerprint {
        FINGERPRINT.add_to(&mut m).ok()?;
    }
    Some(m.raw)
}

fuzz_target!(|data: &[u8]| {
    let (gate, user, key) = &*GATE;
    let from = SocketAddr::from(([203, 0, 113, 5], 40000));
    let _ = fuzzing::xor_peer_addresses(data);
    if let Some((tid, value)) = data.split_first_chunk::<12>() {
        let _ = fuzzing::decode_xor_address(value, tid);
    }
    let _ = gate.inspect(data, from);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1
        && let Ok(r) = Request::arbitrary_take_rest(Unstructured::new(rest))
        && let Some(raw) = signed(&r, user, key)
    {
        let (ip, port) = r.from;
        let _ = fuzzing::xor_peer_addresses(&raw);
        let _ = gate.inspect(&raw, SocketAddr::from((ip, port)));
    }
});
