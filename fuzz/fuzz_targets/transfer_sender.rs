//! Data-channel frames from the receiving peer, fed to the sender machine: hellos, accepts
//! (with claims to hold beginnings of files), resume answers, acknowledgements, cancels,
//! anything.
//!
//! The input is split into frames (each a big-endian `u16` length, then that many bytes).
//! The harness plays the sender's caller: it answers every prefix check with the hash of
//! its (all-zero) files, reads what it is asked and frames it, between frames.
//!
//! Never panics; every frame the sender sends decodes; data frames stay inside the offered
//! files, in order; it never asks to check a beginning beyond a file.
#![no_main]

use core::time::Duration;
use libfuzzer_sys::fuzz_target;
use protocol::transfer::frame::{self, Frame};
use protocol::transfer::{DATA_HEADER_LEN, OfferEntry, Sender, SenderEvent};

fn entries() -> Vec<OfferEntry> {
    vec![
        OfferEntry::file("a", 3000),
        OfferEntry::dir("d"),
        OfferEntry::file("d/empty", 0),
        OfferEntry::file("d/b", 70_000),
        OfferEntry::file("c", 1),
    ]
}

struct Caller {
    tx: Sender,
    now: Duration,
    sizes: Vec<u64>,
}

impl Caller {
    fn frame(&mut self, buf: &[u8]) {
        let _ = self.tx.handle_frame(buf, self.now);
        self.events();
        self.send_some();
        self.transmit();
    }

    fn events(&mut self) {
        while let Some(e) = self.tx.poll_event() {
            if let SenderEvent::CheckPrefix { index, offset } = e {
                let size = self.sizes[index as usize];
                assert!(offset > 0 && offset <= size, "a check beyond the file");
                let mut h = blake3::Hasher::new();
                h.update(&vec![0; offset as usize]);
                let _ = self.tx.prefix_hashed(index, h);
            }
        }
    }

    /// Read and frame what the sender asks, a few reads at a time.
    fn send_some(&mut self) {
        for _ in 0..8 {
            let Some(req) = self.tx.poll_read() else {
                return;
            };
            let size = self.sizes[req.index as usize];
            assert!(
                req.offset + req.len as u64 <= size,
                "a read beyond the file"
            );
            let mut buf = vec![0u8; DATA_HEADER_LEN + req.len];
            if self.tx.encode_data(&mut buf).is_err() {
                return;
            }
            match frame::decode(&buf) {
                Ok(Frame::Data { index, offset, .. }) => {
                    assert_eq!((index, offset), (req.index, req.offset));
                }
                other => panic!("a data frame that does not decode: {other:?}"),
            }
        }
    }

    fn transmit(&mut self) {
        while let Some(f) = self.tx.poll_transmit(self.now) {
            assert!(
                matches!(frame::decode(&f), Ok(Frame::Control(_))),
                "the sender sent a control frame that does not decode"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Duration::from_secs(100);
    let entries = entries();
    let sizes = entries.iter().map(|e| e.size).collect();
    let mut c = Caller {
        tx: Sender::new(entries, 16 * 1024, now),
        now,
        sizes,
    };
    c.transmit();
    let mut data = data;
    while let [a, b, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        let (f, tail) = rest.split_at(len);
        c.frame(f);
        c.now += Duration::from_millis(100);
        let _ = c.tx.handle_timeout(c.now);
        data = tail;
    }
    for _ in 0..64 {
        c.send_some();
        c.transmit();
    }
    let _ = c.tx.bytes_done();
});
