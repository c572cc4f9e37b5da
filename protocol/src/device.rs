//! Devices paired with an inbox (`native-peer inbox --paired-only`): how a dropping device
//! proves its key, and the one-time codes that pair it.
//!
//! - A device holds an Ed25519 key **per inbox** (a browser keeps a non-extractable
//!   WebCrypto key per inbox id; native-peer derives one per inbox id from a seed in its
//!   state directory), so two inboxes cannot tell they met the same device.
//! - Before its offer the sender sends a [`DeviceProof`] over the transfer's data channel:
//!   the key's signature of [`proof_message`] for the session's binding
//!   ([`crate::crypto::Channel::binding`]), which only the two peers of that session know.
//!   The proof cannot be replayed into another session: not by the server, not by the inbox.
//! - Pairing: the inbox's owner makes a one-time code ([`PairingCode`]); a device that sends
//!   it with its proof is added under the name it gives, and the code is spent.
//! - The inbox recognises a device by its key, never by the name it claims: the name is
//!   taken once, at pairing, and is what the owner lists and revokes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

/// What a device proof signs before the session's binding.
const PROOF_CONTEXT: &[u8] = b"punchdrop device proof v1\0";
/// The longest device name kept, in characters.
pub const MAX_NAME_CHARS: usize = 48;
/// Characters of a pairing code (without its dash): 30^8 ≈ 2^39, in an alphabet without
/// look-alikes.
const CODE_CHARS: usize = 8;
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTVWXYZ23456789";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("the device's key is malformed")]
    BadKey,
    #[error("the device's proof does not verify")]
    BadProof,
}

/// A sender's proof that it holds a device key, for this session only.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceProof {
    /// The Ed25519 public key, base64.
    pub key: String,
    /// Its signature of [`proof_message`] for the session's binding, base64.
    pub sig: String,
    /// The name the device gives itself (taken at pairing).
    pub name: String,
    /// A pairing code, to be paired by this drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
}

impl DeviceProof {
    /// The proof's key, once its signature of this session's `binding` checks.
    pub fn verify(&self, binding: &[u8; 32]) -> Result<[u8; 32], DeviceError> {
        let raw: [u8; 32] = decode(&self.key).ok_or(DeviceError::BadKey)?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| DeviceError::BadKey)?;
        let sig: [u8; 64] = decode(&self.sig).ok_or(DeviceError::BadProof)?;
        key.verify_strict(&proof_message(binding), &Signature::from_bytes(&sig))
            .map_err(|_| DeviceError::BadProof)?;
        Ok(raw)
    }
}

fn decode<const N: usize>(b64: &str) -> Option<[u8; N]> {
    B64.decode(b64).ok()?.try_into().ok()
}

/// What a device signs for a session with binding `binding`.
pub fn proof_message(binding: &[u8; 32]) -> Vec<u8> {
    [PROOF_CONTEXT, binding].concat()
}

/// A device name as it may be shown and kept: control characters gone, white space
/// collapsed, at most [`MAX_NAME_CHARS`]; `None` if nothing is left.
pub fn clean_name(name: &str) -> Option<String> {
    // Invisible characters (zero-width, bidi controls, soft hyphen, BOM) would make two
    // names that look the same, or one that reads backwards.
    let invisible = |c: char| {
        matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    let name: String = name.chars().filter(|c| !invisible(*c)).collect();
    let words: Vec<&str> = name
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let joined: String = words.join(" ").chars().take(MAX_NAME_CHARS).collect();
    let joined = joined.trim_end().to_string();
    (!joined.is_empty()).then_some(joined)
}

/// A one-time pairing code, `XXXX-XXXX`; typed in either case, with or without the dash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingCode(String);

impl PairingCode {
    pub fn generate() -> Self {
        use rand::Rng as _;
        let mut rng = rand::thread_rng();
        let code = (0..CODE_CHARS)
            .map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())]))
            .collect();
        Self(code)
    }

    /// A code as someone typed it: `None` if it cannot be one.
    pub fn parse(typed: &str) -> Option<Self> {
        let code: String = typed
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let ok = code.len() == CODE_CHARS && code.bytes().all(|b| CODE_ALPHABET.contains(&b));
        ok.then_some(Self(code))
    }

    /// What an inbox keeps of the code (never the code itself): BLAKE3, hex.
    pub fn digest(&self) -> String {
        blake3::hash(self.0.as_bytes()).to_hex().to_string()
    }
}

impl std::fmt::Display for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", &self.0[..4], &self.0[4..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn proof(key: &SigningKey, binding: &[u8; 32]) -> DeviceProof {
        DeviceProof {
            key: B64.encode(key.verifying_key().as_bytes()),
            sig: B64.encode(key.sign(&proof_message(binding)).to_bytes()),
            name: "phone".into(),
            pair: None,
        }
    }

    #[test]
    fn a_proof_holds_for_its_session_only() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let p = proof(&key, &[1; 32]);
        assert_eq!(p.verify(&[1; 32]), Ok(*key.verifying_key().as_bytes()));
        assert_eq!(p.verify(&[2; 32]), Err(DeviceError::BadProof));
        let other = SigningKey::from_bytes(&[8; 32]);
        let forged = DeviceProof {
            key: B64.encode(other.verifying_key().as_bytes()),
            ..p.clone()
        };
        assert_eq!(forged.verify(&[1; 32]), Err(DeviceError::BadProof));
        let bad = DeviceProof {
            key: "bm8=".into(),
            ..p
        };
        assert_eq!(bad.verify(&[1; 32]), Err(DeviceError::BadKey));
    }

    #[test]
    fn golden_json() {
        let p = DeviceProof {
            key: "a2V5".into(),
            sig: "c2ln".into(),
            name: "Anna's phone".into(),
            pair: Some("ABCD-EFGH".into()),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"key":"a2V5","sig":"c2ln","name":"Anna's phone","pair":"ABCD-EFGH"}"#
        );
        assert_eq!(serde_json::from_str::<DeviceProof>(&json).unwrap(), p);
    }

    #[test]
    fn names_are_cleaned_and_codes_read_as_typed() {
        assert_eq!(clean_name("  Anna's\tphone\n"), Some("Anna's phone".into()));
        assert_eq!(clean_name("\u{7}\u{1b}[2J"), Some("[2J".into()));
        assert_eq!(clean_name(" \n "), None);
        assert_eq!(clean_name("ph\u{200b}one\u{202e}"), Some("phone".into()));
        assert_eq!(clean_name(&"x".repeat(100)).unwrap().len(), MAX_NAME_CHARS);
        let code = PairingCode::generate();
        let shown = code.to_string();
        assert_eq!(shown.len(), CODE_CHARS + 1);
        assert_eq!(
            PairingCode::parse(&shown.to_lowercase()),
            Some(code.clone())
        );
        assert_eq!(
            PairingCode::parse(&shown.replace('-', " ")),
            Some(code.clone())
        );
        assert_eq!(PairingCode::parse("ABCD-EFG"), None);
        assert_eq!(
            PairingCode::parse("ABCD-EFG1"),
            None,
            "1 is not in the alphabet"
        );
        assert_ne!(code.digest(), PairingCode::generate().digest());
    }
}
