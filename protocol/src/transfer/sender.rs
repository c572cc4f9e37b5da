//! The sending end of a transfer.

use super::frame::{self, Control, DATA_HEADER_LEN, Frame, Held, MAX_FRAME, ResumeAt};
use super::{
    CancelReason, Continued, DEFAULT_CHUNK, HelloState, OfferEntry, Role, TransferError, due,
};
use crate::path::PairView;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

/// Bytes the caller should read next and pass to [`Sender::encode_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub index: u32,
    pub offset: u64,
    /// Exactly this many payload bytes (fewer means the file shrank on disk).
    pub len: usize,
}

/// Payload sizes of a transfer's first data frames, before the configured chunk size. SCTP
/// starts with a congestion window of about 4 KiB and delivers a message only whole, so a
/// first 64 KiB message takes about four round trips to arrive (160 ms at 40 ms RTT in the
/// NAT lab); these reach the receiver in one, and the frames grow as the window does.
pub const FIRST_FRAMES: [usize; 3] = [2 << 10, 8 << 10, 32 << 10];

/// A position in the byte stream of a transfer: what has been asked for (or framed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cursor {
    file: usize,
    offset: u64,
    /// Data frames before this position.
    frames: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// The receiver said which pair it sends on (in its hello, then when it changes).
    PeerPath(PairView),
    /// The receiver accepted the offer: start reading (after any [`SenderEvent::CheckPrefix`]).
    Accepted,
    /// The receiver holds the first `offset` bytes of file `index` from an interrupted
    /// transfer: hash the same bytes of ours and hand them to [`Sender::prefix_hashed`].
    /// Nothing is sent until every such check is answered.
    CheckPrefix { index: u32, offset: u64 },
    /// The beginnings matched: file `index` continues from `offset`.
    Resumed { index: u32, offset: u64 },
    /// The receiver's beginning of file `index` differs from ours: it starts over.
    StartsOver { index: u32 },
    /// The receiver verified file `index` and put it in place.
    FileAcked { index: u32 },
    /// Every file was acknowledged; the transfer is complete.
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hello,
    AwaitAccept,
    /// Accepted; comparing the beginnings the receiver holds with ours.
    Checking,
    Sending,
    /// Every byte was framed; waiting for acknowledgements.
    AwaitAcks,
    Done,
    Failed,
}

#[derive(Debug)]
pub struct Sender {
    files: Vec<OfferEntry>,
    state: State,
    hello: HelloState,
    chunk: usize,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<SenderEvent>,
    /// Framing position: the current file and the offset in it.
    cur: usize,
    offset: u64,
    frames: usize,
    /// How far reads were handed out ([`Sender::poll_read`]); never behind the framing.
    requested: Cursor,
    hasher: blake3::Hasher,
    acked: usize,
    to_ack: usize,
    total_bytes: u64,
    bytes_framed: u64,
    /// The receiver's beginnings not yet compared with ours, by file index.
    unchecked: BTreeMap<u32, Held>,
    /// Our answer to them, in index order.
    answers: Vec<ResumeAt>,
    /// Files that continue after what the receiver held.
    continued: Continued,
    /// Sent before the offer ([`Sender::prove_device`]).
    device: Option<crate::device::DeviceProof>,
}

impl Sender {
    /// A sender offering `entries` (relative `/` paths, directories first where they matter).
    /// `chunk` is the payload size per data frame; it is clamped to fit [`MAX_FRAME`].
    pub fn new(entries: Vec<OfferEntry>, chunk: usize, now: Duration) -> Self {
        let to_ack = entries.iter().filter(|e| !e.dir).count();
        let total_bytes = entries.iter().filter(|e| !e.dir).map(|e| e.size).sum();
        Self {
            files: entries,
            state: State::Hello,
            hello: HelloState::new(Role::Sender, now),
            chunk: chunk.clamp(1, MAX_FRAME - DATA_HEADER_LEN),
            out: VecDeque::new(),
            events: VecDeque::new(),
            cur: 0,
            offset: 0,
            frames: 0,
            requested: Cursor::default(),
            hasher: blake3::Hasher::new(),
            acked: 0,
            to_ack,
            total_bytes,
            bytes_framed: 0,
            unchecked: BTreeMap::new(),
            answers: Vec::new(),
            continued: Continued::default(),
            device: None,
        }
    }

    /// Send `proof` (of this device's key, for this session) before the offer: an inbox
    /// decides by it.
    pub fn prove_device(&mut self, proof: crate::device::DeviceProof) {
        self.device = Some(proof);
    }

    pub fn with_default_chunk(entries: Vec<OfferEntry>, now: Duration) -> Self {
        Self::new(entries, DEFAULT_CHUNK, now)
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Payload bytes framed so far (this run: what the receiver held already is not counted).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_framed
    }

    /// How far through the offer's bytes the transfer is: the beginnings the receiver held
    /// and continued, plus what was framed. Reaches [`Sender::total_bytes`] at the end.
    pub fn bytes_done(&self) -> u64 {
        self.continued.bytes + self.bytes_framed
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feed one received frame.
    pub fn handle_frame(&mut self, buf: &[u8], now: Duration) -> Result<(), TransferError> {
        let _ = now;
        let result = self.on_frame(buf);
        self.fail_on_error(result)
    }

    fn on_frame(&mut self, buf: &[u8]) -> Result<(), TransferError> {
        if matches!(self.state, State::Done | State::Failed) {
            return Ok(());
        }
        let control = match frame::decode(buf)? {
            Frame::Data { .. } => return Err(TransferError::Unexpected("data")),
            Frame::Control(c) => c,
        };
        match (self.state, control) {
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
                let first = !self.hello.peer_seen;
                if let Some(reply) = self.hello.on_hello(version, role, seen_peer)? {
                    self.out.push_back(reply);
                }
                self.on_peer_path(path);
                if first && self.state == State::Hello {
                    self.queue_offer();
                    self.state = State::AwaitAccept;
                }
                Ok(())
            }
            (_, Control::Path { path }) => {
                self.on_peer_path(Some(path));
                Ok(())
            }
            (State::AwaitAccept, Control::Accept { resume }) => {
                self.events.push_back(SenderEvent::Accepted);
                self.check_held(resume)
            }
            (State::AwaitAccept, Control::Decline { message }) => {
                self.state = State::Failed;
                Err(TransferError::Declined(message))
            }
            (State::Sending | State::AwaitAcks, Control::FileAck { index }) => {
                let ok = self.files.get(index as usize).is_some_and(|e| !e.dir)
                    && (index as usize) < self.cur;
                if !ok {
                    return Err(TransferError::Unexpected("file_ack"));
                }
                self.acked += 1;
                self.events.push_back(SenderEvent::FileAcked { index });
                Ok(())
            }
            (State::AwaitAcks, Control::Complete) if self.acked == self.to_ack => {
                self.state = State::Done;
                self.events.push_back(SenderEvent::Completed);
                Ok(())
            }
            (_, other) => Err(TransferError::Unexpected(other.name())),
        }
    }

    fn queue_offer(&mut self) {
        if let Some(device) = self.device.take() {
            self.out
                .push_back(frame::encode_control(&Control::Device { device }));
        }
        // Keep each Offer frame well under MAX_FRAME; an entry is at most ~4.2 KiB (path cap).
        const BUDGET: usize = MAX_FRAME / 2;
        let total_files = self.files.len() as u32;
        let mut part = Vec::new();
        let mut size = 0;
        let mut frames = Vec::new();
        for e in &self.files {
            let est = e.path.len() * 2 + 48;
            if size + est > BUDGET && !part.is_empty() {
                frames.push(std::mem::take(&mut part));
                size = 0;
            }
            size += est;
            part.push(e.clone());
        }
        frames.push(part);
        for files in frames {
            self.out.push_back(frame::encode_control(&Control::Offer {
                total_files,
                total_bytes: self.total_bytes,
                files,
            }));
        }
    }

    /// The receiver's beginnings, from its accept: checked for sense, then each handed to
    /// the caller to compare with ours. None: sending starts at once.
    fn check_held(&mut self, held: Vec<Held>) -> Result<(), TransferError> {
        let mut last = None;
        for h in held {
            let size = self
                .files
                .get(h.index as usize)
                .filter(|e| !e.dir)
                .map(|e| e.size)
                .ok_or(TransferError::BadResume("a held file that was not offered"))?;
            if h.offset == 0 || h.offset > size {
                return Err(TransferError::BadResume("a held length beyond the file"));
            }
            if last.is_some_and(|l| l >= h.index) {
                return Err(TransferError::BadResume("held files out of order"));
            }
            last = Some(h.index);
            self.events.push_back(SenderEvent::CheckPrefix {
                index: h.index,
                offset: h.offset,
            });
            self.unchecked.insert(h.index, h);
        }
        self.state = State::Checking;
        self.start_if_checked();
        Ok(())
    }

    /// The first `len` bytes of file `index` (as asked by [`SenderEvent::CheckPrefix`]),
    /// hashed. Equal to the receiver's: the file continues after them; different, or `len`
    /// short of what the receiver holds (the file is shorter here now): it starts over.
    pub fn prefix_hashed(
        &mut self,
        index: u32,
        hasher: blake3::Hasher,
    ) -> Result<(), TransferError> {
        if self.state != State::Checking {
            return Err(TransferError::Usage("prefix_hashed while not checking"));
        }
        let held = self
            .unchecked
            .remove(&index)
            .ok_or(TransferError::Usage("prefix_hashed for a file not asked"))?;
        let same = hasher.count() == held.offset
            && hasher
                .finalize()
                .to_hex()
                .eq_ignore_ascii_case(&held.blake3);
        let offset = if same {
            self.continued.insert(index, hasher);
            self.events.push_back(SenderEvent::Resumed {
                index,
                offset: held.offset,
            });
            held.offset
        } else {
            self.events.push_back(SenderEvent::StartsOver { index });
            0
        };
        self.answers.push(ResumeAt { index, offset });
        self.start_if_checked();
        Ok(())
    }

    /// Once every beginning was compared: tell the receiver where each file starts, then
    /// send.
    fn start_if_checked(&mut self) {
        if self.state != State::Checking || !self.unchecked.is_empty() {
            return;
        }
        if !self.answers.is_empty() {
            self.answers.sort_by_key(|a| a.index);
            let files = std::mem::take(&mut self.answers);
            self.out
                .push_back(frame::encode_control(&Control::Resume { files }));
        }
        self.state = State::Sending;
        self.cur = 0;
        self.enter_file();
        self.requested = Cursor {
            file: 0,
            offset: self.offset,
            frames: 0,
        };
        self.skip_trivial();
    }

    /// Framing moved to file `self.cur`: start at its first byte to send, with the hash
    /// state of the bytes before it.
    fn enter_file(&mut self) {
        (self.offset, self.hasher) = self.continued.enter(self.cur);
    }

    /// Move past directories and files with nothing to send (empty, or held whole by the
    /// receiver: they end at once) to the next file with bytes.
    fn skip_trivial(&mut self) {
        while let Some(e) = self.files.get(self.cur) {
            if e.dir {
                self.cur += 1;
                self.enter_file();
            } else if self.offset == e.size {
                self.end_file();
            } else {
                return;
            }
        }
        self.state = State::AwaitAcks;
    }

    fn end_file(&mut self) {
        let hash = std::mem::take(&mut self.hasher).finalize();
        self.out.push_back(frame::encode_control(&Control::FileEnd {
            index: self.cur as u32,
            blake3: hash.to_hex().to_string(),
        }));
        self.cur += 1;
        self.enter_file();
    }

    /// The read after `at`, and the position after it: directories and empty files have
    /// none; a file's reads are cut to the frame size, which grows over the first frames.
    fn read_after(&self, mut at: Cursor) -> Option<(ReadRequest, Cursor)> {
        while let Some(e) = self.files.get(at.file) {
            if !e.dir && at.offset < e.size {
                break;
            }
            at.file += 1;
            at.offset = self.continued.start_of(at.file);
        }
        let e = self.files.get(at.file)?;
        let frame = FIRST_FRAMES.get(at.frames).copied().unwrap_or(self.chunk);
        let len = (e.size - at.offset).min(frame.min(self.chunk) as u64) as usize;
        let req = ReadRequest {
            index: at.file as u32,
            offset: at.offset,
            len,
        };
        at.offset += len as u64;
        at.frames += 1;
        Some((req, at))
    }

    /// The next read to make, if the transfer is sending. Each call hands out the read after
    /// the previous one, so a caller may read several ahead; their payloads go to
    /// [`Sender::encode_data`] in the order handed out. Send everything
    /// [`Sender::poll_transmit`] gives right before each data frame, so control frames keep
    /// their place between data frames (a `resume` is queued by [`Sender::prefix_hashed`],
    /// just before the first read).
    pub fn poll_read(&mut self) -> Option<ReadRequest> {
        if self.state != State::Sending {
            return None;
        }
        let (req, next) = self.read_after(self.requested)?;
        self.requested = next;
        Some(req)
    }

    /// Turn `buf` (`DATA_HEADER_LEN` spare bytes, then the payload of the oldest
    /// [`ReadRequest`] not yet encoded) into a data frame in place, hashing the payload.
    ///
    /// A payload shorter than its request means the file shrank on disk (an empty one: it
    /// ended early): that cancels the transfer.
    pub fn encode_data(&mut self, buf: &mut [u8]) -> Result<(), TransferError> {
        let result = self.on_data(buf);
        self.fail_on_error(result)
    }

    fn on_data(&mut self, buf: &mut [u8]) -> Result<(), TransferError> {
        if self.state != State::Sending {
            return Err(TransferError::Usage("encode_data while not sending"));
        }
        let here = Cursor {
            file: self.cur,
            offset: self.offset,
            frames: self.frames,
        };
        let (req, _) = self
            .read_after(here)
            .filter(|_| here.frames < self.requested.frames)
            .ok_or(TransferError::Usage("encode_data without a read request"))?;
        let n = buf
            .len()
            .checked_sub(DATA_HEADER_LEN)
            .ok_or(TransferError::Usage("buffer too short"))?;
        if n < req.len {
            return Err(TransferError::Cancelled {
                reason: CancelReason::SourceChanged,
                message: "a file became shorter while it was being sent".into(),
            });
        }
        if n > req.len {
            return Err(TransferError::Usage("payload longer than its read request"));
        }
        frame::write_data_header(buf, req.index, req.offset);
        self.hasher.update(&buf[DATA_HEADER_LEN..]);
        self.cur = req.index as usize;
        self.offset = req.offset + n as u64;
        self.frames += 1;
        self.bytes_framed += n as u64;
        if self.offset == self.files[self.cur].size {
            self.end_file();
            self.skip_trivial();
        }
        Ok(())
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
            self.events.push_back(SenderEvent::PeerPath(p));
        }
    }

    /// Stop the transfer from this side; the peer is told why.
    pub fn cancel(&mut self, reason: CancelReason, message: &str) -> TransferError {
        let err = TransferError::Cancelled {
            reason,
            message: message.to_string(),
        };
        let _ = self.fail_on_error(Err(err.clone()));
        err
    }

    fn fail_on_error(&mut self, r: Result<(), TransferError>) -> Result<(), TransferError> {
        if let Err(e) = &r {
            let was_live = self.state != State::Failed;
            self.state = State::Failed;
            self.out.extend(super::cancel_frame(e, was_live));
        }
        r
    }

    /// Control frames to send, oldest first.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        let greeting = self.greeting();
        let frame = self.hello.transmit(&mut self.out, greeting, now);
        // The offer needs nothing from the receiver's hello: it goes right behind ours and
        // arrives with it, a round trip sooner than after the receiver's answer.
        if self.state == State::Hello && frame.is_some() {
            self.queue_offer();
            self.state = State::AwaitAccept;
        }
        frame
    }

    /// Hellos are resent, and the peer's awaited, until its hello is seen (or its accept
    /// came, which also proves it heard us).
    fn greeting(&self) -> bool {
        !self.hello.peer_seen && matches!(self.state, State::Hello | State::AwaitAccept)
    }

    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// When [`Sender::handle_timeout`] should next be called: at once while a frame waits
    /// for [`Sender::poll_transmit`] (see [`due`]).
    pub fn poll_timeout(&self) -> Option<Duration> {
        due(&self.out, self.hello.timeout().filter(|_| self.greeting()))
    }

    pub fn handle_timeout(&mut self, now: Duration) -> Result<(), TransferError> {
        if self.hello.expired(self.greeting(), now) {
            return self.fail_on_error(Err(TransferError::Timeout));
        }
        Ok(())
    }
}
