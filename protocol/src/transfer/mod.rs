//! The file-transfer protocol, written once and driven by every peer (native and browser).
//!
//! One reliable, ordered data channel carries binary frames ([`frame`]). A [`Sender`] and a
//! [`Receiver`] are sans-IO state machines: the caller feeds them received frames and the
//! current time, and takes out frames to send, timers to arm and events to act on. They never
//! touch files or sockets: the sender says which byte range to read next ([`ReadRequest`]),
//! the receiver hands out verified-in-order payload slices to write.
//!
//! Exchange:
//! ```text
//! both:      Hello{version, role, seen_peer}   resent until the peer's Hello arrives
//! sender:    Offer{files…}                      right behind its first Hello; split over
//!                                               frames for long lists
//! receiver:  Accept{resume: held…} | Decline{message}
//! sender:    Resume{files}                      only if the accept listed held beginnings
//! sender:    Data{index, offset, bytes}…  FileEnd{index, blake3}   for each file, in order
//! receiver:  FileAck{index}   once the file is verified and in place
//! receiver:  Complete         after the last FileAck
//! either:    Cancel{reason, message}   ends the transfer
//! ```
//! Invariants: the sender hashes exactly the bytes it frames (no pre-pass over the file); the
//! receiver hashes exactly the bytes it hands out, at the offsets it expects, and reports a
//! file as ended only when size and hash both match. Anything else is an error, never a
//! silently short or reordered file.
//!
//! Resuming: a receiver that kept the beginning of a file from an interrupted transfer
//! accepts with its length and BLAKE3 ([`frame::Held`]), and carries that hash state on. The
//! sender hashes the same bytes of its own file (the caller reads them); equal, the file's
//! data starts after them, else at 0, and `resume` says which before any data. The final
//! check is still the whole file's hash, so a wrong beginning can never end in a verified
//! file.

pub mod frame;
pub mod names;
mod receiver;
mod sender;

pub use frame::{Control, DATA_HEADER_LEN, Frame, MAX_FRAME};
pub use receiver::{Hold, Limits, Received, Receiver, ReceiverEvent};
pub use sender::{ReadRequest, Sender, SenderEvent};

use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The Cancel frame that tells the peer why we stopped, unless the peer stopped first (then
/// it knows) or we already failed (then it was told).
fn cancel_frame(e: &TransferError, was_live: bool) -> Option<Vec<u8>> {
    let peer_ended = matches!(
        e,
        TransferError::PeerCancelled { .. }
            | TransferError::Declined(_)
            | TransferError::Refused(_)
    );
    (was_live && !peer_ended).then(|| {
        frame::encode_control(&Control::Cancel {
            reason: e.cancel_reason(),
            message: e.to_string(),
        })
    })
}

/// Version of the transfer protocol spoken by this build. 2: hellos carry the sender's
/// pair and `path` frames tell later changes (peers on 1 reject both, so they are told to
/// update instead). 3: `accept` may list beginnings the receiver holds, answered by
/// `resume`.
pub const TRANSFER_VERSION: u32 = 3;
/// Payload bytes per data frame unless configured otherwise.
pub const DEFAULT_CHUNK: usize = 64 * 1024;
/// How often a Hello is resent until the peer's arrives (covers a first message lost on a
/// fresh channel, webrtc-rs#901).
pub const HELLO_RESEND: Duration = Duration::from_millis(250);
/// How long to wait for the peer's Hello before giving up.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a receiver waiting for the offer hears nothing at all before it calls the
/// connection stalled ([`TransferError::Stalled`]): the sender sends the offer right after
/// the hellos, so silence this long is a connection that looks open and carries nothing.
pub const RECEIVE_STALL: Duration = Duration::from_secs(60);
/// A send that waits this long for buffer space means the path is dead, not slow: the
/// transfer fails with that said.
pub const SEND_STALL: Duration = Duration::from_secs(30);
/// What the other side is told when a person stops the transfer on this side.
pub const STOPPED: &str = "the other side stopped the transfer";
/// Most entries one offer may list, unless the receiver says otherwise.
pub const MAX_OFFER_ENTRIES: usize = 200_000;
/// Most bytes of names one offer may hold (what it costs in memory before it is accepted).
pub const MAX_OFFER_NAME_BYTES: usize = 32 << 20;

use crate::path::PairView;
pub use crate::signal::TransferRole as Role;
use names::NameError;

/// One entry of an offer: a file (with its size) or a directory (possibly empty).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OfferEntry {
    /// Relative, `/`-separated.
    pub path: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
}

impl OfferEntry {
    pub fn file(path: impl Into<String>, size: u64) -> Self {
        Self {
            path: path.into(),
            size,
            dir: false,
        }
    }

    pub fn dir(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            size: 0,
            dir: true,
        }
    }
}

/// A complete offer whose paths all passed [`names::sanitize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub entries: Vec<(names::SafePath, OfferEntry)>,
    pub total_bytes: u64,
}

impl Offer {
    pub fn file_count(&self) -> usize {
        self.entries.iter().filter(|(_, e)| !e.dir).count()
    }
}

/// Why a transfer was cancelled (carried in [`Control::Cancel`]).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A person or program stopped it.
    Cancelled,
    /// The sender offered a name the receiver will not write.
    UnsafeName,
    /// A received file did not match the sender's hash.
    HashMismatch,
    /// A frame broke the protocol.
    Protocol,
    /// The receiver's disk is full or too small.
    NoSpace,
    /// A file changed or vanished on the sender while being sent.
    SourceChanged,
    /// Another I/O error.
    Io,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransferError {
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("unexpected {0} frame at this point of the transfer")]
    Unexpected(&'static str),
    #[error(
        "the peer speaks transfer protocol version {0}, this build speaks {TRANSFER_VERSION}: update punchdrop"
    )]
    Version(u32),
    #[error("{}", crate::signal::role_clash(*.0))]
    SameRole(Role),
    #[error("the sender offered an unsafe file name ({0}); nothing was written")]
    UnsafeName(NameError),
    #[error("the offer is inconsistent: {0}")]
    BadOffer(&'static str),
    #[error("the resume is inconsistent: {0}")]
    BadResume(&'static str),
    #[error("data arrived out of order or beyond the file's size")]
    OutOfOrder,
    #[error("file #{index} failed verification: its BLAKE3 hash does not match the sender's")]
    HashMismatch { index: u32 },
    #[error("the other peer did not answer")]
    Timeout,
    /// No offer came within [`RECEIVE_STALL`] of the hellos: the connection carries nothing
    /// (a lost link: drivers recover from it as from one).
    #[error("no offer arrived within {} s", RECEIVE_STALL.as_secs())]
    Stalled,
    #[error("the other peer cancelled ({reason:?}): {message}")]
    PeerCancelled {
        reason: CancelReason,
        message: String,
    },
    #[error("the receiver declined: {0}")]
    Declined(String),
    /// This receiver declined an offer beyond its limits; the sender was told why.
    #[error("declined the offer: {0}")]
    Refused(String),
    #[error("cancelled ({reason:?}): {message}")]
    Cancelled {
        reason: CancelReason,
        message: String,
    },
    #[error("{0}")]
    Usage(&'static str),
}

impl TransferError {
    /// The reason to tell the peer when this error ends the transfer on our side.
    pub fn cancel_reason(&self) -> CancelReason {
        match self {
            Self::UnsafeName(_) => CancelReason::UnsafeName,
            Self::HashMismatch { .. } => CancelReason::HashMismatch,
            Self::Cancelled { reason, .. } => *reason,
            Self::PeerCancelled { .. } | Self::Declined(_) => CancelReason::Cancelled,
            _ => CancelReason::Protocol,
        }
    }
}

/// Files continued after a beginning the receiver held, on either end: where each one's data
/// starts and the hash state of the bytes before it (taken when the file begins).
#[derive(Debug, Default)]
struct Continued {
    start: std::collections::HashMap<usize, u64>,
    hash: std::collections::HashMap<usize, blake3::Hasher>,
    /// Files held whole (receiver only): their hash, in place of a hash state.
    whole: std::collections::HashMap<usize, blake3::Hash>,
    /// Sum of the held lengths.
    bytes: u64,
}

impl Continued {
    /// File `index` continues after the bytes `hasher` has seen.
    fn insert(&mut self, index: u32, hasher: blake3::Hasher) {
        let len = hasher.count();
        self.start.insert(index as usize, len);
        self.hash.insert(index as usize, hasher);
        self.bytes += len;
    }

    /// File `index` continues after what `hold` says is held (receiver).
    fn insert_hold(&mut self, index: u32, hold: receiver::Hold) {
        match hold {
            receiver::Hold::Prefix(h) => self.insert(index, *h),
            receiver::Hold::Whole { len, hash } => {
                self.start.insert(index as usize, len);
                self.whole.insert(index as usize, hash);
                self.bytes += len;
            }
        }
    }

    /// File `index` begins: its hash if it is held whole.
    fn enter_whole(&mut self, index: usize) -> Option<blake3::Hash> {
        self.whole.remove(&index)
    }

    /// What is held of files after `cur`, not begun yet (receiver).
    fn not_entered(&self, cur: usize) -> impl Iterator<Item = (u32, receiver::Hold)> + '_ {
        let prefixes = self
            .hash
            .iter()
            .filter(move |(i, _)| **i > cur)
            .map(|(i, h)| (*i as u32, receiver::Hold::from(h.clone())));
        let whole = self
            .whole
            .iter()
            .filter(move |(i, _)| **i > cur)
            .map(|(i, hash)| {
                let len = self.start_of(*i);
                (*i as u32, receiver::Hold::Whole { len, hash: *hash })
            });
        prefixes.chain(whole)
    }

    /// Where file `index`'s data starts: after the held bytes, or at 0.
    fn start_of(&self, index: usize) -> u64 {
        self.start.get(&index).copied().unwrap_or(0)
    }

    /// File `index` begins: its first offset and the hash state there.
    fn enter(&mut self, index: usize) -> (u64, blake3::Hasher) {
        (
            self.start_of(index),
            self.hash.remove(&index).unwrap_or_default(),
        )
    }
}

/// An endpoint's next timeout: `timer`, or [`Duration::ZERO`] (due already) while `out`
/// holds a frame not yet taken by `poll_transmit`. A driver that handles frames and then
/// waits on the timer without transmitting first (both hellos read in one go, say) would
/// otherwise wait on a peer that waits on it; this way it wakes at once and transmits.
fn due(out: &VecDeque<Vec<u8>>, timer: Option<Duration>) -> Option<Duration> {
    if out.is_empty() {
        timer
    } else {
        Some(Duration::ZERO)
    }
}

/// Hello handling and its resend timer, shared by both ends, and the pairs each side says it
/// sends on (carried by hellos, then by `path` frames when they change).
#[derive(Debug)]
struct HelloState {
    role: Role,
    peer_seen: bool,
    started: Duration,
    next_send: Duration,
    own_path: Option<PairView>,
    /// The last of our pairs the peer was sent.
    told_path: Option<PairView>,
    peer_path: Option<PairView>,
}

impl HelloState {
    fn new(role: Role, now: Duration) -> Self {
        Self {
            role,
            peer_seen: false,
            started: now,
            next_send: now,
            own_path: None,
            told_path: None,
            peer_path: None,
        }
    }

    fn frame(&mut self) -> Vec<u8> {
        self.told_path = self.own_path;
        frame::encode_control(&Control::Hello {
            version: TRANSFER_VERSION,
            role: self.role,
            seen_peer: self.peer_seen,
            max_frame: MAX_FRAME as u32,
            path: self.own_path,
        })
    }

    /// The pair this side now sends on: the next hello carries it, or, once the peer had our
    /// hello, a `path` frame if it changed.
    fn set_path(&mut self, path: PairView, out: &mut VecDeque<Vec<u8>>) {
        self.own_path = Some(path);
        if self.peer_seen && self.told_path != Some(path) {
            self.told_path = Some(path);
            out.push_back(frame::encode_control(&Control::Path { path }));
        }
    }

    /// The peer said which pair it sends on; `true` if that is news.
    fn on_peer_path(&mut self, path: Option<PairView>) -> bool {
        let news = path.is_some() && path != self.peer_path;
        if path.is_some() {
            self.peer_path = path;
        }
        news
    }

    /// Due Hello to send, if any.
    fn poll(&mut self, now: Duration) -> Result<Option<Vec<u8>>, TransferError> {
        if self.peer_seen || now < self.next_send {
            return Ok(None);
        }
        if now.saturating_sub(self.started) >= HELLO_TIMEOUT {
            return Err(TransferError::Timeout);
        }
        self.next_send = now + HELLO_RESEND;
        Ok(Some(self.frame()))
    }

    fn timeout(&self) -> Option<Duration> {
        (!self.peer_seen).then_some(self.next_send)
    }

    /// What an endpoint sends next: queued control frames first, then a due Hello while it is
    /// still `greeting` (waiting for the peer's Hello).
    fn transmit(
        &mut self,
        out: &mut VecDeque<Vec<u8>>,
        greeting: bool,
        now: Duration,
    ) -> Option<Vec<u8>> {
        out.pop_front().or_else(|| {
            if greeting {
                self.poll(now).ok().flatten()
            } else {
                None
            }
        })
    }

    /// Has the peer failed to say hello in time?
    fn expired(&self, greeting: bool, now: Duration) -> bool {
        greeting && now.saturating_sub(self.started) >= HELLO_TIMEOUT
    }

    /// The peer's Hello. Returns a Hello to send back when the peer has not seen ours yet.
    fn on_hello(
        &mut self,
        version: u32,
        role: Role,
        seen_peer: bool,
    ) -> Result<Option<Vec<u8>>, TransferError> {
        if version != TRANSFER_VERSION {
            return Err(TransferError::Version(version));
        }
        if role == self.role {
            return Err(TransferError::SameRole(role));
        }
        self.peer_seen = true;
        Ok((!seen_peer).then(|| self.frame()))
    }
}

#[cfg(test)]
mod tests;
