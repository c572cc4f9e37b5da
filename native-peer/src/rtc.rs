//! webrtc-rs under the rendezvous: one peer connection with one reliable, ordered data channel.
//!
//! [`crate::rendezvous`] drives this as `protocol::rendezvous` asks: [`Peer::start`] builds
//! the connection (ICE timers, socket buffers, TURN-over-TCP bridges, relay transport), and
//! the other methods create, read and apply descriptions and candidates. Events webrtc-rs
//! raises come back as [`PcEvent`]s. [`Peer::path`] reads the selected pair off the stats for
//! `protocol::path` to describe. No protocol decision is made here.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use protocol::path::{
    self, CandidateType, PathContext, PathKind, PathReport, SelectedPair, Transport,
};
use protocol::rendezvous::{CHANNEL_LABEL, IceCandidate, PeerSetup};
use protocol::signal::{IceServer, SdpKind, TransferRole};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfiguration,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};

use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;

use crate::portmap;
use crate::tune::TunedRuntime;
use crate::turn_tcp::{self, Bridges};

/// How long a working relay pair waits for a direct pair before it is accepted.
const RELAY_WAIT: Duration = Duration::from_secs(1);

/// Candidates this peer advertises beyond what ICE gathers (ladder steps 1 and 2).
#[derive(Debug, Clone)]
pub struct Advertise {
    /// `--public-addr`:`--port`, a port the user forwarded by hand.
    pub forwarded: Option<SocketAddr>,
    /// The fixed UDP port ICE binds (`--port`, or the one picked for port mapping).
    pub port: Option<u16>,
    /// The router port mapping; its external address is advertised when it comes.
    pub portmap: portmap::PortMapper,
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
}

/// Which TURN transports to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayTransport {
    Udp,
    Tcp,
    Tls,
}

impl RelayTransport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// What a TURN URL relays over; `None` for what is not a TURN URL (`stun:`).
    pub fn of(url: &str) -> Option<Self> {
        if turn_tcp::tls_turn_target(url).is_some() {
            Some(Self::Tls)
        } else if turn_tcp::tcp_turn_target(url).is_some() {
            Some(Self::Tcp)
        } else if turn_tcp::udp_turn_target(url).is_some() {
            Some(Self::Udp)
        } else {
            None
        }
    }
}

/// What webrtc-rs reported, in the order it did.
pub enum PcEvent {
    Candidate(IceCandidate),
    GatheringDone,
    /// The other peer's data channel (the receiving side's only channel).
    Channel(Arc<dyn DataChannel>),
}

impl std::fmt::Debug for PcEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Candidate(c) => f.debug_tuple("Candidate").field(c).finish(),
            Self::GatheringDone => f.write_str("GatheringDone"),
            Self::Channel(_) => f.write_str("Channel"),
        }
    }
}

struct Handler {
    events: mpsc::UnboundedSender<PcEvent>,
    state: watch::Sender<RTCPeerConnectionState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.events.send(PcEvent::Candidate(IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                }));
            }
            Err(e) => tracing::warn!("cannot encode a local candidate: {e}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.events.send(PcEvent::GatheringDone);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "connection state");
        let _ = self.state.send(state);
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.events.send(PcEvent::Channel(dc));
    }
}

/// One peer connection while it is being negotiated.
pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    pub events: mpsc::UnboundedReceiver<PcEvent>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    /// The data channel: the sender's own from the start, the receiver's once announced.
    pub channel: Option<Arc<dyn DataChannel>>,
    /// Messages the channel delivered before the link was handed over (the other side may
    /// send the moment its end opens): the transfer reads them first. They go with the
    /// connection if it is closed.
    pub early: Vec<Bytes>,
    /// TURN-over-TCP bridges this connection may relay through; they live as long as it.
    pub bridges: Bridges,
    relay_transport: Option<RelayTransport>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

/// An open data channel and what it runs on.
pub struct Link {
    pub pc: Arc<dyn PeerConnection>,
    pub dc: Arc<dyn DataChannel>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    /// The path at open.
    pub path: PathReport,
    /// When both peers were in the room (for `first_byte`).
    pub both_in_room: Instant,
    pub role: TransferRole,
    /// A connection before this one was lost: the transfer says `reconnected`.
    pub again: bool,
    /// The session's binding ([`protocol::crypto::Channel::binding`]): what a device proof
    /// signs.
    pub binding: [u8; 32],
    /// Becomes `true` when this connection is known dead, whatever its state says: the other
    /// peer came back through the room, or said it lost it, or this host's address changed.
    pub gone: watch::Receiver<bool>,
    /// What the channel delivered before this link existed, in order ([`Peer::early`]);
    /// taken by the first reader.
    pub early: std::sync::Mutex<Vec<Bytes>>,
    reader: PathReader,
    /// Dropped with the link.
    _bridges: Bridges,
    /// The signalling that carries late candidates, and how to ask it back.
    signalling: Option<Background>,
}

/// The signalling task running beside an open link.
pub type Background = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<crate::rendezvous::Signalling>,
);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.signalling {
            task.abort();
        }
    }
}

impl Link {
    /// The link over `peer`'s connection, whose events were taken for the signalling that
    /// goes on after open (`signalling`, stopped with the link).
    pub fn new(
        peer: Peer,
        dc: Arc<dyn DataChannel>,
        path: PathReport,
        both_in_room: Instant,
        role: TransferRole,
        reader: PathReader,
        signalling: Background,
    ) -> Self {
        Self {
            pc: peer.pc,
            dc,
            state: peer.state,
            path,
            both_in_room,
            role,
            again: false,
            binding: [0; 32],
            gone: watch::channel(false).1,
            early: std::sync::Mutex::new(peer.early),
            reader,
            _bridges: peer.bridges,
            signalling: Some(signalling),
        }
    }

    /// Stop the signalling that ran beside this link and take it back: to wait for the other
    /// peer to come back after the link was lost. `None` if its task failed.
    pub async fn take_signalling(&mut self) -> Option<crate::rendezvous::Signalling> {
        let (stop, task) = self.signalling.take()?;
        let _ = stop.send(());
        task.await.ok()
    }

    /// The path as it is now: ICE may have moved since the channel opened.
    pub async fn path_now(&self) -> PathReport {
        self.reader.now().await
    }

    /// Close the connection, but never hang on it: the outcome is already decided, and
    /// webrtc-rs's close can wait on a peer that is gone.
    pub async fn close(&self) {
        if tokio::time::timeout(Duration::from_secs(2), self.pc.close())
            .await
            .is_err()
        {
            tracing::debug!("closing the peer connection timed out");
        }
    }
}

/// The connection's configuration: its ICE servers, and relayed candidates only if asked.
fn configuration(servers: Vec<RTCIceServer>, relay_only: bool) -> RTCConfiguration {
    RTCConfigurationBuilder::new()
        .with_ice_servers(servers)
        // Gather from the start, not from the first description (a patch to webrtc-rs,
        // which stored the setting but did not use it): a receiver started before the
        // offer arrives answers with its server-reflexive candidate instead of trickling
        // it a round trip later.
        .with_ice_candidate_pool_size(1)
        .with_ice_transport_policy(match relay_only {
            true => RTCIceTransportPolicy::Relay,
            false => RTCIceTransportPolicy::All,
        })
        .build()
}

impl Peer {
    /// Build the peer connection the rendezvous asked for. `reaches_turn` is the answer of
    /// the probe of the TURN server: the first of UDP, TCP and TLS that reaches it (`None`:
    /// not probed, or none did).
    pub async fn start(
        setup: &PeerSetup,
        reaches_turn: Option<RelayTransport>,
        opts: &NetOptions,
    ) -> anyhow::Result<Peer> {
        let has_turn = setup
            .ice_servers
            .iter()
            .flat_map(|s| &s.urls)
            .any(|u| u.starts_with("turn"));
        if opts.relay_only && !has_turn {
            bail!("--relay-only needs a TURN server, and the signalling server offered none");
        }
        if let Some(forced) = opts.relay_transport {
            let offered = setup
                .ice_servers
                .iter()
                .flat_map(|s| &s.urls)
                .any(|u| RelayTransport::of(u) == Some(forced));
            if !offered {
                bail!(
                    "--relay-transport {}: the signalling server offered no TURN server over it",
                    forced.name()
                );
            }
        }
        // Relay over TCP only when UDP does not reach the TURN server, over TLS only when
        // TCP does not either (ladder: relay over UDP, then TCP, then TLS). All relay
        // candidates look alike to webrtc-rs (a TCP or TLS relay is a local UDP bridge), so
        // with several a TCP relay could win where a UDP one works (the NAT lab saw it
        // between two symmetric NATs).
        let relay_transport = opts.relay_transport.or(reaches_turn);
        let (servers, bridges) = prepare_ice_servers(&setup.ice_servers, relay_transport).await;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(Handler {
            events: events_tx,
            state: state_tx,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration(servers, opts.relay_only))
            .with_setting_engine(settings(opts))
            .with_handler(handler)
            .with_runtime(TunedRuntime::new(opts.udp_buffer))
            .with_udp_addrs(opts.bind.clone())
            .with_data_channel_send_buffer_limit(opts.send_buffer)
            .build()
            .await
            .context("cannot set up WebRTC")?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        // The file sender opens the channel.
        let channel = match setup.role {
            TransferRole::Sender => {
                let init = RTCDataChannelInit {
                    ordered: true,
                    ..Default::default()
                };
                Some(
                    pc.create_data_channel(CHANNEL_LABEL, Some(init))
                        .await
                        .context("cannot create the data channel")?,
                )
            }
            TransferRole::Receiver => None,
        };
        Ok(Peer {
            pc,
            events,
            state,
            channel,
            early: Vec::new(),
            bridges,
            relay_transport: opts.relay_transport,
        })
    }

    /// Take the event stream (for whoever forwards late candidates once the channel is open).
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<PcEvent> {
        std::mem::replace(&mut self.events, mpsc::unbounded_channel().1)
    }

    /// Create an offer or an answer and set it as the local description.
    pub async fn create_description(&self, kind: SdpKind) -> anyhow::Result<()> {
        create_description(&*self.pc, kind).await
    }

    /// The local description as it stands, with the candidates gathered so far.
    pub async fn local_description(&self) -> anyhow::Result<String> {
        local_description(&*self.pc).await
    }

    pub async fn apply(&self, kind: SdpKind, sdp: String) -> anyhow::Result<()> {
        apply(&*self.pc, kind, sdp).await
    }

    /// Add a remote candidate; one the stack cannot use is not fatal.
    pub async fn add_candidate(&self, c: IceCandidate) {
        add_candidate(&*self.pc, c).await
    }

    /// What [`protocol::path::describe`] needs besides the pair.
    pub fn path_context(&self, opts: &NetOptions) -> PathContext {
        let mut ctx = PathContext {
            relay_only: opts.relay_only,
            relay_transport: self.relay_transport.map(|t| match t {
                RelayTransport::Udp => Transport::Udp,
                RelayTransport::Tcp => Transport::Tcp,
                RelayTransport::Tls => Transport::Tls,
            }),
            ..PathContext::default()
        };
        advertised_context(&opts.advertise, &mut ctx);
        ctx
    }

    /// What reads this connection's path later, described in `ctx` (its advertised
    /// addresses read again each time from `advertise`).
    pub fn path_reader(&self, ctx: PathContext, advertise: &Advertise) -> PathReader {
        PathReader {
            pc: self.pc.clone(),
            bridges: self.bridges.urls.clone(),
            ctx,
            advertise: advertise.clone(),
        }
    }
}

/// The advertised address in `ctx` (a forwarded port, else the port mapping as it stands
/// now) and the mapping's state.
fn advertised_context(advertise: &Advertise, ctx: &mut PathContext) {
    let portmap = advertise.portmap.state();
    (ctx.advertised, ctx.advertised_family) = match (&portmap, advertise.forwarded) {
        (_, Some(f)) => (
            Some((advertise.port.unwrap_or(f.port()), PathKind::Forwarded)),
            Some(f.ip().into()),
        ),
        (portmap::State::Mapped(m), None) => (
            Some((m.internal.port(), PathKind::Mapped)),
            Some(m.internal.ip().into()),
        ),
        _ => (None, None),
    };
    ctx.portmap = Some(portmap.report());
    ctx.mapped_by = portmap.mapped_by();
}

/// Reads the path a connection uses now: its selected pair, described.
#[derive(Clone)]
pub struct PathReader {
    pc: Arc<dyn PeerConnection>,
    bridges: Vec<(String, Transport)>,
    ctx: PathContext,
    /// Read again at each look: a mapping granted (or moved) after the connection opened.
    advertise: Advertise,
}

impl PathReader {
    pub async fn now(&self) -> PathReport {
        let mut ctx = self.ctx.clone();
        advertised_context(&self.advertise, &mut ctx);
        selected_path(&*self.pc, &self.bridges, &ctx).await
    }
}

/// Create an offer or an answer and set it as the local description.
pub async fn create_description(pc: &dyn PeerConnection, kind: SdpKind) -> anyhow::Result<()> {
    let desc = match kind {
        SdpKind::Offer => pc.create_offer(None).await,
        SdpKind::Answer => pc.create_answer(None).await,
    }
    .with_context(|| format!("cannot create an {}", kind_name(kind)))?;
    pc.set_local_description(desc)
        .await
        .with_context(|| format!("cannot use our own {}", kind_name(kind)))
}

/// Create an offer that restarts ICE (new credentials, candidates gathered again) and set
/// it as the local description.
pub async fn restart_ice(pc: &dyn PeerConnection) -> anyhow::Result<()> {
    pc.restart_ice().await.context("cannot restart ICE")?;
    create_description(pc, SdpKind::Offer).await
}

/// The local description as it stands, with the candidates gathered so far.
pub async fn local_description(pc: &dyn PeerConnection) -> anyhow::Result<String> {
    Ok(pc
        .local_description()
        .await
        .context("no local description")?
        .sdp)
}

/// Set the other peer's description.
pub async fn apply(pc: &dyn PeerConnection, kind: SdpKind, sdp: String) -> anyhow::Result<()> {
    let desc = match kind {
        SdpKind::Offer => RTCSessionDescription::offer(sdp),
        SdpKind::Answer => RTCSessionDescription::answer(sdp),
    }
    .with_context(|| format!("the other peer's {} is invalid", kind_name(kind)))?;
    pc.set_remote_description(desc)
        .await
        .with_context(|| format!("cannot apply the other peer's {}", kind_name(kind)))
}

/// Add a remote candidate; one the stack cannot use is not fatal.
pub async fn add_candidate(pc: &dyn PeerConnection, c: IceCandidate) {
    let init = RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
        ..Default::default()
    };
    if let Err(e) = pc.add_ice_candidate(init).await {
        tracing::debug!("ignoring a remote candidate: {e}");
    }
}

fn kind_name(kind: SdpKind) -> &'static str {
    match kind {
        SdpKind::Offer => "offer",
        SdpKind::Answer => "answer",
    }
}

fn settings(opts: &NetOptions) -> webrtc::peer_connection::SettingEngine {
    let is_loopback = opts.bind.iter().all(|a| a.ip().is_loopback());
    SettingEngineBuilder::new()
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
        // A vanished peer is noticed in seconds, not the default half-minute. Checks every
        // second keep the pair alive; once it is disconnected, every check interval, so a
        // path that is back is seen a round trip after it (patches/rtc-ice, disconnected
        // checks) and SCTP retransmits at once (patches/rtc-sctp, path restored).
        .with_ice_timeouts(
            Some(Duration::from_secs(5)),
            Some(Duration::from_secs(15)),
            Some(Duration::from_secs(1)),
        )
        .build()
}

fn candidate_type(t: RTCIceCandidateType) -> CandidateType {
    match t {
        RTCIceCandidateType::Host => CandidateType::Host,
        RTCIceCandidateType::Srflx => CandidateType::Srflx,
        RTCIceCandidateType::Prflx => CandidateType::Prflx,
        RTCIceCandidateType::Relay => CandidateType::Relay,
        _ => CandidateType::Unknown,
    }
}

/// Read the nominated pair off the stats and describe the path it makes.
async fn selected_path(
    pc: &dyn PeerConnection,
    bridges: &[(String, Transport)],
    ctx: &PathContext,
) -> PathReport {
    let pair = selected_pair(pc, bridges).await;
    let mut ctx = ctx.clone();
    if pair.local == CandidateType::Relay || pair.remote == CandidateType::Relay {
        // Only a relayed path needs a reason, and the reason needs every candidate.
        let (locals, remotes) = ice_candidates(pc).await;
        ctx.local_candidates = locals;
        ctx.remote_candidates = remotes;
    }
    path::describe(pair, &ctx)
}

async fn selected_pair(pc: &dyn PeerConnection, bridges: &[(String, Transport)]) -> SelectedPair {
    let unknown = SelectedPair {
        local: CandidateType::Unknown,
        remote: CandidateType::Unknown,
        protocol: Transport::Udp,
        local_port: None,
        family: None,
    };
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
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
    let local = match find("RTCLocalIceCandidate_", &pair.local_candidate_id) {
        Some(RTCStatsReportEntry::LocalCandidate(c)) => Some(c),
        _ => None,
    };
    let remote = match find("RTCRemoteIceCandidate_", &pair.remote_candidate_id) {
        Some(RTCStatsReportEntry::RemoteCandidate(c)) => Some(c),
        _ => None,
    };
    // A remote candidate that never came through signalling was learnt from an incoming
    // check: peer-reflexive by definition (webrtc-rs keeps no stats entry for it). One whose
    // priority is a relay's (type preference 0, below 2^24; the patched rtc-ice takes it
    // from the check) came from the other peer's TURN allocation: the path is relayed.
    let remote_type = match remote {
        Some(c) => candidate_type(c.candidate_type),
        None => match selected_remote_priority(pc).await {
            Some(p) if p < (1 << 24) => CandidateType::Relay,
            _ => CandidateType::Prflx,
        },
    };
    // A relay reached through a TURN-over-TCP or TLS bridge looks like UDP to webrtc-rs.
    let bridged = |url: &str| bridges.iter().find(|(u, _)| u == url).map(|(_, t)| *t);
    let protocol = match local {
        Some(c) => bridged(&c.url).unwrap_or_else(|| Transport::parse(&c.protocol)),
        None => Transport::Udp,
    };
    SelectedPair {
        local: local
            .map(|c| candidate_type(c.candidate_type))
            .unwrap_or_default(),
        remote: remote_type,
        protocol,
        local_port: local.map(|c| c.port),
        family: path::IpFamily::of_first(
            [local, remote]
                .into_iter()
                .flatten()
                .filter_map(|c| c.address.as_deref()),
        ),
    }
}

/// The local address the nominated pair's path starts from (what
/// [`crate::netwatch::Watch`] watches): a host candidate's own, a reflexive one's base.
/// `None` before ICE chose a pair, for a relayed pair, or for an mDNS name.
pub async fn selected_base(pc: &dyn PeerConnection) -> Option<std::net::IpAddr> {
    let pair = nominated_pair(pc).await?;
    let local = pair.local();
    match local.typ {
        RTCIceCandidateType::Host => local.address.parse().ok(),
        RTCIceCandidateType::Srflx | RTCIceCandidateType::Prflx => {
            local.related_address.parse().ok()
        }
        _ => None,
    }
}

/// The remote candidate priority of the nominated pair, from the ICE transport (the stats
/// have no entry for peer-reflexive candidates).
async fn selected_remote_priority(pc: &dyn PeerConnection) -> Option<u32> {
    Some(nominated_pair(pc).await?.remote().priority)
}

/// The pair ICE nominated, from the ICE transport.
async fn nominated_pair(
    pc: &dyn PeerConnection,
) -> Option<rtc::peer_connection::transport::RTCIceCandidatePair> {
    let sctp = pc.sctp().await?;
    sctp.transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .ok()?
}

/// The local and remote candidate types ICE knows (the stats miss those that came in a
/// description).
async fn ice_candidates(pc: &dyn PeerConnection) -> (Vec<CandidateType>, Vec<CandidateType>) {
    let Some(sctp) = pc.sctp().await else {
        return (Vec::new(), Vec::new());
    };
    let ice = sctp.transport().ice_transport();
    let types = |v: Vec<webrtc::peer_connection::RTCIceCandidate>| {
        v.into_iter()
            .map(|c| candidate_type(c.typ))
            .collect::<Vec<_>>()
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

/// The addresses (`ip:port`) of the remote candidates ICE knows now, and whether ICE learnt
/// each from the other peer's checks (peer-reflexive) rather than from its signals.
pub async fn remote_addresses(pc: &dyn PeerConnection) -> Vec<(String, bool)> {
    let Some(sctp) = pc.sctp().await else {
        return Vec::new();
    };
    let remote = sctp
        .transport()
        .ice_transport()
        .get_remote_candidates()
        .await;
    remote
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let learnt = c.typ == RTCIceCandidateType::Prflx;
            (format!("{}:{}", c.address, c.port), learnt)
        })
        .collect()
}

/// The ICE servers for webrtc-rs: `transport=tcp` and `turns:` TURN servers are reached
/// through local bridges (webrtc-rs's client speaks UDP only); `only` keeps one TURN
/// transport.
async fn prepare_ice_servers(
    servers: &[IceServer],
    only: Option<RelayTransport>,
) -> (Vec<RTCIceServer>, Bridges) {
    let mut bridges = Bridges::default();
    let mut out = Vec::new();
    // Without a rung picked (nothing answered the probe, or it did not run), every relay
    // is kept: one of them may still work.
    let keep = |t: RelayTransport| only.is_none_or(|only| t == only);
    for s in servers {
        let mut urls = Vec::new();
        for url in &s.urls {
            let Some(transport) = RelayTransport::of(url) else {
                urls.push(url.clone());
                continue;
            };
            if !keep(transport) {
                continue;
            }
            let (target, tls) = match transport {
                RelayTransport::Udp => {
                    urls.push(url.clone());
                    continue;
                }
                RelayTransport::Tcp => (turn_tcp::tcp_turn_target(url), None),
                RelayTransport::Tls => match turn_tcp::tls_turn_target(url) {
                    Some((target, host)) => (Some(target), Some(host)),
                    None => continue,
                },
            };
            let Some(target) = target else { continue };
            // A TURN server we cannot reach is skipped, not fatal: a direct path or another
            // relay may still work.
            let lookup =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(&target))
                    .await;
            let Some(addr) = lookup.ok().and_then(Result::ok).and_then(|mut a| a.next()) else {
                tracing::warn!("cannot resolve a TURN server; skipping it");
                continue;
            };
            let tls = match tls.map(rustls::pki_types::ServerName::try_from) {
                None => None,
                Some(Ok(name)) => Some(name.to_owned()),
                Some(Err(_)) => {
                    tracing::warn!("a turns: URL without a usable host name; skipping it");
                    continue;
                }
            };
            match bridges.add(turn_tcp::Target { addr, tls }).await {
                Ok(url) => urls.push(url),
                Err(e) => tracing::warn!("cannot start a TURN-over-TCP bridge: {e}"),
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
    (out, bridges)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The candidate pool (`patches/webrtc-0.21.1-candidate-pool.patch`): a connection
    /// gathers as soon as it is built, before any description, and its first description
    /// carries those candidates without gathering them again.
    #[tokio::test]
    async fn candidates_come_before_the_first_description_and_once() {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (state_tx, _state) = watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(Handler {
            events: events_tx,
            state: state_tx,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration(Vec::new(), false))
            .with_handler(handler)
            .with_udp_addrs(vec![SocketAddr::from(([127, 0, 0, 1], 0))])
            .build()
            .await
            .expect("a peer connection");
        let first = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a candidate before any description")
            .expect("the event stream");
        let PcEvent::Candidate(first) = first else {
            panic!("{first:?}");
        };
        assert!(first.candidate.contains("typ host"), "{first:?}");
        // (Something to describe: an offer without a channel has no media section.)
        pc.create_data_channel(CHANNEL_LABEL, None)
            .await
            .expect("a channel");
        create_description(&pc, SdpKind::Offer)
            .await
            .expect("an offer");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut lines = vec![first.candidate];
        while let Ok(e) = events.try_recv() {
            if let PcEvent::Candidate(c) = e {
                lines.push(c.candidate);
            }
        }
        let unique: std::collections::HashSet<&String> = lines.iter().collect();
        assert_eq!(unique.len(), lines.len(), "gathered twice: {lines:?}");
        let sdp = local_description(&pc).await.expect("a description");
        assert!(sdp.contains("typ host"), "{sdp}");
        pc.close().await.expect("closed");
    }
}
