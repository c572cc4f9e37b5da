//! WebRTC setup: one peer connection, one reliable ordered data channel, negotiated through
//! the sealed signalling of [`crate::rendezvous`].
//!
//! The file sender makes the offer and the channel; the receiver answers. Candidates are
//! trickled both ways. When the channel opens, [`Link`] carries it plus the path that won
//! (host / srflx / prflx / relay, UDP or TCP) and a watch on the connection state; the
//! signalling task keeps running in the background for late candidates, and its loss is no
//! longer fatal.

use anyhow::{Context as _, anyhow, bail};
use protocol::signal::{IceServer, PeerSignal, SIGNAL_VERSION, SdpKind, TransferRole};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState, RTCIceServer,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};

use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;

use crate::portmap;
use crate::rendezvous::Signals;
use crate::tune::TunedRuntime;
use crate::turn_tcp::{self, Bridges};

/// Candidates this peer advertises beyond what ICE gathers (ladder steps 1 and 2).
#[derive(Debug, Clone)]
pub struct Advertise {
    /// `--public-addr`:`--port`, a port the user forwarded by hand.
    pub forwarded: Option<SocketAddr>,
    /// The fixed UDP port ICE binds (`--port`, or the one picked for port mapping).
    pub port: Option<u16>,
    /// The router port mapping's progress; its external address is advertised when it comes.
    pub portmap: watch::Receiver<portmap::State>,
}

/// Network knobs of one connection.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub advertise: Advertise,
    /// Local UDP addresses to gather host candidates on.
    pub bind: Vec<SocketAddr>,
    pub udp_buffer: usize,
    /// SCTP receive window in bytes.
    pub sctp_window: u32,
    /// Data-channel send-buffer limit (back-pressure for `send`).
    pub send_buffer: usize,
    /// Use relayed candidates only (diagnostics, tests).
    pub relay_only: bool,
    /// Keep only TURN servers of this transport (diagnostics, tests).
    pub relay_transport: Option<RelayTransport>,
    /// Time between ICE connectivity checks (RFC 8445's Ta).
    pub ice_check_interval: Duration,
    /// Drive the connection on its own single-threaded reactor.
    pub dedicated_reactor: bool,
    pub connect_timeout: Duration,
}

/// How the peers ended up connected.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PathInfo {
    /// `direct`, `mapped` (through our router's port mapping), `forwarded` (through the port
    /// given with `--port`/`--public-addr`) or `relay`.
    pub kind: &'static str,
    /// Local and remote candidate types, e.g. `host`, `srflx`, `prflx`, `relay`.
    pub local: String,
    pub remote: String,
    /// `udp` or `tcp`.
    pub protocol: String,
    /// Why a faster path was not taken (relayed paths only).
    pub reason: Option<String>,
    /// Port mapping outcome: `off`, `pending`, `mapped` or `failed`.
    pub portmap: &'static str,
}

impl std::fmt::Display for PathInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match (self.kind, self.local.as_str(), self.remote.as_str()) {
            ("relay", ..) => "relayed",
            ("mapped", ..) => "through the router's port mapping",
            ("forwarded", ..) => "through the forwarded port",
            (_, "host", "host") => "on the local network",
            _ => "hole punched",
        };
        write!(
            f,
            "{} path, {how} ({} ↔ {}, {})",
            self.kind, self.local, self.remote, self.protocol
        )?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// An open data channel and what it runs on.
pub struct Link {
    pub pc: Arc<dyn PeerConnection>,
    pub dc: Arc<dyn DataChannel>,
    pub path: PathInfo,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    /// TURN-over-TCP bridges this connection may be relaying through.
    _bridges: Bridges,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct Handler {
    candidates: mpsc::UnboundedSender<Option<RTCIceCandidateInit>>,
    state: watch::Sender<RTCPeerConnectionState>,
    channel: Mutex<Option<oneshot::Sender<Arc<dyn DataChannel>>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.candidates.send(Some(init));
            }
            Err(e) => tracing::warn!("cannot encode a local candidate: {e}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.candidates.send(None);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "connection state");
        let _ = self.state.send(state);
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        if let Some(tx) = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(dc);
        }
    }
}

const CHANNEL_LABEL: &str = "punchdrop";
/// How long to wait for the other peer's hello (it may be a person choosing files).
const PEER_HELLO_WAIT: Duration = Duration::from_secs(10 * 60);
/// How long UDP may take to reach the TURN server before TCP relays are kept as well.
const UDP_PROBE_WAIT: Duration = Duration::from_millis(600);
/// How long a working relay pair waits for a direct pair before it is accepted.
const RELAY_WAIT: Duration = Duration::from_secs(1);

/// Exchange hellos, negotiate, and wait for the data channel to open.
pub async fn connect(
    role: TransferRole,
    mut signals: Signals,
    ice_servers: &[IceServer],
    opts: &NetOptions,
) -> anyhow::Result<Link> {
    let started = Instant::now();
    let has_turn = ice_servers
        .iter()
        .flat_map(|s| &s.urls)
        .any(|u| u.starts_with("turn"));
    if opts.relay_only && !has_turn {
        bail!("--relay-only needs a TURN server, and the signalling server offered none");
    }
    // Does UDP reach the TURN server? Asked now, answered by the time the hellos are
    // exchanged (one round trip through the server either way).
    let udp_probe = ice_servers
        .iter()
        .flat_map(|s| &s.urls)
        .find_map(|u| turn_tcp::udp_turn_target(u))
        .filter(|_| {
            opts.relay_transport.is_none()
                && ice_servers
                    .iter()
                    .flat_map(|s| &s.urls)
                    .any(|u| turn_tcp::tcp_turn_target(u).is_some())
        })
        .map(|target| {
            tokio::spawn(async move { turn_tcp::udp_answers(&target, UDP_PROBE_WAIT).await })
        });
    let hello = PeerSignal::Hello {
        version: SIGNAL_VERSION,
        role,
    };
    if signals.outgoing.send(hello).is_err() {
        // The signalling task already ended; what ended it (e.g. the other peer's hello did
        // not open: wrong secret) is waiting on `incoming`.
        return Err(match next_signal(&mut signals).await {
            Err(e) => e,
            Ok(_) => anyhow!("lost the signalling server"),
        });
    }
    // A browser that opened our link as the sender says hello only once its user has picked
    // the files, so this wait is for a person. The room tells us if that peer leaves.
    let peer_hello = tokio::time::timeout(PEER_HELLO_WAIT, next_signal(&mut signals))
        .await
        .map_err(|_| {
            anyhow!(
                "the other peer did not start within {} minutes",
                PEER_HELLO_WAIT.as_secs() / 60
            )
        })??;
    match peer_hello {
        PeerSignal::Hello {
            version,
            role: theirs,
        } => {
            if version != SIGNAL_VERSION {
                bail!("the other peer runs an incompatible punchdrop (signalling v{version})");
            }
            if theirs == role {
                bail!(match role {
                    TransferRole::Sender => "the other peer is also sending: one side must receive",
                    TransferRole::Receiver =>
                        "the other peer is also receiving: one side must send",
                });
            }
        }
        other => bail!("the other peer skipped the hello: {other:?}"),
    }

    tracing::debug!(ms = started.elapsed().as_millis() as u64, "hello exchanged");
    // Advertised addresses go out as trickled candidates; the other side keeps them until its
    // remote description is set, so they may go before our description.
    let mut adverts = Adverts::new(&opts.advertise, opts.relay_only);
    adverts.send_ready(&signals);
    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
    let (dc_tx, dc_rx) = oneshot::channel();
    let handler = Arc::new(Handler {
        candidates: cand_tx,
        state: state_tx,
        channel: Mutex::new(Some(dc_tx)),
    });

    // Relay over TCP only when UDP does not reach the TURN server (ladder: relay over UDP,
    // then TCP). Both kinds of relay candidate look alike to webrtc-rs (a TCP relay is a
    // local UDP bridge), so with both a TCP relay could win where a UDP one works (the NAT
    // lab saw it between two symmetric NATs). The probe ran during the hello exchange.
    let transport = match (opts.relay_transport, udp_probe) {
        (Some(t), _) => Some(t),
        (None, Some(probe)) => match probe.await {
            Ok(true) => Some(RelayTransport::Udp),
            _ => None,
        },
        (None, None) => None,
    };
    let (rtc_servers, bridges) = prepare_ice_servers(ice_servers, transport).await?;
    let is_loopback = opts.bind.iter().all(|a| a.ip().is_loopback());
    let settings = SettingEngineBuilder::new()
        .with_include_loopback_candidate(is_loopback)
        .with_sctp_max_receive_buffer_size(opts.sctp_window)
        .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(
            protocol::transfer::MAX_FRAME as u32,
        ))
        // Any direct pair is accepted as soon as it works. A peer-reflexive pair is often the
        // very host pair whose trickled candidate is still in flight; the default 1 s wait
        // for it cost a full second of setup in half the runs on loopback.
        .with_host_acceptance_min_wait(Some(Duration::ZERO))
        .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
        // A relay pair waits so a direct pair can win, unless relaying is all there is: 1 s
        // (the library's default is 2 s). In the NAT lab direct pairs succeed within a few
        // round trips (< 100 ms at 20 ms RTT, < 600 ms with 100 ms + 5 % loss on one side);
        // 1 s leaves room for 300 ms paths and halves the wait of peers that need the relay.
        // A peer-reflexive candidate learnt from a relayed check waits the same (patches/).
        .with_relay_acceptance_min_wait(Some(if opts.relay_only {
            Duration::ZERO
        } else {
            RELAY_WAIT
        }))
        // 50 ms between checks (RFC 8445's Ta) instead of 200 ms: a direct path is found in
        // one round trip, and hole punching sends more often while both NATs open up.
        .with_ice_connection_attempts(Some(opts.ice_check_interval), Some(40))
        // A vanished peer is noticed in seconds, not the default half-minute.
        .with_ice_timeouts(
            Some(Duration::from_secs(5)),
            Some(Duration::from_secs(15)),
            Some(Duration::from_secs(2)),
        )
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(rtc_servers)
                .with_ice_transport_policy(if opts.relay_only {
                    RTCIceTransportPolicy::Relay
                } else {
                    RTCIceTransportPolicy::All
                })
                .build(),
        )
        .with_setting_engine(settings)
        .with_handler(handler)
        .with_runtime(TunedRuntime::new(opts.udp_buffer))
        .with_udp_addrs(opts.bind.clone())
        .with_data_channel_send_buffer_limit(opts.send_buffer)
        .with_dedicated_reactor_pool_size(usize::from(opts.dedicated_reactor))
        .build()
        .await
        .context("cannot set up WebRTC")?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "peer connection built"
    );

    let mut own_dc = None;
    if role == TransferRole::Sender {
        let init = RTCDataChannelInit {
            ordered: true,
            ..Default::default()
        };
        own_dc = Some(pc.create_data_channel(CHANNEL_LABEL, Some(init)).await?);
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        let sdp = gathered_description(&*pc, &mut cand_rx).await?;
        let _ = signals.outgoing.send(PeerSignal::Description {
            kind: SdpKind::Offer,
            sdp,
        });
    }

    // Negotiate until the channel opens, the connection fails, or time runs out.
    let mut remote_set = false;
    let mut pending: Vec<RTCIceCandidateInit> = Vec::new();
    let mut state = state_rx.clone();
    let mut dc_rx = Some(dc_rx);
    let deadline = tokio::time::sleep(opts.connect_timeout);
    tokio::pin!(deadline);
    let dc: Arc<dyn DataChannel> = loop {
        if let Some(dc) = own_dc.clone() {
            // The sender's channel exists from the start; wait for its open event below.
            if remote_set {
                break dc;
            }
        }
        tokio::select! {
            _ = &mut deadline => bail!("could not connect to the other peer within {:?}", opts.connect_timeout),
            c = cand_rx.recv() => {
                tracing::debug!(ms = started.elapsed().as_millis() as u64, "local candidate");
                forward_candidate(&signals, c)
            }
            () = adverts.changed(), if adverts.waiting() => adverts.send_ready(&signals),
            _ = state.changed() => {
                if *state.borrow() == RTCPeerConnectionState::Failed {
                    bail!("no network path to the other peer worked");
                }
            }
            dc = async { dc_rx.as_mut().expect("polled until taken").await }, if dc_rx.is_some() => {
                break dc.map_err(|_| anyhow!("the connection closed before a channel opened"))?;
            }
            sig = next_signal(&mut signals) => {
                match sig? {
                    PeerSignal::Description { kind, sdp } => {
                        remote_set = true;
                        apply_description(&*pc, role, kind, sdp, &signals, &mut cand_rx).await?;
                        tracing::debug!(ms = started.elapsed().as_millis() as u64, "remote description applied");
                        for c in pending.drain(..) {
                            add_candidate(&*pc, c).await;
                        }
                    }
                    PeerSignal::Candidate { candidate, sdp_mid, sdp_mline_index } => {
                        let init = RTCIceCandidateInit { candidate, sdp_mid, sdp_mline_index, ..Default::default() };
                        if remote_set { add_candidate(&*pc, init).await } else { pending.push(init) }
                    }
                    PeerSignal::EndOfCandidates => {}
                    PeerSignal::Hello { .. } => bail!("the other peer restarted the handshake"),
                }
            }
        }
    };

    // Keep serving signalling in the background (late candidates) while waiting for open.
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "channel announced"
    );
    let late_signals = signals.outgoing.clone();
    spawn_signalling(pc.clone(), signals, cand_rx);

    loop {
        tokio::select! {
            _ = &mut deadline => bail!("could not connect to the other peer within {:?}", opts.connect_timeout),
            () = adverts.changed(), if adverts.waiting() => adverts.send_ready_to(&late_signals),
            _ = state.changed() => {
                if *state.borrow() == RTCPeerConnectionState::Failed {
                    bail!("no network path to the other peer worked");
                }
            }
            ev = dc.poll() => match ev {
                Some(DataChannelEvent::OnOpen) => break,
                Some(DataChannelEvent::OnClose) | None => bail!("the data channel closed before it opened"),
                Some(_) => {}
            }
        }
    }
    let path = selected_path(&*pc, &bridges.urls, &PathContext::of(opts)).await;
    tracing::info!(ms = started.elapsed().as_millis() as u64, %path, "data channel open");
    Ok(Link {
        pc,
        dc,
        path,
        state: state_rx,
        _bridges: bridges,
    })
}

/// How long a description waits for candidate gathering before it is sent anyway (the rest
/// trickle). Host candidates take about a millisecond; STUN answers one round trip.
const GATHER_WAIT: Duration = Duration::from_millis(150);

/// The local description with the candidates gathered so far: all of them if gathering ends
/// within [`GATHER_WAIT`], or as soon as a server-reflexive one is in (relay candidates take
/// two more round trips to the TURN server and are only needed if no direct pair works: they
/// trickle; in the NAT lab at 20 ms RTT this saved ≈ 20 ms per side). Candidates in the
/// description make pairs the moment the other side applies it; trickling host and srflx
/// ones raced the first checks and cost a check interval.
async fn gathered_description(
    pc: &dyn PeerConnection,
    cand_rx: &mut mpsc::UnboundedReceiver<Option<RTCIceCandidateInit>>,
) -> anyhow::Result<String> {
    let deadline = tokio::time::sleep(GATHER_WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            c = cand_rx.recv() => match c {
                Some(Some(c)) if c.candidate.contains(" typ srflx") => break,
                Some(Some(_)) => {}
                Some(None) | None => break,
            },
        }
    }
    Ok(pc
        .local_description()
        .await
        .context("no local description")?
        .sdp)
}

async fn next_signal(signals: &mut Signals) -> anyhow::Result<PeerSignal> {
    match signals.incoming.recv().await {
        Some(r) => r,
        None => bail!("lost the signalling server before the peers connected"),
    }
}

fn forward_candidate(signals: &Signals, c: Option<Option<RTCIceCandidateInit>>) {
    let msg = match c {
        Some(Some(init)) => PeerSignal::Candidate {
            candidate: init.candidate,
            sdp_mid: init.sdp_mid,
            sdp_mline_index: init.sdp_mline_index,
        },
        Some(None) => PeerSignal::EndOfCandidates,
        None => return,
    };
    let _ = signals.outgoing.send(msg);
}

async fn add_candidate(pc: &dyn PeerConnection, init: RTCIceCandidateInit) {
    if let Err(e) = pc.add_ice_candidate(init).await {
        tracing::debug!("ignoring a remote candidate: {e}");
    }
}

async fn apply_description(
    pc: &dyn PeerConnection,
    role: TransferRole,
    kind: SdpKind,
    sdp: String,
    signals: &Signals,
    cand_rx: &mut mpsc::UnboundedReceiver<Option<RTCIceCandidateInit>>,
) -> anyhow::Result<()> {
    match (role, kind) {
        (TransferRole::Sender, SdpKind::Answer) => {
            let desc =
                RTCSessionDescription::answer(sdp).context("the other peer's answer is invalid")?;
            pc.set_remote_description(desc)
                .await
                .context("cannot apply the other peer's answer")?;
        }
        (TransferRole::Receiver, SdpKind::Offer) => {
            let desc =
                RTCSessionDescription::offer(sdp).context("the other peer's offer is invalid")?;
            pc.set_remote_description(desc)
                .await
                .context("cannot apply the other peer's offer")?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            let sdp = gathered_description(pc, cand_rx).await?;
            let _ = signals.outgoing.send(PeerSignal::Description {
                kind: SdpKind::Answer,
                sdp,
            });
        }
        _ => bail!("the other peer sent an {kind:?} out of turn"),
    }
    Ok(())
}

/// After the channel is open: forward late candidates both ways until signalling ends. Losing
/// the server here only costs late candidates.
fn spawn_signalling(
    pc: Arc<dyn PeerConnection>,
    mut signals: Signals,
    mut cand_rx: mpsc::UnboundedReceiver<Option<RTCIceCandidateInit>>,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                c = cand_rx.recv() => {
                    if c.is_none() { break; }
                    forward_candidate(&signals, c);
                }
                sig = signals.incoming.recv() => match sig {
                    Some(Ok(PeerSignal::Candidate { candidate, sdp_mid, sdp_mline_index })) => {
                        let init = RTCIceCandidateInit { candidate, sdp_mid, sdp_mline_index, ..Default::default() };
                        add_candidate(&*pc, init).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::info!("signalling ended ({e:#}); the transfer continues peer to peer");
                        break;
                    }
                    None => {
                        tracing::info!("signalling ended; the transfer continues peer to peer");
                        break;
                    }
                }
            }
        }
    });
}

/// Sends the candidates of [`Advertise`] once each: the forwarded port at once, the mapped
/// port when (if) the router grants it.
#[derive(Debug)]
struct Adverts {
    forwarded: Option<SocketAddr>,
    portmap: watch::Receiver<portmap::State>,
    /// Still watching the port mapping.
    watching: bool,
}

impl Adverts {
    fn new(a: &Advertise, relay_only: bool) -> Self {
        Self {
            // Relay-only peers advertise nothing direct.
            forwarded: a.forwarded.filter(|_| !relay_only),
            portmap: a.portmap.clone(),
            watching: !relay_only,
        }
    }

    fn waiting(&self) -> bool {
        self.watching
    }

    /// The port mapping's state moved (or its task ended).
    async fn changed(&mut self) {
        if self.portmap.changed().await.is_err() {
            // The mapping task ended and its last state was already seen: nothing will come.
            self.watching = false;
        }
    }

    fn send_ready(&mut self, signals: &Signals) {
        self.send_ready_to(&signals.outgoing);
    }

    fn send_ready_to(&mut self, out: &mpsc::UnboundedSender<PeerSignal>) {
        let send = |addr: SocketAddr, tag: u32| {
            let _ = out.send(PeerSignal::Candidate {
                candidate: portmap::candidate_line(addr, tag),
                sdp_mid: Some(String::new()),
                sdp_mline_index: Some(0),
            });
        };
        if let Some(addr) = self.forwarded.take() {
            tracing::debug!("advertising the forwarded port");
            send(addr, 0);
        }
        if !self.watching {
            return;
        }
        let state = self.portmap.borrow_and_update().clone();
        match state {
            portmap::State::Mapped(m) => {
                tracing::debug!("advertising the mapped port");
                send(m.external, 1);
                self.watching = false;
            }
            portmap::State::Pending => {}
            portmap::State::Off | portmap::State::Failed(_) => self.watching = false,
        }
    }
}

/// What [`selected_path`] needs to know beyond the stats.
#[derive(Debug, Clone)]
pub struct PathContext {
    relay_only: bool,
    relay_transport: Option<RelayTransport>,
    /// The local port behind an advertised address, and which kind of path it makes.
    advertised_port: Option<(u16, &'static str)>,
    portmap: portmap::State,
}

impl PathContext {
    pub fn of(opts: &NetOptions) -> Self {
        let portmap = opts.advertise.portmap.borrow().clone();
        let advertised_port = match (&portmap, opts.advertise.forwarded) {
            (_, Some(f)) => opts
                .advertise
                .port
                .or(Some(f.port()))
                .map(|p| (p, "forwarded")),
            (portmap::State::Mapped(m), None) => Some((m.internal.port(), "mapped")),
            _ => None,
        };
        Self {
            relay_only: opts.relay_only,
            relay_transport: opts.relay_transport,
            advertised_port,
            portmap,
        }
    }
}

fn candidate_type_name(t: RTCIceCandidateType) -> String {
    match t {
        RTCIceCandidateType::Host => "host".into(),
        RTCIceCandidateType::Srflx => "srflx".into(),
        RTCIceCandidateType::Prflx => "prflx".into(),
        RTCIceCandidateType::Relay => "relay".into(),
        other => other.to_string(),
    }
}

/// Read the nominated pair from the stats, and say why a faster path lost when relayed.
pub async fn selected_path(
    pc: &dyn PeerConnection,
    tcp_bridges: &[String],
    ctx: &PathContext,
) -> PathInfo {
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    let unknown = PathInfo {
        kind: "direct",
        local: "unknown".into(),
        remote: "unknown".into(),
        protocol: "udp".into(),
        reason: None,
        portmap: ctx.portmap.word(),
    };
    let Some(pair_id) = report
        .transport()
        .map(|t| t.selected_candidate_pair_id.clone())
    else {
        return unknown;
    };
    let Some(RTCStatsReportEntry::IceCandidatePair(pair)) = report.get(&pair_id) else {
        return unknown;
    };
    // The pair names candidates by their bare id; the report keys them with a prefix.
    let find = |prefix: &str, id: &str| {
        report
            .get(id)
            .or_else(|| report.get(&format!("{prefix}{id}")))
    };
    let local_of = |id: &str| match find("RTCLocalIceCandidate_", id) {
        Some(RTCStatsReportEntry::LocalCandidate(c)) => Some(c),
        _ => None,
    };
    let remote_of = |id: &str| match find("RTCRemoteIceCandidate_", id) {
        Some(RTCStatsReportEntry::RemoteCandidate(c)) => Some(c),
        _ => None,
    };
    let local = local_of(&pair.local_candidate_id);
    let remote = remote_of(&pair.remote_candidate_id);
    let lt = local.as_ref().map(|c| c.candidate_type).unwrap_or_default();
    // A remote candidate that never came through signalling was learnt from an incoming
    // check: peer-reflexive by definition (webrtc-rs keeps no stats entry for it). One whose
    // priority is a relay's (type preference 0, below 2^24; the patched rtc-ice takes it
    // from the check) came from the other peer's TURN allocation: the path is relayed.
    let rt = match remote.as_ref() {
        Some(c) => c.candidate_type,
        None => match selected_remote_priority(pc).await {
            Some(p) if p < (1 << 24) => RTCIceCandidateType::Relay,
            _ => RTCIceCandidateType::Prflx,
        },
    };
    let relayed = lt == RTCIceCandidateType::Relay || rt == RTCIceCandidateType::Relay;
    // A relay reached through a TURN-over-TCP bridge looks like UDP to webrtc-rs.
    let protocol = match local {
        Some(c) if tcp_bridges.contains(&c.url) => "tcp".to_string(),
        Some(c) if !c.protocol.is_empty() => c.protocol.to_lowercase(),
        _ => "udp".to_string(),
    };
    // Our socket behind an advertised address (mapped or forwarded), talking to a peer that
    // is not on our network: the router let it in through that port. (A cone NAT could also
    // have let it in by hole punching on the same socket; the path is the same.)
    let advertised = match (ctx.advertised_port, local) {
        (Some((port, kind)), Some(c))
            if lt == RTCIceCandidateType::Host
                && c.port == port
                && rt != RTCIceCandidateType::Host =>
        {
            Some(kind)
        }
        _ => None,
    };
    let kind = if relayed {
        "relay"
    } else {
        advertised.unwrap_or("direct")
    };
    let reason = if relayed {
        let (locals, remotes) = ice_candidates(pc).await;
        Some(relay_reason(ctx, &protocol, &locals, &remotes))
    } else {
        None
    };
    PathInfo {
        kind,
        local: candidate_type_name(lt),
        remote: candidate_type_name(rt),
        protocol,
        reason,
        portmap: ctx.portmap.word(),
    }
}

/// The remote candidate priority of the nominated pair, from the ICE transport (the stats
/// have no entry for peer-reflexive candidates).
async fn selected_remote_priority(pc: &dyn PeerConnection) -> Option<u32> {
    let sctp = pc.sctp().await?;
    let pair = sctp
        .transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .ok()??;
    Some(pair.remote().priority)
}

/// The local and remote candidate types ICE knows (the stats miss those that came in a
/// description).
async fn ice_candidates(
    pc: &dyn PeerConnection,
) -> (Vec<RTCIceCandidateType>, Vec<RTCIceCandidateType>) {
    let Some(sctp) = pc.sctp().await else {
        return (Vec::new(), Vec::new());
    };
    let ice = sctp.transport().ice_transport();
    let types = |v: Vec<webrtc::peer_connection::RTCIceCandidate>| {
        v.into_iter().map(|c| c.typ).collect::<Vec<_>>()
    };
    (
        ice.get_local_candidates()
            .await
            .map(types)
            .unwrap_or_default(),
        ice.get_remote_candidates()
            .await
            .map(types)
            .unwrap_or_default(),
    )
}

/// Why a relay carries the connection, from the candidates each side had.
fn relay_reason(
    ctx: &PathContext,
    protocol: &str,
    locals: &[RTCIceCandidateType],
    remotes: &[RTCIceCandidateType],
) -> String {
    if ctx.relay_only {
        return "relay forced (--relay-only)".into();
    }
    let direct = |v: &[RTCIceCandidateType]| {
        v.iter()
            .filter(|t| **t != RTCIceCandidateType::Relay)
            .count()
    };
    let has_srflx = |v: &[RTCIceCandidateType]| v.contains(&RTCIceCandidateType::Srflx);
    let mut why = if protocol == "tcp"
        && !has_srflx(locals)
        && ctx.relay_transport != Some(RelayTransport::Tcp)
    {
        // No STUN answer over UDP, while TURN over TCP worked.
        "UDP blocked: relayed over TCP".to_string()
    } else if direct(remotes) == 0 {
        "the other peer offered no direct candidates".to_string()
    } else if !has_srflx(remotes) {
        "no direct candidate pair succeeded; the other peer got no STUN answer (UDP blocked on its side?)"
            .to_string()
    } else {
        format!(
            "no direct candidate pair succeeded ({} tried; symmetric NAT on either side?)",
            direct(locals) * direct(remotes)
        )
    };
    if let portmap::State::Failed(e) = &ctx.portmap {
        why.push_str(&format!("; no port mapping: {e}"));
    }
    why
}

/// Which TURN transports to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayTransport {
    Udp,
    Tcp,
}

/// The ICE servers for webrtc-rs: `transport=tcp` TURN servers are reached through local
/// bridges (webrtc-rs's client speaks UDP only); `only` keeps one TURN transport.
async fn prepare_ice_servers(
    servers: &[IceServer],
    only: Option<RelayTransport>,
) -> anyhow::Result<(Vec<RTCIceServer>, Bridges)> {
    let mut bridges = Bridges::default();
    let mut out = Vec::new();
    for s in servers {
        let mut urls = Vec::new();
        for url in &s.urls {
            match turn_tcp::tcp_turn_target(url) {
                Some(_) if only == Some(RelayTransport::Udp) => {}
                Some(target) => {
                    // A TURN server we cannot reach by TCP is skipped, not fatal: a direct
                    // path or another relay may still work.
                    let lookup = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::net::lookup_host(&target),
                    )
                    .await;
                    let Some(addr) = lookup.ok().and_then(Result::ok).and_then(|mut a| a.next())
                    else {
                        tracing::warn!("cannot resolve a TURN server; skipping it");
                        continue;
                    };
                    match bridges.add(addr).await {
                        Ok(url) => urls.push(url),
                        Err(e) => tracing::warn!("cannot start a TURN-over-TCP bridge: {e}"),
                    }
                }
                None if only == Some(RelayTransport::Tcp) && url.starts_with("turn") => {}
                None => urls.push(url.clone()),
            }
        }
        if !urls.is_empty() {
            out.push(RTCIceServer {
                urls,
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            });
        }
    }
    Ok((out, bridges))
}
