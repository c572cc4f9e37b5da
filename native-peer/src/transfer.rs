//! The data-channel adapter: drives [`protocol::transfer`]'s state machines with real
//! messages, files and time. Only I/O lives here; every protocol decision is in `protocol`.
//!
//! One task reads data-channel events into a queue ([`spawn_inbox`]); the driving loop sends
//! with `send().await`, which blocks while the channel's send buffer is over its limit
//! (back-pressure), and watches the connection state so a dead peer ends a blocked send
//! (the channel is closed, waking it) instead of hanging.

use anyhow::{Context as _, anyhow, bail};
use bytes::{Bytes, BytesMut};
use protocol::event::{self, Event};
use protocol::path::{PairView, PathReport, PathTrack};
use protocol::transfer::{
    CancelReason, Hold, Limits, Received, Receiver, ReceiverEvent, SEND_STALL, STOPPED, Sender,
    SenderEvent, TransferError,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::files::{self, Destination, Source, WriteCmd, WriteResult};
use crate::output::Output;
use crate::rendezvous::Clock;
use crate::rtc::Link;

/// Forward incoming messages, those that came before the link was handed over first
/// ([`Link::early`]); the queue closes when the channel does, or when the link is `gone`.
fn spawn_inbox(link: &Link) -> mpsc::Receiver<Bytes> {
    let early = std::mem::take(&mut *link.early.lock().unwrap_or_else(|e| e.into_inner()));
    let (dc, mut gone) = (link.dc.clone(), link.gone.clone());
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        for frame in early {
            if tx.send(frame).await.is_err() {
                return;
            }
        }
        loop {
            let ev = tokio::select! {
                ev = dc.poll() => ev,
                () = replaced(&mut gone) => break,
            };
            let Some(ev) = ev else { break };
            let frame = match ev {
                DataChannelEvent::OnMessage(m) => m.data.freeze(),
                DataChannelEvent::OnClose => break,
                _ => continue,
            };
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Resolves once the link is `gone` (known dead: see [`Link::gone`]); never if
/// the signalling that would say so ended (the server went away: the link lives on).
async fn replaced(gone: &mut watch::Receiver<bool>) {
    if gone.wait_for(|g| *g).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Close the channel when the connection dies (or the link is `gone`), which wakes a `send`
/// blocked on back-pressure.
fn spawn_watchdog(
    dc: Arc<dyn DataChannel>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    mut gone: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        loop {
            let s = *state.borrow_and_update();
            if matches!(
                s,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            ) {
                tracing::info!(%s, "connection ended");
                let _ = dc.close().await;
                return;
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                () = replaced(&mut gone) => {
                    tracing::info!("the connection is given up");
                    let _ = dc.close().await;
                    return;
                }
            }
        }
    });
}

/// The connection went away under an unfinished transfer, which itself did not fail: what
/// the receiver holds can be continued (on a new connection, or by the next run).
#[derive(Debug, thiserror::Error)]
pub enum LinkLost {
    #[error("the connection to the other peer was lost ({0})")]
    Broken(String),
    #[error("the connection stalled: nothing could be sent for {} s", SEND_STALL.as_secs())]
    Stalled,
    #[error("the other peer vanished: the connection closed before the transfer finished")]
    Vanished,
}

impl LinkLost {
    /// `e` (or what it wraps) is a lost connection.
    pub fn is(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<LinkLost>())
    }
}

async fn send_frame(dc: &dyn DataChannel, frame: BytesMut) -> anyhow::Result<()> {
    match tokio::time::timeout(SEND_STALL, dc.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(LinkLost::Broken(e.to_string()).into()),
        Err(_) => Err(LinkLost::Stalled.into()),
    }
}

/// Test builds only (`test-hooks`): `PUNCHDROP_TEST_PACE_MIB` caps what the sender sends per
/// second, so a test that stops a peer midway finds it midway however fast loopback is.
struct Pace {
    bytes_per_s: Option<f64>,
    since: tokio::time::Instant,
    sent: u64,
}

impl Pace {
    fn new() -> Self {
        #[cfg(feature = "test-hooks")]
        let bytes_per_s = std::env::var("PUNCHDROP_TEST_PACE_MIB")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .map(|mib| mib * 1048576.0);
        #[cfg(not(feature = "test-hooks"))]
        let bytes_per_s = None;
        Self {
            bytes_per_s,
            since: tokio::time::Instant::now(),
            sent: 0,
        }
    }

    /// `bytes` went out: wait until the pace allows more.
    async fn sent(&mut self, bytes: usize) {
        let Some(rate) = self.bytes_per_s else {
            return;
        };
        self.sent += bytes as u64;
        let due = self.since + Duration::from_secs_f64(self.sent as f64 / rate);
        tokio::time::sleep_until(due).await;
    }
}

fn lost() -> anyhow::Error {
    LinkLost::Vanished.into()
}

/// Becomes `true` when the user interrupts (Ctrl-C).
pub type Interrupt = watch::Receiver<bool>;

/// Resolves once the user interrupts; never if the interrupt source is gone.
pub async fn interrupted(interrupt: &mut Interrupt) {
    if interrupt.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The error for a transfer this side stopped; the cancel frame `sm.cancel` queued is sent by
/// the caller's error path.
fn stopped(_cancel: TransferError) -> anyhow::Error {
    anyhow!("interrupted: the transfer was stopped and the other side told")
}

/// Everything a finished transfer reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub files: usize,
    pub bytes: u64,
    /// Bytes this run moved (less what the receiver held and continued).
    pub transferred: u64,
    pub seconds: f64,
    /// Both directions, as they were at the end.
    pub path: PathReport,
}

impl Summary {
    /// The `done` event.
    pub fn done(self) -> Event {
        event::Done {
            files: self.files,
            bytes: self.bytes,
            transferred: self.transferred,
            seconds: self.seconds,
            path: self.path,
        }
        .into()
    }
}

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
    fn connected(&mut self, link: &Link, peer: Option<PairView>, out: &mut Output) {
        let ms = link.both_in_room.elapsed().as_secs_f64() * 1e3;
        if let Some(e) = self.track.announce(peer, ms) {
            out.event(&e);
        }
    }
}

/// What decides on an offer beyond the receiver's limits: an inbox (paired devices, where
/// a drop's files land).
pub trait Gate {
    /// Take the offer from this sender (`Ok`: the folder inside the destination its files
    /// land in, empty for the destination itself) or decline it (`Err`: the reason the
    /// sender reads). `device`: the proof the sender gave, unchecked; `binding`: this
    /// session's.
    fn admit(
        &self,
        device: Option<&protocol::device::DeviceProof>,
        binding: &[u8; 32],
    ) -> Result<PathBuf, String>;

    /// Room for the `bytes` the offer still brings (beyond what the receiver holds of it),
    /// or the reason there is none.
    fn reserve(&self, bytes: u64) -> Result<(), String>;

    /// A connection of the transfer ended (finished or not) having received `bytes`.
    fn received(&self, bytes: u64);
}

/// A device key a sender proves to the receiver (an inbox), with the name it gives and a
/// pairing code if it pairs with this drop.
#[derive(Debug, Clone)]
pub struct Device {
    pub key: ed25519_dalek::SigningKey,
    pub name: String,
    pub pair: Option<String>,
}

impl Device {
    /// The proof of this key for the session with `binding`.
    fn prove(&self, binding: &[u8; 32]) -> protocol::device::DeviceProof {
        use ed25519_dalek::Signer as _;
        let sig = self.key.sign(&protocol::device::proof_message(binding));
        protocol::device::DeviceProof {
            key: protocol::inbox::encode(self.key.verifying_key().as_bytes()),
            sig: protocol::inbox::encode(&sig.to_bytes()),
            name: self.name.clone(),
            pair: self.pair.clone(),
        }
    }
}

/// Send `sources` over `link`. `moved` grows by the file bytes this connection carried,
/// whether or not the transfer finishes on it.
pub async fn send(
    link: &Link,
    sources: Vec<Source>,
    device: Option<&Device>,
    chunk: usize,
    out: &mut Output,
    interrupt: &mut Interrupt,
    moved: &mut u64,
) -> anyhow::Result<Summary> {
    let clock = Clock::start();
    let dc = link.dc.clone();
    let mut inbox = spawn_inbox(link);
    spawn_watchdog(dc.clone(), link.state.clone(), link.gone.clone());
    let entries = sources.iter().map(|s| s.entry.clone()).collect();
    let mut sm = Sender::new(entries, chunk, clock.now());
    if let Some(d) = device {
        sm.prove_device(d.prove(&link.binding));
    }
    let mut paths = Paths::start(link, |p| sm.set_path(p));
    let files = sources.iter().filter(|s| !s.entry.dir).count();
    let total = sm.total_bytes();
    let mut reader: Option<files::Reader> = None;
    let source_paths: Vec<PathBuf> = sources.iter().map(|s| s.path.clone()).collect();
    let mut sources = Some(sources);
    let mut started = None;
    let mut pace = Pace::new();

    let result: anyhow::Result<()> = async {
        loop {
            // Whatever has arrived first (acks and cancels are small and rare), then what
            // that and anything earlier queued.
            while let Ok(frame) = inbox.try_recv() {
                sm.handle_frame(&frame, clock.now()).map_err(map_err)?;
            }
            while let Some(f) = sm.poll_transmit(clock.now()) {
                if let Err(e) = send_frame(&*dc, BytesMut::from(&f[..])).await {
                    return Err(explain_loss(&mut sm, &mut inbox, clock, e).await);
                }
            }
            while let Some(ev) = sm.poll_event() {
                match ev {
                    SenderEvent::PeerPath(p) => paths.connected(link, Some(p), out),
                    SenderEvent::Accepted => {
                        paths.connected(link, sm.peer_path(), out);
                        started = Some(Instant::now());
                        out.event(&event::Accepted { files, bytes: total }.into());
                        reader = Some(files::spawn_reader(sources.take().unwrap_or_default()));
                    }
                    SenderEvent::CheckPrefix { index, offset } => {
                        let path = source_paths[index as usize].clone();
                        let hasher = tokio::task::spawn_blocking(move || files::hash_prefix(&path, offset))
                            .await
                            .context("hashing the beginning of a file")?;
                        sm.prefix_hashed(index, hasher).map_err(map_err)?;
                    }
                    SenderEvent::Resumed { index, offset } => {
                        out.event(&event::Resumed { index, offset }.into());
                    }
                    SenderEvent::StartsOver { index } => {
                        out.event(&event::FileRestarted { index }.into());
                    }
                    SenderEvent::FileAcked { index } => {
                        out.event(&event::FileDone { index }.into());
                    }
                    SenderEvent::Completed => return Ok(()),
                }
            }
            // Keep the reader ahead: the state machine says which bytes, in which sizes.
            if let Some(rd) = reader.as_mut() {
                while rd.has_room() {
                    let Some(req) = sm.poll_read() else { break };
                    rd.request(req);
                }
            }
            if let Some(rd) = reader.as_mut().filter(|r| r.outstanding > 0) {
                let next = tokio::select! {
                    biased;
                    _ = interrupted(interrupt) => return Err(stopped(sm.cancel(CancelReason::Cancelled, STOPPED))),
                    f = inbox.recv() => {
                        let Some(f) = f else {
                            return Err(explain_loss(&mut sm, &mut inbox, clock, lost()).await);
                        };
                        sm.handle_frame(&f, clock.now()).map_err(map_err)?;
                        continue;
                    }
                    c = rd.results.recv() => c,
                };
                rd.outstanding -= 1;
                let mut buf = match next {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        let err = sm.cancel(
                            CancelReason::SourceChanged,
                            "the sender could not read a file",
                        );
                        flush(|| sm.poll_transmit(clock.now()), &*dc).await;
                        return Err(anyhow!(e).context(err.to_string()));
                    }
                    None => bail!("the file reader stopped"),
                };
                // Control frames queued meanwhile (a `resume`, a `file_end`) go before this
                // data frame: the receiver reads them in order.
                while let Some(f) = sm.poll_transmit(clock.now()) {
                    if let Err(e) = send_frame(&*dc, BytesMut::from(&f[..])).await {
                        return Err(explain_loss(&mut sm, &mut inbox, clock, e).await);
                    }
                }
                if let Err(e) = sm.encode_data(&mut buf) {
                    flush(|| sm.poll_transmit(clock.now()), &*dc).await;
                    return Err(map_err(e));
                }
                if sm.bytes_done() == total {
                    paths.at_end_of_part(link, |p| sm.set_path(p)).await;
                }
                let len = buf.len();
                if let Err(e) = send_frame(&*dc, buf).await {
                    return Err(explain_loss(&mut sm, &mut inbox, clock, e).await);
                }
                out.event(&event::Progress { bytes: sm.bytes_done(), total }.into());
                pace.sent(len).await;
                continue;
            }
            let timer = sm.poll_timeout().map(|t| clock.at(t));
            tokio::select! {
                _ = interrupted(interrupt) => return Err(stopped(sm.cancel(CancelReason::Cancelled, STOPPED))),
                f = inbox.recv() => {
                    let f = f.ok_or_else(lost)?;
                    sm.handle_frame(&f, clock.now()).map_err(map_err)?;
                }
                _ = sleep_opt(timer) => sm.handle_timeout(clock.now()).map_err(map_err)?,
            }
        }
    }
    .await;
    *moved += sm.bytes_sent();
    if let Err(e) = result {
        flush(|| sm.poll_transmit(clock.now()), &*dc).await;
        return Err(e);
    }
    let seconds = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or_default();
    let path = paths.track.report(sm.peer_path());
    Ok(Summary {
        files,
        bytes: total,
        transferred: *moved,
        seconds,
        path,
    })
}

/// The channel broke under us. If the receiver said why before it went (disk full, bad
/// name…), that reason is the error, not the broken channel.
async fn explain_loss(
    sm: &mut Sender,
    inbox: &mut mpsc::Receiver<Bytes>,
    clock: Clock,
    fallback: anyhow::Error,
) -> anyhow::Error {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(f)) = tokio::time::timeout_at(deadline, inbox.recv()).await {
        if let Err(e) = sm.handle_frame(&f, clock.now()) {
            return map_err(e);
        }
    }
    fallback
}

/// Send the control frames still queued (a Cancel, the last acks), then let them drain.
async fn flush(mut next: impl FnMut() -> Option<Vec<u8>>, dc: &dyn DataChannel) {
    while let Some(f) = next() {
        let _ = tokio::time::timeout(Duration::from_secs(1), dc.send(BytesMut::from(&f[..]))).await;
    }
    drained(dc).await;
}

/// Wait (briefly) until what we queued has left, so a last Cancel or Complete is not torn
/// down with the connection.
async fn drained(dc: &dyn DataChannel) {
    // Bounded as a whole: every call here goes through the connection's driver, and a
    // transfer that already ended must not hang on a connection that is going away.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match dc.outstanding_bytes().await {
                Ok(0) | Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A transfer error as the run sees it: a receiver that got no offer in time lost its link
/// (and recovers as from one); everything else ends the transfer.
fn map_err(e: TransferError) -> anyhow::Error {
    match e {
        e @ TransferError::Stalled => LinkLost::Broken(e.to_string()).into(),
        e => anyhow!(e),
    }
}

/// Free space needed beyond the files themselves (filesystem metadata, `.part` slack).
const SPACE_MARGIN: u64 = 1 << 20;

/// What a receive keeps from one connection to the next of the same run: the offer and
/// where its entries land, the files already saved, and the bytes every connection moved.
#[derive(Debug, Default)]
pub struct Carry {
    pub moved: u64,
    offer: Option<(protocol::transfer::Offer, files::Plan)>,
    saved: std::collections::HashSet<u32>,
    /// Saved files' hashes as the receiver machine verified them
    /// ([`Receiver::holding`]): claimed again without reading the files back.
    verified: std::collections::HashMap<u32, Hold>,
}

/// Receive into `dest` over `link`. `carry` says what earlier connections of this run
/// received: the same offer again lands in the same places, its saved files are claimed
/// whole (the sender confirms their BLAKE3 and sends nothing of them), its `.part`s are
/// continued, even inside folders.
pub async fn receive(
    link: &Link,
    dest: &Destination,
    limits: Limits,
    gate: Option<&dyn Gate>,
    out: &mut Output,
    interrupt: &mut Interrupt,
    carry: &mut Carry,
) -> anyhow::Result<(Summary, Vec<PathBuf>)> {
    let clock = Clock::start();
    let dc = link.dc.clone();
    let mut inbox = spawn_inbox(link);
    spawn_watchdog(dc.clone(), link.state.clone(), link.gone.clone());
    let mut sm = Receiver::with_limits(clock.now(), limits);
    let mut paths = Paths::start(link, |p| sm.set_path(p));
    let (writer, mut written) = files::spawn_writer(dest)?;
    let mut plan = None;
    let mut saved = Vec::new();
    let mut files_total = 0;
    let mut started = None;
    let mut first_byte = false;
    let mut pending_saves = 0usize;
    // Files whose `.part` from an interrupted transfer this side offered to continue, and
    // files an earlier connection of this run saved (claimed whole).
    let mut resumable = std::collections::HashSet::new();
    let mut whole = std::collections::HashSet::new();
    // Offered sizes, by index.
    let mut sizes = Vec::new();

    let result: anyhow::Result<()> = async {
        loop {
            while let Some(f) = sm.poll_transmit(clock.now()) {
                send_frame(&*dc, BytesMut::from(&f[..])).await?;
            }
            if sm.is_done() && pending_saves == 0 {
                return Ok(());
            }
            let timer = sm.poll_timeout().map(|t| clock.at(t));
            tokio::select! {
                _ = interrupted(interrupt) => return Err(stopped(sm.cancel(CancelReason::Cancelled, STOPPED))),
                f = inbox.recv() => {
                    let Some(frame) = f else { return Err(lost()) };
                    let data = match sm.handle_frame(&frame, clock.now()) {
                        Ok(Received::Data { bytes, .. }) => Some(frame.slice_ref(bytes)),
                        Ok(Received::Nothing) => None,
                        Err(e) => return Err(map_err(e)),
                    };
                    while let Some(ev) = sm.poll_event() {
                        match ev {
                            ReceiverEvent::PeerPath(p) => paths.connected(link, Some(p), out),
                            ReceiverEvent::Offer(offer) => {
                                paths.connected(link, sm.peer_path(), out);
                                files_total = offer.file_count();
                                out.event(&event::Offer::from(&offer).into());
                                let admitted = gate.map(|g| g.admit(sm.device(), &link.binding));
                                let under = match admitted {
                                    Some(Err(msg)) => return Err(decline(&mut sm, &*dc, clock, msg).await),
                                    Some(Ok(under)) => under,
                                    None => PathBuf::new(),
                                };
                                let again = carry.offer.as_ref().filter(|(o, _)| *o == offer).map(|(_, p)| p.clone());
                                let planned = match again {
                                    Some(p) => p,
                                    None => {
                                        carry.saved.clear();
                                        carry.verified.clear();
                                        files::plan_under(dest, &offer, &under)
                                    }
                                };
                                let (held, held_bytes) = hash_held(dest, &offer, &planned, carry).await?;
                                carry.offer = Some((offer.clone(), planned.clone()));
                                // Saved already (this run, or the interrupted one that left
                                // the folder): claimed whole, or empty (nothing to claim).
                                let empty = |i: &u32| offer.entries.get(*i as usize).is_some_and(|(_, e)| e.size == 0);
                                whole = carry.saved.union(&planned.found).copied()
                                    .filter(|i| empty(i) || held.iter().any(|(h, _)| h == i))
                                    .collect();
                                let need = offer.total_bytes - held_bytes;
                                let room = match gate {
                                    Some(g) => g.reserve(need),
                                    None => check_space(dest, need),
                                };
                                if let Err(msg) = room {
                                    return Err(decline(&mut sm, &*dc, clock, msg).await);
                                }
                                resumable = held.iter().map(|(i, _)| *i).filter(|i| !whole.contains(i)).collect();
                                sm.accept_holding(held).map_err(map_err)?;
                                // Folders only once the offer is accepted.
                                planned.create_dirs(dest).map_err(|e| {
                                    let err = sm.cancel(CancelReason::Io, "the receiver cannot create folders");
                                    e.context(err.to_string())
                                })?;
                                sizes = offer.entries.iter().map(|(_, e)| e.size).collect();
                                plan = Some(planned);
                                started = Some(Instant::now());
                                out.event(&event::Accepted { files: files_total, bytes: offer.total_bytes }.into());
                            }
                            ReceiverEvent::FileStart { index, offset } => {
                                let target = plan.as_ref().and_then(|p| p.targets.get(&index)).cloned()
                                    .ok_or_else(|| anyhow!("no destination for file #{index}"))?;
                                if whole.contains(&index) {
                                    let size = sizes.get(index as usize).copied().unwrap_or_default();
                                    if offset < size {
                                        let err = sm.cancel(CancelReason::SourceChanged, "a file changed at the sender after it was received");
                                        bail!("{} changed at the sender after it arrived here ({err}); it is kept as it arrived", target.display());
                                    }
                                    // Saved already, and the sender agrees: nothing to write.
                                    continue;
                                }
                                let keep = resumable.contains(&index).then_some(offset);
                                if writer.send(WriteCmd::Start { target, keep }).await.is_err() {
                                    return Err(writer_failed(&mut sm, &mut written).await);
                                }
                            }
                            ReceiverEvent::FileVerified { index } if whole.contains(&index) => {
                                if let Some(t) = plan.as_ref().and_then(|p| p.targets.get(&index)) {
                                    saved.push(dest.path.join(t));
                                }
                                sm.file_saved(index).map_err(map_err)?;
                                out.event(&event::FileDone { index }.into());
                            }
                            ReceiverEvent::FileVerified { index } => {
                                pending_saves += 1;
                                if writer.send(WriteCmd::Finish { index }).await.is_err() {
                                    return Err(writer_failed(&mut sm, &mut written).await);
                                }
                            }
                            ReceiverEvent::Resumed { index, offset } => {
                                out.event(&event::Resumed { index, offset }.into());
                            }
                            ReceiverEvent::StartsOver { index } => {
                                // A file found in a continued folder is not the sender's: it
                                // is received anew, beside it (` (n)`).
                                if plan.as_ref().is_some_and(|p| p.found.contains(&index)) {
                                    whole.remove(&index);
                                }
                                out.event(&event::FileRestarted { index }.into());
                            }
                            ReceiverEvent::Completed => {}
                        }
                    }
                    if let Some(bytes) = data {
                        if !first_byte {
                            first_byte = true;
                            let ms_since_room = link.both_in_room.elapsed().as_secs_f64() * 1e3;
                            out.event(&event::FirstByte { ms_since_room }.into());
                        }
                        if writer.send(WriteCmd::Data(bytes)).await.is_err() {
                            return Err(writer_failed(&mut sm, &mut written).await);
                        }
                        out.event(&event::Progress { bytes: sm.bytes_done(), total: sm.total_bytes() }.into());
                    }
                }
                r = written.recv() => match r {
                    Some(WriteResult::Saved { index, path }) => {
                        pending_saves -= 1;
                        carry.saved.insert(index);
                        saved.push(path);
                        if sm.saves_left() == 1 {
                            paths.at_end_of_part(link, |p| sm.set_path(p)).await;
                        }
                        sm.file_saved(index).map_err(map_err)?;
                        out.event(&event::FileDone { index }.into());
                    }
                    Some(WriteResult::Failed(e)) => return Err(write_error(&mut sm, e)),
                    None => return Err(writer_failed(&mut sm, &mut written).await),
                },
                _ = sleep_opt(timer) => sm.handle_timeout(clock.now()).map_err(map_err)?,
            }
        }
    }
    .await;
    carry.moved += sm.bytes_received();
    if let Some(g) = gate {
        g.received(sm.bytes_received());
    }
    if plan.is_some() {
        let whole = sm.holding().into_iter();
        carry.verified = whole
            .filter(|(_, h)| matches!(h, Hold::Whole { .. }))
            .collect();
    }
    if let Err(e) = result {
        // A transfer that failed for good loses its `.part`; one the connection went away
        // under keeps it, to be continued.
        let keep = !sm.has_failed() && sm.bytes_done() > 0;
        if !keep {
            let _ = writer.send(WriteCmd::Discard).await;
        }
        drop(writer);
        flush(|| sm.poll_transmit(clock.now()), &*dc).await;
        // Let the writer thread finish with its `.part` before we report.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(r) = written.recv().await {
                // Saved as the connection went: the next connection need not send it.
                if let WriteResult::Saved { index, .. } = r {
                    carry.saved.insert(index);
                }
            }
        })
        .await;
        if keep {
            return Err(e.context(format!(
                "what arrived is kept in {}: receive the same files into it again to continue",
                dest.path.display()
            )));
        }
        return Err(e);
    }
    drop(writer);
    let seconds = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or_default();
    // Our last acknowledgements must leave before the connection is torn down; the sender
    // finishes when it has them. (Waiting for the sender to close instead cost 2 s on relayed
    // paths, where its close does not always arrive.)
    drained(&*dc).await;
    let path = paths.track.report(sm.peer_path());
    Ok((
        Summary {
            files: files_total,
            bytes: sm.total_bytes(),
            transferred: carry.moved,
            seconds,
            path,
        },
        saved,
    ))
}

/// What this side holds of the offer where `plan` puts it: the files saved by an earlier
/// connection of this run (by the hash the receiver verified, or read back whole when it saved
/// them as that connection went) or found saved in a continued folder, and every other
/// file's `.part` (from an interrupted
/// transfer) hashed, at most the offered size each; and how many bytes that is. The sender
/// compares each with its own file: BLAKE3 decides, so an unrelated part costs one hash.
async fn hash_held(
    dest: &Destination,
    offer: &protocol::transfer::Offer,
    plan: &files::Plan,
    carry: &Carry,
) -> anyhow::Result<(Vec<(u32, Hold)>, u64)> {
    let mut held = Vec::new();
    let mut bytes = 0;
    for (i, (_, entry)) in offer.entries.iter().enumerate() {
        let index = i as u32;
        let Some(target) = plan
            .targets
            .get(&index)
            .filter(|_| !entry.dir && entry.size > 0)
        else {
            continue;
        };
        let is_saved = carry.saved.contains(&index) || plan.found.contains(&index);
        if let Some(hold) = carry.verified.get(&index).filter(|_| is_saved) {
            bytes += hold.len();
            held.push((index, hold.clone()));
            continue;
        }
        let len = match is_saved {
            true => entry.size,
            false => dest.part_len(target).unwrap_or(0).min(entry.size),
        };
        if len == 0 {
            continue;
        }
        let (d, t) = (
            dest.try_clone()
                .context("reopening the destination folder")?,
            target.clone(),
        );
        let hasher = tokio::task::spawn_blocking(move || match is_saved {
            true => d.hash_saved(&t, len),
            false => d.hash_part(&t, len),
        })
        .await
        .context("hashing what is kept from before")?;
        // A saved file that no longer reads whole is not claimed (it would not match).
        if hasher.count() == len {
            bytes += len;
            held.push((index, hasher.into()));
        }
    }
    Ok((held, bytes))
}

/// The writer thread stopped (its queue refused a command): find out why, tell the sender,
/// and return the error. One path for every way a write can fail, so the sender always hears
/// the real reason (e.g. a full disk) instead of a dropped connection.
async fn writer_failed(
    sm: &mut Receiver,
    written: &mut mpsc::UnboundedReceiver<WriteResult>,
) -> anyhow::Error {
    loop {
        match written.recv().await {
            Some(WriteResult::Failed(e)) => return write_error(sm, e),
            Some(WriteResult::Saved { .. }) => continue,
            None => return write_error(sm, std::io::Error::other("the file writer stopped")),
        }
    }
}

fn write_error(sm: &mut Receiver, e: std::io::Error) -> anyhow::Error {
    let (reason, msg) = if files::is_disk_full(&e) {
        (CancelReason::NoSpace, "the receiver's disk is full")
    } else {
        (CancelReason::Io, "the receiver could not write a file")
    };
    sm.cancel(reason, msg);
    anyhow!(e).context(msg)
}

/// The disk under `dest` takes `need` more bytes and keeps what it must free after.
/// Decline the offer for `why` (the sender reads it), and fail with it here.
async fn decline(
    sm: &mut Receiver,
    dc: &dyn DataChannel,
    clock: Clock,
    why: String,
) -> anyhow::Error {
    sm.decline(&why);
    flush(|| sm.poll_transmit(clock.now()), dc).await;
    anyhow!("{why}")
}

fn check_space(dest: &Destination, need: u64) -> Result<(), String> {
    check_free(&dest.path, need, dest.keep_free, 0)
}

/// Is there room in `path`'s file system for `need` more bytes, keeping `keep_free` free
/// (`--keep-free`) beside `promised` bytes other drops in progress will still write?
pub fn check_free(
    path: &std::path::Path,
    need: u64,
    keep_free: u64,
    promised: u64,
) -> Result<(), String> {
    // Tests fill a small disk on purpose to see writing fail; users never skip the check.
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("PUNCHDROP_SKIP_SPACE_CHECK").is_some() {
        return Ok(());
    }
    let keep = SPACE_MARGIN.max(keep_free);
    let free = match fs4::available_space(path) {
        Ok(free) => free,
        Err(e) => {
            tracing::warn!("cannot check free space: {e}");
            return Ok(());
        }
    };
    if free >= need.saturating_add(keep).saturating_add(promised) {
        return Ok(());
    }
    let mut why = format!(
        "not enough free space on the receiver: the files need {}, {} is free",
        indicatif::HumanBytes(need),
        indicatif::HumanBytes(free)
    );
    if promised > 0 {
        why += &format!(
            ", {} of it for drops in progress",
            indicatif::HumanBytes(promised)
        );
    }
    if keep_free > 0 {
        why += &format!(" and it keeps {} free", indicatif::HumanBytes(keep_free));
    }
    Err(why)
}
