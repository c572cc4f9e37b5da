//! The receiving end of a transfer.

use super::frame::{self, Control, Frame, Held, ResumeAt};
use super::names::{self, SafePath};
use super::{
    CancelReason, Continued, HelloState, MAX_OFFER_ENTRIES, MAX_OFFER_NAME_BYTES, Offer,
    OfferEntry, RECEIVE_STALL, Role, TransferError, due,
};
use crate::path::PairView;
use core::time::Duration;
use std::collections::{BTreeMap, HashSet, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// The sender said which pair it sends on (in its hello, then when it changes).
    PeerPath(PairView),
    /// The whole offer arrived and every name is safe: answer with [`Receiver::accept`] or
    /// [`Receiver::decline`].
    Offer(Offer),
    /// Bytes of file `index` follow from `offset`: open its temporary file keeping exactly
    /// its first `offset` bytes (0: create it empty; more: only for a file resumed).
    FileStart { index: u32, offset: u64 },
    /// The sender has the same beginning: file `index` continues from `offset`.
    Resumed { index: u32, offset: u64 },
    /// The sender's beginning of file `index` differs from the one held here: it starts over
    /// (the held bytes are thrown away at its [`ReceiverEvent::FileStart`]).
    StartsOver { index: u32 },
    /// File `index` is complete and its hash matches: put it in place, then call
    /// [`Receiver::file_saved`].
    FileVerified { index: u32 },
    /// Every file was saved and acknowledged.
    Completed,
}

/// What a receiver holds of one offered file, to claim in [`Receiver::accept_holding`].
#[derive(Debug, Clone)]
pub enum Hold {
    /// A beginning: the hash state of its bytes (`Hasher::count` says how many; ~2 KB, hence
    /// boxed).
    Prefix(Box<blake3::Hasher>),
    /// The whole file, saved and verified earlier in this run: its length and hash (40 bytes
    /// where a [`Hold::Prefix`] holds ~2 KB: a run keeps one per saved file).
    Whole { len: u64, hash: blake3::Hash },
}

impl Hold {
    /// Bytes held.
    pub fn len(&self) -> u64 {
        match self {
            Hold::Prefix(h) => h.count(),
            Hold::Whole { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self) -> blake3::Hash {
        match self {
            Hold::Prefix(h) => h.finalize(),
            Hold::Whole { hash, .. } => *hash,
        }
    }
}

impl From<blake3::Hasher> for Hold {
    fn from(h: blake3::Hasher) -> Self {
        Hold::Prefix(Box::new(h))
    }
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
    /// Accepted with held beginnings; waiting for the sender's `resume`.
    AwaitResume,
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
    /// When the last frame arrived (for [`RECEIVE_STALL`]).
    last_heard: Duration,
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
    /// Held beginnings offered in the accept, by file index, until the sender answers.
    held: BTreeMap<u32, Hold>,
    /// Files that continue after what is held here.
    continued: Continued,
    /// The current file was claimed whole: its hash, checked against the sender's at its end.
    whole: Option<blake3::Hash>,
    /// Hashes of verified files, by index, and whether each is saved: what
    /// [`Receiver::holding`] claims whole on the next connection.
    verified: BTreeMap<u32, (blake3::Hash, bool)>,
    /// The sender's device proof, if it sent one before its offer.
    device: Option<crate::device::DeviceProof>,
}

impl Receiver {
    pub fn new(now: Duration) -> Self {
        Self::with_limits(now, Limits::default())
    }

    pub fn with_limits(now: Duration, limits: Limits) -> Self {
        Self {
            state: State::Hello,
            hello: HelloState::new(Role::Receiver, now),
            last_heard: now,
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
            held: BTreeMap::new(),
            continued: Continued::default(),
            whole: None,
            verified: BTreeMap::new(),
            device: None,
        }
    }

    /// The device proof the sender gave before its offer (unchecked: check it against the
    /// session's binding with [`crate::device::DeviceProof::verify`]).
    pub fn device(&self) -> Option<&crate::device::DeviceProof> {
        self.device.as_ref()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Payload bytes received so far (this run: held beginnings are not counted).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// How far through the offer's bytes the transfer is: held beginnings the sender
    /// continued, plus what was received. Reaches [`Receiver::total_bytes`] at the end.
    pub fn bytes_done(&self) -> u64 {
        self.continued.bytes + self.bytes_received
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Did the transfer end on a protocol decision (a cancel either way, a decline, a
    /// failed check, a silent peer) rather than the connection going away under it?
    pub fn has_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Feed one received frame. Drain [`Receiver::poll_event`] before acting on the returned
    /// data, so a [`ReceiverEvent::FileStart`] is handled before that file's first bytes.
    pub fn handle_frame<'a>(
        &mut self,
        buf: &'a [u8],
        now: Duration,
    ) -> Result<Received<'a>, TransferError> {
        if matches!(self.state, State::Done | State::Failed) {
            return Ok(Received::Nothing);
        }
        self.last_heard = now;
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
            // An Offer stands for the sender's Hello (which may be the message that got lost,
            // webrtc-rs#901): it follows that Hello at once, whether or not ours was seen; a
            // sender that did not see ours resends its Hello, which ours then answers.
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
            // One proof, before the offer's first part.
            (State::Hello | State::Offering, Control::Device { device })
                if self.device.is_none() && self.entries.is_empty() =>
            {
                self.device = Some(device);
                Ok(())
            }
            (State::AwaitResume, Control::Resume { files }) => self.on_resume(files),
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
        self.accept_holding(Vec::<(u32, Hold)>::new())
    }

    /// Accept the offer, saying which beginnings of offered files this side already holds:
    /// for each, the file's index and what is held ([`Hold`]; a `blake3::Hasher` of the first
    /// bytes converts). The sender compares them with its own and answers before any data
    /// ([`ReceiverEvent::Resumed`] or [`ReceiverEvent::StartsOver`]).
    pub fn accept_holding<H: Into<Hold>>(
        &mut self,
        held: Vec<(u32, H)>,
    ) -> Result<(), TransferError> {
        if self.state != State::Deciding {
            return Err(TransferError::Usage("accept without a pending offer"));
        }
        self.held.clear();
        let mut resume = Vec::with_capacity(held.len());
        for (index, hold) in held {
            let hold = hold.into();
            let size = self
                .entries
                .get(index as usize)
                .filter(|e| !e.dir)
                .map(|e| e.size)
                .ok_or(TransferError::Usage("held beginning of a file not offered"))?;
            let offset = hold.len();
            if offset == 0 || offset > size {
                return Err(TransferError::Usage(
                    "held beginning empty or beyond the file",
                ));
            }
            resume.push(Held {
                index,
                offset,
                blake3: hold.hash().to_hex().to_string(),
            });
            if self.held.insert(index, hold).is_some() {
                return Err(TransferError::Usage("held beginning given twice"));
            }
        }
        resume.sort_by_key(|h| h.index);
        let resuming = !resume.is_empty();
        self.out
            .push_back(frame::encode_control(&Control::Accept { resume }));
        if resuming {
            self.state = State::AwaitResume;
        } else {
            self.start_receiving();
        }
        Ok(())
    }

    /// Everything of the accepted offer this side holds now, to claim on a next connection
    /// with the same offer: saved files whole, the current file's received beginning, and
    /// beginnings claimed earlier but not reached yet. The caller must hold exactly this
    /// (a sink that received every data frame handed out, in order).
    pub fn holding(&self) -> Vec<(u32, Hold)> {
        let size = |i: u32| self.entries.get(i as usize).map_or(0, |e| e.size);
        let mut out: Vec<(u32, Hold)> = self
            .verified
            .iter()
            .filter(|(i, (_, saved))| *saved && size(**i) > 0)
            .map(|(i, (hash, _))| {
                let len = size(*i);
                (*i, Hold::Whole { len, hash: *hash })
            })
            .collect();
        let cur = self.cur as u32;
        let current = self.state == State::Receiving
            && self.cur < self.entries.len()
            && self.offset > 0
            && !self.verified.contains_key(&cur);
        if current {
            out.push(match self.whole {
                Some(hash) => (
                    cur,
                    Hold::Whole {
                        len: self.offset,
                        hash,
                    },
                ),
                None => (cur, Hold::from(self.hasher.clone())),
            });
        }
        out.extend(self.held.iter().map(|(i, h)| (*i, h.clone())));
        out.extend(self.continued.not_entered(self.cur));
        out.sort_by_key(|(i, _)| *i);
        out.dedup_by_key(|(i, _)| *i);
        out
    }

    /// The sender's answer to our held beginnings: exactly those files, each continued from
    /// what we hold or started over.
    fn on_resume(&mut self, files: Vec<ResumeAt>) -> Result<(), TransferError> {
        let listed: Vec<u32> = files.iter().map(|f| f.index).collect();
        if !listed.iter().copied().eq(self.held.keys().copied()) {
            return Err(TransferError::BadResume(
                "it does not answer the files held here",
            ));
        }
        for ResumeAt { index, offset } in files {
            let hold = self.held.remove(&index).expect("listed above");
            if offset == 0 {
                self.events.push_back(ReceiverEvent::StartsOver { index });
            } else if offset == hold.len() {
                self.continued.insert_hold(index, hold);
                self.events
                    .push_back(ReceiverEvent::Resumed { index, offset });
            } else {
                return Err(TransferError::BadResume(
                    "a file continued from somewhere else than held here",
                ));
            }
        }
        self.start_receiving();
        Ok(())
    }

    fn start_receiving(&mut self) {
        self.state = State::Receiving;
        self.cur = 0;
        self.skip_dirs();
        self.enter_file();
        // An offer of folders only is complete once accepted.
        self.complete_if_all_saved();
    }

    /// Receiving moved to file `self.cur`: its data starts at its held length (if continued)
    /// or 0, with the hash state of the bytes before.
    fn enter_file(&mut self) {
        (self.offset, self.hasher) = self.continued.enter(self.cur);
        self.whole = self.continued.enter_whole(self.cur);
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
            self.events.push_back(ReceiverEvent::FileStart {
                index,
                offset: self.offset,
            });
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
        let hasher = std::mem::take(&mut self.hasher);
        let ours = self.whole.take().unwrap_or_else(|| hasher.finalize());
        if !ours.to_hex().eq_ignore_ascii_case(hash) {
            return Err(TransferError::HashMismatch { index });
        }
        self.verified.insert(index, (ours, false));
        self.events.push_back(ReceiverEvent::FileVerified { index });
        self.cur += 1;
        self.started = false;
        self.skip_dirs();
        self.enter_file();
        Ok(())
    }

    /// File `index` is verified and in place under its final name.
    pub fn file_saved(&mut self, index: u32) -> Result<(), TransferError> {
        if self.state != State::Receiving || index as usize >= self.cur {
            return Err(TransferError::Usage("file_saved for a file not verified"));
        }
        self.out
            .push_back(frame::encode_control(&Control::FileAck { index }));
        if let Some((_, saved)) = self.verified.get_mut(&index) {
            *saved = true;
        }
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

    /// When [`Receiver::handle_timeout`] should next be called: at once while a frame waits
    /// for [`Receiver::poll_transmit`] (see [`due`]).
    pub fn poll_timeout(&self) -> Option<Duration> {
        let timer = match self.state {
            State::Hello => self.hello.timeout(),
            _ => self.stall_at(),
        };
        due(&self.out, timer)
    }

    /// When silence becomes a stall: only while waiting for the offer, which the sender
    /// sends as soon as the hellos are through. Not while this side's person decides, nor
    /// while the sender checks what is held (it may hash a long beginning first), nor while
    /// receiving (this side's own slow writes may hold the sender back, and the sender waits
    /// for the last file's save without a word).
    fn stall_at(&self) -> Option<Duration> {
        (self.state == State::Offering).then(|| self.last_heard + RECEIVE_STALL)
    }

    pub fn handle_timeout(&mut self, now: Duration) -> Result<(), TransferError> {
        if self.hello.expired(self.state == State::Hello, now) {
            let e = TransferError::Timeout;
            self.fail(&e);
            return Err(e);
        }
        if self.stall_at().is_some_and(|t| now >= t) {
            // Not a failure of the transfer (no cancel frame, nothing discarded): the link is
            // what failed, and what was received stays good for the next connection.
            return Err(TransferError::Stalled);
        }
        Ok(())
    }
}
