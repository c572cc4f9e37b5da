//! The browser driver of [`protocol::rendezvous`]: a WebSocket to the signalling server, the
//! browser's RTCPeerConnection ([`crate::peer`]), the page's commands and the clock.
//!
//! [`connect`] runs the machine until the data channel is open, doing what its outputs say
//! and feeding it what happens; every protocol decision is the machine's, exactly as in
//! native-peer. Once open, a task keeps feeding it late candidates both ways and forwards
//! connection-state changes to the [`Link`] until the link is dropped; the transfer never
//! waits for the server. A page that made its room takes the machine and its socket back
//! ([`Link::take_signalling`]) when the connection dies, to wait in the room for the other
//! side's return.

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt as _, StreamExt as _};
use protocol::event::Event;
use protocol::path::PathReport;
use protocol::rendezvous::{LocalIce, Output, Place, Rendezvous};
use protocol::signal::{SdpKind, TransferRole};
use std::time::Duration;
use web_sys::{
    RtcDataChannel, RtcDataChannelState, RtcDataChannelType, RtcPeerConnection,
    RtcPeerConnectionState,
};

use crate::Command;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::js::{self, Listener};
use crate::peer::{self, Local, Peer};
use crate::signalling::{Ws, WsEvent};
use crate::transfer::Source;

/// An open data channel and its connection. Closing happens on drop.
pub struct Link {
    pub pc: RtcPeerConnection,
    pub dc: RtcDataChannel,
    pub role: TransferRole,
    /// The path at open.
    pub path: PathReport,
    /// Connection state changes after the channel opened (`failed`/`closed` end a transfer).
    pub state: mpsc::UnboundedReceiver<RtcPeerConnectionState>,
    /// A connection before this one was lost: the transfer says `reconnected`.
    pub again: bool,
    /// This side's place in the room it was made in (a rejoin goes back to it by id, and
    /// takes the place back with its token).
    pub place: Option<Place>,
    /// The session's binding ([`protocol::crypto::Channel::binding`]): what a device proof
    /// signs.
    pub binding: [u8; 32],
    /// What the channel said before the transfer listened ([`peer::Early`]).
    pub early: Option<peer::Early>,
    _listeners: Vec<Listener>,
    /// Dropping it stops the signalling that carries late candidates.
    stop: Option<oneshot::Sender<()>>,
    /// The machine and its socket, handed back once the signalling stopped.
    back: Option<oneshot::Receiver<(Rendezvous, Ws)>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("role", &self.role).finish()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.dc.close();
        self.pc.close();
    }
}

impl Link {
    /// Stop the signalling task and take its machine and socket back (`None` if it ended on
    /// its own). The connection itself closes when the link is dropped.
    pub async fn take_signalling(&mut self) -> Option<(Rendezvous, Ws)> {
        self.stop.take();
        self.back.take()?.await.ok()
    }

    /// Until the other side closes the channel, or `max` passed.
    pub async fn closed_by_peer(&self, max: Duration) {
        let until = js::now() + max;
        while self.dc.ready_state() == RtcDataChannelState::Open && js::now() < until {
            js::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The path as it is now: ICE may have moved since the channel opened.
    pub async fn path_now(&self) -> PathReport {
        peer::path_of(&self.pc)
            .await
            .unwrap_or_else(|| self.path.clone())
    }
}

/// What woke the driver.
enum Wake {
    Server(Option<WsEvent>),
    Pc(Option<Local>),
    Command(Option<Command>),
    Timer,
}

/// Run the rendezvous until the data channel is open. Files picked on the way (after a
/// `pick` event) come back with the link.
/// `ws` is the socket a room's creator kept from its last connection (its room lives on it).
pub async fn connect(
    mut rv: Rendezvous,
    ws: Option<Ws>,
    events: &Events,
    cmds: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<(Link, Option<Vec<Source>>)> {
    let mut ws = ws.unwrap_or_else(|| Ws::open(rv.server()));
    let mut peer: Option<Peer> = None;
    let mut picked = None;
    let mut opened = None;
    loop {
        let now = js::now();
        match rv.poll_output() {
            Output::ToServer(m) if !ws.send(&m) => rv.server_closed(now),
            Output::ToServer(_) => {}
            Output::Event(e) => {
                if let (Event::Joined, Some(t)) = (&e, rv.both_in_room()) {
                    events.set_both_in_room(t);
                }
                events.emit(&e);
            }
            Output::StartPeer(setup) => match Peer::start(&setup) {
                Ok(p) => peer = Some(p),
                Err(e) => rv.local_error(e.to_string(), now),
            },
            Output::CreateDescription(kind) => {
                if let Some(p) = &peer {
                    match p.create_description(kind).await {
                        Ok(()) => rv.handle_local(LocalIce::DescriptionCreated, js::now()),
                        Err(e) => rv.local_error(e.to_string(), js::now()),
                    }
                }
            }
            // (Only ever asked once connected, where `late_signalling` drives.)
            Output::RestartIce => {
                if let Some(p) = &peer {
                    match peer::create_description(&p.pc, SdpKind::Offer, true).await {
                        Ok(()) => rv.handle_local(LocalIce::DescriptionCreated, js::now()),
                        Err(e) => rv.local_error(e.to_string(), js::now()),
                    }
                }
            }
            Output::ReadLocalDescription => {
                if let Some(p) = &peer {
                    match p.local_description() {
                        Ok(sdp) => rv.handle_local(LocalIce::Description(sdp), now),
                        Err(e) => rv.local_error(e.to_string(), now),
                    }
                }
            }
            Output::ApplyDescription { kind, sdp } => {
                if let Some(p) = &peer {
                    match p.apply(kind, &sdp).await {
                        Ok(()) => rv.handle_local(LocalIce::RemoteApplied, js::now()),
                        Err(e) => rv.local_error(e.to_string(), js::now()),
                    }
                }
            }
            Output::AddCandidate(c) => {
                if let Some(p) = &peer {
                    peer::add_candidate(&p.pc, c).await;
                }
            }
            Output::CloseServer => ws = Ws::none(),
            Output::OpenServer => ws = Ws::open(rv.server()),
            // A creator holding its room: the joiner is gone, its connection with it.
            Output::ClosePeer => {
                if let Some(p) = peer.take() {
                    p.pc.close();
                }
                opened = None;
            }
            Output::Failed(e) => {
                // A connection started early (during the key exchange) goes with the failure.
                if let Some(p) = peer.take() {
                    p.pc.close();
                }
                return Err(Error::Rendezvous(e));
            }
            Output::Timeout(_) if rv.is_connected() => {
                let (p, path) = peer
                    .zip(opened)
                    .ok_or(Error::Usage("connected without a path"))?;
                return Ok((into_link(rv, ws, p, path, events.clone())?, picked));
            }
            Output::Timeout(t) => {
                let wake = futures::select! {
                    ev = ws.events.next() => Wake::Server(ev),
                    ev = async {
                        match peer.as_mut() {
                            Some(p) => p.events.next().await,
                            None => std::future::pending().await,
                        }
                    }.fuse() => Wake::Pc(ev),
                    c = cmds.next() => Wake::Command(c),
                    _ = js::sleep_until(Some(t)).fuse() => Wake::Timer,
                };
                let now = js::now();
                match wake {
                    Wake::Server(Some(WsEvent::Open)) => rv.server_open(now),
                    Wake::Server(Some(WsEvent::Text(t))) => rv.handle_server_text(&t, now),
                    Wake::Server(Some(WsEvent::Closed) | None) => rv.server_closed(now),
                    Wake::Pc(Some(ev)) => {
                        if let Some(path) = on_local(&mut rv, peer.as_mut(), ev).await {
                            opened = Some(path);
                        }
                    }
                    Wake::Pc(None) => {}
                    Wake::Command(Some(Command::Files(sources))) if picked.is_none() => {
                        picked = Some(sources);
                        rv.files_picked(now);
                    }
                    Wake::Command(Some(Command::Cancel) | None) => rv.cancel(now),
                    Wake::Command(Some(Command::ShowCode)) => rv.show_code(now),
                    Wake::Command(Some(_)) => {}
                    Wake::Timer => rv.handle_timeout(now),
                }
            }
        }
    }
}

/// Feed the machine what the peer connection did; the path when the channel opened.
async fn on_local(rv: &mut Rendezvous, peer: Option<&mut Peer>, ev: Local) -> Option<PathReport> {
    let now = js::now();
    match ev {
        Local::Candidate(c) => rv.handle_local(LocalIce::Candidate(c), now),
        Local::GatheringDone => rv.handle_local(LocalIce::GatheringDone, now),
        Local::Channel(ch, early) => {
            if let Some(p) = peer {
                p.announced(ch, early);
            }
        }
        Local::Open => {
            let p = peer?;
            let path = peer::path_of(&p.pc)
                .await
                .unwrap_or_else(PathReport::unknown);
            rv.channel_open(js::now());
            return Some(path);
        }
        Local::State(RtcPeerConnectionState::Failed) => rv.connection_failed(now),
        Local::State(_) => {}
    }
    None
}

/// Hand over the open link; the signalling goes on in the background until it is dropped.
fn into_link(rv: Rendezvous, ws: Ws, p: Peer, path: PathReport, sink: Events) -> Result<Link> {
    let role = rv.role().ok_or(Error::Usage("connected without a role"))?;
    let binding = rv
        .binding()
        .ok_or(Error::Usage("connected without a key"))?;
    let place = rv.place();
    let dc = p
        .channel
        .clone()
        .ok_or(Error::Usage("connected without a channel"))?;
    dc.set_binary_type(RtcDataChannelType::Arraybuffer);
    let (state_tx, state) = mpsc::unbounded();
    let (stop, stopped) = oneshot::channel();
    let (back_tx, back) = oneshot::channel();
    let Peer {
        pc,
        events,
        early,
        listeners,
        ..
    } = p;
    let task = late_signalling(rv, ws, pc.clone(), (events, sink), state_tx, stopped);
    wasm_bindgen_futures::spawn_local(async move {
        let _ = back_tx.send(task.await);
    });
    Ok(Link {
        pc,
        dc,
        role,
        path,
        state,
        again: false,
        place,
        binding,
        early,
        _listeners: listeners,
        stop: Some(stop),
        back: Some(back),
    })
}

/// One step of an ICE restart on the open connection, and what the machine hears of it. A
/// step that fails is left to the next restart (or to the connection failing).
async fn renegotiate(pc: &RtcPeerConnection, out: Output) -> Option<LocalIce> {
    match out {
        Output::RestartIce => peer::create_description(pc, SdpKind::Offer, true)
            .await
            .ok()
            .map(|()| LocalIce::DescriptionCreated),
        Output::CreateDescription(kind) => peer::create_description(pc, kind, false)
            .await
            .ok()
            .map(|()| LocalIce::DescriptionCreated),
        Output::ReadLocalDescription => peer::local_description(pc).ok().map(LocalIce::Description),
        Output::ApplyDescription { kind, sdp } => peer::apply(pc, kind, &sdp)
            .await
            .ok()
            .map(|()| LocalIce::RemoteApplied),
        _ => None,
    }
}

/// After the channel opened: forward late candidates both ways while the server is there, and
/// connection-state changes to the link for as long as it lives. Gives the machine and its
/// socket back when stopped, or when the machine is no longer connected (the other side
/// came back through a held room).
async fn late_signalling(
    mut rv: Rendezvous,
    mut ws: Ws,
    pc: RtcPeerConnection,
    (mut events, sink): (mpsc::UnboundedReceiver<Local>, Events),
    state: mpsc::UnboundedSender<RtcPeerConnectionState>,
    stopped: oneshot::Receiver<()>,
) -> (Rendezvous, Ws) {
    let mut stopped = stopped.fuse();
    loop {
        let now = js::now();
        if !rv.is_connected() {
            // The other side is back through the room (a holding creator), or calls this one
            // back (`peer_lost`: its network changed): this connection is dead. The transfer
            // hears it now; what the machine queued is for `connect`.
            pc.close();
            let _ = state.unbounded_send(RtcPeerConnectionState::Closed);
            return (rv, ws);
        }
        match rv.poll_output() {
            Output::ToServer(m) if !ws.send(&m) => {
                ws = Ws::none();
                rv.server_closed(now);
            }
            Output::ToServer(_) => {}
            Output::AddCandidate(c) => peer::add_candidate(&pc, c).await,
            // The path went down: restart ICE, or answer the other side's restart.
            out @ (Output::RestartIce
            | Output::CreateDescription(_)
            | Output::ReadLocalDescription
            | Output::ApplyDescription { .. }) => {
                match &out {
                    Output::RestartIce => js::note("the path is down: restarting ICE"),
                    Output::ApplyDescription { .. } => js::note("answering an ICE restart"),
                    _ => {}
                }
                if let Some(done) = renegotiate(&pc, out).await {
                    rv.handle_local(done, js::now());
                }
            }
            // A page taking its place back on a new socket.
            Output::CloseServer => ws = Ws::none(),
            Output::OpenServer => ws = Ws::open(rv.server()),
            // `reconnecting` as the path goes down, `reconnected` as it comes back.
            Output::Event(e) => sink.emit(&e),
            Output::Timeout(t) => {
                futures::select! {
                    _ = stopped => return (rv, ws),
                    ev = ws.events.next() => match ev {
                        Some(WsEvent::Text(t)) => rv.handle_server_text(&t, js::now()),
                        Some(WsEvent::Open) => rv.server_open(js::now()),
                        // The server may go now; the transfer does not need it.
                        Some(WsEvent::Closed) | None => {
                            ws = Ws::none();
                            rv.server_closed(js::now());
                        }
                    },
                    ev = events.next() => match ev {
                        Some(Local::Candidate(c)) => rv.handle_local(LocalIce::Candidate(c), js::now()),
                        Some(Local::GatheringDone) => rv.handle_local(LocalIce::GatheringDone, js::now()),
                        Some(Local::State(s)) => {
                            match s {
                                RtcPeerConnectionState::Disconnected => {
                                    js::note("the path is down");
                                    rv.path_down(js::now());
                                }
                                RtcPeerConnectionState::Connected => {
                                    js::note("the path is up");
                                    let path = peer::path_of(&pc).await.unwrap_or_else(PathReport::unknown);
                                    rv.path_up(js::now(), path);
                                }
                                _ => {}
                            }
                            let _ = state.unbounded_send(s);
                        }
                        Some(_) => {}
                        None => return (rv, ws),
                    },
                    _ = js::sleep_until(Some(t)).fuse() => rv.handle_timeout(js::now()),
                }
            }
            // Nothing else follows an open channel; a failure only ends the signalling.
            _ => {}
        }
    }
}
