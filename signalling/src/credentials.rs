//! Short-lived TURN credentials in the TURN REST API style, shared with external TURN servers
//! (coturn's `use-auth-secret` / `static-auth-secret`).
//!
//! `username = "EXPIRY:TAG"` (EXPIRY in Unix seconds), `password = base64(HMAC-SHA1(secret,
//! username))`. Anyone holding the secret can check a credential without state; changing any
//! byte of the username (another expiry, another room's tag) changes the password.
//!
//! TAG names the room without revealing its id: the first 12 hex digits of
//! HMAC-SHA256(secret, "room " + room id).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
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
    const EXPECTED: &str = "DQgKc6CR2r8BFi21Ud3YlAFbnPA=";
}
