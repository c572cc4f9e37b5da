//! The native driver of [`protocol::rendezvous`]: a tokio-tungstenite WebSocket to the
//! signalling server, webrtc-rs ([`crate::rtc`]), the port mapping, Ctrl-C and the clock.
//!
//! [`connect`] runs the machine until the data channel is open, doing what its outputs say
//! and feeding it what happens. Every protocol decision (messages, PAKE, roles, order,
//! deadlines) is the machine's. Once the channel is open, a background task keeps feeding it
//! late candidates both ways until the server goes away or the link is dropped; the transfer
//! never waits for it, so losing the server then costs nothing.
//!
//! The machine and its server socket ([`Signalling`]) outlive one connection: a creator whose
//! connection is lost takes them back from the link ([`Link::take_signalling`]), tells the
//! machine (`link_lost`) and runs [`connect`] again to wait for the joiner to come back. If
//! the joiner is back before the transfer noticed, the background task closes the old
//! connection itself, so the transfer fails over at once.

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use protocol::path::PathReport;
use protocol::rendezvous::{IceCandidate, LocalIce, Output, PeerSetup, Place, Rendezvous};
use protocol::signal::ClientMessage;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::DataChannelEvent;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use crate::netwatch::{self, Watch};
use crate::output::{Output as Screen, Shared};
use crate::portmap;
use crate::rtc::{Link, NetOptions, PathReader, PcEvent, Peer, RelayTransport};
use crate::transfer::{Interrupt, interrupted};
use crate::turn_tcp;

/// How long UDP (or TCP) may take to reach the TURN server before the next rung is used.
const UDP_PROBE_WAIT: Duration = Duration::from_millis(600);

/// Time for the state machines: a monotonic clock from an arbitrary start.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn now(self) -> Duration {
        self.0.elapsed()
    }

    pub fn at(self, t: Duration) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + t)
    }
}

use crate::wss::Ws;
type Connecting = Pin<Box<dyn Future<Output = anyhow::Result<Ws>> + Send>>;

/// The socket to the signalling server.
enum Server {
    Connecting(Connecting),
    Open(Box<Ws>),
    Closed,
    /// Never opened, for this reason (told to the user if the rendezvous fails for it).
    Unreachable(anyhow::Error),
}

enum ServerEvent {
    Open,
    Text(String),
    Closed,
}

impl Server {
    fn connect(base: &str) -> Self {
        let url = protocol::invite::websocket_url(base);
        Self::Connecting(Box::pin(
            async move { crate::wss::connect(url?.as_str()).await },
        ))
    }

    /// The next thing the server side does; never resolves once closed.
    async fn next(&mut self) -> ServerEvent {
        match self {
            Self::Connecting(fut) => match fut.await {
                Ok(ws) => {
                    *self = Self::Open(Box::new(ws));
                    ServerEvent::Open
                }
                Err(e) => {
                    tracing::debug!("cannot reach the signalling server: {e:#}");
                    *self = Self::Unreachable(e);
                    ServerEvent::Closed
                }
            },
            Self::Open(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return ServerEvent::Text(t.to_string()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        *self = Self::Closed;
                        return ServerEvent::Closed;
                    }
                    Some(Ok(_)) => {}
                }
            },
            Self::Closed | Self::Unreachable(_) => std::future::pending().await,
        }
    }

    /// Send; `false` if the socket is (now) closed.
    async fn send(&mut self, msg: &ClientMessage) -> bool {
        let Self::Open(ws) = self else {
            return false;
        };
        if ws.send(Message::text(msg.to_json())).await.is_err() {
            *self = Self::Closed;
            return false;
        }
        true
    }

    async fn close(&mut self) {
        if let Self::Open(ws) = self {
            let _ = tokio::time::timeout(Duration::from_millis(200), (**ws).close(None)).await;
        }
        *self = Self::Closed;
    }
}

/// Sends the candidates of [`crate::rtc::Advertise`]: the forwarded port at once, the mapped
/// port when (if) the router grants it, and again whenever the router moves it.
#[derive(Debug)]
struct Adverts {
    forwarded: Option<SocketAddr>,
    mapper: portmap::PortMapper,
    portmap: watch::Receiver<portmap::State>,
    /// Still watching the port mapping.
    watching: bool,
    /// The mapped address last advertised, and how many were.
    mapped: Option<SocketAddr>,
    sent: u32,
}

impl Adverts {
    fn new(net: &NetOptions) -> Self {
        Self {
            // Relay-only peers advertise nothing direct.
            forwarded: net.advertise.forwarded.filter(|_| !net.relay_only),
            mapper: net.advertise.portmap.clone(),
            portmap: net.advertise.portmap.watch(),
            watching: !net.relay_only,
            mapped: None,
            sent: 0,
        }
    }

    /// The port mapping's state moved (or its task ended).
    async fn changed(&mut self) {
        if !self.watching {
            return std::future::pending().await;
        }
        if self.portmap.changed().await.is_err() {
            // The mapping task ended and its last state was already seen: nothing will come.
            self.watching = false;
        }
    }

    /// The path went down: a router that restarted has lost our mapping; ask for it again.
    fn path_down(&self) {
        self.mapper.refresh();
    }

    /// Candidates ready to advertise now.
    fn ready(&mut self) -> Vec<IceCandidate> {
        let line = |addr: SocketAddr, tag: u32| IceCandidate {
            candidate: portmap::candidate_line(addr, tag),
            sdp_mid: Some(String::new()),
            sdp_mline_index: Some(0),
        };
        let mut out = Vec::new();
        if let Some(addr) = self.forwarded.take() {
            tracing::debug!("advertising the forwarded port");
            out.push(line(addr, 0));
        }
        if self.watching {
            match self.portmap.borrow_and_update().clone() {
                portmap::State::Mapped(m) if self.mapped != Some(m.external) => {
                    tracing::debug!("advertising the mapped port");
                    self.sent += 1;
                    out.push(line(m.external, self.sent));
                    self.mapped = Some(m.external);
                }
                portmap::State::Mapped(_) | portmap::State::Pending => {}
                portmap::State::Off | portmap::State::Failed(_) => self.watching = false,
            }
        }
        out
    }
}

/// Start asking the TURN server over UDP (and opening TCP to it) as soon as the room hands
/// out servers, to pick the rung of the ladder to relay on — UDP, else TCP, else TLS. The
/// peer connection is built with the answer: a side that knows its role builds it as soon as
/// the servers are known (`Rendezvous::start_early`), so the UDP answer, one round trip to
/// the TURN server, decides without waiting for the others.
fn start_relay_probe(
    rv: &Rendezvous,
    net: &NetOptions,
) -> Option<tokio::task::JoinHandle<Option<RelayTransport>>> {
    let urls: Vec<String> = rv
        .ice_servers()
        .iter()
        .flat_map(|s| s.urls.iter().cloned())
        .collect();
    let stream_relays = urls.iter().any(|u| {
        matches!(
            RelayTransport::of(u),
            Some(RelayTransport::Tcp | RelayTransport::Tls)
        )
    });
    if net.relay_transport.is_some() || !stream_relays {
        return None;
    }
    let target = |want| urls.iter().find(|u| RelayTransport::of(u) == Some(want));
    let udp = target(RelayTransport::Udp).and_then(|u| turn_tcp::udp_turn_target(u));
    let tcp = target(RelayTransport::Tcp).and_then(|u| turn_tcp::tcp_turn_target(u));
    let tls = target(RelayTransport::Tls).and_then(|u| turn_tcp::tls_turn_target(u));
    Some(tokio::spawn(async move {
        // All three asked at once; UDP is preferred, so its answer decides as soon as it
        // comes (the peer connection waits for this), then TCP's, then TLS's.
        let tcp = tokio::spawn(async move {
            match &tcp {
                Some(t) => turn_tcp::tcp_answers(t, UDP_PROBE_WAIT).await,
                None => false,
            }
        });
        let tls = tokio::spawn(async move {
            match &tls {
                Some((t, name)) => turn_tcp::tls_answers(t, name, UDP_PROBE_WAIT).await,
                None => false,
            }
        });
        let udp = match &udp {
            Some(t) => turn_tcp::udp_answers(t, UDP_PROBE_WAIT).await,
            None => false,
        };
        if udp {
            tcp.abort();
            tls.abort();
            Some(RelayTransport::Udp)
        } else if tcp.await.unwrap_or(false) {
            tls.abort();
            Some(RelayTransport::Tcp)
        } else if tls.await.unwrap_or(false) {
            Some(RelayTransport::Tls)
        } else {
            None
        }
    }))
}

/// The rendezvous machine, its socket to the server and the candidates to advertise: what
/// goes on from one connection to the next.
pub struct Signalling {
    rv: Rendezvous,
    server: Server,
    adverts: Adverts,
}

impl Signalling {
    /// Start: open the socket to the machine's server.
    pub fn start(mut rv: Rendezvous, net: &NetOptions, clock: Clock) -> Self {
        let mut adverts = Adverts::new(net);
        for c in adverts.ready() {
            rv.advertise(c, clock.now());
        }
        Self {
            server: Server::connect(rv.server()),
            rv,
            adverts,
        }
    }

    /// The connection is gone with the transfer unfinished: `true` if the machine waits for
    /// the other peer to come back (run [`connect`] again), `false` if nothing will.
    pub fn link_lost(&mut self, clock: Clock) -> bool {
        self.rv.link_lost(clock.now())
    }

    /// This side's place in the room the machine is (or was last) in.
    pub fn place(&self) -> Option<Place> {
        self.rv.place()
    }

    /// Leave the room: close the socket to the server.
    pub async fn close(mut self) {
        self.server.close().await;
    }
}

/// What woke the driver.
enum Wake {
    Server(ServerEvent),
    Pc(Option<PcEvent>),
    State(RTCPeerConnectionState),
    Channel(Option<DataChannelEvent>),
    Advert,
    Interrupt,
    Timer,
}

struct Driver<'a> {
    clock: Clock,
    rv: Rendezvous,
    server: Server,
    net: &'a NetOptions,
    peer: Option<Peer>,
    adverts: Adverts,
    probe: Option<tokio::task::JoinHandle<Option<RelayTransport>>>,
    probed: bool,
    /// The path the channel opened on, and what reads it again later.
    opened: Option<(PathReport, PathReader)>,
    /// A connection before this one was lost: the link says `reconnected`.
    again: bool,
}

/// At most this much of what the other side says before the link is handed over is kept
/// ([`Peer::early`]): a hello and an offer, however long its file list.
const EARLY_MAX: usize = 64 << 20;

/// Run the rendezvous until the data channel is open. `again`: a connection before this one
/// was lost.
pub async fn connect(
    sig: Signalling,
    clock: Clock,
    net: &NetOptions,
    screen: &mut Screen,
    interrupt: &mut Interrupt,
    again: bool,
) -> anyhow::Result<Link> {
    let Signalling {
        rv,
        server,
        adverts,
    } = sig;
    let mut d = Driver {
        clock,
        server,
        rv,
        net,
        peer: None,
        adverts,
        probe: None,
        probed: false,
        opened: None,
        again,
    };
    loop {
        match d.rv.poll_output() {
            Output::Event(e) => screen.event(&e),
            Output::Failed(e) => {
                let why = match (&e, &d.server) {
                    // The machine knows the server was not reached; the socket knows why.
                    (
                        protocol::rendezvous::RendezvousError::Unreachable(_),
                        Server::Unreachable(cause),
                    ) => {
                        anyhow::anyhow!("{e}: {cause:#}")
                    }
                    _ => e.into(),
                };
                d.server.close().await;
                // A connection started early (during the key exchange) that will not be used:
                // its driver, sockets and relay allocations go (an inbox lives on after this).
                if let Some(p) = d.peer.take() {
                    close_soon(p.pc);
                }
                return Err(why);
            }
            Output::Timeout(_) if d.rv.is_connected() => return d.into_link(screen.shared()),
            Output::Timeout(t) => {
                let wake = d.wait(t, interrupt).await;
                d.wake(wake).await;
            }
            other => d.act(other).await,
        }
    }
}

impl Driver<'_> {
    /// Carry out one output of the machine.
    async fn act(&mut self, out: Output) {
        let now = self.clock.now();
        let result = match out {
            Output::ToServer(m) => {
                if !self.server.send(&m).await {
                    self.rv.server_closed(now);
                }
                Ok(())
            }
            Output::StartPeer(setup) => self.start_peer(setup).await,
            Output::CreateDescription(kind) => match &self.peer {
                Some(p) => p
                    .create_description(kind)
                    .await
                    .map(|()| self.rv.handle_local(LocalIce::DescriptionCreated, now)),
                None => Ok(()),
            },
            // (Only ever asked once connected, where `late_signalling` drives.)
            Output::RestartIce => match &self.peer {
                Some(p) => crate::rtc::restart_ice(&*p.pc)
                    .await
                    .map(|()| self.rv.handle_local(LocalIce::DescriptionCreated, now)),
                None => Ok(()),
            },
            Output::ReadLocalDescription => match &self.peer {
                Some(p) => p
                    .local_description()
                    .await
                    .map(|sdp| self.rv.handle_local(LocalIce::Description(sdp), now)),
                None => Ok(()),
            },
            Output::ApplyDescription { kind, sdp } => match &self.peer {
                Some(p) => p
                    .apply(kind, sdp)
                    .await
                    .map(|()| self.rv.handle_local(LocalIce::RemoteApplied, now)),
                None => Ok(()),
            },
            Output::AddCandidate(c) => {
                if let Some(p) = &self.peer {
                    p.add_candidate(c).await;
                }
                Ok(())
            }
            Output::CloseServer => {
                self.server.close().await;
                Ok(())
            }
            Output::OpenServer => {
                self.server = Server::connect(self.rv.server());
                Ok(())
            }
            Output::ClosePeer => {
                if let Some(p) = self.peer.take() {
                    close_soon(p.pc);
                }
                self.opened = None;
                Ok(())
            }
            Output::Event(_) | Output::Failed(_) | Output::Timeout(_) => Ok(()),
        };
        if let Err(e) = result {
            self.rv.local_error(format!("{e:#}"), self.clock.now());
        }
    }

    async fn start_peer(&mut self, setup: PeerSetup) -> anyhow::Result<()> {
        let reaches_turn = match self.probe.take() {
            Some(probe) => probe.await.unwrap_or(None),
            None => None,
        };
        let peer = Peer::start(&setup, reaches_turn, self.net).await?;
        tracing::debug!(
            ms = self.clock.now().as_millis() as u64,
            "peer connection built"
        );
        self.peer = Some(peer);
        Ok(())
    }

    /// Wait for the next thing to happen, or `until`.
    async fn wait(&mut self, until: Duration, interrupt: &mut Interrupt) -> Wake {
        let peer = self.peer.as_mut();
        let (events, state, channel) = match peer {
            Some(p) => {
                // Past this much kept before the hand-over, messages wait in the channel's
                // own queue (and SCTP's window), not in memory here.
                let room = p.early.iter().map(|f| f.len()).sum::<usize>() < EARLY_MAX;
                let channel = p.channel.clone().filter(|_| room);
                (Some(&mut p.events), Some(&mut p.state), channel)
            }
            None => (None, None, None),
        };
        tokio::select! {
            ev = self.server.next() => Wake::Server(ev),
            ev = async { events.expect("guarded").recv().await }, if events.is_some() => Wake::Pc(ev),
            s = async {
                let state = state.expect("guarded");
                match state.changed().await {
                    Ok(()) => *state.borrow_and_update(),
                    Err(_) => std::future::pending().await,
                }
            }, if state.is_some() => Wake::State(s),
            ev = async { channel.expect("guarded").poll().await }, if channel.is_some() => Wake::Channel(ev),
            () = self.adverts.changed() => Wake::Advert,
            () = interrupted(interrupt) => Wake::Interrupt,
            () = tokio::time::sleep_until(self.clock.at(until)) => Wake::Timer,
        }
    }

    /// Feed the machine what happened.
    async fn wake(&mut self, wake: Wake) {
        let now = self.clock.now();
        match wake {
            Wake::Server(ServerEvent::Open) => self.rv.server_open(now),
            Wake::Server(ServerEvent::Text(t)) => {
                self.rv.handle_server_text(&t, now);
                if !self.probed && !self.rv.ice_servers().is_empty() {
                    self.probed = true;
                    self.probe = start_relay_probe(&self.rv, self.net);
                }
            }
            Wake::Server(ServerEvent::Closed) => self.rv.server_closed(now),
            Wake::Pc(Some(PcEvent::Candidate(c))) => {
                self.rv.handle_local(LocalIce::Candidate(c), now)
            }
            Wake::Pc(Some(PcEvent::GatheringDone)) => {
                self.rv.handle_local(LocalIce::GatheringDone, now)
            }
            Wake::Pc(Some(PcEvent::Channel(dc))) => {
                if let Some(p) = self.peer.as_mut() {
                    p.channel.get_or_insert(dc);
                }
            }
            Wake::Pc(None) => {}
            Wake::State(RTCPeerConnectionState::Failed) => self.rv.connection_failed(now),
            Wake::State(_) => {}
            Wake::Channel(Some(DataChannelEvent::OnOpen)) => self.opened().await,
            Wake::Channel(Some(DataChannelEvent::OnClose) | None) => self
                .rv
                .local_error("the data channel closed before it opened", now),
            // The other side sends as soon as its end is open, which may be before this
            // side hands the link over: keep what it says for the transfer.
            Wake::Channel(Some(DataChannelEvent::OnMessage(m))) => {
                if let Some(p) = self.peer.as_mut() {
                    p.early.push(m.data.freeze());
                }
            }
            Wake::Channel(Some(ev)) => {
                tracing::debug!(?ev, "channel event before the link was handed over")
            }
            Wake::Advert => {
                for c in self.adverts.ready() {
                    self.rv.advertise(c, now);
                }
            }
            Wake::Interrupt => self.rv.cancel(now),
            Wake::Timer => self.rv.handle_timeout(now),
        }
    }

    /// The channel opened: tell the machine over which path.
    async fn opened(&mut self) {
        let Some(p) = &self.peer else { return };
        let ctx = p.path_context(self.net);
        let reader = p.path_reader(ctx, &self.net.advertise);
        let path = reader.now().await;
        let now = self.clock.now();
        tracing::info!(ms = now.as_millis() as u64, %path, "data channel open");
        self.rv.channel_open(now);
        self.opened = Some((path, reader));
    }

    /// Hand over the open link, leaving the signalling to run on in the background.
    fn into_link(self, screen: Shared) -> anyhow::Result<Link> {
        let Driver {
            clock,
            rv,
            server,
            peer,
            adverts,
            opened,
            again,
            ..
        } = self;
        let mut peer = peer.context("connected without a peer connection")?;
        let dc = peer
            .channel
            .clone()
            .context("connected without a channel")?;
        let role = rv.role().context("connected without a role")?;
        let binding = rv.binding().context("connected without a key")?;
        let (path, reader) = opened.context("connected without a path")?;
        let both_in_room = rv
            .both_in_room()
            .map(|t| clock.0 + t)
            .unwrap_or_else(Instant::now);
        let events = peer.take_events();
        let state = peer.state.clone();
        let (stop, stopped) = oneshot::channel();
        let sig = Signalling {
            rv,
            server,
            adverts,
        };
        let (replaced, gone) = watch::channel(false);
        let late = tokio::spawn(late_signalling(
            clock,
            sig,
            (peer.pc.clone(), reader.clone()),
            (events, state),
            (stopped, replaced),
            screen,
        ));
        let mut link = Link::new(peer, dc, path, both_in_room, role, reader, (stop, late));
        link.binding = binding;
        link.again = again;
        link.gone = gone;
        Ok(link)
    }
}

/// Close a peer connection without waiting for it (webrtc-rs's close can wait on a peer that
/// is gone).
fn close_soon(pc: Arc<dyn PeerConnection>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
    });
}

/// Whether the other peer shows up at a new address while the path is down: its checks
/// arrive from a port ICE never heard of (peer-reflexive), as when its router maps anew.
/// Known are the remote addresses from while the path was last up (at open and each time it
/// came back).
struct PeerWatch {
    known: std::collections::HashSet<String>,
    down: bool,
}

impl PeerWatch {
    async fn new(pc: &dyn PeerConnection) -> Self {
        let mut w = Self {
            known: Default::default(),
            down: false,
        };
        w.relearn(pc).await;
        w
    }

    async fn relearn(&mut self, pc: &dyn PeerConnection) {
        self.known = crate::rtc::remote_addresses(pc)
            .await
            .into_iter()
            .map(|(a, _)| a)
            .collect();
    }

    /// The connection's state changed to `s`.
    async fn path(&mut self, s: RTCPeerConnectionState, pc: &dyn PeerConnection) {
        match s {
            RTCPeerConnectionState::Disconnected => self.down = true,
            RTCPeerConnectionState::Connected => {
                self.down = false;
                self.relearn(pc).await;
            }
            _ => {}
        }
    }

    /// Down, ICE learnt a remote address from the other peer's checks that it did not know
    /// (once per address). Nothing is read while the path is up: an address learnt then may
    /// be the move itself, noticed before ICE gives the old pair up, and one the other peer
    /// signalled never counts.
    async fn moved(&mut self, pc: &dyn PeerConnection) -> bool {
        if !self.down {
            return false;
        }
        let mut new = false;
        for (address, learnt) in crate::rtc::remote_addresses(pc).await {
            if self.known.insert(address) {
                new |= learnt;
            }
        }
        new
    }
}

/// After the channel opened: forward late candidates both ways until signalling ends or the
/// link asks for it back (`stop`), open a new socket when the machine asks (a peer taking
/// its place in the room back), tell it when the path goes down and up, and restart ICE or
/// answer a restart as it says. If the machine leaves the connected state
/// (the joiner came back through the room: this connection is dead), close the connection so
/// the transfer fails over now, and stop, leaving what the machine queued for [`connect`].
async fn late_signalling(
    clock: Clock,
    sig: Signalling,
    (pc, reader): (Arc<dyn PeerConnection>, PathReader),
    (mut events, mut state): (
        mpsc::UnboundedReceiver<PcEvent>,
        watch::Receiver<RTCPeerConnectionState>,
    ),
    (mut stop, replaced): (oneshot::Receiver<()>, watch::Sender<bool>),
    screen: Shared,
) -> Signalling {
    let Signalling {
        mut rv,
        mut server,
        mut adverts,
    } = sig;
    let mut base: Option<Watch> = None;
    let mut moved = false;
    let mut state_open = true;
    let mut peer = PeerWatch::new(&*pc).await;
    let mut watch = tokio::time::interval(netwatch::EVERY);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = clock.now();
        if moved || !rv.is_connected() {
            match moved {
                true => {
                    tracing::info!("this host's address went away: the connection cannot go on")
                }
                false => tracing::info!(
                    "the other peer is back or calls us back through the room: dropping the old connection"
                ),
            }
            // The transfer hears it at once (its inbox ends, its sends wake), not only when
            // the connection's close gets through.
            let _ = replaced.send(true);
            close_soon(pc);
            break;
        }
        match rv.poll_output() {
            Output::ToServer(m) if !server.send(&m).await => rv.server_closed(now),
            Output::ToServer(_) => {}
            Output::AddCandidate(c) => crate::rtc::add_candidate(&*pc, c).await,
            Output::RestartIce => {
                tracing::info!("the path to the other peer is down: restarting ICE");
                // This side may not have seen its path go down (the other side said so first).
                adverts.path_down();
                match crate::rtc::restart_ice(&*pc).await {
                    Ok(()) => rv.handle_local(LocalIce::DescriptionCreated, clock.now()),
                    Err(e) => tracing::info!("could not restart ICE: {e:#}"),
                }
            }
            Output::CreateDescription(kind) => {
                tracing::info!("answering an ICE restart");
                adverts.path_down();
                match crate::rtc::create_description(&*pc, kind).await {
                    Ok(()) => rv.handle_local(LocalIce::DescriptionCreated, clock.now()),
                    Err(e) => tracing::info!("could not answer an ICE restart: {e:#}"),
                }
            }
            Output::ReadLocalDescription => match crate::rtc::local_description(&*pc).await {
                Ok(sdp) => rv.handle_local(LocalIce::Description(sdp), clock.now()),
                Err(e) => tracing::info!("no description to send for an ICE restart: {e:#}"),
            },
            Output::ApplyDescription { kind, sdp } => {
                match crate::rtc::apply(&*pc, kind, sdp).await {
                    Ok(()) => rv.handle_local(LocalIce::RemoteApplied, clock.now()),
                    Err(e) => tracing::info!("could not apply an ICE restart: {e:#}"),
                }
            }
            Output::Failed(e) => {
                tracing::info!("signalling ended ({e}); the transfer continues peer to peer");
                break;
            }
            Output::CloseServer => server.close().await,
            Output::OpenServer => server = Server::connect(rv.server()),
            // `reconnecting` as the path goes down, `reconnected` as it comes back.
            Output::Event(e) => screen.event(&e),
            Output::Timeout(t) => {
                tokio::select! {
                    _ = &mut stop => break,
                    ev = server.next() => match ev {
                        ServerEvent::Text(t) => rv.handle_server_text(&t, clock.now()),
                        ServerEvent::Closed => {
                            tracing::info!("lost the signalling server; the transfer goes on peer to peer");
                            rv.server_closed(clock.now());
                        }
                        ServerEvent::Open => rv.server_open(clock.now()),
                    },
                    ev = events.recv() => match ev {
                        Some(PcEvent::Candidate(c)) => rv.handle_local(LocalIce::Candidate(c), clock.now()),
                        Some(PcEvent::GatheringDone) => rv.handle_local(LocalIce::GatheringDone, clock.now()),
                        Some(PcEvent::Channel(_)) => {}
                        None => break,
                    },
                    () = adverts.changed() => for c in adverts.ready() {
                        rv.advertise(c, clock.now());
                    },
                    () = tokio::time::sleep_until(clock.at(t)) => rv.handle_timeout(clock.now()),
                    changed = state.changed(), if state_open => match changed {
                        Ok(()) => {
                            let s = *state.borrow_and_update();
                            match s {
                                RTCPeerConnectionState::Disconnected => {
                                    tracing::info!("the path to the other peer is down");
                                    adverts.path_down();
                                    rv.path_down(clock.now());
                                }
                                RTCPeerConnectionState::Connected => {
                                    rv.path_up(clock.now(), reader.now().await)
                                }
                                _ => {}
                            }
                            peer.path(s, &*pc).await;
                        }
                        Err(_) => state_open = false,
                    },
                    _ = watch.tick() => {
                        match base.as_mut() {
                            Some(base) => moved = base.gone(),
                            None => base = crate::rtc::selected_base(&*pc).await.map(Watch::new),
                        }
                        if peer.moved(&*pc).await {
                            tracing::info!("the other peer is heard from a new address");
                            rv.peer_moved(clock.now());
                        }
                    },
                }
            }
            // Nothing else follows an open channel.
            _ => {}
        }
    }
    Signalling {
        rv,
        server,
        adverts,
    }
}
