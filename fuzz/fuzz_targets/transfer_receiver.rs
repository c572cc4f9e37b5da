//! Data-channel frames from the sending peer: `protocol::transfer::frame::decode` and the
//! receiver machine behind it.
//!
//! The input is decoded as one frame, then, by its first byte's low bit, either
//! - split into frames (each a big-endian `u16` length, then that many bytes) fed in turn to a
//!   `Receiver` that accepts every offer and reports every verified file saved, or
//! - read (with `arbitrary`) as a script of a sender that mostly follows the protocol: a
//!   valid hello, an offer in parts with fuzzed entries, then data frames in order, file
//!   ends with the right hash, and fuzzed control frames, raw frames, lies and waits between,
//!   so the states after an accepted offer are reached.
//!
//! Never panics; every frame the receiver sends decodes as a control frame; it never hands
//! out more bytes than the accepted offer announced.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use core::time::Duration;
use libfuzzer_sys::fuzz_target;
use protocol::path::{CandidateType, PairView, PathKind, Transport};
use protocol::transfer::frame::{self, Control, Frame, Held, ResumeAt};
use protocol::transfer::{
    CancelReason, DATA_HEADER_LEN, Limits, OfferEntry, Received, Receiver, ReceiverEvent, Role,
    TRANSFER_VERSION,
};

/// Feeds a receiver and plays its caller: accepts offers, saves verified files.
struct Caller {
    rx: Receiver,
    now: Duration,
    accept: bool,
    save: bool,
    /// Accept holding the first bytes (zeros, as the script's data is) of this file.
    hold: Option<(u32, u64)>,
}

impl Caller {
    fn frame(&mut self, buf: &[u8]) {
        let result = self.rx.handle_frame(buf, self.now);
        self.events();
        if let Ok(Received::Data { bytes, .. }) = result {
            assert!(!bytes.is_empty());
        }
        assert!(self.rx.bytes_received() <= self.rx.total_bytes());
        self.check_holding();
        self.transmit();
    }

    /// What the receiver would claim on a next connection stays inside the offer: one claim
    /// per file, never empty, never beyond the file, never more than the offer in all.
    fn check_holding(&self) {
        let holding = self.rx.holding();
        let mut sum = 0u64;
        for pair in holding.windows(2) {
            assert!(pair[0].0 < pair[1].0, "claims sorted, one per file");
        }
        for (_, hold) in &holding {
            assert!(!hold.is_empty(), "an empty claim");
            sum += hold.len();
        }
        assert!(sum <= self.rx.total_bytes(), "claims beyond the offer");
    }

    fn events(&mut self) {
        while let Some(e) = self.rx.poll_event() {
            match e {
                ReceiverEvent::Offer(_) if self.accept => {
                    let held = self.hold.map(|(i, n)| (i, zeros_hashed(n)));
                    // A claim beyond the offer is the caller's mistake (an error, the offer
                    // still pending): then accept holding nothing.
                    if held.is_none_or(|h| self.rx.accept_holding(vec![h]).is_err()) {
                        self.rx.accept().expect("an offer is pending");
                    }
                }
                ReceiverEvent::Offer(_) => self.rx.decline("no thanks"),
                ReceiverEvent::FileVerified { index } if self.save => {
                    let _ = self.rx.file_saved(index);
                }
                _ => {}
            }
        }
    }

    fn transmit(&mut self) {
        while let Some(f) = self.rx.poll_transmit(self.now) {
            assert!(
                matches!(frame::decode(&f), Ok(Frame::Control(_))),
                "the receiver sent a frame that does not decode"
            );
        }
    }

    fn wait(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        let _ = self.rx.handle_timeout(self.now);
        let _ = self.rx.poll_timeout();
        self.transmit();
    }
}

fn zeros_hashed(n: u64) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(&vec![0; n as usize]);
    h
}

// ── the script ────────────────────────────────────────────────────────────────────────────

#[derive(Arbitrary, Debug)]
struct Script {
    limits: Option<(u8, u16, Option<u16>)>,
    accept: bool,
    save: bool,
    seen_peer: bool,
    path: Option<Pair>,
    /// The offer's entries, in parts.
    parts: Vec<Vec<Entry>>,
    /// Announce other totals than the entries add up to.
    lie_files: Option<u32>,
    lie_bytes: Option<u64>,
    /// The receiver holds the first bytes of an offered file: (entry, length).
    hold: Option<(u8, u16)>,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Pair(u8, u8, u8, u8);

impl Pair {
    fn view(self) -> PairView {
        let cand = |n: u8| {
            [
                CandidateType::Host,
                CandidateType::Srflx,
                CandidateType::Prflx,
                CandidateType::Relay,
                CandidateType::Unknown,
            ][usize::from(n % 5)]
        };
        PairView {
            kind: [
                PathKind::Direct,
                PathKind::Mapped,
                PathKind::Forwarded,
                PathKind::Relay,
            ][usize::from(self.0 % 4)],
            local: cand(self.1),
            remote: cand(self.2),
            protocol: [Transport::Udp, Transport::Tcp, Transport::Tls][usize::from(self.3 % 3)],
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Name {
    /// `f<n>`: short, safe, often colliding.
    Short(u8),
    /// `d<a>/f<b>`: nested.
    Nested(u8, u8),
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Self::Short(n) => format!("f{}", n % 8),
            Self::Nested(a, b) => format!("d{}/f{}", a % 4, b % 8),
            Self::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Entry {
    name: Name,
    size: u16,
    dir: bool,
}

impl Entry {
    fn offer_entry(&self) -> OfferEntry {
        if self.dir {
            OfferEntry::dir(self.name.text())
        } else {
            OfferEntry::file(self.name.text(), u64::from(self.size))
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// The next `len` bytes of the current file, in order.
    Data(u16),
    /// A data frame anywhere.
    DataAt {
        index: u32,
        offset: u64,
        len: u16,
    },
    /// The current file ends, with the hash of what was sent of it.
    FileEnd,
    Control(Ctl),
    Raw(Vec<u8>),
    Wait(u16),
    Cancel,
    SetPath(Pair),
    Saved(u32),
    /// The sender answers the held beginning: continued (true) or started over.
    Resume(bool),
}

#[derive(Arbitrary, Debug)]
enum Ctl {
    Hello {
        version: u32,
        sender: bool,
        seen_peer: bool,
        max_frame: u32,
        path: Option<Pair>,
    },
    Path(Pair),
    Offer {
        total_files: u32,
        total_bytes: u64,
        files: Vec<Entry>,
    },
    Accept(Vec<(u32, u64)>),
    Resume(Vec<(u32, u64)>),
    Decline(String),
    FileEnd {
        index: u32,
        blake3: String,
    },
    FileAck(u32),
    Complete,
    Cancel(u8, String),
}

fn cancel_reason(n: u8) -> CancelReason {
    [
        CancelReason::Cancelled,
        CancelReason::UnsafeName,
        CancelReason::HashMismatch,
        CancelReason::Protocol,
        CancelReason::NoSpace,
        CancelReason::SourceChanged,
        CancelReason::Io,
    ][usize::from(n % 7)]
}

impl Ctl {
    fn control(self) -> Control {
        match self {
            Self::Hello {
                version,
                sender,
                seen_peer,
                max_frame,
                path,
            } => Control::Hello {
                version: if version % 4 == 0 {
                    version
                } else {
                    TRANSFER_VERSION
                },
                role: if sender { Role::Sender } else { Role::Receiver },
                seen_peer,
                max_frame,
                path: path.map(Pair::view),
            },
            Self::Path(p) => Control::Path { path: p.view() },
            Self::Offer {
                total_files,
                total_bytes,
                files,
            } => Control::Offer {
                total_files,
                total_bytes,
                files: files.iter().map(Entry::offer_entry).collect(),
            },
            Self::Accept(held) => Control::Accept {
                resume: held
                    .into_iter()
                    .map(|(index, offset)| Held {
                        index,
                        offset,
                        blake3: zeros_hashed(offset.min(1 << 16))
                            .finalize()
                            .to_hex()
                            .to_string(),
                    })
                    .collect(),
            },
            Self::Resume(files) => Control::Resume {
                files: files
                    .into_iter()
                    .map(|(index, offset)| ResumeAt { index, offset })
                    .collect(),
            },
            Self::Decline(message) => Control::Decline { message },
            Self::FileEnd { index, blake3 } => Control::FileEnd { index, blake3 },
            Self::FileAck(index) => Control::FileAck { index },
            Self::Complete => Control::Complete,
            Self::Cancel(r, message) => Control::Cancel {
                reason: cancel_reason(r),
                message,
            },
        }
    }
}

fn data_frame(index: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + len];
    for (i, b) in buf[DATA_HEADER_LEN..].iter_mut().enumerate() {
        *b = offset.wrapping_add(i as u64) as u8;
    }
    frame::write_data_header(&mut buf, index, offset);
    buf
}

fn run_script(s: Script) {
    let now = Duration::from_secs(100);
    let rx = match s.limits {
        Some((entries, names, bytes)) => Receiver::with_limits(
            now,
            Limits {
                max_entries: usize::from(entries),
                max_name_bytes: usize::from(names),
                max_bytes: bytes.map(u64::from),
            },
        ),
        None => Receiver::new(now),
    };
    let entry_count = s.parts.iter().map(Vec::len).sum::<usize>();
    let hold = s
        .hold
        .filter(|_| entry_count > 0)
        .map(|(i, n)| (u32::from(i) % entry_count as u32, u64::from(n)));
    let mut c = Caller {
        rx,
        now,
        accept: s.accept,
        save: s.save,
        hold,
    };
    c.transmit();
    c.frame(&frame::encode_control(&Control::Hello {
        version: TRANSFER_VERSION,
        role: Role::Sender,
        seen_peer: s.seen_peer,
        max_frame: frame::MAX_FRAME as u32,
        path: s.path.map(Pair::view),
    }));

    // The offer, as the sender would split it.
    let entries: Vec<OfferEntry> = s.parts.iter().flatten().map(Entry::offer_entry).collect();
    let total_files = s.lie_files.unwrap_or(entries.len() as u32);
    let total_bytes = s
        .lie_bytes
        .unwrap_or(entries.iter().filter(|e| !e.dir).map(|e| e.size).sum());
    for part in &s.parts {
        c.frame(&frame::encode_control(&Control::Offer {
            total_files,
            total_bytes,
            files: part.iter().map(Entry::offer_entry).collect(),
        }));
    }

    // The sender's position: which entry it sends, how far, the hash of what it sent.
    let next_file = |from: usize| (from..entries.len()).find(|&i| !entries[i].dir);
    let mut cur = next_file(0);
    let mut offset = 0u64;
    let mut hasher = blake3::Hasher::new();
    // The held file the sender continues, once it said so.
    let mut resumed: Option<(u32, u64)> = None;
    for step in s.steps {
        match step {
            Step::Data(len) => {
                let Some(i) = cur else { continue };
                let left = entries[i].size.saturating_sub(offset);
                if left == 0 {
                    continue;
                }
                let len = u64::from(len).clamp(1, left) as usize;
                let f = data_frame(i as u32, offset, len);
                hasher.update(&f[DATA_HEADER_LEN..]);
                offset += len as u64;
                c.frame(&f);
            }
            Step::DataAt { index, offset, len } => {
                c.frame(&data_frame(index, offset, usize::from(len % 4096)));
            }
            Step::FileEnd => {
                let Some(i) = cur else { continue };
                let hash = std::mem::take(&mut hasher).finalize().to_hex().to_string();
                c.frame(&frame::encode_control(&Control::FileEnd {
                    index: i as u32,
                    blake3: hash,
                }));
                cur = next_file(i + 1);
                offset = 0;
                if let (Some(n), Some((h, len))) = (cur, resumed)
                    && n as u32 == h
                {
                    offset = len;
                    hasher = zeros_hashed(len);
                }
            }
            Step::Resume(continued) => {
                let Some((index, len)) = hold else { continue };
                let at = if continued { len } else { 0 };
                c.frame(&frame::encode_control(&Control::Resume {
                    files: vec![ResumeAt { index, offset: at }],
                }));
                if continued {
                    resumed = Some((index, len));
                    if cur == Some(index as usize) && offset == 0 {
                        offset = len;
                        hasher = zeros_hashed(len);
                    }
                }
            }
            Step::Control(ctl) => c.frame(&frame::encode_control(&ctl.control())),
            Step::Raw(bytes) => c.frame(&bytes),
            Step::Wait(ms) => c.wait(u64::from(ms)),
            Step::Cancel => {
                let _ = c.rx.cancel(CancelReason::Cancelled, "stop");
                c.transmit();
            }
            Step::SetPath(p) => {
                c.rx.set_path(p.view());
                c.transmit();
            }
            Step::Saved(index) => {
                let _ = c.rx.file_saved(index);
                let _ = c.rx.saves_left();
                c.transmit();
            }
        }
    }
}

fn run_frames(mut data: &[u8]) {
    let mut c = Caller {
        rx: Receiver::new(Duration::from_secs(100)),
        now: Duration::from_secs(100),
        accept: true,
        save: true,
        hold: None,
    };
    c.transmit();
    while let [a, b, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        let (f, tail) = rest.split_at(len);
        c.frame(f);
        c.wait(100);
        data = tail;
    }
    c.wait(20_000);
}

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode(data);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        run_frames(rest);
    } else if let Ok(script) = Script::arbitrary_take_rest(Unstructured::new(rest)) {
        run_script(script);
    }
});
