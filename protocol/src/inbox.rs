//! The inbox: a long-running receiver (`native-peer inbox`, a NAS) with a link that stays
//! valid, which anyone holding the link can drop files into at any time.
//!
//! - Identity: an Ed25519 key pair, kept by the inbox. Its id is the first [`ID_BYTES`] of
//!   BLAKE3(public key) in lower-case base32: whoever shows the key and signs with it owns
//!   the id, and the id is short enough for a link.
//! - Registration: the inbox tells the server its id and public key (`register`); the server
//!   answers a fresh nonce (`challenge`), the inbox signs [`proof_message`] (`prove`), the
//!   server checks it with [`verify_proof`] and keeps `id → connection` while that
//!   connection lives (`registered`). Without the key nobody can claim the id; a second
//!   registration with the key (the inbox restarted) takes it over.
//! - Link: `http(s)://HOST[:PORT][/PREFIX]/i/ID#SECRET`. `SECRET` (≥ 128 random bits,
//!   base64url, in the fragment browsers never send) is the PAKE password of every drop: the
//!   server neither reads drops nor can pose as the inbox.
//! - A drop: the dropper `knock`s on the id; the server makes a room with the dropper as its
//!   creator and tells the inbox `drop {room}`; the inbox joins that room with the secret.
//!   From there it is a share like any other (PAKE, sealed signalling, the transfer).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use std::fmt;
use url::Url;

use crate::invite::InviteError;

/// Bytes of BLAKE3(public key) in an inbox id (80 bits: 16 base32 characters).
pub const ID_BYTES: usize = 10;
/// Bytes in a registration challenge.
pub const NONCE_BYTES: usize = 32;
/// What a registration proof signs before the id and the nonce: a signature for anything
/// else cannot be passed off as one.
const PROOF_CONTEXT: &[u8] = b"punchdrop inbox registration v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InboxError {
    #[error("not an inbox id: expected 16 letters and digits")]
    BadId,
    #[error("the inbox's public key is malformed")]
    BadKey,
    #[error("the inbox id does not belong to that key")]
    NotYours,
    #[error("the registration proof does not verify")]
    BadProof,
}

/// An inbox's id: lower-case base32 of the first [`ID_BYTES`] of BLAKE3(public key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboxId(String);

impl InboxId {
    /// The id of the inbox whose public key is `key`.
    pub fn of_key(key: &[u8; 32]) -> Self {
        let hash = blake3::hash(key);
        let id = data_encoding::BASE32_NOPAD.encode(&hash.as_bytes()[..ID_BYTES]);
        Self(id.to_ascii_lowercase())
    }

    /// An id as a link or a message carries it (either case).
    pub fn parse(s: &str) -> Result<Self, InboxError> {
        let upper = s.to_ascii_uppercase();
        match data_encoding::BASE32_NOPAD.decode(upper.as_bytes()) {
            Ok(raw) if raw.len() == ID_BYTES => Ok(Self(s.to_ascii_lowercase())),
            _ => Err(InboxError::BadId),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An inbox's link: where its server is, which inbox, and the secret of its drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxLink {
    /// The server's base URL, without a trailing slash.
    pub server: String,
    pub id: InboxId,
    pub secret: String,
}

impl InboxLink {
    pub fn new(server: &str, id: InboxId, secret: &str) -> Self {
        Self {
            server: server.trim_end_matches('/').to_string(),
            id,
            secret: secret.to_string(),
        }
    }

    /// Whether `s` looks like an inbox link (`…/i/…`) rather than a share link.
    pub fn looks_like(s: &str) -> bool {
        Url::parse(s.trim()).is_ok_and(|u| u.path().contains("/i/"))
    }

    pub fn parse(s: &str) -> Result<Self, InviteError> {
        let (server, id, secret) = crate::invite::link_parts(s, "/i/", |id| {
            InboxId::parse(id).is_ok()
        })
        .map_err(|e| match e {
            InviteError::NoRoom | InviteError::BadRoom => InviteError::BadInbox,
            e => e,
        })?;
        let id = InboxId::parse(&id).map_err(|_| InviteError::BadInbox)?;
        Ok(Self::new(&server, id, &secret))
    }

    /// The link of room `room` on this inbox's server with this inbox's secret: what the
    /// inbox joins a drop with.
    pub fn room_link(&self, room: &str) -> crate::invite::ShareLink {
        crate::invite::ShareLink::new(&self.server, room, &self.secret)
    }
}

impl fmt::Display for InboxLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/i/{}#{}", self.server, self.id, self.secret)
    }
}

/// What an inbox signs to prove it owns `id`, given the server's `nonce`.
pub fn proof_message(id: &InboxId, nonce: &[u8]) -> Vec<u8> {
    [PROOF_CONTEXT, id.as_str().as_bytes(), b"\0", nonce].concat()
}

/// The public key `key` (base64) is `id`'s.
pub fn key_of(id: &InboxId, key: &str) -> Result<VerifyingKey, InboxError> {
    let raw: [u8; 32] = B64
        .decode(key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or(InboxError::BadKey)?;
    let key = VerifyingKey::from_bytes(&raw).map_err(|_| InboxError::BadKey)?;
    if InboxId::of_key(&raw) != *id {
        return Err(InboxError::NotYours);
    }
    Ok(key)
}

/// `sig` (base64) is `key`'s signature of [`proof_message`] for `id` and `nonce`.
pub fn verify_proof(
    key: &VerifyingKey,
    id: &InboxId,
    nonce: &[u8],
    sig: &str,
) -> Result<(), InboxError> {
    let raw: [u8; 64] = B64
        .decode(sig)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(InboxError::BadProof)?;
    key.verify_strict(&proof_message(id, nonce), &Signature::from_bytes(&raw))
        .map_err(|_| InboxError::BadProof)
}

/// The key that seals an inbox's name: only link holders (who know `secret`) read it.
fn name_key(secret: &str) -> chacha20poly1305::ChaCha20Poly1305 {
    use chacha20poly1305::KeyInit as _;
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(NAME_SALT), secret.as_bytes());
    let mut key = [0u8; 32];
    hk.expand(b"inbox name", &mut key)
        .expect("32 bytes is a valid HKDF length");
    chacha20poly1305::ChaCha20Poly1305::new(&key.into())
}

const NAME_SALT: &[u8] = b"punchdrop/v1 inbox name";

/// The inbox's name as it registers it ([`crate::signal::ClientMessage::Register`]):
/// sealed with a key from its secret, so the server keeps and hands out what it cannot read.
pub fn seal_name(secret: &str, name: &str) -> String {
    use chacha20poly1305::aead::Aead as _;
    use rand::RngCore as _;
    let mut nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let sealed = name_key(secret)
        .encrypt(&nonce.into(), name.as_bytes())
        .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    B64.encode([&nonce[..], &sealed].concat())
}

/// The name [`seal_name`] sealed, if `secret` is the inbox's (and the name reads as one).
pub fn open_name(secret: &str, sealed: &str) -> Option<String> {
    use chacha20poly1305::aead::Aead as _;
    let raw = B64.decode(sealed).ok()?;
    if raw.len() < 12 {
        return None;
    }
    let (nonce, ct) = raw.split_at(12);
    let plain = name_key(secret).decrypt(nonce.into(), ct).ok()?;
    crate::device::clean_name(&String::from_utf8(plain).ok()?)
}

/// Base64 as the registration messages carry keys, nonces and signatures.
pub fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn an_id_is_sixteen_base32_characters_of_the_key_hash() {
        let k = key(1);
        let id = InboxId::of_key(k.verifying_key().as_bytes());
        assert_eq!(id.as_str().len(), 16);
        assert!(
            id.as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(InboxId::parse(&id.as_str().to_uppercase()).unwrap(), id);
        assert_ne!(InboxId::of_key(key(2).verifying_key().as_bytes()), id);
        for bad in ["", "abc", "0123456789abcdef", "aaaaaaaaaaaaaaaaaaaa"] {
            assert_eq!(InboxId::parse(bad), Err(InboxError::BadId), "{bad}");
        }
    }

    #[test]
    fn links_round_trip_and_bad_ones_say_why() {
        let id = InboxId::of_key(key(1).verifying_key().as_bytes());
        let secret = crate::invite::generate_secret();
        let link = InboxLink::new("https://drop.example/pd/", id.clone(), &secret);
        let text = link.to_string();
        assert_eq!(text, format!("https://drop.example/pd/i/{id}#{secret}"));
        assert!(InboxLink::looks_like(&text));
        assert!(!InboxLink::looks_like("https://drop.example/r/room#x"));
        assert_eq!(InboxLink::parse(&text).unwrap(), link);
        let room = link.room_link("abcd1234");
        assert_eq!(room.server, "https://drop.example/pd");
        assert_eq!(room.secret, secret);
        let cases = [
            (
                format!("https://drop.example/i/{id}"),
                InviteError::NoSecret,
            ),
            (
                format!("https://drop.example/i/{id}#short"),
                InviteError::BadSecret,
            ),
            (
                format!("https://drop.example/i/nope#{secret}"),
                InviteError::BadInbox,
            ),
            (
                format!("https://drop.example/i/#{secret}"),
                InviteError::BadInbox,
            ),
            (
                format!("ftp://drop.example/i/{id}#{secret}"),
                InviteError::BadScheme,
            ),
        ];
        for (bad, why) in cases {
            assert_eq!(InboxLink::parse(&bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn only_link_holders_read_the_inbox_name() {
        let sealed = seal_name("s3cret", "Anna's NAS");
        assert!(!sealed.contains("Anna"));
        assert_ne!(
            sealed,
            seal_name("s3cret", "Anna's NAS"),
            "a fresh nonce each time"
        );
        assert_eq!(open_name("s3cret", &sealed).as_deref(), Some("Anna's NAS"));
        assert_eq!(open_name("other", &sealed), None);
        assert_eq!(open_name("s3cret", "bm8="), None);
        assert_eq!(open_name("s3cret", "%%"), None);
        let long = seal_name("s3cret", &"n".repeat(crate::signal::MAX_SEALED_NAME));
        assert!(long.len() > crate::signal::MAX_SEALED_NAME);
        let max = seal_name("s3cret", &"\u{10000}".repeat(crate::device::MAX_NAME_CHARS));
        assert!(max.len() <= crate::signal::MAX_SEALED_NAME, "{}", max.len());
    }

    #[test]
    fn only_the_keys_owner_proves_an_id() {
        let (k, other) = (key(1), key(2));
        let id = InboxId::of_key(k.verifying_key().as_bytes());
        let nonce = [7u8; NONCE_BYTES];
        let public = encode(k.verifying_key().as_bytes());
        let vk = key_of(&id, &public).unwrap();
        let sig = encode(&k.sign(&proof_message(&id, &nonce)).to_bytes());
        assert_eq!(verify_proof(&vk, &id, &nonce, &sig), Ok(()));
        // Another key: it is not this id's, and its signature does not verify as this key's.
        let theirs = encode(other.verifying_key().as_bytes());
        assert_eq!(key_of(&id, &theirs), Err(InboxError::NotYours));
        let forged = encode(&other.sign(&proof_message(&id, &nonce)).to_bytes());
        assert_eq!(
            verify_proof(&vk, &id, &nonce, &forged),
            Err(InboxError::BadProof)
        );
        // A signature for another nonce (a replay) or of anything else.
        assert_eq!(
            verify_proof(&vk, &id, &[8u8; NONCE_BYTES], &sig),
            Err(InboxError::BadProof)
        );
        let bare = encode(&k.sign(&nonce).to_bytes());
        assert_eq!(
            verify_proof(&vk, &id, &nonce, &bare),
            Err(InboxError::BadProof)
        );
        assert_eq!(
            verify_proof(&vk, &id, &nonce, "!!"),
            Err(InboxError::BadProof)
        );
        assert_eq!(key_of(&id, "AAAA"), Err(InboxError::BadKey));
    }
}
