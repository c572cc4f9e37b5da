//! Sender and receiver driven against each other on virtual time, with no sockets.

use super::frame::{self, Control};
use super::*;
use std::collections::{BTreeMap, VecDeque};

/// Rewrites the n-th frame on its way to the receiver.
type Mangler = Box<dyn FnMut(usize, &mut Vec<u8>)>;

/// In-memory stand-in for the files on each side and the channel between them.
struct Harness {
    now: Duration,
    tx: Sender,
    rx: Receiver,
    sources: Vec<Vec<u8>>,
    /// Frames in flight, sender → receiver and back.
    to_rx: VecDeque<Vec<u8>>,
    to_tx: VecDeque<Vec<u8>>,
    /// Written on the receiving side: index → bytes (the `.part` file).
    parts: BTreeMap<u32, Vec<u8>>,
    saved: BTreeMap<u32, Vec<u8>>,
    offers_seen: usize,
    /// Drop the n-th frame sent sender → receiver (0-based), to mimic webrtc-rs#901.
    drop_to_rx: Option<usize>,
    drop_to_tx: Option<usize>,
    sent_to_rx: usize,
    sent_to_tx: usize,
    /// Mangle frames on their way to the receiver.
    mangle: Option<Mangler>,
    tx_err: Option<TransferError>,
    rx_err: Option<TransferError>,
    accept: bool,
    /// Reads handed out by the sender and not yet encoded.
    reads: VecDeque<ReadRequest>,
    /// Beginnings the receiving side kept from an earlier run (its `.part` files), offered in
    /// its accept.
    held: BTreeMap<u32, Vec<u8>>,
    /// What the accept claims, when not the hashes of `held` (a receiver's own
    /// [`Receiver::holding`] from an earlier connection).
    holds: Option<Vec<(u32, Hold)>>,
    tx_events: Vec<SenderEvent>,
    rx_events: Vec<ReceiverEvent>,
}

impl Harness {
    fn new(entries: Vec<OfferEntry>, sources: Vec<Vec<u8>>, chunk: usize) -> Self {
        let now = Duration::from_secs(100);
        Self {
            now,
            tx: Sender::new(entries, chunk, now),
            rx: Receiver::new(now),
            sources,
            to_rx: VecDeque::new(),
            to_tx: VecDeque::new(),
            parts: BTreeMap::new(),
            saved: BTreeMap::new(),
            offers_seen: 0,
            drop_to_rx: None,
            drop_to_tx: None,
            sent_to_rx: 0,
            sent_to_tx: 0,
            mangle: None,
            tx_err: None,
            rx_err: None,
            accept: true,
            reads: VecDeque::new(),
            held: BTreeMap::new(),
            holds: None,
            tx_events: Vec::new(),
            rx_events: Vec::new(),
        }
    }

    fn push_to_rx(&mut self, mut f: Vec<u8>) {
        let n = self.sent_to_rx;
        self.sent_to_rx += 1;
        if self.drop_to_rx == Some(n) {
            return;
        }
        if let Some(m) = self.mangle.as_mut() {
            m(n, &mut f);
        }
        self.to_rx.push_back(f);
    }

    fn push_to_tx(&mut self, f: Vec<u8>) {
        let n = self.sent_to_tx;
        self.sent_to_tx += 1;
        if self.drop_to_tx != Some(n) {
            self.to_tx.push_back(f);
        }
    }

    /// One round: both sides transmit, read, and handle what arrived. Returns whether anything
    /// happened.
    fn step(&mut self) -> bool {
        let mut busy = false;
        while let Some(f) = self.tx.poll_transmit(self.now) {
            self.push_to_rx(f);
            busy = true;
        }
        // Sender reads at most a few chunks per round so frames interleave with acks, and
        // keeps reads outstanding ahead of framing as a real reader does.
        for _ in 0..4 {
            if self.tx_err.is_some() {
                break;
            }
            while self.reads.len() < 3 {
                match self.tx.poll_read() {
                    Some(r) => self.reads.push_back(r),
                    None => break,
                }
            }
            let Some(req) = self.reads.pop_front() else {
                break;
            };
            let src = &self.sources[req.index as usize];
            let start = req.offset as usize;
            let end = (start + req.len).min(src.len());
            let mut buf = vec![0u8; DATA_HEADER_LEN + (end - start)];
            buf[DATA_HEADER_LEN..].copy_from_slice(&src[start..end]);
            match self.tx.encode_data(&mut buf) {
                Ok(()) => self.push_to_rx(buf),
                Err(e) => self.tx_err = Some(e),
            }
            while let Some(f) = self.tx.poll_transmit(self.now) {
                self.push_to_rx(f);
            }
            busy = true;
        }
        while let Some(f) = self.rx.poll_transmit(self.now) {
            self.push_to_tx(f);
            busy = true;
        }
        while let Some(f) = self.to_rx.pop_front() {
            busy = true;
            match self.rx.handle_frame(&f, self.now) {
                Ok(r) => {
                    let data = match r {
                        Received::Data {
                            index,
                            offset,
                            bytes,
                        } => Some((index, offset, bytes.to_vec())),
                        Received::Nothing => None,
                    };
                    self.drain_rx_events();
                    if let Some((index, offset, bytes)) = data {
                        let part = self.parts.get_mut(&index).expect("FileStart before data");
                        assert_eq!(part.len() as u64, offset);
                        part.extend_from_slice(&bytes);
                    }
                }
                Err(e) => {
                    self.rx_err.get_or_insert(e);
                }
            }
        }
        while let Some(f) = self.to_tx.pop_front() {
            busy = true;
            if let Err(e) = self.tx.handle_frame(&f, self.now) {
                self.tx_err.get_or_insert(e);
            }
            self.drain_tx_events();
        }
        busy
    }

    fn drain_tx_events(&mut self) {
        while let Some(ev) = self.tx.poll_event() {
            if let SenderEvent::CheckPrefix { index, offset } = ev {
                let src = &self.sources[index as usize];
                let mut hasher = blake3::Hasher::new();
                hasher.update(&src[..(offset as usize).min(src.len())]);
                self.tx.prefix_hashed(index, hasher).unwrap();
            }
            self.tx_events.push(ev);
        }
    }

    fn drain_rx_events(&mut self) {
        while let Some(ev) = self.rx.poll_event() {
            self.rx_events.push(ev.clone());
            match ev {
                ReceiverEvent::Offer(_) => {
                    self.offers_seen += 1;
                    if self.accept {
                        let hashed = || {
                            self.held
                                .iter()
                                .map(|(i, b)| {
                                    (*i, Hold::from(blake3::Hasher::new().update(b).clone()))
                                })
                                .collect()
                        };
                        let held = self.holds.take().unwrap_or_else(hashed);
                        self.rx.accept_holding(held).unwrap();
                    } else {
                        self.rx.decline("no thanks");
                    }
                }
                ReceiverEvent::FileStart { index, offset } => {
                    // What a driver does with its `.part`: keep exactly the first `offset`
                    // bytes of what it held.
                    let mut part = self.held.remove(&index).unwrap_or_default();
                    assert!(part.len() as u64 >= offset, "FileStart beyond what is held");
                    part.truncate(offset as usize);
                    assert!(self.parts.insert(index, part).is_none());
                }
                ReceiverEvent::FileVerified { index } => {
                    let data = self.parts.remove(&index).unwrap();
                    self.saved.insert(index, data);
                    self.rx.file_saved(index).unwrap();
                }
                ReceiverEvent::Completed
                | ReceiverEvent::PeerPath(_)
                | ReceiverEvent::Resumed { .. }
                | ReceiverEvent::StartsOver { .. } => {}
            }
        }
    }

    /// Run until both sides are quiet, advancing virtual time to the next timer when idle.
    fn run(&mut self) {
        for _ in 0..100_000 {
            if self.step() {
                continue;
            }
            let next = [self.tx.poll_timeout(), self.rx.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if !(self.tx.is_done() && self.rx.is_done()) => {
                    self.now = self.now.max(t);
                    if let Err(e) = self.tx.handle_timeout(self.now) {
                        self.tx_err.get_or_insert(e);
                    }
                    if let Err(e) = self.rx.handle_timeout(self.now) {
                        self.rx_err.get_or_insert(e);
                    }
                }
                _ => return,
            }
        }
        panic!("transfer did not settle");
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn mixed() -> (Vec<OfferEntry>, Vec<Vec<u8>>) {
    let a = pattern(200_000, 1);
    let b = Vec::new();
    let c = pattern(65_536, 2);
    let d = pattern(7, 3);
    let entries = vec![
        OfferEntry::file("top.bin", a.len() as u64),
        OfferEntry::dir("photos"),
        OfferEntry::file("photos/empty.txt", 0),
        OfferEntry::dir("photos/none"),
        OfferEntry::file("photos/2024/c.jpg", c.len() as u64),
        OfferEntry::file("z", d.len() as u64),
    ];
    (entries, vec![a, Vec::new(), b, Vec::new(), c, d])
}

#[test]
fn files_dirs_and_empty_files_arrive_verified() {
    let (entries, sources) = mixed();
    let mut h = Harness::new(entries, sources.clone(), 16 * 1024);
    h.run();
    assert_eq!(h.tx_err, None);
    assert_eq!(h.rx_err, None);
    assert!(h.tx.is_done() && h.rx.is_done());
    let expect: BTreeMap<u32, Vec<u8>> = [
        (0, sources[0].clone()),
        (2, Vec::new()),
        (4, sources[4].clone()),
        (5, sources[5].clone()),
    ]
    .into_iter()
    .collect();
    assert_eq!(h.saved, expect);
    assert_eq!(h.rx.bytes_received(), h.tx.total_bytes());
    assert_eq!(h.tx.bytes_sent(), 200_000 + 65_536 + 7);
}

#[test]
fn lost_first_message_either_way_is_recovered_by_hello_resend() {
    for (drop_rx, drop_tx) in [(Some(0), None), (None, Some(0)), (Some(0), Some(0))] {
        let (entries, sources) = mixed();
        let mut h = Harness::new(entries, sources, 64 * 1024);
        h.drop_to_rx = drop_rx;
        h.drop_to_tx = drop_tx;
        h.run();
        assert_eq!(
            (h.tx_err.clone(), h.rx_err.clone()),
            (None, None),
            "{drop_rx:?} {drop_tx:?}"
        );
        assert!(h.tx.is_done() && h.rx.is_done());
        assert_eq!(h.offers_seen, 1);
        // One lost Hello is answered at once by the peer's `seen_peer: false` Hello, and the
        // offer right behind the sender's Hello stands for it: no case waits for the resend
        // timer.
        assert!(
            h.now < Duration::from_secs(100) + HELLO_RESEND,
            "{drop_rx:?} {drop_tx:?}: {:?}",
            h.now
        );
    }
}

/// Hand the receiver every frame the sender has to send now; whether an offer came of it.
fn deliver(tx: &mut Sender, rx: &mut Receiver, now: Duration) -> bool {
    let mut offered = false;
    while let Some(f) = tx.poll_transmit(now) {
        rx.handle_frame(&f, now).unwrap();
        offered |=
            std::iter::from_fn(|| rx.poll_event()).any(|e| matches!(e, ReceiverEvent::Offer(_)));
    }
    offered
}

/// The interleaving behind a native-suite stall: the sender's Hello is out, and both of the
/// receiver's Hellos (its own, then its answer to ours) arrive before the sender looks.
/// Handling them queues the sender's answer and its offer; a driver that then waits on
/// `poll_timeout` without transmitting first must wake at once, or each side waits on the
/// other (the receiver for the offer, the sender for a frame).
#[test]
fn frames_queued_by_handling_make_the_timeout_due_at_once() {
    let now = Duration::from_secs(100);
    let (entries, _) = mixed();
    let mut tx = Sender::new(entries, 16 * 1024, now);
    let mut rx = Receiver::new(now);
    let tx_hello = tx.poll_transmit(now).expect("the sender's hello");
    let rx_hello = rx.poll_transmit(now).expect("the receiver's hello");
    rx.handle_frame(&tx_hello, now).unwrap();
    let rx_answer = rx
        .poll_transmit(now)
        .expect("the receiver answers our hello");
    assert_eq!(rx.poll_transmit(now), None);
    tx.handle_frame(&rx_hello, now).unwrap();
    tx.handle_frame(&rx_answer, now).unwrap();
    // Nothing more will arrive until the sender transmits: its timer must say so.
    assert_eq!(tx.poll_timeout(), Some(Duration::ZERO));
    tx.handle_timeout(now).unwrap();
    let offered = deliver(&mut tx, &mut rx, now);
    assert!(offered, "the offer went out");
    assert_ne!(tx.poll_timeout(), Some(Duration::ZERO));
    // The receiver too: an accept queued is due at once, then its timer is its own again.
    rx.accept().unwrap();
    assert_eq!(rx.poll_timeout(), Some(Duration::ZERO));
    while rx.poll_transmit(now).is_some() {}
    assert_ne!(rx.poll_timeout(), Some(Duration::ZERO));
}

/// The offer needs nothing from the receiver's hello: a fresh sender sends its hello and
/// its offer before hearing anything, so they arrive together (a round trip sooner).
#[test]
fn the_offer_goes_right_behind_the_first_hello() {
    let now = Duration::from_secs(100);
    let (entries, _) = mixed();
    let mut tx = Sender::new(entries, 16 * 1024, now);
    let mut rx = Receiver::new(now);
    let first = tx.poll_transmit(now).expect("the sender's hello");
    rx.handle_frame(&first, now).unwrap();
    let offered = deliver(&mut tx, &mut rx, now);
    assert!(
        offered,
        "the whole offer went out with the hello, nothing heard yet"
    );
    // It still greets: the receiver's hello answers it, and until then hellos are resent.
    assert!(tx.poll_timeout().is_some_and(|t| t <= now + HELLO_RESEND));
}

#[test]
fn silent_peer_times_out() {
    let mut tx = Sender::with_default_chunk(vec![OfferEntry::file("a", 1)], Duration::ZERO);
    assert!(tx.poll_transmit(Duration::ZERO).is_some());
    let mut now = Duration::ZERO;
    let mut hellos = 1;
    while let Some(t) = tx.poll_timeout() {
        now = t;
        if let Err(e) = tx.handle_timeout(now) {
            assert_eq!(e, TransferError::Timeout);
            break;
        }
        while tx.poll_transmit(now).is_some() {
            hellos += 1;
        }
    }
    assert!(now >= HELLO_TIMEOUT);
    assert!(hellos >= 10, "hello was resent ({hellos})");
}

/// After the hellos the receiver waits for the offer; a connection that carries nothing
/// (it looks open) is called stalled after [`RECEIVE_STALL`] — a lost link, not a failed
/// transfer: no cancel goes out. While this side's person decides there is no such limit.
#[test]
fn a_receiver_hearing_nothing_calls_the_connection_stalled() {
    let mut rx = Receiver::new(Duration::ZERO);
    let t = Duration::from_secs(3);
    rx.handle_frame(&sender_hello(), t).unwrap();
    while rx.poll_transmit(t).is_some() {}
    assert_eq!(rx.poll_timeout(), Some(t + RECEIVE_STALL));
    assert_eq!(rx.handle_timeout(t + RECEIVE_STALL / 2), Ok(()));
    assert_eq!(
        rx.handle_timeout(t + RECEIVE_STALL),
        Err(TransferError::Stalled)
    );
    assert!(!rx.has_failed(), "the transfer itself did not fail");
    assert_eq!(rx.poll_transmit(t + RECEIVE_STALL), None, "no cancel");

    // An offer waiting for this side's decision has no such limit.
    let mut rx = Receiver::new(Duration::ZERO);
    deliver_offer(&mut rx, vec![OfferEntry::file("a", 1)]);
    assert_eq!(rx.poll_timeout(), None);
}

#[test]
fn many_entries_split_over_several_offer_frames() {
    let n = 5000;
    let entries: Vec<OfferEntry> = (0..n)
        .map(|i| OfferEntry::file(format!("dir/{}/file-{i:05}.dat", "x".repeat(40)), 1))
        .collect();
    let sources = vec![vec![7u8]; n];
    let mut h = Harness::new(entries, sources, 1024);
    h.run();
    assert_eq!((h.tx_err.clone(), h.rx_err.clone()), (None, None));
    assert_eq!(h.saved.len(), n);
    assert!(h.sent_to_rx > n, "offer and data went through");
}

#[test]
fn wrong_hash_is_caught_and_nothing_is_saved() {
    let data = pattern(100_000, 9);
    let mut h = Harness::new(
        vec![OfferEntry::file("f", data.len() as u64)],
        vec![data],
        32 * 1024,
    );
    // Flip one payload byte in the second data frame (after the first, 2 KiB), as a faulty
    // path might.
    h.mangle = Some(Box::new(|_, f| {
        if f[0] == 1 && u64::from_be_bytes(f[5..13].try_into().unwrap()) == 2048 {
            f[100] ^= 0xff;
        }
    }));
    h.run();
    assert_eq!(h.rx_err, Some(TransferError::HashMismatch { index: 0 }));
    assert!(
        h.saved.is_empty(),
        "a mismatching file is never reported verified"
    );
    assert!(matches!(
        h.tx_err,
        Some(TransferError::PeerCancelled {
            reason: CancelReason::HashMismatch,
            ..
        })
    ));
}

#[test]
fn reordered_data_is_an_error_not_a_corrupt_file() {
    let data = pattern(50_000, 4);
    let mut h = Harness::new(
        vec![OfferEntry::file("f", data.len() as u64)],
        vec![data],
        10_000,
    );
    let mut held: Option<Vec<u8>> = None;
    h.mangle = Some(Box::new(move |_, f| {
        // Swap the offsets of the first two data frames.
        if f[0] == 1 {
            let off = u64::from_be_bytes(f[5..13].try_into().unwrap());
            if off == 0 {
                held = Some(f.clone());
                f[5..13].copy_from_slice(&10_000u64.to_be_bytes());
            }
        }
        let _ = &held;
    }));
    h.run();
    assert_eq!(h.rx_err, Some(TransferError::OutOfOrder));
    assert!(h.saved.is_empty());
    assert!(matches!(
        h.tx_err,
        Some(TransferError::PeerCancelled {
            reason: CancelReason::Protocol,
            ..
        })
    ));
}

#[test]
fn hostile_names_are_refused_before_any_byte() {
    for bad in [
        "../escape",
        "/etc/passwd",
        "a/../../b",
        "NUL",
        "x\\..\\y",
        "",
    ] {
        let mut h = Harness::new(vec![OfferEntry::file(bad, 3)], vec![b"abc".to_vec()], 1024);
        h.run();
        assert!(
            matches!(h.rx_err, Some(TransferError::UnsafeName(_))),
            "{bad:?}: {:?}",
            h.rx_err
        );
        assert_eq!(
            h.offers_seen, 0,
            "the unsafe offer never reaches the caller"
        );
        assert!(h.parts.is_empty() && h.saved.is_empty());
        assert!(matches!(
            h.tx_err,
            Some(TransferError::PeerCancelled {
                reason: CancelReason::UnsafeName,
                ..
            })
        ));
    }
}

#[test]
fn inconsistent_offers_are_refused() {
    let cases: Vec<(Vec<OfferEntry>, &str)> = vec![
        (
            vec![OfferEntry::file("a", 1), OfferEntry::file("a", 1)],
            "a name appears twice",
        ),
        (
            vec![OfferEntry::file("a", 1), OfferEntry::file("a/b", 1)],
            "a file is also used as a directory",
        ),
    ];
    for (entries, why) in cases {
        let sources = vec![vec![1u8]; entries.len()];
        let mut h = Harness::new(entries, sources, 1024);
        h.run();
        assert_eq!(h.rx_err, Some(TransferError::BadOffer(why)));
    }
    // A lying total.
    let mut rx = Receiver::new(Duration::ZERO);
    let offer = frame::encode_control(&Control::Offer {
        total_files: 1,
        total_bytes: 99,
        files: vec![OfferEntry::file("a", 1)],
    });
    assert_eq!(
        rx.handle_frame(&offer, Duration::ZERO),
        Err(TransferError::BadOffer(
            "sizes do not add up to the announced total"
        ))
    );
}

#[test]
fn garbled_truncated_and_oversized_frames_fail_cleanly() {
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, b'{'],
        vec![1, 0, 0, 0],
        vec![7, 7, 7],
        vec![0u8; MAX_FRAME + 1],
        b"\x00{\"t\":\"offer\",\"total_files\":1}".to_vec(),
    ];
    for f in bad {
        let mut rx = Receiver::new(Duration::ZERO);
        let err = rx.handle_frame(&f, Duration::ZERO).unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::Malformed(_) | TransferError::Oversized { .. }
            ),
            "{err:?}"
        );
        // The receiver told the sender why, then stays quiet and inert.
        let cancel = rx.poll_transmit(Duration::ZERO).expect("a cancel frame");
        assert!(matches!(
            frame::decode(&cancel),
            Ok(frame::Frame::Control(Control::Cancel { .. }))
        ));
        assert_eq!(
            rx.handle_frame(&[0, b'x'], Duration::ZERO),
            Ok(Received::Nothing)
        );
    }
}

#[test]
fn data_beyond_announced_size_is_refused() {
    let mut h = Harness::new(vec![OfferEntry::file("f", 10)], vec![pattern(20, 0)], 1024);
    // The sender's own bookkeeping refuses to frame more than the offer said…
    h.tx = Sender::new(vec![OfferEntry::file("f", 10)], 1024, h.now);
    h.sources[0].truncate(10);
    h.run();
    assert_eq!(h.rx_err, None);
    // …and a receiver refuses extra bytes from a sender that lies.
    let mut rx = Receiver::new(Duration::ZERO);
    let offer = frame::encode_control(&Control::Offer {
        total_files: 1,
        total_bytes: 4,
        files: vec![OfferEntry::file("f", 4)],
    });
    rx.handle_frame(&offer, Duration::ZERO).unwrap();
    rx.accept().unwrap();
    let mut data = vec![0u8; DATA_HEADER_LEN + 5];
    frame::write_data_header(&mut data, 0, 0);
    assert_eq!(
        rx.handle_frame(&data, Duration::ZERO),
        Err(TransferError::OutOfOrder)
    );
}

#[test]
fn a_device_proof_reaches_the_receiver_before_the_offer_and_only_then() {
    let (entries, sources) = mixed();
    let mut h = Harness::new(entries, sources.clone(), 1024);
    let proof = crate::device::DeviceProof {
        key: "a2V5".into(),
        sig: "c2ln".into(),
        name: "phone".into(),
        pair: Some("ABCD-EFGH".into()),
    };
    h.tx.prove_device(proof.clone());
    h.run();
    assert_eq!(h.rx.device(), Some(&proof));
    assert!(h.rx.is_done());
    // A proof after the offer's first part is not one.
    let mut rx = Receiver::new(Duration::ZERO);
    let offer = frame::encode_control(&Control::Offer {
        total_files: 2,
        total_bytes: 2,
        files: vec![OfferEntry::file("a", 1)],
    });
    rx.handle_frame(&offer, Duration::ZERO).unwrap();
    let late = frame::encode_control(&Control::Device { device: proof });
    assert!(matches!(
        rx.handle_frame(&late, Duration::ZERO),
        Err(TransferError::Unexpected("device"))
    ));
}

#[test]
fn decline_reaches_the_sender() {
    let mut h = Harness::new(vec![OfferEntry::file("f", 3)], vec![b"abc".to_vec()], 1024);
    h.accept = false;
    h.run();
    assert_eq!(h.tx_err, Some(TransferError::Declined("no thanks".into())));
    assert!(h.saved.is_empty());
}

#[test]
fn source_shrinking_mid_send_cancels() {
    let mut h = Harness::new(vec![OfferEntry::file("f", 100)], vec![pattern(40, 0)], 16);
    h.run();
    assert!(matches!(
        h.tx_err,
        Some(TransferError::Cancelled {
            reason: CancelReason::SourceChanged,
            ..
        })
    ));
    assert!(matches!(
        h.rx_err,
        Some(TransferError::PeerCancelled {
            reason: CancelReason::SourceChanged,
            ..
        })
    ));
    assert!(h.saved.is_empty());
}

#[test]
fn two_senders_are_told_apart() {
    let mut a = Sender::with_default_chunk(vec![OfferEntry::file("a", 1)], Duration::ZERO);
    let b_hello = Sender::with_default_chunk(vec![], Duration::ZERO)
        .poll_transmit(Duration::ZERO)
        .unwrap();
    a.poll_transmit(Duration::ZERO);
    assert_eq!(
        a.handle_frame(&b_hello, Duration::ZERO),
        Err(TransferError::SameRole(Role::Sender))
    );
}

#[test]
fn local_cancel_tells_the_peer() {
    let mut h = Harness::new(
        vec![OfferEntry::file("f", 1 << 20)],
        vec![pattern(1 << 20, 5)],
        64 * 1024,
    );
    for _ in 0..4 {
        h.step();
    }
    let e = h.rx.cancel(CancelReason::NoSpace, "disk full");
    assert!(matches!(
        e,
        TransferError::Cancelled {
            reason: CancelReason::NoSpace,
            ..
        }
    ));
    h.run();
    assert!(matches!(
        h.tx_err,
        Some(TransferError::PeerCancelled {
            reason: CancelReason::NoSpace,
            ..
        })
    ));
    assert!(!h.tx.is_done());
}

#[test]
fn an_offer_of_empty_folders_only_completes() {
    let entries = vec![OfferEntry::dir("empty"), OfferEntry::dir("empty/inner")];
    let mut h = Harness::new(entries, vec![Vec::new(), Vec::new()], 1024);
    h.run();
    assert_eq!((h.tx_err.clone(), h.rx_err.clone()), (None, None));
    assert!(
        h.tx.is_done() && h.rx.is_done(),
        "both ends finish, nothing to acknowledge"
    );
    assert!(h.saved.is_empty());
}

#[test]
fn the_sender_paces_its_first_frames_and_reads_ahead() {
    let entries = vec![
        OfferEntry::dir("d"),
        OfferEntry::file("d/empty", 0),
        OfferEntry::file("d/a", 100_000),
        OfferEntry::file("b", 5),
    ];
    let mut tx = Sender::new(entries, 40_000, Duration::ZERO);
    let mut rx = Receiver::new(Duration::ZERO);
    // Hello both ways, offer, accept.
    let mut to_rx: Vec<Vec<u8>> = std::iter::from_fn(|| tx.poll_transmit(Duration::ZERO)).collect();
    assert!(
        tx.poll_read().is_none(),
        "nothing to read before the receiver accepts"
    );
    while !to_rx.is_empty() || !rx.is_done() {
        for f in to_rx.drain(..) {
            rx.handle_frame(&f, Duration::ZERO).unwrap();
        }
        while let Some(ev) = rx.poll_event() {
            if let ReceiverEvent::Offer(_) = ev {
                rx.accept().unwrap();
            }
        }
        let mut back = false;
        while let Some(f) = rx.poll_transmit(Duration::ZERO) {
            tx.handle_frame(&f, Duration::ZERO).unwrap();
            back = true;
        }
        to_rx.extend(std::iter::from_fn(|| tx.poll_transmit(Duration::ZERO)));
        if !back && to_rx.is_empty() {
            break;
        }
    }
    // Every read at once, before any is encoded: the first frames grow, then the chunk size;
    // directories and empty files have no reads.
    let reads: Vec<(u32, u64, usize)> = std::iter::from_fn(|| tx.poll_read())
        .map(|r| (r.index, r.offset, r.len))
        .collect();
    assert_eq!(
        reads,
        [
            (2, 0, 2048),
            (2, 2048, 8192),
            (2, 10_240, 32_768),
            (2, 43_008, 40_000),
            (2, 83_008, 16_992),
            (3, 0, 5),
        ]
    );
    // Payloads go in the order handed out; one more than was asked for is a caller's bug.
    for (_, _, len) in &reads {
        let mut buf = vec![7u8; DATA_HEADER_LEN + len];
        tx.encode_data(&mut buf).unwrap();
    }
    assert_eq!(tx.bytes_sent(), 100_005);
    assert!(tx.encode_data(&mut [0u8; DATA_HEADER_LEN + 1]).is_err());
}

#[test]
fn each_side_learns_the_pair_the_other_sends_on() {
    use crate::path::{CandidateType, PairView, PathKind, Transport};
    let view = |kind, local| PairView {
        kind,
        local,
        remote: CandidateType::Prflx,
        protocol: Transport::Udp,
    };
    let (direct, relayed) = (
        view(PathKind::Direct, CandidateType::Srflx),
        view(PathKind::Relay, CandidateType::Relay),
    );
    let data = pattern(300_000, 5);
    let mut h = Harness::new(
        vec![OfferEntry::file("f", data.len() as u64)],
        vec![data],
        16 * 1024,
    );
    // In the hellos.
    h.tx.set_path(direct);
    h.rx.set_path(relayed);
    h.step();
    h.step();
    assert_eq!(h.rx.peer_path(), Some(direct));
    assert_eq!(h.tx.peer_path(), Some(relayed));
    // A change later goes in a `path` frame; the same pair again sends nothing.
    let sent = h.sent_to_rx;
    h.tx.set_path(direct);
    assert!(h.tx.poll_transmit(h.now).is_none());
    h.tx.set_path(relayed);
    h.run();
    assert_eq!((h.tx_err.clone(), h.rx_err.clone()), (None, None));
    assert_eq!(h.rx.peer_path(), Some(relayed));
    assert!(h.sent_to_rx > sent);
}

/// An offer frame as a (possibly hostile) sender would write it.
fn offer_frame(total_files: u32, total_bytes: u64, files: Vec<OfferEntry>) -> Vec<u8> {
    frame::encode_control(&Control::Offer {
        total_files,
        total_bytes,
        files,
    })
}

#[test]
fn offers_beyond_the_receivers_limits_are_declined_with_the_reason() {
    // Bytes: `recv --max-bytes`.
    let mut h = Harness::new(
        vec![OfferEntry::file("big", 3000)],
        vec![vec![0u8; 3000]],
        1024,
    );
    h.rx = Receiver::with_limits(
        h.now,
        Limits {
            max_bytes: Some(2000),
            ..Limits::default()
        },
    );
    h.run();
    let msg = "the files are 3000 bytes; this receiver takes at most 2000";
    assert_eq!(h.rx_err, Some(TransferError::Refused(msg.into())));
    assert_eq!(h.tx_err, Some(TransferError::Declined(msg.into())));
    assert!(h.saved.is_empty());

    // Entries: refused from the first part's announced count, before the rest is held.
    let mut rx = Receiver::with_limits(
        Duration::ZERO,
        Limits {
            max_entries: 10,
            ..Limits::default()
        },
    );
    let first = offer_frame(1_000_000, 1_000_000, vec![OfferEntry::file("a", 1)]);
    assert!(matches!(
        rx.handle_frame(&first, Duration::ZERO),
        Err(TransferError::Refused(m)) if m.contains("1000000 entries")
    ));
    let declined = std::iter::from_fn(|| rx.poll_transmit(Duration::ZERO))
        .filter_map(|f| match frame::decode(&f) {
            Ok(frame::Frame::Control(Control::Decline { message })) => Some(message),
            _ => None,
        })
        .next();
    assert!(declined.is_some_and(|m| m.contains("at most 10")));
}

#[test]
fn each_entry_is_checked_as_it_arrives() {
    // A hostile name in the first part of an offer announced as huge: refused at once, not
    // after the receiver held everything the sender claims it will send.
    let mut rx = Receiver::new(Duration::ZERO);
    let first = offer_frame(
        100_000,
        100_000,
        vec![OfferEntry::file("ok", 1), OfferEntry::file("../escape", 1)],
    );
    assert!(matches!(
        rx.handle_frame(&first, Duration::ZERO),
        Err(TransferError::UnsafeName(_))
    ));
    // Sizes beyond the announced total, at the entry that passes it.
    let mut rx = Receiver::new(Duration::ZERO);
    let first = offer_frame(
        3,
        10,
        vec![OfferEntry::file("a", 6), OfferEntry::file("b", 6)],
    );
    assert_eq!(
        rx.handle_frame(&first, Duration::ZERO),
        Err(TransferError::BadOffer(
            "sizes add up to more than the announced total"
        ))
    );
    // Names: their bytes are capped in total.
    let mut rx = Receiver::with_limits(
        Duration::ZERO,
        Limits {
            max_name_bytes: 100,
            ..Limits::default()
        },
    );
    let long = |i: u32| OfferEntry::file(format!("{}{i}", "n".repeat(40)), 1);
    let first = offer_frame(3, 3, vec![long(1), long(2), long(3)]);
    assert_eq!(
        rx.handle_frame(&first, Duration::ZERO),
        Err(TransferError::BadOffer(
            "the offer's names are too long in total"
        ))
    );
}

/// Received files, by index, as the harness saved them.
fn saved_files(h: &Harness) -> BTreeMap<u32, Vec<u8>> {
    h.saved.clone()
}

fn expected_mixed(sources: &[Vec<u8>]) -> BTreeMap<u32, Vec<u8>> {
    [
        (0, sources[0].clone()),
        (2, Vec::new()),
        (4, sources[4].clone()),
        (5, sources[5].clone()),
    ]
    .into_iter()
    .collect()
}

#[test]
fn held_beginnings_are_continued_not_resent() {
    let (entries, sources) = mixed();
    let mut h = Harness::new(entries, sources.clone(), 16 * 1024);
    // From an interrupted run: most of the first file, all of c.jpg, 3 bytes of z.
    h.held.insert(0, sources[0][..120_000].to_vec());
    h.held.insert(4, sources[4].clone());
    h.held.insert(5, sources[5][..3].to_vec());
    h.run();
    assert_eq!((h.tx_err.clone(), h.rx_err.clone()), (None, None));
    assert!(h.tx.is_done() && h.rx.is_done());
    assert_eq!(saved_files(&h), expected_mixed(&sources));
    // Only what was missing moved, and both sides count just that.
    let missing = (200_000 - 120_000) + (7 - 3);
    assert_eq!(h.tx.bytes_sent(), missing);
    assert_eq!(h.rx.bytes_received(), missing);
    // Progress still ends at the offer's size.
    assert_eq!(h.tx.bytes_done(), h.tx.total_bytes());
    assert_eq!(h.rx.bytes_done(), h.rx.total_bytes());
    for (index, offset) in [(0, 120_000), (4, 65_536), (5, 3)] {
        assert!(
            h.tx_events
                .contains(&SenderEvent::Resumed { index, offset })
        );
        assert!(
            h.rx_events
                .contains(&ReceiverEvent::Resumed { index, offset })
        );
        assert!(
            h.rx_events
                .contains(&ReceiverEvent::FileStart { index, offset })
        );
    }
    // The checks came before any data: the sender asked for all three at the accept.
    let asked: Vec<_> = h
        .tx_events
        .iter()
        .filter(|e| matches!(e, SenderEvent::CheckPrefix { .. }))
        .collect();
    assert_eq!(asked.len(), 3);
}

#[test]
fn a_receiver_claims_what_it_holds_on_the_next_connection() {
    let (entries, sources) = mixed();
    let mut first = Harness::new(entries.clone(), sources.clone(), 4096);
    // The connection dies with top.bin saved and c.jpg partly received.
    for _ in 0..10_000 {
        let partial = first.parts.get(&4).is_some_and(|p| !p.is_empty());
        if first.saved.contains_key(&0) && partial {
            break;
        }
        assert!(first.step(), "stalled before c.jpg began");
    }
    let part = first.parts[&4].clone();
    assert!(part.len() < sources[4].len());
    let holding = first.rx.holding();
    let claimed: Vec<(u32, u64)> = holding.iter().map(|(i, h)| (*i, h.len())).collect();
    // The saved empty file is not claimed (there is nothing to hash).
    assert_eq!(claimed, vec![(0, 200_000), (4, part.len() as u64)]);
    assert!(matches!(holding[0].1, Hold::Whole { .. }));

    let mut next = Harness::new(entries, sources.clone(), 4096);
    next.held.insert(0, first.saved[&0].clone());
    next.held.insert(4, part.clone());
    next.holds = Some(holding);
    next.run();
    assert_eq!((next.tx_err.clone(), next.rx_err.clone()), (None, None));
    assert!(next.tx.is_done() && next.rx.is_done());
    assert_eq!(saved_files(&next), expected_mixed(&sources));
    let missing = (sources[4].len() - part.len()) as u64 + 7;
    assert_eq!(next.tx.bytes_sent(), missing);
    assert_eq!(next.rx.bytes_received(), missing);
    for (index, offset) in [(0, 200_000), (4, part.len() as u64)] {
        assert!(
            next.rx_events
                .contains(&ReceiverEvent::Resumed { index, offset })
        );
    }
    // A third connection would claim every file whole.
    let all: Vec<(u32, u64)> = next
        .rx
        .holding()
        .iter()
        .map(|(i, h)| (*i, h.len()))
        .collect();
    assert_eq!(all, vec![(0, 200_000), (4, 65_536), (5, 7)]);
}

#[test]
fn a_whole_claim_whose_file_changed_starts_over() {
    let (entries, sources) = mixed();
    let mut h = Harness::new(entries, sources.clone(), 16 * 1024);
    let mut stale = sources[5].clone();
    stale[0] ^= 1;
    let hash = blake3::hash(&stale);
    h.held.insert(5, stale);
    h.holds = Some(vec![(5, Hold::Whole { len: 7, hash })]);
    h.run();
    assert_eq!((h.tx_err.clone(), h.rx_err.clone()), (None, None));
    assert_eq!(saved_files(&h), expected_mixed(&sources));
    assert!(
        h.rx_events
            .contains(&ReceiverEvent::StartsOver { index: 5 })
    );
}

#[test]
fn a_changed_beginning_starts_that_file_over() {
    let (entries, sources) = mixed();
    let mut h = Harness::new(entries, sources.clone(), 16 * 1024);
    let mut changed = sources[0][..120_000].to_vec();
    changed[77_777] ^= 0x40;
    h.held.insert(0, changed);
    h.held.insert(4, sources[4][..1000].to_vec());
    h.run();
    assert_eq!((h.tx_err.clone(), h.rx_err.clone()), (None, None));
    assert_eq!(saved_files(&h), expected_mixed(&sources));
    assert!(h.tx_events.contains(&SenderEvent::StartsOver { index: 0 }));
    assert!(
        h.rx_events
            .contains(&ReceiverEvent::StartsOver { index: 0 })
    );
    assert!(h.rx_events.contains(&ReceiverEvent::FileStart {
        index: 0,
        offset: 0
    }));
    assert!(h.rx_events.contains(&ReceiverEvent::Resumed {
        index: 4,
        offset: 1000
    }));
    assert_eq!(h.tx.bytes_sent(), 200_000 + (65_536 - 1000) + 7);
}

#[test]
fn a_file_shorter_now_than_held_starts_over_then_fails_as_changed() {
    // The sender offered the file at its old size, then it shrank below what the receiver
    // holds: the sender can hash fewer bytes than held, so the beginnings cannot match.
    let (entries, mut sources) = mixed();
    let held = sources[0][..150_000].to_vec();
    sources[0].truncate(100_000);
    let mut h = Harness::new(entries, sources, 16 * 1024);
    h.held.insert(0, held);
    h.run();
    assert!(h.tx_events.contains(&SenderEvent::StartsOver { index: 0 }));
    assert!(
        h.rx_events
            .contains(&ReceiverEvent::StartsOver { index: 0 })
    );
    assert!(matches!(
        h.tx_err,
        Some(TransferError::Cancelled {
            reason: CancelReason::SourceChanged,
            ..
        })
    ));
    assert!(h.saved.is_empty());
}

#[test]
fn a_receiver_cannot_claim_more_than_the_file() {
    let mut rx = Receiver::new(Duration::ZERO);
    deliver_offer(
        &mut rx,
        vec![OfferEntry::dir("d"), OfferEntry::file("d/a", 10)],
    );
    let hashed = |n: usize| blake3::Hasher::new().update(&vec![0; n]).clone();
    for held in [
        vec![(1, hashed(11))],
        vec![(1, hashed(0))],
        vec![(0, hashed(1))],
    ] {
        assert!(matches!(
            rx.accept_holding(held),
            Err(TransferError::Usage(_))
        ));
    }
    rx.accept_holding(vec![(1, hashed(10))]).unwrap();
}

/// A receiver past the hellos with `entries` offered to it.
/// A sender's hello that has seen the receiver's.
fn sender_hello() -> Vec<u8> {
    frame::encode_control(&Control::Hello {
        version: TRANSFER_VERSION,
        role: Role::Sender,
        seen_peer: true,
        max_frame: MAX_FRAME as u32,
        path: None,
    })
}

fn deliver_offer(rx: &mut Receiver, entries: Vec<OfferEntry>) {
    rx.handle_frame(&sender_hello(), Duration::ZERO).unwrap();
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let n = entries.len() as u32;
    rx.handle_frame(&offer_frame(n, total, entries), Duration::ZERO)
        .unwrap();
    while rx.poll_event().is_some() {}
}

/// A sender past the hellos, waiting for the accept of `entries`.
fn offering_sender(entries: Vec<OfferEntry>) -> Sender {
    let mut tx = Sender::with_default_chunk(entries, Duration::ZERO);
    let hello = frame::encode_control(&Control::Hello {
        version: TRANSFER_VERSION,
        role: Role::Receiver,
        seen_peer: true,
        max_frame: MAX_FRAME as u32,
        path: None,
    });
    tx.handle_frame(&hello, Duration::ZERO).unwrap();
    while tx.poll_transmit(Duration::ZERO).is_some() {}
    tx
}

#[test]
fn resume_claims_that_make_no_sense_are_refused() {
    let entries = || vec![OfferEntry::dir("d"), OfferEntry::file("d/a", 10)];
    let held = |index, offset| frame::Held {
        index,
        offset,
        blake3: "00".into(),
    };
    // At the sender: a folder, beyond the size, nothing, out of order, not offered.
    for resume in [
        vec![held(0, 5)],
        vec![held(1, 11)],
        vec![held(1, 0)],
        vec![held(1, 5), held(1, 6)],
        vec![held(7, 1)],
    ] {
        let mut tx = offering_sender(entries());
        let accept = frame::encode_control(&Control::Accept { resume });
        let err = tx.handle_frame(&accept, Duration::ZERO).unwrap_err();
        assert!(matches!(err, TransferError::BadResume(_)), "{err:?}");
        let cancel = tx
            .poll_transmit(Duration::ZERO)
            .expect("the receiver is told");
        assert!(matches!(
            frame::decode(&cancel),
            Ok(frame::Frame::Control(Control::Cancel {
                reason: CancelReason::Protocol,
                ..
            }))
        ));
    }
    // At the receiver: an answer about other files, or a continuation from elsewhere; and a
    // resume nobody asked for.
    let at = |index, offset| frame::ResumeAt { index, offset };
    for (hold, files) in [
        (true, vec![]),
        (true, vec![at(0, 0)]),
        (true, vec![at(1, 4)]),
        (true, vec![at(1, 5), at(1, 5)]),
        (false, vec![at(1, 5)]),
    ] {
        let mut rx = Receiver::new(Duration::ZERO);
        deliver_offer(&mut rx, entries());
        let held = if hold {
            vec![(1, blake3::Hasher::new().update(b"12345").clone())]
        } else {
            vec![]
        };
        rx.accept_holding(held).unwrap();
        let resume = frame::encode_control(&Control::Resume { files });
        let err = rx.handle_frame(&resume, Duration::ZERO).unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::BadResume(_) | TransferError::Unexpected("resume")
            ),
            "{err:?}"
        );
    }
}

#[test]
fn a_sender_waits_for_every_check_before_sending() {
    let data = pattern(50_000, 9);
    let mut tx = offering_sender(vec![OfferEntry::file("a", 50_000)]);
    let accept = frame::encode_control(&Control::Accept {
        resume: vec![frame::Held {
            index: 0,
            offset: 20_000,
            blake3: blake3::hash(&data[..20_000]).to_hex().to_string(),
        }],
    });
    tx.handle_frame(&accept, Duration::ZERO).unwrap();
    assert_eq!(tx.poll_event(), Some(SenderEvent::Accepted));
    assert_eq!(
        tx.poll_event(),
        Some(SenderEvent::CheckPrefix {
            index: 0,
            offset: 20_000
        })
    );
    assert_eq!(tx.poll_read(), None, "no data before the check");
    assert_eq!(tx.poll_transmit(Duration::ZERO), None);
    tx.prefix_hashed(0, blake3::Hasher::new().update(&data[..20_000]).clone())
        .unwrap();
    let resume = tx.poll_transmit(Duration::ZERO).unwrap();
    assert_eq!(
        frame::decode(&resume).unwrap(),
        frame::Frame::Control(Control::Resume {
            files: vec![frame::ResumeAt {
                index: 0,
                offset: 20_000
            }]
        })
    );
    let first = tx.poll_read().unwrap();
    assert_eq!((first.index, first.offset), (0, 20_000));
}
