//! Long-term credentials for the TURN server, from [`TurnSecret`]'s REST-API usernames.
//!
//! The turn crate asks for the long-term key `MD5(username:realm:password)` of a username and
//! checks MESSAGE-INTEGRITY with it, so a forged password or an altered username (another
//! expiry, another room's tag) fails there. The realm is always ours, whatever the request
//! claims: a request made for another realm then fails the integrity check too.

use crate::credentials::{CredentialError, TurnSecret};
use std::net::SocketAddr;
use std::time::SystemTime;

#[derive(Debug)]
pub(crate) struct Auth {
    secret: TurnSecret,
    realm: String,
}

impl Auth {
    pub fn new(secret: TurnSecret, realm: String) -> Self {
        Self { secret, realm }
    }

    /// The long-term key for `username`, if it is well formed and has not expired.
    pub fn key(&self, username: &str) -> Result<Vec<u8>, CredentialError> {
        let password = self.secret.check(username, SystemTime::now())?;
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
