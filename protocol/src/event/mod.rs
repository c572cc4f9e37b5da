//! What a person or a program sees of a transfer: one vocabulary for both clients.
//!
//! native-peer prints these as newline-delimited JSON with `--json`; the browser client hands
//! them to the page; the end-to-end tests and the benchmarks read them back. The JSON is
//! `{"event": NAME, ...fields}`, field names are part of the interface (golden tests below),
//! and the README's event list is checked against this enum.
//!
//! Every payload is its own struct so readers can ask for one kind by type
//! ([`Payload::of`]).

use serde::{Deserialize, Serialize};

use crate::path::PathReport;

/// One thing that happened, in the order it happened.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A room exists: share the link (or the code, when one is shown).
    Ready(Ready),
    /// The room got a code after all (the creator asked for one once it was waiting).
    Code(Code),
    /// Both peers are in the room; the key exchange runs.
    Joined,
    /// The key exchange succeeded: both sides show the same words.
    Verify(Verify),
    /// The other peer receives and this side has nothing to send yet: pick files.
    Pick,
    /// The data channel is open.
    Connected(Connected),
    /// The connection to the other peer was lost with the transfer unfinished; this side waits
    /// for it to come back (a restarted receiver joining the same link again).
    Reconnecting(Reconnecting),
    /// A new connection to the other peer is open after `reconnecting`; the transfer continues
    /// from what the receiver holds.
    Reconnected(Reconnected),
    /// What the sender offers (receiving side).
    Offer(Offer),
    /// The receiver accepted; the transfer starts.
    Accepted(Accepted),
    /// A file's beginning, kept by the receiver from an interrupted transfer, matched the
    /// sender's: it continues from `offset` instead of being sent again.
    Resumed(Resumed),
    /// The beginning the receiver kept of a file differs from the sender's: that file starts
    /// over.
    FileRestarted(FileRestarted),
    /// The receiver got its first byte of file data.
    FirstByte(FirstByte),
    Progress(Progress),
    /// One file arrived verified and in place (each side says so as it learns it).
    FileDone(FileDone),
    Done(Done),
    /// This side declined the offer; nothing was saved.
    Declined,
    /// The transfer failed; `message` says why and what to do.
    Error(Failure),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub link: String,
    /// Only when the creator shows a code: a room without one cannot be joined by number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub code: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Verify {
    pub words: [String; 3],
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Connected {
    #[serde(flatten)]
    pub path: PathReport,
    /// Both peers in the room → data channel open.
    pub ms_since_room: f64,
}

/// One offered entry as the receiver shows it (names already checked safe).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OfferItem {
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub files: usize,
    pub bytes: u64,
    pub entries: Vec<OfferItem>,
}

impl From<&crate::transfer::Offer> for Offer {
    /// The event for an offer whose names all passed the checks.
    fn from(offer: &crate::transfer::Offer) -> Self {
        Self {
            files: offer.file_count(),
            bytes: offer.total_bytes,
            entries: offer
                .entries
                .iter()
                .map(|(safe, e)| OfferItem {
                    path: safe.as_str().to_string(),
                    size: e.size,
                    dir: e.dir,
                })
                .collect(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub files: usize,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    pub index: u32,
    pub offset: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileRestarted {
    pub index: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReconnectReason {
    /// The connection failed or closed under the transfer.
    LinkLost,
    /// The other peer's program left the room (it stopped, or it is already back).
    PeerLeft,
    /// The path under the connection went down: the same connection is being brought back
    /// (an ICE restart through the room), with the transfer where it stopped.
    PathDown,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reconnecting {
    pub reason: ReconnectReason,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Reconnected {
    #[serde(flatten)]
    pub path: PathReport,
    /// The other peer back in the room → data channel open again; for a connection brought
    /// back in place (after `reconnecting` `path_down`), since both peers met in the room.
    pub ms_since_room: f64,
}

impl From<Connected> for Reconnected {
    fn from(c: Connected) -> Self {
        Self {
            path: c.path,
            ms_since_room: c.ms_since_room,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FirstByte {
    pub ms_since_room: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    pub total: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileDone {
    pub index: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Done {
    pub files: usize,
    pub bytes: u64,
    /// Bytes this run moved: `bytes` less what the receiver held from an interrupted
    /// transfer and continued.
    pub transferred: u64,
    /// Accept → last file verified.
    pub seconds: f64,
    /// The path as it was at the end (ICE may move between open and done).
    #[serde(flatten)]
    pub path: PathReport,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
}

impl Event {
    /// The `event` field: `ready`, `joined`, …
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ready(_) => "ready",
            Self::Code(_) => "code",
            Self::Joined => "joined",
            Self::Verify(_) => "verify",
            Self::Pick => "pick",
            Self::Connected(_) => "connected",
            Self::Reconnecting(_) => "reconnecting",
            Self::Reconnected(_) => "reconnected",
            Self::Offer(_) => "offer",
            Self::Accepted(_) => "accepted",
            Self::Resumed(_) => "resumed",
            Self::FileRestarted(_) => "file_restarted",
            Self::FirstByte(_) => "first_byte",
            Self::Progress(_) => "progress",
            Self::FileDone(_) => "file_done",
            Self::Done(_) => "done",
            Self::Declined => "declined",
            Self::Error(_) => "error",
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events always serialise")
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self::Error(Failure {
            message: message.into(),
        })
    }
}

/// An event payload that can be picked out of an [`Event`] by type.
pub trait Payload: Sized {
    /// The event's name.
    const NAME: &'static str;
    fn of(event: &Event) -> Option<&Self>;
}

macro_rules! payloads {
    ($($variant:ident($ty:ident) = $name:literal),* $(,)?) => {$(
        impl Payload for $ty {
            const NAME: &'static str = $name;
            fn of(event: &Event) -> Option<&Self> {
                match event {
                    Event::$variant(p) => Some(p),
                    _ => None,
                }
            }
        }
        impl From<$ty> for Event {
            fn from(p: $ty) -> Self {
                Event::$variant(p)
            }
        }
    )*};
}

payloads! {
    Ready(Ready) = "ready",
    Code(Code) = "code",
    Verify(Verify) = "verify",
    Connected(Connected) = "connected",
    Reconnecting(Reconnecting) = "reconnecting",
    Reconnected(Reconnected) = "reconnected",
    Offer(Offer) = "offer",
    Accepted(Accepted) = "accepted",
    Resumed(Resumed) = "resumed",
    FileRestarted(FileRestarted) = "file_restarted",
    FirstByte(FirstByte) = "first_byte",
    Progress(Progress) = "progress",
    FileDone(FileDone) = "file_done",
    Done(Done) = "done",
    Error(Failure) = "error",
}

/// The first event of kind `T` in `events`.
pub fn find<T: Payload>(events: &[Event]) -> Option<&T> {
    events.iter().find_map(T::of)
}

#[cfg(test)]
mod tests;
