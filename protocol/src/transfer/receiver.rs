//! The receiving end of a transfer.

use super::frame::{self, Control, Frame};
use super::names::{self, SafePath};
use super::{
    CancelReason, HelloState, MAX_OFFER_ENTRIES, MAX_OFFER_NAME_BYTES, Offer, OfferEntry, Role,
    TransferError,
};
use crate::path::PairView;
use core::time::Duration;
use std::collections::{HashSet, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// The sender said which pair it sends on (in its hello, then when it changes).
    PeerPath(PairView),
    /// The whole offer arrived and every name is safe: answer with [`Receiver::accept`] or
    /// [`Receiver::decline`].
    Offer(Offer),
    /// Bytes of file `index` follow: create its temporary file.
    FileStart { index: u32 },
    /// File `index` is complete and its hash matches: put it in place, then call
    /// [`Receiver::file_saved`].
    FileVerified { index: u32 },
    /// Every file was saved and acknowledged.
    Completed,
}

/// What a frame handed to the caller directly, to avoid copying payloads into events.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    Nothing,
    /// Write `bytes` at `offset` of file `index` (always the current file, always in order).
    Data {
        index: u32,
        offset: u64,
        bytes: &'a [u8],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hello,
    Offering,
    Deciding,
    Receiving,
    Done,
    Failed,
}

/// What a receiver takes at most. An offer beyond these is declined with the reason, as soon as
/// its first part says so or an entry passes them, before the rest is held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries (files and folders) in one offer.
    pub max_entries: usize,
    /// Bytes of names in one offer (what the offer costs in memory before it is accepted).
    pub max_name_bytes: usize,
    /// Bytes of file data in one offer (`native-peer recv --max-bytes`).
    pub max_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: MAX_OFFER_ENTRIES,
            max_name_bytes: MAX_OFFER_NAME_BYTES,
            max_bytes: None,
        }
    }
}

#[derive(Debug)]
pub struct Receiver {
    state: State,
    hello: HelloState,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<ReceiverEvent>,
    limits: Limits,
    entries: Vec<OfferEntry>,
    /// What the offer so far holds: its names (checked one by one as they arrive), their
    /// bytes, and the sum of file sizes.
    names: HashSet<String>,
    name_bytes: usize,
    sum: u64,
    expected_entries: usize,
    total_bytes: u64,
    cur: usize,
    offset: u64,
    started: bool,
    hasher: blake3::Hasher,
    saved: usize,
    to_save: usize,
    bytes_received: u64,
}

impl Receiver {
    pub fn new(now: Duration) -> Self {
        Self::with_limits(now, Limits::default())
    }

    pub fn with_limits(now: Duration, limits: Limits) -> Self {
        Self {
            state: State::Hello,
            hello: HelloState::new(Role::Receiver, now),
            out: VecDeque::new(),
            events: VecDeque::new(),
            limits,
            entries: Vec::new(),
            names: HashSet::new(),
            name_bytes: 0,
            sum: 0,
            expected_entries: 0,
            total_bytes: 0,
            cur: 0,
            offset: 0,
            started: false,
            hasher: blake3::Hasher::new(),
            saved: 0,
            to_save: 0,
            bytes_received: 0,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feed one received frame. Drain [`Receiver::poll_event`] before acting on the returned
    /// data, so a [`ReceiverEvent::FileStart`] is handled before that file's first bytes.
    pub fn handle_frame<'a>(
        &mut self,
        buf: &'a [u8],
        now: Duration,
    ) -> Result<Received<'a>, TransferError> {
        let _ = now;
        if matches!(self.state, State::Done | State::Failed) {
            return Ok(Received::Nothing);
        }
        let result = self.on_frame(buf);
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    fn on_frame<'a>(&mut self, buf: &'a [u8]) -> Result<Received<'a>, TransferError> {
        match frame::decode(buf)? {
            Frame::Data {
                index,
                offset,
                payload,
            } => self.on_data(index, offset, payload),
            Frame::Control(c) => self.on_control(c).map(|()| Received::Nothing),
        }
    }

    fn on_control(&mut self, c: Control) -> Result<(), TransferError> {
        match (self.state, c) {
            (_, Control::Cancel { reason, message }) => {
                self.state = State::Failed;
                Err(TransferError::PeerCancelled { reason, message })
            }
            (
                _,
                Control::Hello {
                    version,
                    role,
                    seen_peer,
                    path,
                    ..
                },
            ) => {
                if let Some(reply) = self.hello.on_hello(version, role, seen_peer)? {
                    self.out.push_back(reply);
                }
                self.on_peer_path(path);
                if self.state == State::Hello {
                    self.state = State::Offering;
                }
                Ok(())
            }
            (_, Control::Path { path }) => {
                self.on_peer_path(Some(path));
                Ok(())
            }
            // An Offer also proves the sender saw our Hello (webrtc-rs#901: its Hello may be
            // the message that got lost).
            (
                State::Hello | State::Offering,
                Control::Offer {
                    total_files,
                    total_bytes,
                    files,
                },
            ) => {
                self.hello.peer_seen = true;
                self.state = State::Offering;
                self.on_offer_part(total_files, total_bytes, files)
            }
            (State::Receiving, Control::FileEnd { index, blake3 }) => {
                self.on_file_end(index, &blake3)
            }
            (_, other) => Err(TransferError::Unexpected(other.name())),
        }
    }

    fn on_offer_part(
        &mut self,
        total_files: u32,
        total_bytes: u64,
        files: Vec<OfferEntry>,
    ) -> Result<(), TransferError> {
        let total = total_files as usize;
        if self.entries.is_empty() {
            self.expected_entries = total;
            self.total_bytes = total_bytes;
            self.within_limits()?;
        } else if self.expected_entries != total || self.total_bytes != total_bytes {
            return Err(TransferError::BadOffer("offer parts disagree"));
        }
        if files.is_empty() && total > 0 {
            return Err(TransferError::BadOffer("empty offer part"));
        }
        for e in files {
            self.take_entry(e)?;
        }
        if self.entries.len() == self.expected_entries {
            let offer = self.validate_offer()?;
            self.state = State::Deciding;
            self.events.push_back(ReceiverEvent::Offer(offer));
        }
        Ok(())
    }

    /// The announced offer against this receiver's limits: beyond them it is declined (the
    /// sender reads why) before anything else of it is held.
    fn within_limits(&mut self) -> Result<(), TransferError> {
        let refusal = if self.expected_entries > self.limits.max_entries {
            format!(
                "the offer lists {} entries; this receiver takes at most {}",
                self.expected_entries, self.limits.max_entries
            )
        } else if let Some(max) = self.limits.max_bytes.filter(|m| self.total_bytes > *m) {
            format!(
                "the files are {} bytes; this receiver takes at most {max}",
                self.total_bytes
            )
        } else {
            return Ok(());
        };
        self.decline(&refusal);
        Err(TransferError::Refused(refusal))
    }

    /// Check one offered entry as it arrives, so nothing unchecked piles up.
    fn take_entry(&mut self, e: OfferEntry) -> Result<(), TransferError> {
        if self.entries.len() >= self.expected_entries {
            return Err(TransferError::BadOffer("more entries than announced"));
        }
        let safe = names::sanitize(&e.path).map_err(TransferError::UnsafeName)?;
        self.name_bytes += e.path.len();
        if self.name_bytes > self.limits.max_name_bytes {
            return Err(TransferError::BadOffer(
                "the offer's names are too long in total",
            ));
        }
        if !self.names.insert(safe.as_str().to_string()) {
            return Err(TransferError::BadOffer("a name appears twice"));
        }
        if e.dir && e.size != 0 {
            return Err(TransferError::BadOffer("a directory with a size"));
        }
        if !e.dir {
            self.sum = self
                .sum
                .checked_add(e.size)
                .filter(|s| *s <= self.total_bytes)
                .ok_or(TransferError::BadOffer(
                    "sizes add up to more than the announced total",
                ))?;
        }
        self.entries.push(e);
        Ok(())
    }

    /// The whole offer, once every entry passed [`Receiver::take_entry`].
    fn validate_offer(&mut self) -> Result<Offer, TransferError> {
        if self.entries.is_empty() {
            return Err(TransferError::BadOffer("nothing offered"));
        }
        // A file must not also be a directory on the way to another entry.
        let files: HashSet<&str> = self
            .entries
            .iter()
            .filter(|e| !e.dir)
            .map(|e| e.path.as_str())
            .collect();
        for e in &self.entries {
            let s = e.path.as_str();
            for (i, _) in s.match_indices('/') {
                if files.contains(&s[..i]) {
                    return Err(TransferError::BadOffer(
                        "a file is also used as a directory",
                    ));
                }
            }
        }
        if self.sum != self.total_bytes {
            return Err(TransferError::BadOffer(
                "sizes do not add up to the announced total",
            ));
        }
        self.names = HashSet::new();
        self.to_save = self.entries.iter().filter(|e| !e.dir).count();
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let safe = names::sanitize(&e.path).map_err(TransferError::UnsafeName)?;
                Ok((safe, e.clone()))
            })
            .collect::<Result<Vec<(SafePath, OfferEntry)>, TransferError>>()?;
        Ok(Offer {
            entries,
            total_bytes: self.total_bytes,
        })
    }

    /// Accept the offer; data starts to flow.
    pub fn accept(&mut self) -> Result<(), TransferError> {
        if self.state != State::Deciding {
            return Err(TransferError::Usage("accept without a pending offer"));
        }
        self.out.push_back(frame::encode_control(&Control::Accept));
        self.state = State::Receiving;
        self.cur = 0;
        self.skip_dirs();
        // An offer of folders only is complete once accepted.
        self.complete_if_all_saved();
        Ok(())
    }

    fn complete_if_all_saved(&mut self) {
        if self.saved == self.to_save {
            self.out
                .push_back(frame::encode_control(&Control::Complete));
            self.state = State::Done;
            self.events.push_back(ReceiverEvent::Completed);
        }
    }

    /// Decline the offer; the sender is told `message`.
    pub fn decline(&mut self, message: &str) {
        self.out.push_back(frame::encode_control(&Control::Decline {
            message: message.into(),
        }));
        self.state = State::Failed;
    }

    fn skip_dirs(&mut self) {
        while self.entries.get(self.cur).is_some_and(|e| e.dir) {
            self.cur += 1;
        }
    }

    fn start_if_needed(&mut self, index: u32) -> Result<(), TransferError> {
        if index as usize != self.cur || self.cur >= self.entries.len() {
            return Err(TransferError::OutOfOrder);
        }
        if !self.started {
            self.started = true;
            self.events.push_back(ReceiverEvent::FileStart { index });
        }
        Ok(())
    }

    fn on_data<'a>(
        &mut self,
        index: u32,
        offset: u64,
        bytes: &'a [u8],
    ) -> Result<Received<'a>, TransferError> {
        if self.state != State::Receiving {
            return Err(TransferError::Unexpected("data"));
        }
        self.start_if_needed(index)?;
        let size = self.entries[self.cur].size;
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or(TransferError::OutOfOrder)?;
        if offset != self.offset || end > size {
            return Err(TransferError::OutOfOrder);
        }
        self.hasher.update(bytes);
        self.offset = end;
        self.bytes_received += bytes.len() as u64;
        Ok(Received::Data {
            index,
            offset,
            bytes,
        })
    }

    fn on_file_end(&mut self, index: u32, hash: &str) -> Result<(), TransferError> {
        self.start_if_needed(index)?;
        if self.offset != self.entries[self.cur].size {
            return Err(TransferError::OutOfOrder);
        }
        let ours = std::mem::take(&mut self.hasher).finalize();
        if !ours.to_hex().eq_ignore_ascii_case(hash) {
            return Err(TransferError::HashMismatch { index });
        }
        self.events.push_back(ReceiverEvent::FileVerified { index });
        self.cur += 1;
        self.offset = 0;
        self.started = false;
        self.skip_dirs();
        Ok(())
    }

    /// File `index` is verified and in place under its final name.
    pub fn file_saved(&mut self, index: u32) -> Result<(), TransferError> {
        if self.state != State::Receiving || index as usize >= self.cur {
            return Err(TransferError::Usage("file_saved for a file not verified"));
        }
        self.out
            .push_back(frame::encode_control(&Control::FileAck { index }));
        self.saved += 1;
        self.complete_if_all_saved();
        Ok(())
    }

    /// Verified files not yet reported saved ([`Receiver::file_saved`]): at 1, the next save
    /// completes the transfer.
    pub fn saves_left(&self) -> usize {
        self.to_save - self.saved
    }

    /// The pair this side sends on (at open, and again when it changes): the other side is
    /// told, in the hello or in a `path` frame.
    pub fn set_path(&mut self, path: PairView) {
        self.hello.set_path(path, &mut self.out);
    }

    /// The pair the other side last said it sends on.
    pub fn peer_path(&self) -> Option<PairView> {
        self.hello.peer_path
    }

    fn on_peer_path(&mut self, path: Option<PairView>) {
        if self.hello.on_peer_path(path)
            && let Some(p) = path
        {
            self.events.push_back(ReceiverEvent::PeerPath(p));
        }
    }

    /// Stop the transfer from this side (disk full, user cancel, …); the sender is told why.
    pub fn cancel(&mut self, reason: CancelReason, message: &str) -> TransferError {
        let err = TransferError::Cancelled {
            reason,
            message: message.to_string(),
        };
        self.fail(&err);
        err
    }

    fn fail(&mut self, e: &TransferError) {
        let was_live = self.state != State::Failed;
        self.state = State::Failed;
        self.out.extend(super::cancel_frame(e, was_live));
    }

    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        self.hello
            .transmit(&mut self.out, self.state == State::Hello, now)
    }

    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        self.hello.timeout().filter(|_| self.state == State::Hello)
    }

    pub fn handle_timeout(&mut self, now: Duration) -> Result<(), TransferError> {
        if self.hello.expired(self.state == State::Hello, now) {
            let e = TransferError::Timeout;
            self.fail(&e);
            return Err(e);
        }
        Ok(())
    }
}
