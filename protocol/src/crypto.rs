//! End-to-end sealing of signalling: SPAKE2 over the share secret, then an AEAD channel.
//!
//! Both peers run symmetric SPAKE2 (either side may have created the room) with the share
//! secret (link) or the typed words (code) as password and the room id as identity. HKDF-SHA256
//! turns the shared key into one ChaCha20-Poly1305 key per direction and a short verifier.
//!
//! Invariants:
//! - Nonces are per-direction message counters and never repeat under one key; the receiver
//!   takes them strictly increasing, so a replayed or reordered message fails
//!   [`Channel::open`] rather than go unnoticed. A gap of up to [`MAX_GAP`] messages is
//!   accepted: what one peer sealed while the other's socket to the server was down never
//!   arrives (the server cannot deliver it), and the messages after it must still open.
//! - The first message each side seals is the key confirmation: failing to open message 0 means
//!   the peers hold different secrets ([`CryptoError::WrongSecret`]) — unless a later message
//!   of the same key opens in its place, which means the first was lost on the way
//!   ([`CryptoError::FirstLost`]: the key is right, the other side's hello is missing);
//!   failing later means tampering ([`CryptoError::Tampered`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};

const SALT: &[u8] = b"punchdrop/v1";

/// How many sealed messages in a row may be lost between two that arrive (see the module
/// invariants). A lost stretch is an ICE restart or a few (a description and a dozen
/// candidates each, every 3 s) sent to a socket of the other peer that the server still
/// counted but that was dead. A message that does not open costs at most this many
/// decryption attempts.
pub const MAX_GAP: u64 = 256;
const AAD: &[u8] = b"punchdrop/v1 signal";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the other peer's key exchange message is malformed")]
    BadPakeMessage,
    #[error("wrong secret: the link or code does not match the other peer's")]
    WrongSecret,
    #[error("a sealed signalling message failed authentication (tampered, dropped or replayed)")]
    Tampered,
    #[error(
        "the other peer's first sealed message was lost on the way (the signalling server \
         dropped it); the secret matches: try again"
    )]
    FirstLost,
    #[error("sealed payload is not valid base64")]
    BadEncoding,
}

/// Which end of the room this peer is; it picks the direction keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomRole {
    Creator,
    Joiner,
}

/// A started SPAKE2 exchange, waiting for the other peer's message.
pub struct Handshake {
    state: Spake2<Ed25519Group>,
    role: RoomRole,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Start the exchange. Returns the state and the message to send to the other peer.
    pub fn start(password: &[u8], room: &str, role: RoomRole) -> (Self, Vec<u8>) {
        let identity = format!("punchdrop/v1 room {room}");
        let (state, msg) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(password),
            &Identity::new(identity.as_bytes()),
        );
        (Self { state, role }, msg)
    }

    /// Start with the base64 form of the outgoing message, as signalling carries it.
    pub fn start_b64(password: &[u8], room: &str, role: RoomRole) -> (Self, String) {
        let (hs, msg) = Self::start(password, room, role);
        (hs, B64.encode(msg))
    }

    /// Finish with the other peer's message. A wrong password is *not* detected here (SPAKE2
    /// yields a different key); it shows when the first sealed message fails to open.
    pub fn finish(self, inbound: &[u8]) -> Result<Channel, CryptoError> {
        let key = self
            .state
            .finish(inbound)
            .map_err(|_| CryptoError::BadPakeMessage)?;
        Ok(Channel::from_shared_key(&key, self.role))
    }

    pub fn finish_b64(self, inbound: &str) -> Result<Channel, CryptoError> {
        let raw = B64
            .decode(inbound)
            .map_err(|_| CryptoError::BadPakeMessage)?;
        self.finish(&raw)
    }
}

/// Sealing in both directions after a finished handshake.
pub struct Channel {
    send: ChaCha20Poly1305,
    recv: ChaCha20Poly1305,
    send_seq: u64,
    recv_seq: u64,
    verifier: [u8; 8],
    binding: [u8; 32],
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("send_seq", &self.send_seq)
            .field("recv_seq", &self.recv_seq)
            .finish_non_exhaustive()
    }
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::from(n)
}

impl Channel {
    fn from_shared_key(key: &[u8], role: RoomRole) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(SALT), key);
        let mut c2j = [0u8; 32];
        let mut j2c = [0u8; 32];
        let mut verifier = [0u8; 8];
        let mut binding = [0u8; 32];
        hk.expand(b"session binding", &mut binding)
            .expect("32 bytes is a valid HKDF length");
        hk.expand(b"creator to joiner", &mut c2j)
            .expect("32 bytes is a valid HKDF length");
        hk.expand(b"joiner to creator", &mut j2c)
            .expect("32 bytes is a valid HKDF length");
        hk.expand(b"verifier", &mut verifier)
            .expect("8 bytes is a valid HKDF length");
        let (send, recv) = match role {
            RoomRole::Creator => (c2j, j2c),
            RoomRole::Joiner => (j2c, c2j),
        };
        Self {
            send: ChaCha20Poly1305::new(Key::from_slice(&send)),
            recv: ChaCha20Poly1305::new(Key::from_slice(&recv)),
            send_seq: 0,
            recv_seq: 0,
            verifier,
            binding,
        }
    }

    /// Seal the next outgoing message.
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let n = nonce(self.send_seq);
        self.send_seq += 1;
        self.send
            .encrypt(
                &n,
                Payload {
                    msg: plaintext,
                    aad: AAD,
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory buffers")
    }

    pub fn seal_b64(&mut self, plaintext: &[u8]) -> String {
        B64.encode(self.seal(plaintext))
    }

    /// Open the next incoming message: one sealed after the last one opened, with at most
    /// [`MAX_GAP`] lost in between. The first message is the key confirmation: failing to open
    /// it is a wrong secret, and a later one opening in its place says it was lost
    /// ([`CryptoError::FirstLost`]; nothing is taken as opened).
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let first = self.recv_seq;
        for seq in first..=first + MAX_GAP {
            let payload = Payload {
                msg: ciphertext,
                aad: AAD,
            };
            if let Ok(plain) = self.recv.decrypt(&nonce(seq), payload) {
                if first == 0 && seq > 0 {
                    // Not the key confirmation: what was sealed before it never came.
                    return Err(CryptoError::FirstLost);
                }
                self.recv_seq = seq + 1;
                return Ok(plain);
            }
        }
        match first {
            0 => Err(CryptoError::WrongSecret),
            _ => Err(CryptoError::Tampered),
        }
    }

    pub fn open_b64(&mut self, data: &str) -> Result<Vec<u8>, CryptoError> {
        let raw = B64.decode(data).map_err(|_| CryptoError::BadEncoding)?;
        self.open(&raw)
    }

    /// A value both peers of this session hold and nobody else (not the server, not another
    /// session's peer): what a device signs to prove its key to the other peer
    /// ([`crate::device`]) without the signature being replayable elsewhere.
    pub fn binding(&self) -> [u8; 32] {
        self.binding
    }

    /// Three words both peers can read aloud to compare; equal words mean the same key.
    pub fn verification_words(&self) -> [&'static str; 3] {
        let v = self.verifier;
        [
            crate::words::word(v[0]),
            crate::words::word(v[1]),
            crate::words::word(v[2]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(pw_a: &[u8], pw_b: &[u8]) -> (Channel, Channel) {
        let (a, ma) = Handshake::start(pw_a, "room1", RoomRole::Creator);
        let (b, mb) = Handshake::start(pw_b, "room1", RoomRole::Joiner);
        (a.finish(&mb).unwrap(), b.finish(&ma).unwrap())
    }

    #[test]
    fn same_secret_opens_both_ways() {
        let (mut a, mut b) = pair(b"secret", b"secret");
        assert_eq!(a.verification_words(), b.verification_words());
        for i in 0..5u8 {
            let sealed = a.seal(&[i; 10]);
            assert_ne!(&sealed[..10], &[i; 10]);
            assert_eq!(b.open(&sealed).unwrap(), vec![i; 10]);
            let back = b.seal_b64(b"pong");
            assert_eq!(a.open_b64(&back).unwrap(), b"pong");
        }
    }

    #[test]
    fn both_peers_of_a_session_and_nobody_else_share_its_binding() {
        let (a, b) = pair(b"secret", b"secret");
        assert_eq!(a.binding(), b.binding());
        let (c, _) = pair(b"secret", b"secret");
        assert_ne!(a.binding(), c.binding(), "another session, another binding");
    }

    #[test]
    fn wrong_secret_fails_on_first_message() {
        let (mut a, mut b) = pair(b"secret", b"guess");
        assert_eq!(b.open(&a.seal(b"hello")), Err(CryptoError::WrongSecret));
        assert_eq!(a.open(&b.seal(b"hello")), Err(CryptoError::WrongSecret));
    }

    #[test]
    fn different_rooms_do_not_agree() {
        let (a, ma) = Handshake::start(b"pw", "room1", RoomRole::Creator);
        let (b, mb) = Handshake::start(b"pw", "room2", RoomRole::Joiner);
        let (mut a, mut b) = (a.finish(&mb).unwrap(), b.finish(&ma).unwrap());
        assert_eq!(b.open(&a.seal(b"x")), Err(CryptoError::WrongSecret));
    }

    #[test]
    fn replay_reorder_and_tamper_are_detected() {
        let (mut a, mut b) = pair(b"s", b"s");
        let m0 = a.seal(b"zero");
        let m1 = a.seal(b"one");
        let m2 = a.seal(b"two");
        b.open(&m0).unwrap();
        let mut bad = m1.clone();
        bad[0] ^= 1;
        assert_eq!(b.open(&bad), Err(CryptoError::Tampered), "bit flip");
        b.open(&m1).unwrap();
        assert_eq!(b.open(&m1), Err(CryptoError::Tampered), "replay");
        b.open(&m2).unwrap();
        assert_eq!(b.open(&m0), Err(CryptoError::Tampered), "reordered");
    }

    #[test]
    fn messages_after_a_lost_stretch_still_open_but_never_an_older_one() {
        let (mut a, mut b) = pair(b"s", b"s");
        b.open(&a.seal(b"hello")).unwrap();
        let lost: Vec<_> = (0..MAX_GAP).map(|_| a.seal(b"lost")).collect();
        assert_eq!(b.open(&a.seal(b"after")).unwrap(), b"after");
        assert_eq!(
            b.open(&lost[3]),
            Err(CryptoError::Tampered),
            "older than one opened"
        );
        for _ in 0..=MAX_GAP {
            a.seal(b"lost");
        }
        assert_eq!(
            b.open(&a.seal(b"too far")),
            Err(CryptoError::Tampered),
            "a gap longer than MAX_GAP"
        );
    }

    #[test]
    fn a_wrong_secret_is_not_taken_for_a_gap() {
        let (mut a, mut b) = pair(b"s", b"t");
        a.seal(b"lost hello");
        assert_eq!(b.open(&a.seal(b"second")), Err(CryptoError::WrongSecret));
    }

    #[test]
    fn a_lost_first_message_is_not_taken_for_a_wrong_secret() {
        let (mut a, mut b) = pair(b"s", b"s");
        a.seal(b"lost hello");
        assert_eq!(b.open(&a.seal(b"second")), Err(CryptoError::FirstLost));
        // Nothing was taken as the key confirmation.
        assert_eq!(b.open(&a.seal(b"third")), Err(CryptoError::FirstLost));
    }

    #[test]
    fn a_peer_cannot_open_its_own_messages() {
        let (mut a, _b) = pair(b"s", b"s");
        let m = a.seal(b"echo");
        assert!(
            a.open(&m).is_err(),
            "direction keys must differ (reflection attack)"
        );
    }

    #[test]
    fn garbage_pake_message_is_an_error() {
        let (a, _) = Handshake::start(b"pw", "room", RoomRole::Creator);
        assert_eq!(
            a.finish(&[1, 2, 3]).unwrap_err(),
            CryptoError::BadPakeMessage
        );
        let (a, _) = Handshake::start(b"pw", "room", RoomRole::Creator);
        assert_eq!(
            a.finish_b64("%%%").unwrap_err(),
            CryptoError::BadPakeMessage
        );
    }
}
