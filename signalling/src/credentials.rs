//! Short-lived TURN credentials in the TURN REST API style, shared with external TURN servers
//! (coturn's `use-auth-secret` / `static-auth-secret`).
//!
//! `username = "EXPIRY:TAG"` (EXPIRY in Unix seconds), `password = base64(HMAC-SHA1(secret,
//! username))`. Anyone holding the secret can check a credential without state; changing any
//! byte of the username (another expiry, another room's tag) changes the password.
//!
//! TAG names the room without revealing its id: the first 12 hex digits of
//! HMAC-SHA256(secret, "room " + room id).
//!
//! Volunteer relays ([`protocol::relay`]) get a secret of their own, derived from this one
//! and their id ([`TurnSecret::for_relay`]): they check the credentials minted for them and
//! can mint none for the server's TURN or another relay. The operator admits them with relay
//! tokens ([`TurnSecret::relay_token`]): `rt1.EXPIRY.NONCE.MAC`, checked without state by
//! any node holding the secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha1 = Hmac<sha1::Sha1>;
type HmacSha256 = Hmac<sha2::Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("malformed TURN username")]
    Malformed,
    #[error("expired TURN credential")]
    Expired,
}

/// Why a relay token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum RelayTokenError {
    #[error("malformed or forged relay token")]
    Bad,
    #[error("expired relay token")]
    Expired,
}

/// The secret shared between the credential issuer and the TURN servers.
#[derive(Clone)]
pub struct TurnSecret(Vec<u8>);

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSecret(…)")
    }
}

impl TurnSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// A fresh random secret, for a bundled TURN server nobody else needs to share.
    pub fn random() -> Self {
        use rand::RngCore as _;
        let mut s = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut s);
        Self(s)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The password for `username`.
    pub fn password(&self, username: &str) -> String {
        let mut mac = HmacSha1::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(username.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    /// The tag that names `room` in usernames.
    pub fn room_tag(&self, room: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"room ");
        mac.update(room.as_bytes());
        let d = mac.finalize().into_bytes();
        d[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Username and password valid for `ttl` from `now`, for `room`.
    pub fn mint(&self, room: &str, ttl: Duration, now: SystemTime) -> (String, String) {
        let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default() + ttl;
        let username = format!("{}:{}", expiry.as_secs(), self.room_tag(room));
        let password = self.password(&username);
        (username, password)
    }

    /// Username and password like [`TurnSecret::mint`]'s, the username ending in
    /// `.`[`TurnSecret::key_id`]: for a relay that holds several secrets (a volunteer keeps
    /// the secrets of its earlier registrations for the allocations made under them), so it
    /// knows which one to check against.
    pub fn mint_tagged(&self, room: &str, ttl: Duration, now: SystemTime) -> (String, String) {
        let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default() + ttl;
        let username = format!(
            "{}:{}.{}",
            expiry.as_secs(),
            self.room_tag(room),
            self.key_id()
        );
        let password = self.password(&username);
        (username, password)
    }

    /// A short public name of this secret (HMAC-SHA256(secret, "key id"), 6 hex digits).
    pub fn key_id(&self) -> String {
        self.mac256(&[b"key id"])[..3]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The secret of volunteer relay `id`: HMAC-SHA256(secret, "volunteer relay " + id).
    pub fn for_relay(&self, id: &str) -> TurnSecret {
        TurnSecret(self.mac256(&[b"volunteer relay ", id.as_bytes()]).to_vec())
    }

    /// A token admitting a volunteer relay until `expiry` (`signalling --issue-relay-token`).
    pub fn relay_token(&self, expiry: SystemTime) -> String {
        let expiry = expiry
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let nonce: u64 = rand::random();
        let body = format!("rt1.{expiry}.{nonce:016x}");
        format!("{body}.{}", self.token_mac(&body))
    }

    /// Whether `token` is one of ours and still valid at `now`.
    pub fn check_relay_token(&self, token: &str, now: SystemTime) -> Result<(), RelayTokenError> {
        let (body, mac) = token.rsplit_once('.').ok_or(RelayTokenError::Bad)?;
        let given = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| RelayTokenError::Bad)?;
        if given.len() != TOKEN_MAC_LEN {
            return Err(RelayTokenError::Bad);
        }
        // Constant time (a token is a bearer credential).
        self.hmac256(&[b"relay token ", body.as_bytes()])
            .verify_truncated_left(&given)
            .map_err(|_| RelayTokenError::Bad)?;
        let mut parts = body.split('.');
        let (Some("rt1"), Some(expiry), Some(_nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(RelayTokenError::Bad);
        };
        let expiry: u64 = expiry.parse().map_err(|_| RelayTokenError::Bad)?;
        if expiry <= now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() {
            return Err(RelayTokenError::Expired);
        }
        Ok(())
    }

    fn token_mac(&self, body: &str) -> String {
        let d = self
            .hmac256(&[b"relay token ", body.as_bytes()])
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(&d[..TOKEN_MAC_LEN])
    }

    fn mac256(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.hmac256(parts).finalize().into_bytes().into()
    }

    fn hmac256(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac
    }

    /// For a TURN server: the password `username` must prove, if it has not expired. The
    /// message-integrity check against it is what rejects forged or altered usernames.
    pub fn check(&self, username: &str, now: SystemTime) -> Result<String, CredentialError> {
        let (expiry, tag) = username.split_once(':').ok_or(CredentialError::Malformed)?;
        let expiry: u64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
        if tag.is_empty() || tag.len() > 64 {
            return Err(CredentialError::Malformed);
        }
        if expiry <= now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() {
            return Err(CredentialError::Expired);
        }
        Ok(self.password(username))
    }
}

/// Bytes of MAC a relay token carries (base64url in the token).
const TOKEN_MAC_LEN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_check_agree_and_expire() {
        let s = TurnSecret::new(b"north".to_vec());
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (user, pass) = s.mint("room1", Duration::from_secs(3600), now);
        assert!(user.starts_with("1700003600:"));
        assert_eq!(s.check(&user, now).unwrap(), pass);
        assert_eq!(
            s.check(&user, now + Duration::from_secs(3600)),
            Err(CredentialError::Expired)
        );
        assert_eq!(s.check("nocolon", now), Err(CredentialError::Malformed));
        assert_eq!(s.check("x:tag", now), Err(CredentialError::Malformed));
    }

    #[test]
    fn rooms_and_secrets_give_different_credentials() {
        let s = TurnSecret::new(b"north".to_vec());
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (ua, pa) = s.mint("room-a", Duration::from_secs(60), now);
        let (ub, pb) = s.mint("room-b", Duration::from_secs(60), now);
        assert_ne!(ua, ub);
        assert_ne!(pa, pb);
        // Presenting room A's password under room B's username does not verify.
        assert_ne!(s.check(&ub, now).unwrap(), pa);
        assert_ne!(TurnSecret::new(b"south".to_vec()).password(&ua), pa);
        assert!(!ua.contains("room-a"), "the room id is not in the username");
    }

    /// The REST-API formula, checked against a value computed independently
    /// (`printf %s '1700003600:abc' | openssl dgst -sha1 -hmac secret -binary | base64`).
    #[test]
    fn password_matches_the_rest_api_formula() {
        let s = TurnSecret::new(b"secret".to_vec());
        assert_eq!(s.password("1700003600:abc"), EXPECTED);
    }
    #[test]
    fn relay_tokens_and_secrets() {
        let s = TurnSecret::new(b"north".to_vec());
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = s.relay_token(now + Duration::from_secs(3600));
        assert!(token.starts_with("rt1.1700003600."), "{token}");
        assert_eq!(s.check_relay_token(&token, now), Ok(()));
        assert_eq!(
            s.check_relay_token(&token, now + Duration::from_secs(3600)),
            Err(RelayTokenError::Expired)
        );
        let other = TurnSecret::new(b"south".to_vec());
        assert_eq!(
            other.check_relay_token(&token, now),
            Err(RelayTokenError::Bad)
        );
        // A later expiry under the same MAC is a forgery.
        let forged = token.replacen("1700003600", "1900003600", 1);
        assert_eq!(s.check_relay_token(&forged, now), Err(RelayTokenError::Bad));
        for bad in ["", "rt1", "rt1.x.y.z", "a.b"] {
            assert_eq!(
                s.check_relay_token(bad, now),
                Err(RelayTokenError::Bad),
                "{bad}"
            );
        }
        // Each relay's secret is its own and not the master's.
        let (a, b) = (s.for_relay("a"), s.for_relay("b"));
        // A tagged username names its secret, and only that secret's password checks.
        let (user, pass) = a.mint_tagged("room", Duration::from_secs(60), now);
        assert!(user.ends_with(&format!(".{}", a.key_id())), "{user}");
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.check(&user, now).unwrap(), pass);
        assert_ne!(b.check(&user, now).unwrap(), pass);
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), s.as_bytes());
        let (user, pass) = a.mint("room", Duration::from_secs(60), now);
        assert_eq!(a.check(&user, now).unwrap(), pass);
        assert_ne!(s.check(&user, now).unwrap(), pass);
        assert_ne!(b.check(&user, now).unwrap(), pass);
    }

    const EXPECTED: &str = "DQgKc6CR2r8BFi21Ud3YlAFbnPA=";
}
