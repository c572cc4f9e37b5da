//! The data-channel adapter: drives [`protocol::transfer`]'s state machines with the
//! browser's data channel, `File` slices and storage sinks. Only I/O lives here; every
//! protocol decision is made by `protocol`, exactly as for the native peer.
//!
//! Back-pressure: a frame is sent only while the channel buffers less than [`HIGH_WATER`];
//! above it we wait for `bufferedamountlow` (threshold [`LOW_WATER`]). Chromium fails
//! `send()` past 16 MiB buffered, so the high mark stays far below that. Received data is
//! written to a sink (a file in a folder the user picked, or a streamed download) before
//! the next frame is handled, so memory holds at most what the browser queued for us.

use core::time::Duration;
use futures::channel::mpsc;
use futures::{FutureExt as _, StreamExt as _};
use protocol::event;
use protocol::path::{PairView, PathTrack};
use protocol::transfer::names::{self, SafePath};
use protocol::transfer::{
    CancelReason, DATA_HEADER_LEN, Hold, Offer, OfferEntry, ReadRequest, Received, Receiver,
    ReceiverEvent, SEND_STALL, STOPPED, Sender, SenderEvent,
};
use std::collections::HashSet;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, RtcDataChannel, RtcDataChannelState, RtcPeerConnectionState};

use crate::Command;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::js::{self, Listener};
use crate::peer::Early;
use crate::rendezvous::Link;

/// Wait for `bufferedamountlow` above this many queued bytes.
const HIGH_WATER: u32 = 4 << 20;
const LOW_WATER: u32 = 1 << 20;
/// Bytes read from a `File` per `arrayBuffer()` call; frames are cut from this block.
const READ_BLOCK: u64 = 1 << 20;
/// Progress events at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

#[wasm_bindgen]
extern "C" {
    /// Where received files go; provided by the page (a folder from the File System Access
    /// API, streamed downloads through the service worker, or memory).
    #[derive(Debug, Clone)]
    pub type SinkFactory;
    /// Open `path` (relative, `/`-separated) for `size` bytes. Resolves to a [`Sink`], or
    /// `null` when that name is taken (the caller then tries a numbered name). With `offset`
    /// above 0 it continues the part of `path` that [`SinkFactory::held`] reported, keeping
    /// exactly its first `offset` bytes.
    #[wasm_bindgen(method, catch)]
    fn open(
        this: &SinkFactory,
        path: &str,
        size: f64,
        offset: f64,
    ) -> Result<js_sys::Promise, JsValue>;
    /// Optional (folders only): what the destination already holds of `path` — resolves to
    /// `{file, whole}` (a `File`: the saved file itself when `whole`, else its part) or null.
    #[wasm_bindgen(method, catch)]
    fn held(this: &SinkFactory, path: &str, size: f64) -> Result<js_sys::Promise, JsValue>;

    /// One file being written. Nothing appears under the final name before `close`.
    #[derive(Debug, Clone)]
    pub type Sink;
    #[wasm_bindgen(method, catch)]
    fn write(this: &Sink, chunk: js_sys::Uint8Array) -> Result<js_sys::Promise, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn close(this: &Sink) -> Result<js_sys::Promise, JsValue>;
    #[wasm_bindgen(method)]
    fn abort(this: &Sink, reason: &str);
    /// The run ends with this file unfinished: a folder keeps its part (the link opened again
    /// continues it); a download, which cannot be appended to later, is dropped.
    #[wasm_bindgen(method)]
    fn keep(this: &Sink);
}

/// One thing to send: a file (with its `File`) or a folder.
#[derive(Debug, Clone)]
pub struct Source {
    pub entry: OfferEntry,
    pub file: Option<web_sys::File>,
}

/// What a finished transfer reports: the `done` event.
pub type Summary = event::Done;

/// Both directions of the path while a transfer runs (`protocol::path::PathTrack`): this side's
/// pair told at open and again as its part ends, `connected` once both are known.
struct Paths {
    track: PathTrack,
}

impl Paths {
    fn start(link: &Link, set: impl FnOnce(PairView)) -> Self {
        let track = PathTrack::new(link.path.clone()).again(link.again);
        set(track.view());
        Self { track }
    }

    /// This side's part is about to end: read its pair again and tell it, once.
    async fn at_end_of_part(&mut self, link: &Link, set: impl FnOnce(PairView)) {
        if self.track.end_due() {
            set(self.track.update(link.path_now().await));
        }
    }

    /// Say `connected`, the first time.
    fn connected(&mut self, events: &Events, peer: Option<PairView>) {
        let ms = (js::now() - events.both_in_room()).as_secs_f64() * 1e3;
        if let Some(e) = self.track.announce(peer, ms) {
            events.emit(&e);
        }
    }
}

enum Incoming {
    Frame(Vec<u8>),
    Closed,
}

/// The data channel with its inbox and back-pressure signal.
struct Wire {
    dc: RtcDataChannel,
    inbox: mpsc::UnboundedReceiver<Incoming>,
    low: mpsc::UnboundedReceiver<()>,
    _listeners: [Listener; 4],
}

impl Wire {
    /// Takes over the link's channel: what it said before comes first.
    fn new(link: &mut Link) -> Self {
        let dc = &link.dc;
        dc.set_buffered_amount_low_threshold(LOW_WATER);
        let (tx, inbox) = mpsc::unbounded();
        for frame in link.early.take().map(Early::take).unwrap_or_default() {
            let _ = tx.unbounded_send(Incoming::Frame(frame));
        }
        let (low_tx, low) = mpsc::unbounded();
        let t: &web_sys::EventTarget = dc.unchecked_ref();
        let (a, b, c) = (tx.clone(), tx.clone(), tx);
        let listeners = [
            Listener::new(t, "message", move |e: MessageEvent| {
                let data = js_sys::Uint8Array::new(&e.data()).to_vec();
                let _ = a.unbounded_send(Incoming::Frame(data));
            }),
            Listener::new(t, "close", move |_: web_sys::Event| {
                let _ = b.unbounded_send(Incoming::Closed);
            }),
            Listener::new(t, "error", move |_: web_sys::Event| {
                let _ = c.unbounded_send(Incoming::Closed);
            }),
            Listener::new(t, "bufferedamountlow", move |_: web_sys::Event| {
                let _ = low_tx.unbounded_send(());
            }),
        ];
        Self {
            dc: dc.clone(),
            inbox,
            low,
            _listeners: listeners,
        }
    }

    fn open(&self) -> bool {
        self.dc.ready_state() == RtcDataChannelState::Open
    }

    /// Send one frame, waiting for buffer space first.
    async fn send(&mut self, frame: &[u8]) -> Result<()> {
        let stall = js::now() + SEND_STALL;
        while self.dc.buffered_amount() > HIGH_WATER {
            if !self.open() {
                return Err(Error::Vanished);
            }
            if js::now() > stall {
                return Err(Error::Stalled);
            }
            while self.low.try_recv().is_ok() {}
            // The event is the fast path; the short sleep covers a missed or stale one.
            futures::select! {
                _ = self.low.next() => {}
                _ = js::sleep(Duration::from_millis(50)).fuse() => {}
            }
        }
        self.dc
            .send_with_u8_array(frame)
            .map_err(|_| Error::Vanished)
    }

    /// Send queued control frames (a Cancel, last acks) and give them a moment to leave.
    async fn flush(&mut self, mut next: impl FnMut() -> Option<Vec<u8>>) {
        while let Some(f) = next() {
            if !self.open() || self.dc.send_with_u8_array(&f).is_err() {
                return;
            }
        }
        self.drained().await;
    }

    /// Wait (briefly) until what we queued has left.
    async fn drained(&self) {
        let until = js::now() + Duration::from_millis(500);
        while self.open() && self.dc.buffered_amount() > 0 && js::now() < until {
            js::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Reads the bytes a [`ReadRequest`] names, a block at a time.
struct BlobReader {
    block: Vec<u8>,
    index: u32,
    start: u64,
}

impl BlobReader {
    async fn read(
        &mut self,
        sources: &[Source],
        req: ReadRequest,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let src = &sources[req.index as usize];
        let end = req.offset + req.len as u64;
        let covered = self.index == req.index
            && req.offset >= self.start
            && end <= self.start + self.block.len() as u64;
        if !covered {
            let file = src
                .file
                .as_ref()
                .ok_or(Error::Usage("a folder has no bytes"))?;
            let size = src.entry.size;
            let block_end = (req.offset + READ_BLOCK).min(size).max(end);
            let unreadable = || Error::Read(display_name(&src.entry.path));
            let blob = file
                .slice_with_f64_and_f64(req.offset as f64, block_end as f64)
                .map_err(|_| unreadable())?;
            let buf = js::wait(blob.array_buffer())
                .await
                .map_err(|_| unreadable())?;
            self.block = js_sys::Uint8Array::new(&buf).to_vec();
            self.index = req.index;
            self.start = req.offset;
            if (self.block.len() as u64) < end - req.offset {
                return Err(unreadable());
            }
        }
        let from = (req.offset - self.start) as usize;
        out.extend_from_slice(&self.block[from..from + req.len]);
        Ok(())
    }
}

/// The first `len` bytes of `src` hashed, for the receiver's claim to hold them.
async fn hash_prefix(src: &Source, len: u64) -> blake3::Hasher {
    match src.file.as_ref() {
        Some(file) => hash_blob(file, len).await,
        None => blake3::Hasher::new(),
    }
}

/// The first `len` bytes of `blob` hashed, a block at a time. Fewer if they cannot be read:
/// the beginnings then differ and the file is sent again.
async fn hash_blob(blob: &web_sys::Blob, len: u64) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    while hasher.count() < len {
        let at = hasher.count();
        let end = (at + READ_BLOCK).min(len);
        let Ok(slice) = blob.slice_with_f64_and_f64(at as f64, end as f64) else {
            break;
        };
        let Ok(buf) = js::wait(slice.array_buffer()).await else {
            break;
        };
        let bytes = js_sys::Uint8Array::new(&buf).to_vec();
        if bytes.is_empty() {
            break;
        }
        hasher.update(&bytes);
    }
    hasher
}

/// A file name safe to show: the last component only (full paths can be private).
fn display_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// Throttles progress events.
struct Progress {
    next: Duration,
}

impl Progress {
    fn report(&mut self, events: &Events, bytes: u64, total: u64) {
        let now = js::now();
        if now >= self.next || bytes == total {
            self.next = now + PROGRESS_EVERY;
            events.emit(&event::Progress { bytes, total }.into());
        }
    }
}

fn closed_or_frame(inc: Option<Incoming>) -> Result<Vec<u8>> {
    match inc {
        Some(Incoming::Frame(f)) => Ok(f),
        _ => Err(Error::Vanished),
    }
}

fn is_dead(s: RtcPeerConnectionState) -> bool {
    matches!(
        s,
        RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed
    )
}

/// The connection failed under a live channel: close the channel so waits end.
fn watch_state(link: &mut Link) -> bool {
    while let Ok(s) = link.state.try_recv() {
        if is_dead(s) {
            link.dc.close();
            return true;
        }
    }
    false
}

/// If the channel broke, a reason the peer sent just before (disk full, bad name…) beats
/// "vanished".
async fn explain_loss(sm: &mut Sender, wire: &mut Wire, fallback: Error) -> Error {
    let until = js::now() + Duration::from_millis(500);
    loop {
        futures::select! {
            inc = wire.inbox.next() => match inc {
                Some(Incoming::Frame(f)) => {
                    if let Err(e) = sm.handle_frame(&f, js::now()) {
                        return e.into();
                    }
                }
                _ => return fallback,
            },
            _ = js::sleep_until(Some(until)).fuse() => return fallback,
        }
    }
}

/// The key this browser proves to an inbox ([`protocol::device`]): a WebCrypto Ed25519 key
/// the page keeps (non-extractable), signing through `sign`.
#[derive(Debug, Clone)]
pub struct Device {
    /// The public key, base64.
    key: String,
    name: String,
    pair: Option<String>,
    /// `bytes => Promise<Uint8Array(64)>`.
    sign: js_sys::Function,
}

impl Device {
    /// From the page's `{key, name, pair, sign}`; `None` for `undefined`/`null`.
    pub fn from_js(v: &JsValue) -> Result<Option<Self>> {
        if v.is_undefined() || v.is_null() {
            return Ok(None);
        }
        let key = js::get(v, "key");
        let key = key
            .dyn_ref::<js_sys::Uint8Array>()
            .map(|k| k.to_vec())
            .filter(|k| k.len() == 32)
            .ok_or(Error::Usage("device.key must be a 32-byte public key"))?;
        let sign = js::get(v, "sign")
            .dyn_into::<js_sys::Function>()
            .map_err(|_| Error::Usage("device.sign must be a function"))?;
        Ok(Some(Self {
            key: protocol::inbox::encode(&key),
            name: js::get_str(v, "name").unwrap_or_default(),
            pair: js::get_str(v, "pair").filter(|p| !p.trim().is_empty()),
            sign,
        }))
    }

    /// The proof of this key for the session with `binding`.
    async fn prove(&self, binding: &[u8; 32]) -> Result<protocol::device::DeviceProof> {
        let message = js_sys::Uint8Array::from(&protocol::device::proof_message(binding)[..]);
        let signing = self.sign.call1(&JsValue::NULL, &message).map_err(|e| {
            Error::Connect(format!(
                "cannot sign with this browser's device key: {}",
                js::message(&e)
            ))
        })?;
        let sig = js::wait(signing.into()).await.map_err(|e| {
            Error::Connect(format!("cannot sign with this browser's device key: {e}"))
        })?;
        let sig = js_sys::Uint8Array::new(&sig).to_vec();
        Ok(protocol::device::DeviceProof {
            key: self.key.clone(),
            sig: protocol::inbox::encode(&sig),
            name: self.name.clone(),
            pair: self.pair.clone(),
        })
    }
}

pub async fn send(
    link: &mut Link,
    sources: Vec<Source>,
    device: Option<&Device>,
    events: &Events,
    cmds: &mut mpsc::UnboundedReceiver<Command>,
    carry: &mut Carry,
) -> Result<Summary> {
    let mut wire = Wire::new(link);
    let entries = sources.iter().map(|s| s.entry.clone()).collect();
    let mut sm = Sender::with_default_chunk(entries, js::now());
    if let Some(d) = device {
        sm.prove_device(d.prove(&link.binding).await?);
    }
    let mut paths = Paths::start(link, |p| sm.set_path(p));
    let files = sources.iter().filter(|s| !s.entry.dir).count();
    let total = sm.total_bytes();
    let mut reader = BlobReader {
        block: Vec::new(),
        index: u32::MAX,
        start: 0,
    };
    let mut progress = Progress { next: js::now() };
    let mut started = None;

    let result: Result<()> = async {
        loop {
            // Whatever has arrived first, then what that and anything earlier queued.
            while let Ok(inc) = wire.inbox.try_recv() {
                let f = match closed_or_frame(Some(inc)) {
                    Ok(f) => f,
                    Err(e) => return Err(explain_loss(&mut sm, &mut wire, e).await),
                };
                sm.handle_frame(&f, js::now())?;
            }
            while let Some(f) = sm.poll_transmit(js::now()) {
                if let Err(e) = wire.send(&f).await {
                    return Err(explain_loss(&mut sm, &mut wire, e).await);
                }
            }
            while let Some(ev) = sm.poll_event() {
                match ev {
                    SenderEvent::PeerPath(p) => paths.connected(events, Some(p)),
                    SenderEvent::Accepted => {
                        paths.connected(events, sm.peer_path());
                        started = Some(js::now());
                        events.emit(
                            &event::Accepted {
                                files,
                                bytes: total,
                            }
                            .into(),
                        );
                    }
                    SenderEvent::CheckPrefix { index, offset } => {
                        let hasher = hash_prefix(&sources[index as usize], offset).await;
                        sm.prefix_hashed(index, hasher)?;
                    }
                    SenderEvent::Resumed { index, offset } => {
                        events.emit(&event::Resumed { index, offset }.into());
                    }
                    SenderEvent::StartsOver { index } => {
                        events.emit(&event::FileRestarted { index }.into());
                    }
                    SenderEvent::FileAcked { index } => {
                        events.emit(&event::FileDone { index }.into());
                    }
                    SenderEvent::Completed => return Ok(()),
                }
            }
            if let Ok(Command::Cancel) = cmds.try_recv() {
                sm.cancel(CancelReason::Cancelled, STOPPED);
                return Err(Error::Cancelled);
            }
            if watch_state(link) {
                return Err(explain_loss(&mut sm, &mut wire, Error::Vanished).await);
            }
            if let Some(req) = sm.poll_read() {
                let mut buf = Vec::with_capacity(DATA_HEADER_LEN + req.len);
                buf.resize(DATA_HEADER_LEN, 0);
                if let Err(e) = reader.read(&sources, req, &mut buf).await {
                    sm.cancel(
                        CancelReason::SourceChanged,
                        "the sender could not read a file",
                    );
                    return Err(e);
                }
                // Control frames queued meanwhile (a `resume`, a `file_end`) go before this
                // data frame: the receiver reads them in order.
                while let Some(f) = sm.poll_transmit(js::now()) {
                    if let Err(e) = wire.send(&f).await {
                        return Err(explain_loss(&mut sm, &mut wire, e).await);
                    }
                }
                sm.encode_data(&mut buf)?;
                if sm.bytes_done() == total {
                    paths.at_end_of_part(link, |p| sm.set_path(p)).await;
                }
                if let Err(e) = wire.send(&buf).await {
                    return Err(explain_loss(&mut sm, &mut wire, e).await);
                }
                progress.report(events, sm.bytes_done(), total);
                continue;
            }
            futures::select! {
                inc = wire.inbox.next() => {
                    let f = match closed_or_frame(inc) {
                        Ok(f) => f,
                        Err(e) => return Err(explain_loss(&mut sm, &mut wire, e).await),
                    };
                    sm.handle_frame(&f, js::now())?;
                }
                cmd = cmds.next() => if let Some(Command::Cancel) = cmd {
                    sm.cancel(CancelReason::Cancelled, STOPPED);
                    return Err(Error::Cancelled);
                },
                _ = js::sleep_until(sm.poll_timeout()).fuse() => sm.handle_timeout(js::now())?,
                s = link.state.select_next_some() => if is_dead(s) {
                    link.dc.close();
                    return Err(explain_loss(&mut sm, &mut wire, Error::Vanished).await);
                },
            }
        }
    }
    .await;
    carry.moved += sm.bytes_sent();
    if let Err(e) = result {
        wire.flush(|| sm.poll_transmit(js::now())).await;
        return Err(e);
    }
    let seconds = started
        .map(|s| (js::now() - s).as_secs_f64())
        .unwrap_or_default();
    Ok(Summary {
        files,
        bytes: total,
        transferred: carry.moved,
        seconds,
        path: paths.track.report(sm.peer_path()),
    })
}

/// The file being written and how many of its bytes the sink holds.
#[derive(Debug)]
struct Current {
    index: u32,
    written: u64,
    sink: Sink,
}

/// What a page keeps from one connection to the next of the same run: the bytes every
/// connection moved and, receiving, the accepted offer with its destination, what is held of
/// it (claimed at the next accept, [`Receiver::holding`]), the files saved, and the sink of
/// the file the connection cut off, still open, so a download continues too.
#[derive(Debug, Default)]
pub struct Carry {
    pub moved: u64,
    accepted: Option<(Offer, SinkFactory)>,
    holding: Vec<(u32, Hold)>,
    saved: HashSet<u32>,
    open: Option<Current>,
}

impl Carry {
    /// The run ends: the file cut off keeps its part in a folder, a download of it is dropped.
    pub fn end(&mut self) {
        if let Some(cur) = self.open.take() {
            cur.sink.keep();
        }
    }

    /// The run failed on its own (not a lost connection): nothing unfinished is kept.
    fn discard(&mut self, reason: &str) {
        if let Some(cur) = self.open.take() {
            cur.sink.abort(reason);
        }
    }
}

/// Open a sink for `path`, numbering the name while it is taken.
async fn open_sink(factory: &SinkFactory, path: &SafePath, size: u64) -> Result<Sink> {
    let full = path.as_str();
    let (dir, name) = match full.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, full),
    };
    for n in 0..1000 {
        let candidate = if n == 0 {
            name.to_string()
        } else {
            names::numbered(name, n)
        };
        let p = match dir {
            Some(d) => format!("{d}/{candidate}"),
            None => candidate,
        };
        if let Some(sink) = open_at(factory, &p, size, 0).await? {
            return Ok(sink);
        }
    }
    Err(Error::Write("too many files with that name".into()))
}

/// Open a sink for `path` from `offset`; `None` when the name is taken.
async fn open_at(
    factory: &SinkFactory,
    path: &str,
    size: u64,
    offset: u64,
) -> Result<Option<Sink>> {
    let promise = factory
        .open(path, size as f64, offset as f64)
        .map_err(|e| Error::Write(js::message(&e)))?;
    let sink = js::wait(promise).await.map_err(Error::Write)?;
    Ok((!sink.is_null() && !sink.is_undefined()).then(|| sink.unchecked_into()))
}

/// What the destination already holds of the offer's files (a folder picked again after a
/// reload): their parts, and files saved whole under their own name. `whole` gets the latter.
async fn held_in(
    factory: &SinkFactory,
    offer: &Offer,
    whole: &mut HashSet<u32>,
) -> Vec<(u32, Hold)> {
    let mut out = Vec::new();
    if !js::get(factory, "held").is_function() {
        return out;
    }
    for (index, (path, entry)) in offer.entries.iter().enumerate() {
        if entry.dir {
            continue;
        }
        let Ok(promise) = factory.held(path.as_str(), entry.size as f64) else {
            continue;
        };
        let Ok(found) = js::wait(promise).await else {
            continue;
        };
        let Ok(file) = js::get(&found, "file").dyn_into::<web_sys::Blob>() else {
            continue;
        };
        let whole_here = js::get(&found, "whole").as_bool() == Some(true);
        let len = (file.size() as u64).min(entry.size);
        if len == 0 {
            // An empty file there already: nothing to claim, nothing to write again.
            if whole_here && entry.size == 0 {
                whole.insert(index as u32);
            }
            continue;
        }
        let hasher = hash_blob(&file, len).await;
        if hasher.count() != len {
            continue;
        }
        if whole_here {
            whole.insert(index as u32);
        }
        out.push((index as u32, Hold::from(hasher)));
    }
    out
}

/// The person's answer to an offer the page has not accepted before; `None`: declined.
enum Answer {
    /// Accepted: where it goes and what is held of it already.
    Accept(SinkFactory, Vec<(u32, Hold)>),
    Decline,
}

/// Result of a receive: the summary, or `None` when the person declined the offer. A lost
/// connection leaves in `carry` what the next one continues.
pub async fn receive(
    link: &mut Link,
    events: &Events,
    cmds: &mut mpsc::UnboundedReceiver<Command>,
    carry: &mut Carry,
) -> Result<Option<Summary>> {
    let mut wire = Wire::new(link);
    let mut sm = Receiver::new(js::now());
    let mut paths = Paths::start(link, |p| sm.set_path(p));
    let mut factory: Option<SinkFactory> = None;
    let mut offer: Option<Offer> = None;
    let mut current: Option<Current> = None;
    // Files held whole here (saved earlier in the run, or found in the folder): nothing to
    // write when the sender agrees.
    let mut whole = HashSet::new();
    let mut files_total = 0;
    let mut started = None;
    let mut first_byte = false;
    let mut progress = Progress { next: js::now() };
    let both_in_room = events.both_in_room();

    let result: Result<bool> = async {
        loop {
            while let Some(f) = sm.poll_transmit(js::now()) {
                wire.send(&f).await?;
            }
            if sm.is_done() {
                return Ok(true);
            }
            if watch_state(link) {
                return Err(Error::Vanished);
            }
            futures::select! {
                inc = wire.inbox.next() => {
                    let frame = closed_or_frame(inc)?;
                    let data = match sm.handle_frame(&frame, js::now())? {
                        Received::Data { bytes, .. } => Some(js_sys::Uint8Array::from(bytes)),
                        Received::Nothing => None,
                    };
                    while let Some(ev) = sm.poll_event() {
                        match ev {
                            ReceiverEvent::PeerPath(p) => paths.connected(events, Some(p)),
                            ReceiverEvent::Offer(o) => {
                                paths.connected(events, sm.peer_path());
                                files_total = o.file_count();
                                // The same offer again (a new connection of this run): it goes
                                // where it went, claiming what is held, without asking again.
                                let again = carry.accepted.as_ref().filter(|(prev, _)| *prev == o);
                                let (f, held) = match again {
                                    Some((_, f)) => {
                                        whole = carry.saved.clone();
                                        (f.clone(), std::mem::take(&mut carry.holding))
                                    }
                                    None => {
                                        carry.discard("a different offer");
                                        carry.saved.clear();
                                        events.emit(&event::Offer::from(&o).into());
                                        match decide(&mut wire, &mut sm, cmds, &o, &mut whole).await? {
                                            Answer::Accept(f, held) => {
                                                // Found whole in the folder: saved, for the
                                                // next connection too.
                                                carry.saved.extend(whole.iter().copied());
                                                events.emit(&event::Accepted { files: files_total, bytes: o.total_bytes }.into());
                                                (f, held)
                                            }
                                            Answer::Decline => {
                                                sm.decline("the receiver declined the files");
                                                return Ok(false);
                                            }
                                        }
                                    }
                                };
                                sm.accept_holding(held)?;
                                started = Some(js::now());
                                carry.accepted = Some((o.clone(), f.clone()));
                                factory = Some(f);
                                offer = Some(o);
                            }
                            ReceiverEvent::FileStart { index, offset } => {
                                let (path, entry) = offer.as_ref().and_then(|o| o.entries.get(index as usize))
                                    .ok_or(Error::Usage("file outside the offer"))?;
                                if whole.contains(&index) && offset == entry.size {
                                    continue;
                                }
                                let f = factory.as_ref().ok_or(Error::Usage("no destination"))?;
                                current = match start_file(f, carry, index, path, entry.size, offset).await {
                                    Ok(c) => Some(c),
                                    Err(e) => {
                                        sm.cancel(CancelReason::Io, "the receiver could not write a file");
                                        return Err(e);
                                    }
                                };
                            }
                            ReceiverEvent::FileVerified { index } => {
                                let cur = match current.take() {
                                    Some(c) => c,
                                    // Held whole here, and the sender agreed.
                                    None if whole.contains(&index) => {
                                        sm.file_saved(index)?;
                                        carry.saved.insert(index);
                                        events.emit(&event::FileDone { index }.into());
                                        continue;
                                    }
                                    // An empty file (no data, so no sink yet).
                                    None => {
                                        let (path, _) = offer.as_ref().and_then(|o| o.entries.get(index as usize))
                                            .ok_or(Error::Usage("file outside the offer"))?;
                                        let f = factory.as_ref().ok_or(Error::Usage("no destination"))?;
                                        Current { index, written: 0, sink: open_sink(f, path, 0).await? }
                                    }
                                };
                                let closed = match cur.sink.close() {
                                    Ok(p) => js::wait(p).await,
                                    Err(e) => Err(js::message(&e)),
                                };
                                if let Err(e) = closed {
                                    sm.cancel(CancelReason::Io, "the receiver could not write a file");
                                    return Err(Error::Write(e));
                                }
                                if sm.saves_left() == 1 {
                                    paths.at_end_of_part(link, |p| sm.set_path(p)).await;
                                }
                                sm.file_saved(index)?;
                                carry.saved.insert(index);
                                events.emit(&event::FileDone { index }.into());
                            }
                            ReceiverEvent::Resumed { index, offset } => {
                                events.emit(&event::Resumed { index, offset }.into());
                            }
                            ReceiverEvent::StartsOver { index } => {
                                whole.remove(&index);
                                events.emit(&event::FileRestarted { index }.into());
                            }
                            ReceiverEvent::Completed => {}
                        }
                    }
                    if let Some(bytes) = data {
                        if !first_byte {
                            first_byte = true;
                            let ms_since_room = (js::now() - both_in_room).as_secs_f64() * 1e3;
                            events.emit(&event::FirstByte { ms_since_room }.into());
                        }
                        let cur = current.as_mut().ok_or(Error::Usage("data before file start"))?;
                        let len = bytes.length() as u64;
                        let written = match cur.sink.write(bytes) {
                            Ok(p) => js::wait(p).await,
                            Err(e) => Err(js::message(&e)),
                        };
                        if let Err(e) = written {
                            sm.cancel(CancelReason::Io, "the receiver could not write a file");
                            return Err(Error::Write(e));
                        }
                        cur.written += len;
                        progress.report(events, sm.bytes_done(), sm.total_bytes());
                    }
                }
                cmd = cmds.next() => if let Some(Command::Cancel) = cmd {
                    sm.cancel(CancelReason::Cancelled, STOPPED);
                    return Err(Error::Cancelled);
                },
                _ = js::sleep_until(sm.poll_timeout()).fuse() => sm.handle_timeout(js::now())?,
                s = link.state.select_next_some() => if is_dead(s) {
                    link.dc.close();
                    return Err(Error::Vanished);
                },
            }
        }
    }
    .await;
    carry.moved += sm.bytes_received();
    match result {
        Ok(true) => {
            // Our last acknowledgements must leave before the connection is torn down.
            wire.drained().await;
            let seconds = started
                .map(|s| (js::now() - s).as_secs_f64())
                .unwrap_or_default();
            Ok(Some(Summary {
                files: files_total,
                bytes: sm.total_bytes(),
                transferred: carry.moved,
                seconds,
                path: paths.track.report(sm.peer_path()),
            }))
        }
        Ok(false) => {
            wire.flush(|| sm.poll_transmit(js::now())).await;
            Ok(None)
        }
        // The connection went, not the transfer: what is held, and the open file, carry on.
        // What an earlier connection carried stays unless this one got further: before its
        // accept it claimed nothing, and a file cut off earlier and not reached yet keeps its
        // open sink.
        Err(e) if e.is_link_lost() && !sm.has_failed() => {
            if offer.is_some() {
                carry.holding = sm.holding();
            }
            if let Some(cur) = current.take() {
                carry.open = Some(cur);
            }
            Err(e)
        }
        Err(e) => {
            if let Some(cur) = current.take() {
                cur.sink.abort(&e.to_string());
            }
            carry.discard(&e.to_string());
            carry.accepted = None;
            wire.flush(|| sm.poll_transmit(js::now())).await;
            Err(e)
        }
    }
}

/// File `index` starts at `offset`: the sink the last connection left open when it goes on
/// from there, the folder's part when one was claimed, else a new file (numbered if taken).
async fn start_file(
    factory: &SinkFactory,
    carry: &mut Carry,
    index: u32,
    path: &SafePath,
    size: u64,
    offset: u64,
) -> Result<Current> {
    if let Some(open) = carry.open.take_if(|o| o.index == index) {
        if open.written == offset {
            return Ok(open);
        }
        // Not continued from there: that file starts over.
        open.sink.abort("the file starts over");
    }
    if offset == 0 {
        let sink = open_sink(factory, path, size).await?;
        return Ok(Current {
            index,
            written: 0,
            sink,
        });
    }
    let sink = open_at(factory, path.as_str(), size, offset)
        .await?
        .ok_or_else(|| Error::Write("the partial file to continue is gone".into()))?;
    Ok(Current {
        index,
        written: offset,
        sink,
    })
}

/// Wait for the person's answer to an offer, while watching for the sender giving up. An
/// accept looks in the destination for what it holds already.
async fn decide(
    wire: &mut Wire,
    sm: &mut Receiver,
    cmds: &mut mpsc::UnboundedReceiver<Command>,
    offer: &Offer,
    whole: &mut HashSet<u32>,
) -> Result<Answer> {
    loop {
        futures::select! {
            cmd = cmds.next() => match cmd {
                Some(Command::Accept(f)) => {
                    let held = held_in(&f, offer, whole).await;
                    return Ok(Answer::Accept(f, held));
                }
                Some(Command::Decline) => return Ok(Answer::Decline),
                Some(Command::Cancel) | None => {
                    sm.cancel(CancelReason::Cancelled, STOPPED);
                    return Err(Error::Cancelled);
                }
                Some(Command::Files(_) | Command::ShowCode) => {}
            },
            inc = wire.inbox.next() => {
                let f = closed_or_frame(inc)?;
                sm.handle_frame(&f, js::now())?;
            }
        }
    }
}
