//! The browser's RTCPeerConnection: one reliable, ordered data channel negotiated through the
//! sealed signalling of [`crate::signalling`], exactly as the native peer does it (the file
//! sender offers and opens the channel; candidates travel in the description and trickle).
//!
//! After the channel opens, the signalling session keeps running in a background task so
//! late candidates still arrive; its loss is then harmless.

use core::time::Duration;
use futures::channel::mpsc;
use futures::{FutureExt as _, StreamExt as _};
use protocol::signal::{IceServer, PeerSignal, SdpKind, TransferRole};
use serde::Serialize;
use wasm_bindgen::JsCast;
use web_sys::{
    RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit, RtcDataChannelState,
    RtcDataChannelType, RtcIceCandidateInit, RtcPeerConnection, RtcPeerConnectionIceEvent,
    RtcPeerConnectionState, RtcSdpType, RtcSessionDescriptionInit,
};

use crate::error::{Error, Result};
use crate::js::{self, Listener};
use crate::signalling::Session;

const CHANNEL_LABEL: &str = "punchdrop";
/// How long an offer waits for candidates to gather into it before it is sent; the rest
/// trickle. Host candidates are there at once, STUN answers on a LAN within a few ms.
const GATHER_WAIT: Duration = Duration::from_millis(150);
/// How long opening the connection may take once both peers said hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the peers ended up connected; same fields as the native peer reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct PathInfo {
    /// `direct` or `relay`.
    pub kind: String,
    /// Local and remote candidate types: `host`, `srflx`, `prflx`, `relay`.
    pub local: String,
    pub remote: String,
    /// `udp` or `tcp` (for a relay: how this side reaches the relay).
    pub protocol: String,
}

/// An open data channel and its connection. Closing happens on drop.
pub struct Link {
    pub pc: RtcPeerConnection,
    pub dc: RtcDataChannel,
    pub path: PathInfo,
    /// Connection state changes after the channel opened (`failed`/`closed` end a transfer).
    pub state: mpsc::UnboundedReceiver<RtcPeerConnectionState>,
    _listeners: Vec<Listener>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("path", &self.path).finish()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.dc.close();
        self.pc.close();
    }
}

enum Local {
    Candidate(Option<PeerSignal>),
    Channel(RtcDataChannel),
    Open,
    State(RtcPeerConnectionState),
}

fn rtc_error(what: &str) -> impl Fn(String) -> Error + '_ {
    move |m| Error::Connect(format!("{what}: {m}"))
}

fn configuration(ice_servers: &[IceServer]) -> Result<web_sys::RtcConfiguration> {
    // RTCIceServer has the same JSON shape as ours.
    let servers = serde_json::to_value(ice_servers).expect("ice servers serialise");
    let cfg = js::to_js(&serde_json::json!({ "iceServers": servers }));
    Ok(cfg.unchecked_into())
}

/// Negotiate with the other peer (hellos already exchanged) and wait for the channel to open.
pub async fn connect(role: TransferRole, mut session: Session) -> Result<Link> {
    let pc = RtcPeerConnection::new_with_configuration(&configuration(&session.ice_servers)?)
        .map_err(|e| Error::Unsupported(format!("no WebRTC ({})", js::message(&e))))?;
    let (tx, mut rx) = mpsc::unbounded::<Local>();
    let t: &web_sys::EventTarget = pc.unchecked_ref();
    let mut listeners = Vec::new();
    {
        let tx = tx.clone();
        listeners.push(Listener::new(
            t,
            "icecandidate",
            move |e: RtcPeerConnectionIceEvent| {
                let sig = e.candidate().and_then(|c| {
                    let candidate = c.candidate();
                    // The empty candidate is the old end-of-candidates marker.
                    (!candidate.is_empty()).then(|| PeerSignal::Candidate {
                        candidate,
                        sdp_mid: c.sdp_mid(),
                        sdp_mline_index: c.sdp_m_line_index(),
                    })
                });
                let _ = tx.unbounded_send(Local::Candidate(sig));
            },
        ));
    }
    {
        let tx = tx.clone();
        let pc2 = pc.clone();
        listeners.push(Listener::new(
            t,
            "connectionstatechange",
            move |_: web_sys::Event| {
                let _ = tx.unbounded_send(Local::State(pc2.connection_state()));
            },
        ));
    }
    let dc = match role {
        TransferRole::Sender => {
            let init = RtcDataChannelInit::new();
            init.set_ordered(true);
            let dc = pc.create_data_channel_with_data_channel_dict(CHANNEL_LABEL, &init);
            Some(dc)
        }
        TransferRole::Receiver => {
            let tx = tx.clone();
            listeners.push(Listener::new(
                t,
                "datachannel",
                move |e: RtcDataChannelEvent| {
                    let _ = tx.unbounded_send(Local::Channel(e.channel()));
                },
            ));
            None
        }
    };
    let mut dc = dc;
    if let Some(dc) = &dc {
        listeners.push(open_listener(dc, &tx));
    }

    let mut remote_set = false;
    let mut pending: Vec<RtcIceCandidateInit> = Vec::new();
    // The description goes out once gathering ends or GATHER_WAIT passed, whichever is
    // first; candidates found until then are in it, later ones trickle.
    let mut describe: Option<(Duration, SdpKind)> = None;
    let mut described = false;
    if role == TransferRole::Sender {
        let offer = js::wait(pc.create_offer())
            .await
            .map_err(rtc_error("cannot create an offer"))?;
        js::wait(pc.set_local_description(offer.unchecked_ref()))
            .await
            .map_err(rtc_error("cannot use the offer"))?;
        describe = Some((js::now() + GATHER_WAIT, SdpKind::Offer));
    }

    let deadline = js::now() + CONNECT_TIMEOUT;
    let mut open = false;
    loop {
        if open {
            break;
        }
        futures::select! {
            sig = session.recv().fuse() => match sig? {
                PeerSignal::Description { kind, sdp } => {
                    let want = match role {
                        TransferRole::Sender => SdpKind::Answer,
                        TransferRole::Receiver => SdpKind::Offer,
                    };
                    if kind != want || remote_set {
                        return Err(Error::Connect("the other peer sent an unexpected description".into()));
                    }
                    let desc = RtcSessionDescriptionInit::new(match kind {
                        SdpKind::Offer => RtcSdpType::Offer,
                        SdpKind::Answer => RtcSdpType::Answer,
                    });
                    desc.set_sdp(&sdp);
                    js::wait(pc.set_remote_description(&desc)).await
                        .map_err(rtc_error("the other peer's description is unusable"))?;
                    remote_set = true;
                    for c in pending.drain(..) {
                        add_candidate(&pc, &c).await;
                    }
                    if role == TransferRole::Receiver {
                        let answer = js::wait(pc.create_answer()).await
                            .map_err(rtc_error("cannot create an answer"))?;
                        js::wait(pc.set_local_description(answer.unchecked_ref())).await
                            .map_err(rtc_error("cannot use the answer"))?;
                        // The answer goes out at once, candidates trickle: the browser starts
                        // its checks as soon as the answer is set, and checks that reach a
                        // webrtc-rs offerer before it has the answer are lost (it has no
                        // credentials yet) while its role is still undecided; Chromium then
                        // kept a relayed pair for good on loopback. Answering first, direct
                        // pairs win.
                        describe = Some((js::now(), SdpKind::Answer));
                    }
                }
                PeerSignal::Candidate { candidate, sdp_mid, sdp_mline_index } => {
                    let init = RtcIceCandidateInit::new(&candidate);
                    init.set_sdp_mid(sdp_mid.as_deref());
                    init.set_sdp_m_line_index(sdp_mline_index);
                    if remote_set { add_candidate(&pc, &init).await } else { pending.push(init) }
                }
                PeerSignal::EndOfCandidates => {}
                PeerSignal::Hello { .. } => return Err(Error::Connect("the other peer restarted the handshake".into())),
            },
            ev = rx.next() => match ev {
                Some(Local::Candidate(sig)) if described => {
                    let _ = session.send(&sig.unwrap_or(PeerSignal::EndOfCandidates));
                }
                Some(Local::Candidate(None)) => {
                    if let Some((_, kind)) = describe.take() {
                        send_description(&pc, &mut session, kind)?;
                        described = true;
                    }
                }
                Some(Local::Candidate(Some(_))) => {}
                Some(Local::Channel(ch)) => {
                    listeners.push(open_listener(&ch, &tx));
                    if ch.ready_state() == RtcDataChannelState::Open {
                        open = true;
                    }
                    dc = Some(ch);
                }
                Some(Local::Open) => open = true,
                Some(Local::State(s)) => {
                    if s == RtcPeerConnectionState::Failed {
                        return Err(Error::Connect(no_path(&session)));
                    }
                }
                None => unreachable!("the sender half lives in this function"),
            },
            _ = js::sleep_until(describe.map(|(t, _)| t)).fuse() => {
                if let Some((_, kind)) = describe.take() {
                    send_description(&pc, &mut session, kind)?;
                    described = true;
                }
            }
            _ = js::sleep_until(Some(deadline)).fuse() => {
                return Err(Error::Connect(format!(
                    "could not connect to the other peer within {} s: {}",
                    CONNECT_TIMEOUT.as_secs(), no_path(&session)
                )));
            }
        }
    }
    let dc = dc.expect("open implies a channel");
    dc.set_binary_type(RtcDataChannelType::Arraybuffer);
    let path = path_of(&pc).await.unwrap_or_default();

    // Late candidates and state changes keep flowing; the session lives on in the
    // background until the server goes away or the link is dropped (its listeners hold the
    // last senders of `rx`).
    drop(tx);
    let (state_tx, state_rx) = mpsc::unbounded();
    let task_pc = pc.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let mut signalling_up = true;
        loop {
            futures::select! {
                sig = session.recv().fuse() => match sig {
                    Ok(PeerSignal::Candidate { candidate, sdp_mid, sdp_mline_index }) if signalling_up => {
                        let init = RtcIceCandidateInit::new(&candidate);
                        init.set_sdp_mid(sdp_mid.as_deref());
                        init.set_sdp_m_line_index(sdp_mline_index);
                        add_candidate(&task_pc, &init).await;
                    }
                    Ok(_) => {}
                    // The server may die now; the transfer does not need it.
                    Err(_) => signalling_up = false,
                },
                ev = rx.next() => match ev {
                    Some(Local::State(s)) => { let _ = state_tx.unbounded_send(s); }
                    Some(Local::Candidate(Some(sig))) if signalling_up => { let _ = session.send(&sig); }
                    Some(_) => {}
                    None => break,
                },
            }
            if !signalling_up {
                // Only state changes matter from here on.
                while let Some(ev) = rx.next().await {
                    if let Local::State(s) = ev {
                        let _ = state_tx.unbounded_send(s);
                    }
                }
                break;
            }
        }
    });
    Ok(Link {
        pc,
        dc,
        path,
        state: state_rx,
        _listeners: listeners,
    })
}

fn open_listener(dc: &RtcDataChannel, tx: &mpsc::UnboundedSender<Local>) -> Listener {
    let tx = tx.clone();
    Listener::new(dc.unchecked_ref(), "open", move |_: web_sys::Event| {
        let _ = tx.unbounded_send(Local::Open);
    })
}

async fn add_candidate(pc: &RtcPeerConnection, init: &RtcIceCandidateInit) {
    // A candidate the browser cannot use (e.g. another address family) is not fatal: the
    // other candidates may still connect.
    let _ = js::wait(pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(init))).await;
}

fn send_description(pc: &RtcPeerConnection, session: &mut Session, kind: SdpKind) -> Result<()> {
    let sdp = pc
        .local_description()
        .map(|d| d.sdp())
        .ok_or_else(|| Error::Connect("no local description".into()))?;
    session.send(&PeerSignal::Description { kind, sdp })
}

/// Why no connection: the likely cause for a person to act on.
fn no_path(session: &Session) -> String {
    let has_turn = session
        .ice_servers
        .iter()
        .flat_map(|s| &s.urls)
        .any(|u| u.starts_with("turn"));
    if has_turn {
        "no direct or relayed path worked (a firewall may block WebRTC)".into()
    } else {
        "no direct path worked and the server offers no relay".into()
    }
}

/// The selected candidate pair, from the connection's statistics.
pub async fn path_of(pc: &RtcPeerConnection) -> Option<PathInfo> {
    let report = js::wait(pc.get_stats()).await.ok()?;
    let map: &js_sys::Map = report.unchecked_ref();
    let mut pair_id: Option<String> = None;
    let mut nominated: Option<String> = None;
    map.for_each(&mut |v, _k| match js::get_str(&v, "type").as_deref() {
        Some("transport") => {
            if let Some(id) = js::get_str(&v, "selectedCandidatePairId") {
                pair_id = Some(id);
            }
        }
        Some("candidate-pair") => {
            let ok = js::get(&v, "nominated").as_bool() == Some(true)
                && js::get_str(&v, "state").as_deref() == Some("succeeded");
            if ok && nominated.is_none() {
                nominated = js::get_str(&v, "id");
            }
        }
        _ => {}
    });
    let pair = map.get(&pair_id.or(nominated)?.into());
    let local = map.get(&js::get(&pair, "localCandidateId"));
    let remote = map.get(&js::get(&pair, "remoteCandidateId"));
    let local_type = js::get_str(&local, "candidateType")?;
    let remote_type = js::get_str(&remote, "candidateType").unwrap_or_default();
    let relayed = local_type == "relay" || remote_type == "relay";
    let protocol = if local_type == "relay" {
        js::get_str(&local, "relayProtocol").or_else(|| js::get_str(&local, "protocol"))
    } else {
        js::get_str(&local, "protocol")
    }
    .unwrap_or_default();
    Some(PathInfo {
        kind: if relayed { "relay" } else { "direct" }.into(),
        local: local_type,
        remote: remote_type,
        protocol,
    })
}
