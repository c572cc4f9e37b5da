//! The browser's RTCPeerConnection under the rendezvous: one reliable, ordered data channel.
//!
//! [`crate::rendezvous`] drives this as `protocol::rendezvous` asks: [`Peer::start`] builds the
//! connection (the file sender also opens the channel), the other methods create, read and
//! apply descriptions and candidates, and what the browser raises comes back as [`Local`]
//! events. [`path_of`] reads the selected pair off `getStats()` for `protocol::path` to
//! describe. No protocol decision is made here.

use futures::channel::mpsc;
use protocol::path::{self, CandidateType, PathContext, PathReport, SelectedPair, Transport};
use protocol::rendezvous::{CHANNEL_LABEL, IceCandidate, PeerSetup};
use protocol::signal::{SdpKind, TransferRole};
use wasm_bindgen::JsCast;
use web_sys::{
    RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit, RtcDataChannelState,
    RtcIceCandidateInit, RtcOfferOptions, RtcPeerConnection, RtcPeerConnectionIceEvent,
    RtcPeerConnectionState, RtcSdpType, RtcSessionDescriptionInit,
};

use crate::error::{Error, Result};
use crate::js::{self, Listener};

/// What the browser raised, in the order it did.
pub enum Local {
    Candidate(IceCandidate),
    GatheringDone,
    /// The other side's channel, already listened to: its messages may come before the
    /// rendezvous loop gets to this event.
    Channel(RtcDataChannel, Early),
    Open,
    State(RtcPeerConnectionState),
}

/// One peer connection, its listeners and what they report.
pub struct Peer {
    pub pc: RtcPeerConnection,
    pub events: mpsc::UnboundedReceiver<Local>,
    tx: mpsc::UnboundedSender<Local>,
    /// The data channel: the sender's own from the start, the receiver's once announced.
    pub channel: Option<RtcDataChannel>,
    /// What the channel says before the transfer listens to it.
    pub early: Option<Early>,
    pub listeners: Vec<Listener>,
}

/// Messages a channel delivered before the transfer took it over. The other side sends the
/// moment its end opens, and a message event with no listener is lost: this one listens
/// from the channel's first moment until [`Early::take`].
pub struct Early {
    frames: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>,
    _listener: Listener,
}

impl Early {
    fn listen(dc: &RtcDataChannel) -> Self {
        dc.set_binary_type(web_sys::RtcDataChannelType::Arraybuffer);
        let frames = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = frames.clone();
        let listener = Listener::new(
            dc.unchecked_ref(),
            "message",
            move |e: web_sys::MessageEvent| {
                sink.borrow_mut()
                    .push(js_sys::Uint8Array::new(&e.data()).to_vec());
            },
        );
        Self {
            frames,
            _listener: listener,
        }
    }

    /// Stop listening and hand over what came, in order. The caller listens from now on
    /// (nothing runs between: events are dispatched between tasks).
    pub fn take(self) -> Vec<Vec<u8>> {
        self.frames.take()
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

fn rtc_error(what: &str) -> impl Fn(String) -> Error + '_ {
    move |m| Error::Connect(format!("{what}: {m}"))
}

fn kind_name(kind: SdpKind) -> &'static str {
    match kind {
        SdpKind::Offer => "offer",
        SdpKind::Answer => "answer",
    }
}

impl Peer {
    /// Build the peer connection the rendezvous asked for.
    pub fn start(setup: &PeerSetup) -> Result<Peer> {
        // RTCIceServer has the same JSON shape as ours.
        let servers = serde_json::to_value(&setup.ice_servers).expect("ice servers serialise");
        let cfg = js::to_js(&serde_json::json!({ "iceServers": servers }));
        let pc = RtcPeerConnection::new_with_configuration(cfg.unchecked_ref())
            .map_err(|e| Error::Unsupported(format!("no WebRTC ({})", js::message(&e))))?;
        let (tx, events) = mpsc::unbounded::<Local>();
        let t: &web_sys::EventTarget = pc.unchecked_ref();
        let mut listeners = Vec::new();
        let on = tx.clone();
        listeners.push(Listener::new(
            t,
            "icecandidate",
            move |e: RtcPeerConnectionIceEvent| {
                // No candidate, or the empty one, is the end of gathering.
                let ev = match e.candidate().filter(|c| !c.candidate().is_empty()) {
                    Some(c) => Local::Candidate(IceCandidate {
                        candidate: c.candidate(),
                        sdp_mid: c.sdp_mid(),
                        sdp_mline_index: c.sdp_m_line_index(),
                    }),
                    None => Local::GatheringDone,
                };
                let _ = on.unbounded_send(ev);
            },
        ));
        let (on, pc2) = (tx.clone(), pc.clone());
        listeners.push(Listener::new(
            t,
            "connectionstatechange",
            move |_: web_sys::Event| {
                let _ = on.unbounded_send(Local::State(pc2.connection_state()));
            },
        ));
        let mut early = None;
        let channel = match setup.role {
            TransferRole::Sender => {
                let init = RtcDataChannelInit::new();
                init.set_ordered(true);
                let dc = pc.create_data_channel_with_data_channel_dict(CHANNEL_LABEL, &init);
                listeners.push(open_listener(&dc, &tx));
                early = Some(Early::listen(&dc));
                Some(dc)
            }
            TransferRole::Receiver => {
                let on = tx.clone();
                listeners.push(Listener::new(
                    t,
                    "datachannel",
                    move |e: RtcDataChannelEvent| {
                        // Listen at once, while the event is dispatched: the first
                        // messages may follow before the loop handles this.
                        let ch = e.channel();
                        let early = Early::listen(&ch);
                        let _ = on.unbounded_send(Local::Channel(ch, early));
                    },
                ));
                None
            }
        };
        Ok(Peer {
            pc,
            events,
            tx,
            channel,
            early,
            listeners,
        })
    }

    /// The other peer's channel was announced: watch it open.
    pub fn announced(&mut self, ch: RtcDataChannel, early: Early) {
        if self.channel.is_none() {
            self.early = Some(early);
        }
        self.listeners.push(open_listener(&ch, &self.tx));
        if ch.ready_state() == RtcDataChannelState::Open {
            let _ = self.tx.unbounded_send(Local::Open);
        }
        self.channel.get_or_insert(ch);
    }

    /// Create an offer or an answer and set it as the local description.
    pub async fn create_description(&self, kind: SdpKind) -> Result<()> {
        create_description(&self.pc, kind, false).await
    }

    /// The local description as it stands, with the candidates gathered so far.
    pub fn local_description(&self) -> Result<String> {
        local_description(&self.pc)
    }

    pub async fn apply(&self, kind: SdpKind, sdp: &str) -> Result<()> {
        apply(&self.pc, kind, sdp).await
    }
}

/// Create an offer or an answer and set it as the local description; `restart`: an offer
/// that restarts ICE (new credentials, candidates gathered again).
pub async fn create_description(
    pc: &RtcPeerConnection,
    kind: SdpKind,
    restart: bool,
) -> Result<()> {
    let promise = match kind {
        SdpKind::Offer if restart => {
            let options = RtcOfferOptions::new();
            options.set_ice_restart(true);
            pc.create_offer_with_rtc_offer_options(&options)
        }
        SdpKind::Offer => pc.create_offer(),
        SdpKind::Answer => pc.create_answer(),
    };
    let desc = js::wait(promise)
        .await
        .map_err(rtc_error(&format!("cannot create an {}", kind_name(kind))))?;
    js::wait(pc.set_local_description(desc.unchecked_ref()))
        .await
        .map_err(rtc_error(&format!(
            "cannot use our own {}",
            kind_name(kind)
        )))?;
    Ok(())
}

/// The local description as it stands, with the candidates gathered so far.
pub fn local_description(pc: &RtcPeerConnection) -> Result<String> {
    pc.local_description()
        .map(|d| d.sdp())
        .ok_or_else(|| Error::Connect("no local description".into()))
}

/// Set the other peer's description.
pub async fn apply(pc: &RtcPeerConnection, kind: SdpKind, sdp: &str) -> Result<()> {
    let desc = RtcSessionDescriptionInit::new(match kind {
        SdpKind::Offer => RtcSdpType::Offer,
        SdpKind::Answer => RtcSdpType::Answer,
    });
    desc.set_sdp(sdp);
    js::wait(pc.set_remote_description(&desc))
        .await
        .map_err(rtc_error(&format!(
            "the other peer's {} is unusable",
            kind_name(kind)
        )))?;
    Ok(())
}

fn open_listener(dc: &RtcDataChannel, tx: &mpsc::UnboundedSender<Local>) -> Listener {
    let tx = tx.clone();
    Listener::new(dc.unchecked_ref(), "open", move |_: web_sys::Event| {
        let _ = tx.unbounded_send(Local::Open);
    })
}

/// Add a remote candidate; one the browser cannot use (another address family, say) is not
/// fatal: the others may still connect.
pub async fn add_candidate(pc: &RtcPeerConnection, c: IceCandidate) {
    let init = RtcIceCandidateInit::new(&c.candidate);
    init.set_sdp_mid(c.sdp_mid.as_deref());
    init.set_sdp_m_line_index(c.sdp_mline_index);
    let _ = js::wait(pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init))).await;
}

/// The path of the selected candidate pair, from the connection's statistics.
pub async fn path_of(pc: &RtcPeerConnection) -> Option<PathReport> {
    let report = js::wait(pc.get_stats()).await.ok()?;
    let map: &js_sys::Map = report.unchecked_ref();
    let mut pair_id: Option<String> = None;
    let mut nominated: Option<String> = None;
    let mut ctx = PathContext::default();
    map.for_each(&mut |v, _k| {
        let kind = || CandidateType::parse(&js::get_str(&v, "candidateType").unwrap_or_default());
        match js::get_str(&v, "type").as_deref() {
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
            Some("local-candidate") => ctx.local_candidates.push(kind()),
            Some("remote-candidate") => ctx.remote_candidates.push(kind()),
            _ => {}
        }
    });
    let pair = map.get(&pair_id.or(nominated)?.into());
    let local = map.get(&js::get(&pair, "localCandidateId"));
    let remote = map.get(&js::get(&pair, "remoteCandidateId"));
    let local_type = CandidateType::parse(&js::get_str(&local, "candidateType")?);
    // A relayed local candidate reaches its relay by `relayProtocol`.
    let protocol = match local_type {
        CandidateType::Relay => js::get_str(&local, "relayProtocol"),
        _ => None,
    }
    .or_else(|| js::get_str(&local, "protocol"))
    .unwrap_or_default();
    let pair = SelectedPair {
        local: local_type,
        remote: CandidateType::parse(&js::get_str(&remote, "candidateType").unwrap_or_default()),
        protocol: Transport::parse(&protocol),
        local_port: js::get(&local, "port").as_f64().map(|p| p as u16),
        family: path::IpFamily::of_first(
            [&local, &remote]
                .into_iter()
                .filter_map(|c| js::get_str(c, "address"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        ),
    };
    Some(path::describe(pair, &ctx))
}
