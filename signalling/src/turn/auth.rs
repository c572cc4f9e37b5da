//! Long-term credentials for the TURN server, from [`TurnSecret`]'s REST-API usernames.
//!
//! The turn crate asks for the long-term key `MD5(username:realm:password)` of a username and
//! checks MESSAGE-INTEGRITY with it, so a forged password or an altered username (another
//! expiry, another room's tag) fails there. The realm is always ours, whatever the request
//! claims: a request made for another realm then fails the integrity check too.
//!
//! A server holds one secret; a volunteer relay holds the secrets of its registrations, newest
//! first ([`Auth::add_secret`]), so allocations made under an earlier registration can still
//! be refreshed. Usernames minted for it name their secret
//! ([`TurnSecret::mint_tagged`]); an untagged one is checked against the newest.

use crate::credentials::{CredentialError, TurnSecret};
use std::net::SocketAddr;
use std::time::SystemTime;

/// Secrets a relay keeps at most (the newest first).
const MAX_SECRETS: usize = 4;

#[derive(Debug)]
pub(crate) struct Auth {
    secrets: std::sync::Mutex<Vec<TurnSecret>>,
    realm: String,
}

impl Auth {
    pub fn new(secret: TurnSecret, realm: String) -> Self {
        Self {
            secrets: std::sync::Mutex::new(vec![secret]),
            realm,
        }
    }

    /// Check new credentials against `secret` from now on, and older ones against theirs.
    pub fn add_secret(&self, secret: TurnSecret) {
        let mut secrets = super::lock(&self.secrets);
        secrets.retain(|s| s.as_bytes() != secret.as_bytes());
        secrets.insert(0, secret);
        secrets.truncate(MAX_SECRETS);
    }

    /// The secret `username` names (by its key id), else the newest.
    fn secret_for(&self, username: &str) -> TurnSecret {
        let secrets = super::lock(&self.secrets);
        let named = username
            .rsplit_once('.')
            .and_then(|(_, kid)| secrets.iter().find(|s| s.key_id() == kid));
        named.unwrap_or(&secrets[0]).clone()
    }

    /// The long-term key for `username`, if it is well formed and has not expired.
    pub fn key(&self, username: &str) -> Result<Vec<u8>, CredentialError> {
        let password = self
            .secret_for(username)
            .check(username, SystemTime::now())?;
        Ok(turn::auth::generate_auth_key(
            username,
            &self.realm,
            &password,
        ))
    }
}

// Refusals are counted by the gate (`gate.rs`), which sees every authenticated request,
// including those whose username is fine but whose MESSAGE-INTEGRITY is not: this handler
// cannot tell those apart, the turn crate checks integrity after calling it.
impl turn::auth::AuthHandler for Auth {
    fn auth_handle(
        &self,
        username: &str,
        _realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.key(username)
            .map_err(|e| turn::Error::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A volunteer registering again checks new credentials with its new secret and keeps
    /// checking those minted with the old one; an untagged username goes to the newest.
    #[test]
    fn tagged_usernames_are_checked_with_their_own_secret() {
        let (old, new) = (
            TurnSecret::new(b"old".to_vec()),
            TurnSecret::new(b"new".to_vec()),
        );
        let auth = Auth::new(old.clone(), "punchdrop".into());
        let ttl = Duration::from_secs(60);
        let (old_user, old_pass) = old.mint_tagged("room", ttl, SystemTime::now());
        auth.add_secret(new.clone());
        let (new_user, new_pass) = new.mint_tagged("room", ttl, SystemTime::now());
        let key = |u: &str, p: &str| turn::auth::generate_auth_key(u, "punchdrop", p);
        assert_eq!(auth.key(&old_user).unwrap(), key(&old_user, &old_pass));
        assert_eq!(auth.key(&new_user).unwrap(), key(&new_user, &new_pass));
        let (plain_user, plain_pass) = new.mint("room", ttl, SystemTime::now());
        assert_eq!(
            auth.key(&plain_user).unwrap(),
            key(&plain_user, &plain_pass)
        );
        for i in 0..MAX_SECRETS {
            auth.add_secret(TurnSecret::new(vec![i as u8]));
        }
        assert_ne!(
            auth.key(&old_user).unwrap(),
            key(&old_user, &old_pass),
            "only the last few secrets are kept"
        );
    }
}
