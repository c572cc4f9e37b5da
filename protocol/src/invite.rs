//! Share links and typed codes: how one peer tells the other where to meet and what secret to
//! prove.
//!
//! - Link: `http(s)://HOST[:PORT][/PREFIX]/r/ROOM#SECRET`. `ROOM` is the server's room id;
//!   `SECRET` is ≥ 128 random bits, base64url, and sits in the fragment, which browsers never
//!   send to the server. A link carries its own server.
//! - Code: `NNN-word-word-word`. `NNN` is the short room number the server allocated; the words
//!   are the PAKE password (24 bits, made safe by the server's one-try-per-room rule).
//!
//! The PAKE password is the secret's bytes for a link, the canonical code text for a code.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand::RngCore as _;
use std::fmt;
use url::Url;

use crate::words;

/// Random bytes in a link secret.
pub const SECRET_BYTES: usize = 16;
/// Largest room number a code may carry.
pub const MAX_ROOM_NUMBER: u32 = 999_999;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("not a punchdrop link: {0}")]
    BadUrl(String),
    #[error("the link must start with http:// or https://")]
    BadScheme,
    #[error("the link has no room: expected …/r/ROOM#SECRET")]
    NoRoom,
    #[error("the room id in the link is malformed")]
    BadRoom,
    #[error("the inbox id in the link is missing or malformed: copy the whole link")]
    BadInbox,
    #[error("the link has no secret after '#': copy the whole link")]
    NoSecret,
    #[error("the secret in the link is malformed or too short: copy the whole link")]
    BadSecret,
    #[error("a code looks like 123-word-word-word")]
    BadCodeShape,
    #[error("the code's number is not valid")]
    BadCodeNumber,
    #[error("'{0}' is not one of punchdrop's code words: check the spelling")]
    UnknownWord(String),
}

/// Room ids: what the server hands out and what links may carry.
pub fn valid_room_id(room: &str) -> bool {
    (4..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A parsed share link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareLink {
    /// The server's base URL, without a trailing slash (e.g. `https://drop.example`).
    pub server: String,
    pub room: String,
    pub secret: String,
}

impl ShareLink {
    pub fn new(server: &str, room: &str, secret: &str) -> Self {
        Self {
            server: server.trim_end_matches('/').to_string(),
            room: room.to_string(),
            secret: secret.to_string(),
        }
    }

    pub fn parse(s: &str) -> Result<Self, InviteError> {
        let (server, room, secret) = link_parts(s, "/r/", valid_room_id)?;
        Ok(Self::new(&server, &room, &secret))
    }

    /// The PAKE password.
    pub fn password(&self) -> Vec<u8> {
        B64URL
            .decode(&self.secret)
            .unwrap_or_else(|_| self.secret.as_bytes().to_vec())
    }
}

impl fmt::Display for ShareLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/r/{}#{}", self.server, self.room, self.secret)
    }
}

/// A link's server (its base URL), the name after `marker` in its path (`/r/ROOM`,
/// `/i/INBOX`; `valid` says whether it is well formed) and its secret, or what is wrong.
pub(crate) fn link_parts(
    s: &str,
    marker: &str,
    valid: impl Fn(&str) -> bool,
) -> Result<(String, String, String), InviteError> {
    let url = Url::parse(s.trim()).map_err(|e| InviteError::BadUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(InviteError::BadScheme);
    }
    let path = url.path();
    let cut = path.rfind(marker).ok_or(InviteError::NoRoom)?;
    let name = path[cut + marker.len()..].trim_end_matches('/');
    if name.is_empty() {
        return Err(InviteError::NoRoom);
    }
    if !valid(name) {
        return Err(InviteError::BadRoom);
    }
    let secret = url
        .fragment()
        .filter(|f| !f.is_empty())
        .ok_or(InviteError::NoSecret)?;
    match B64URL.decode(secret) {
        Ok(raw) if raw.len() >= SECRET_BYTES => {}
        _ => return Err(InviteError::BadSecret),
    }
    let mut server = url.clone();
    server.set_fragment(None);
    server.set_query(None);
    server.set_path(&path[..cut]);
    Ok((
        server.as_str().to_string(),
        name.to_string(),
        secret.to_string(),
    ))
}

/// A fresh link secret: [`SECRET_BYTES`] random bytes, base64url.
pub fn generate_secret() -> String {
    let mut raw = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    B64URL.encode(raw)
}

/// A typed code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortCode {
    pub number: u32,
    pub words: [u8; 3],
}

impl ShortCode {
    /// A code for room `number` with fresh random words.
    pub fn generate(number: u32) -> Self {
        let mut words = [0u8; 3];
        rand::rngs::OsRng.fill_bytes(&mut words);
        Self { number, words }
    }

    /// Accepts `123-word-word-word`, case-insensitive, with `-` or spaces between parts.
    pub fn parse(s: &str) -> Result<Self, InviteError> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() != 4 {
            return Err(InviteError::BadCodeShape);
        }
        if parts[0].len() > 6 || !parts[0].bytes().all(|b| b.is_ascii_digit()) {
            return Err(InviteError::BadCodeNumber);
        }
        let number: u32 = parts[0].parse().map_err(|_| InviteError::BadCodeNumber)?;
        if number == 0 || number > MAX_ROOM_NUMBER {
            return Err(InviteError::BadCodeNumber);
        }
        let mut words = [0u8; 3];
        for (slot, w) in words.iter_mut().zip(&parts[1..]) {
            *slot = words::index(w).ok_or_else(|| InviteError::UnknownWord(w.to_string()))?;
        }
        Ok(Self { number, words })
    }

    /// The PAKE password: the canonical code text.
    pub fn password(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.words.map(words::word);
        write!(f, "{}-{a}-{b}-{c}", self.number)
    }
}

/// What a user typed or pasted to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invitation {
    Link(ShareLink),
    Code(ShortCode),
}

impl Invitation {
    /// A link if it has a scheme, else a code.
    pub fn parse(s: &str) -> Result<Self, InviteError> {
        if s.contains("://") {
            ShareLink::parse(s).map(Self::Link)
        } else {
            ShortCode::parse(s).map(Self::Code)
        }
    }
}

/// The WebSocket URL of a server given by its base URL (`http(s)://host[:port][/prefix]`).
pub fn websocket_url(server: &str) -> Result<String, InviteError> {
    endpoint_url(server, "ws")
}

/// The WebSocket URL volunteer relays register on ([`crate::relay`]).
pub fn relay_url(server: &str) -> Result<String, InviteError> {
    endpoint_url(server, "relay")
}

fn endpoint_url(server: &str, endpoint: &str) -> Result<String, InviteError> {
    let mut url = Url::parse(server.trim()).map_err(|e| InviteError::BadUrl(e.to_string()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(InviteError::BadScheme),
    };
    url.set_scheme(scheme)
        .map_err(|()| InviteError::BadScheme)?;
    url.set_fragment(None);
    url.set_query(None);
    let path = format!("{}/{endpoint}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_round_trip() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 22);
        let link = ShareLink::new("http://127.0.0.1:8080/", "abcDEF12", &secret);
        let text = link.to_string();
        assert_eq!(text, format!("http://127.0.0.1:8080/r/abcDEF12#{secret}"));
        assert_eq!(ShareLink::parse(&text).unwrap(), link);
        assert_eq!(link.password().len(), SECRET_BYTES);
    }

    #[test]
    fn link_keeps_path_prefix() {
        let s = generate_secret();
        let link = ShareLink::parse(&format!("https://ex.org/drop/r/room1234#{s}")).unwrap();
        assert_eq!(link.server, "https://ex.org/drop");
        assert_eq!(websocket_url(&link.server).unwrap(), "wss://ex.org/drop/ws");
        assert_eq!(relay_url(&link.server).unwrap(), "wss://ex.org/drop/relay");
        assert_eq!(
            websocket_url("http://127.0.0.1:9/").unwrap(),
            "ws://127.0.0.1:9/ws"
        );
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        let s = generate_secret();
        assert_eq!(
            ShareLink::parse(&format!("ftp://x/r/room1234#{s}")),
            Err(InviteError::BadScheme)
        );
        assert_eq!(
            ShareLink::parse(&format!("http://x/room1234#{s}")),
            Err(InviteError::NoRoom)
        );
        assert_eq!(
            ShareLink::parse("http://x/r/room1234"),
            Err(InviteError::NoSecret)
        );
        assert_eq!(
            ShareLink::parse("http://x/r/room1234#short"),
            Err(InviteError::BadSecret)
        );
        assert_eq!(
            ShareLink::parse(&format!("http://x/r/r%2F..#{s}")),
            Err(InviteError::BadRoom)
        );
        assert!(matches!(
            ShareLink::parse("http://"),
            Err(InviteError::BadUrl(_))
        ));
    }

    #[test]
    fn code_round_trip_and_leniency() {
        let code = ShortCode::generate(417);
        let text = code.to_string();
        assert_eq!(ShortCode::parse(&text).unwrap(), code);
        assert_eq!(
            ShortCode::parse(&format!("  {}  ", text.to_uppercase())).unwrap(),
            code
        );
        assert_eq!(ShortCode::parse(&text.replace('-', " ")).unwrap(), code);
        assert_eq!(code.password(), text.into_bytes());
    }

    #[test]
    fn bad_codes_say_what_is_wrong() {
        assert_eq!(
            ShortCode::parse("12-acid-acorn"),
            Err(InviteError::BadCodeShape)
        );
        assert_eq!(
            ShortCode::parse("x1-acid-acorn-actor"),
            Err(InviteError::BadCodeNumber)
        );
        assert_eq!(
            ShortCode::parse("0-acid-acorn-actor"),
            Err(InviteError::BadCodeNumber)
        );
        assert_eq!(
            ShortCode::parse("1234567-acid-acorn-actor"),
            Err(InviteError::BadCodeNumber)
        );
        assert_eq!(
            ShortCode::parse("12-acid-acron-actor"),
            Err(InviteError::UnknownWord("acron".into()))
        );
    }

    #[test]
    fn invitation_dispatches_on_scheme() {
        assert!(matches!(
            Invitation::parse("5-acid-acorn-actor"),
            Ok(Invitation::Code(_))
        ));
        let s = generate_secret();
        assert!(matches!(
            Invitation::parse(&format!("http://h/r/abcd#{s}")),
            Ok(Invitation::Link(_))
        ));
    }
}
