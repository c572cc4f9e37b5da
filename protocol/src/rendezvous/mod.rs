//! The rendezvous: everything between "open a WebSocket to the signalling server" and "the data
//! channel is open", as one sans-IO state machine that both clients drive.
//!
//! Shaped after str0m's `Rtc` and quinn-proto: the driver feeds inputs (server messages, the
//! socket opening or closing, its ICE stack's local events, the person's choices, time) and
//! drains [`Rendezvous::poll_output`] until it returns [`Output::Timeout`], then waits for the
//! next input or that moment. The machine owns every protocol decision of this stage:
//! create or join, the PAKE and which password, the ICE servers, the sealed hello and the
//! roles, offer/answer order, when a description goes out, candidate buffering until the
//! remote description is applied, end-of-candidates, the other peer leaving or aborting, and
//! every deadline. The driver owns only sockets, the ICE stack and the screen.
//!
//! ```text
//!  creator                                        joiner
//!  server_open → create                           server_open → join
//!  created → Event::Ready(link, code)             joined → Event::Joined, pake
//!  peer_joined → Event::Joined
//!  pake → pake (same password kind)               pake → key
//!  a side whose role is known (a receiver only as the joiner): StartPeer as soon as both are
//!  in the room and `ice_servers` came, the file sender's CreateDescription(offer) with it;
//!  they gather while the key exchange runs (start_early)
//!  ── sealed hello{role} ⇄ sealed hello{role}: opening it confirms the key → Event::Verify
//!  the sender's description (gather ≤ 150 ms) goes right behind its hello (held till the key)
//!  the receiver: (StartPeer), ApplyDescription(offer) → CreateDescription(answer) → description at once
//!  candidates trickle both ways (relay candidates a second later); the driver's channel_open
//! ```
//!
//! Invariants:
//! - The first sealed message each way is `hello`; a failure to open it is a wrong secret
//!   (unless a later message of the same key opens in its place: the hello was lost), and the
//!   room is aborted so the other side learns it too.
//! - A remote candidate is handed to the driver only after the remote description is applied.
//! - Exactly one `Output::Failed` ends a machine; nothing but timeouts follows it. A failure
//!   while the room is still open tells the server (`abort`), so the other side never waits
//!   for a peer that gave up.
//! - After the channel opened, losing the server or the other peer's signalling is not an
//!   error: the transfer goes on peer to peer.
//! - A creator with [`Config::rejoin_wait`] creates its room with `hold`. When its connection
//!   is lost with the transfer unfinished ([`Rendezvous::link_lost`], or a joiner coming into
//!   the room and proving the secret while the old connection still looks open — it stays
//!   until then, so a joiner whose socket to the server alone dropped is not cut off by
//!   whoever joins next) it says `reconnecting`, forgets the
//!   joiner's key, hello and negotiation, and waits for a joiner again — the same link or
//!   code, a fresh PAKE and connection (a restarted receiver; the transfer then continues
//!   from what it kept) — until the rejoin deadline, which a joiner that leaves again midway
//!   does not extend.
//! - The server hands each peer of a held room a token for its place. A holding creator whose
//!   socket to the server dies (or whose connection to the other peer is lost: its network
//!   may have changed under a socket that looks open) opens a new one and takes its place
//!   back (`reclaim`), trying again after 0.25, 0.5, 1, 2, 4, 4… s; the transfer never waits
//!   for it. Meanwhile a joiner coming back meets `peer_away` and tries again the same way. A
//!   rejoining joiner brings its token, so a connection of its that the server still counts
//!   in the room does not keep it out. A connected joiner whose socket dies takes its place
//!   back the same way, quietly: its connection to the creator lives on, and the creator
//!   hears `peer_back`.
//! - Connected, the path can go down under a live connection (the driver says so:
//!   [`Rendezvous::path_down`]). Both sides then take their places back on new sockets at once
//!   (a network change kills the old ones, often without a word). The file sender, which made
//!   the offer, restarts ICE ([`Output::RestartIce`]: a new sealed offer and answer) when the
//!   receiver says its path is down (a sealed `path_down`, sent as soon as it is back in the
//!   room), or when its own path is down and it heard the receiver back in the room
//!   (`peer_back`, before or after: either may notice first) or at a new address
//!   ([`Rendezvous::peer_moved`]), and
//!   again every [`RESTART_AGAIN`] while it stays down. Not before: a restart drops the old
//!   pair at once (webrtc-rs), so one sent into an outage that the old pair would ride out,
//!   or to a peer that cannot hear it, only makes things worse; a restart lost anyway leaves
//!   a gap the sealed channel tolerates. A path down for [`PATH_GIVE_UP`] is given up: the
//!   machine no longer counts itself connected and the driver recovers through the room as
//!   from any lost link.

use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use crate::crypto::{Channel, CryptoError, Handshake, RoomRole};
use crate::event::{self, Event, ReconnectReason};
use crate::inbox::InboxLink;
use crate::invite::{Invitation, ShareLink, ShortCode};
use crate::path::PathReport;
use crate::signal::{
    AbortReason, AuthKind, ClientMessage, ErrorCode, IceServer, PeerSignal, RoomRef,
    SIGNAL_VERSION, SdpKind, ServerMessage, TransferRole, WRONG_SECRET,
};

/// The label of the one data channel the file sender opens.
pub const CHANNEL_LABEL: &str = "punchdrop";

/// The deadlines of a rendezvous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The signalling server opens the socket and answers create/join within this.
    pub server_answer: Duration,
    /// A joiner waits this long for the creator's key exchange message (the creator is
    /// already there: only a broken peer or server takes longer).
    pub peer_answer: Duration,
    /// How long to wait for the other peer's hello. Long: a browser that opened our link to
    /// send says hello only once its user has picked the files.
    pub hello_wait: Duration,
    /// How long an offer waits for candidates to gather into it (the rest trickle).
    pub gather_wait: Duration,
    /// How long opening the connection may take once both peers said hello.
    pub connect_timeout: Duration,
    /// How long this side's relay candidates are held back after its description went out,
    /// so both ICE agents try direct pairs first: a controlling browser nominates whichever
    /// pair works first, and a relayed pair through the TURN server can beat a punched one by
    /// a round trip. They still follow once the wait is over (a second pair to fall back on).
    /// Zero when relaying is all there is (`--relay-only`).
    pub relay_wait: Duration,
    /// Creator only: how long to wait for the joiner to come back once the connection to it
    /// is lost with the transfer unfinished ([`Rendezvous::link_lost`]); the room is created
    /// with `hold` so the server keeps it. `None`: the room ends with its joiner.
    pub rejoin_wait: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_answer: Duration::from_secs(15),
            peer_answer: Duration::from_secs(30),
            hello_wait: Duration::from_secs(10 * 60),
            gather_wait: Duration::from_millis(150),
            connect_timeout: Duration::from_secs(30),
            relay_wait: Duration::from_secs(1),
            rejoin_wait: None,
        }
    }
}

/// Which side of the transfer this peer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Send,
    Receive,
    /// Whatever the other peer does not: a page opened on a link. If the other side receives,
    /// the machine asks for files ([`Event::Pick`], answered by [`Rendezvous::files_picked`]).
    Opposite,
}

impl Want {
    fn role(self) -> Option<TransferRole> {
        match self {
            Self::Send => Some(TransferRole::Sender),
            Self::Receive => Some(TransferRole::Receiver),
            Self::Opposite => None,
        }
    }
}

/// An ICE candidate as both ICE stacks exchange it (`RTCIceCandidateInit`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IceCandidate {
    pub candidate: String,
    pub sdp_mid: Option<String>,
    pub sdp_mline_index: Option<u16>,
}

impl IceCandidate {
    /// A candidate's type from its SDP line (`… typ srflx …`).
    pub fn kind(&self) -> crate::path::CandidateType {
        let mut words = self.candidate.split_whitespace();
        match words.position(|w| w == "typ").and_then(|_| words.next()) {
            Some(t) => crate::path::CandidateType::parse(t),
            None => crate::path::CandidateType::Unknown,
        }
    }

    fn into_signal(self) -> PeerSignal {
        PeerSignal::Candidate {
            candidate: self.candidate,
            sdp_mid: self.sdp_mid,
            sdp_mline_index: self.sdp_mline_index,
        }
    }
}

/// What the driver's ICE stack did, fed back with [`Rendezvous::handle_local`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalIce {
    /// The description [`Output::CreateDescription`] asked for is set as the local one.
    DescriptionCreated,
    /// The local description as it stands now (answer to [`Output::ReadLocalDescription`]).
    Description(String),
    /// The description of [`Output::ApplyDescription`] is set as the remote one.
    RemoteApplied,
    /// A local candidate was gathered.
    Candidate(IceCandidate),
    /// Gathering finished.
    GatheringDone,
}

/// Build the peer connection: both peers are in and this side's role is settled — the key
/// may still be being agreed (see `Rendezvous::start_early`); nothing leaves before it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSetup {
    /// This side's role. The file sender creates the data channel and makes the offer.
    pub role: TransferRole,
    /// STUN/TURN servers the signalling server handed out for this room.
    pub ice_servers: Vec<IceServer>,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this to the signalling server (sealed peer signals are already inside).
    ToServer(ClientMessage),
    /// Show this to the person (or print it for a program): `ready`, `joined`, `verify`,
    /// `pick`.
    Event(Event),
    /// Create the peer connection (and, for the sender, the data channel).
    StartPeer(PeerSetup),
    /// Create an offer or answer and set it as the local description; then
    /// `handle_local(LocalIce::DescriptionCreated)`.
    CreateDescription(SdpKind),
    /// Read the local description now, with the candidates gathered so far, and pass it to
    /// `handle_local(LocalIce::Description(sdp))`.
    ReadLocalDescription,
    /// Set the other peer's description; then `handle_local(LocalIce::RemoteApplied)`.
    ApplyDescription { kind: SdpKind, sdp: String },
    /// Add the other peer's candidate (a candidate the stack rejects is not fatal).
    AddCandidate(IceCandidate),
    /// Restart ICE on the open connection: create an offer with new ICE credentials
    /// (`restartIce()`, then `createOffer()`), set it as the local description, then
    /// `handle_local(LocalIce::DescriptionCreated)` as for [`Output::CreateDescription`].
    RestartIce,
    /// Close the peer connection: the other peer left before it was up, or came back
    /// through the room (so the old connection is dead). If it returns, a new
    /// [`Output::StartPeer`] follows.
    ClosePeer,
    /// Close the socket to the server (a rejoining joiner leaving the room to try again); do
    /// not report it closed.
    CloseServer,
    /// Open a new socket to the server, then report it with `server_open` or
    /// `server_closed` as at the start.
    OpenServer,
    /// The rendezvous failed; nothing more will happen. Whatever the room had to be told was
    /// queued before this.
    Failed(RendezvousError),
    /// Nothing more to do until new input or this moment ([`Rendezvous::handle_timeout`]).
    Timeout(Duration),
}

/// Why a rendezvous failed, phrased for the person at the screen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    #[error("cannot reach the signalling server at {0}")]
    Unreachable(String),
    #[error("the signalling server at {0} did not answer")]
    ServerSilent(String),
    #[error("lost the signalling server before the peers connected")]
    ServerLost,
    #[error("the signalling server sent something unreadable")]
    Unreadable,
    #[error("server: {}", .0.explain())]
    Server(ErrorCode),
    #[error("{WRONG_SECRET}")]
    WrongSecret,
    #[error("{0}")]
    Crypto(CryptoError),
    #[error("the other peer left before connecting")]
    PeerLeft,
    #[error("the other peer gave up")]
    PeerGaveUp,
    #[error("the other peer did not answer the key exchange")]
    PeerSilent,
    #[error("the other peer did not start within {} minutes", .0.as_secs().div_ceil(60))]
    NoHello(Duration),
    #[error("the other peer runs an incompatible punchdrop (signalling v{0})")]
    Incompatible(u32),
    #[error("{}", crate::signal::role_clash(*.0))]
    SameRole(TransferRole),
    #[error("the {0} broke the protocol: {1}")]
    Unexpected(Party, &'static str),
    #[error("could not connect to the other peer within {} s: {}", .timeout.as_secs(), no_path(*.relay_offered))]
    ConnectTimeout {
        timeout: Duration,
        relay_offered: bool,
    },
    #[error("{}", no_path(*.relay_offered))]
    NoPath { relay_offered: bool },
    /// This side's WebRTC stack failed (the driver's words).
    #[error("{0}")]
    Local(String),
    #[error("stopped before the peers connected")]
    Cancelled,
    #[error(
        "the other peer did not come back within {} s of the connection being lost",
        .0.as_secs()
    )]
    NoRejoin(Duration),
    #[error(
        "could not reach the other peer again within {} s of the connection being lost",
        .0.as_secs()
    )]
    NoReturn(Duration),
    #[error(
        "the signalling server no longer has the room ({}); the other peer cannot come back",
        .0.explain()
    )]
    RoomGone(ErrorCode),
}

/// Who broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Server,
    Peer,
}

impl core::fmt::Display for Party {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Server => "signalling server",
            Self::Peer => "other peer",
        })
    }
}

fn no_path(relay_offered: bool) -> &'static str {
    if relay_offered {
        "no direct or relayed path to the other peer worked (a firewall may block WebRTC)"
    } else {
        "no direct path to the other peer worked and the server offers no relay"
    }
}

/// Creator only: whether the room can be joined with a typed code. A room shows none unless
/// asked ([`Rendezvous::show_code`]), so a link-only share has no number to sweep, and a
/// joiner who says it typed a code is refused.
#[derive(Debug)]
enum CodeShare {
    Hidden,
    Asked,
    Shown(ShortCode),
}

/// Where this side was in a room: what a rejoin needs to take its place back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The room id.
    pub room: String,
    /// The server's token for this side's place (held rooms only).
    pub token: Option<String>,
}

/// How this peer entered the room.
#[derive(Debug)]
enum Entry {
    /// `knock`: the room is made for a drop into this inbox, whose secret it shares (no
    /// link or code of its own to show).
    Create { knock: Option<InboxLink> },
    Join {
        room: RoomRef,
        password: Vec<u8>,
        auth: AuthKind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// The socket to the server is not open yet.
    Connecting,
    /// `create` sent.
    AwaitCreated,
    /// The room exists; waiting for a joiner's PAKE message.
    AwaitPeer,
    /// `join` sent.
    AwaitJoined,
    /// Our PAKE message sent; waiting for the creator's.
    AwaitPake,
    /// Key agreed; hellos being exchanged.
    Hello,
    /// The other peer receives; waiting for this side's person to pick files.
    Pick,
    Negotiating,
    Connected,
    Failed,
}

/// Which deadline is armed, and so which error its expiry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    ServerAnswer,
    PeerAnswer,
    Hello,
    Connect,
}

/// The offer/answer of this side.
#[derive(Debug, Default)]
struct Negotiation {
    /// [`Output::StartPeer`] went out for this negotiation: when the hellos are through, or
    /// earlier for a side whose role is known (see [`Rendezvous::start_early`]).
    started: bool,
    /// Signals made before the key was agreed (an early offer, its candidates): they go out
    /// right behind this side's hello.
    unsent: Vec<PeerSignal>,
    /// A local description was created and is not sent yet.
    describing: Option<SdpKind>,
    /// When that description goes out at the latest.
    gather_deadline: Option<Duration>,
    /// [`Output::ReadLocalDescription`] is out for it.
    read_requested: bool,
    /// Our description went out: later candidates trickle.
    described: bool,
    gathering_done: bool,
    /// The other peer's description arrived / is applied.
    remote_seen: bool,
    remote_applied: bool,
    /// Remote candidates waiting for the remote description.
    pending_remote: Vec<IceCandidate>,
    /// Candidates this side advertises beyond ICE's own (a mapped or forwarded port), held
    /// until the hellos are through.
    adverts: Vec<IceCandidate>,
    /// Our relay candidates held back until `relay_release` ([`Config::relay_wait`]).
    held_relays: Vec<IceCandidate>,
    relay_release: Option<Duration>,
    /// Gathering ended while relay candidates were held: end-of-candidates follows them.
    end_held: bool,
}

/// The path under an open connection, as the driver reports it, and this side's ICE
/// restarts (see the module invariants). A new connection starts from the default.
#[derive(Debug, Default)]
struct PathWatch {
    /// Since when the driver says the path is down ([`Rendezvous::path_down`]).
    down_since: Option<Duration>,
    /// Its path down: when the file sender restarts ICE next, or the receiver asks for it
    /// again (`path_down`).
    restart_at: Option<Duration>,
    /// When the file sender last restarted ICE.
    restarted: Option<Duration>,
    /// The other side took its place in the room back since the path was last up (it can
    /// hear signals; its own path went down, maybe before this side's did).
    peer_back: bool,
    /// The path stayed down for [`PATH_GIVE_UP`]: this connection is given up.
    gone: bool,
}

impl PathWatch {
    /// The path is up again: nothing to restart (a restart's time and a given-up connection
    /// stay as they are).
    fn up(&mut self) {
        self.down_since = None;
        self.restart_at = None;
        self.peer_back = false;
    }
}

/// One peer's rendezvous. See the module documentation.
#[derive(Debug)]
pub struct Rendezvous {
    config: Config,
    server: String,
    entry: Entry,
    stage: Stage,
    now: Duration,
    deadline: Option<(Duration, Deadline)>,
    /// Creator only: the link the room can be joined with, and its code if one is shown.
    link: Option<ShareLink>,
    code: CodeShare,
    room: Option<String>,
    handshake: Option<Handshake>,
    channel: Option<Channel>,
    ice_servers: Vec<IceServer>,
    both_in_room: Option<Duration>,
    role: Option<TransferRole>,
    peer_role: Option<TransferRole>,
    neg: Negotiation,
    /// Every candidate [`Rendezvous::advertise`] was given: each new connection gets them.
    advertised: Vec<IceCandidate>,
    /// A lost connection is being recovered (the creator waits in its room, the joiner joins
    /// again) until then; a failed attempt meanwhile is a setback, not the end.
    rejoin_until: Option<Duration>,
    /// Joiner between attempts: when it opens a socket to the server again, and how many
    /// attempts failed so far.
    retry_at: Option<Duration>,
    attempts: u32,
    /// The server said the joiner's connection closed while the channel was open.
    peer_away: bool,
    /// The server ended the room while the channel was open (the other side aborted, or the
    /// room can be held no more): a lost link then has nothing to wait for.
    room_gone: bool,
    /// The server's token for this side's place in a held room.
    token: Option<String>,
    /// A holding creator is getting its place in the room back on a new socket (until the
    /// server says `reclaimed`); meanwhile `server_up` is false.
    reclaiming: bool,
    /// A holding creator, connected: a joiner came into the room (the one connected left
    /// it, at least its socket did), and the key agreed with it once its message arrives.
    /// The old connection is given up only when the newcomer's hello opens with that key.
    newcomer: Option<Option<Channel>>,
    /// A connected joiner was told by the creator that their connection is gone
    /// (`peer_lost`): no longer connected, whatever the connection's state says.
    told_lost: bool,
    /// What the reclaim on its way said of the connection (`None`: not sent yet).
    reclaim_said_lost: Option<bool>,
    /// The path under the open connection: down, restarts.
    path: PathWatch,
    /// A first join met the creator away (`peer_away`) and tries again until `rejoin_until`.
    away_wait: bool,
    server_up: bool,
    out: VecDeque<Output>,
}

/// How far ahead [`Output::Timeout`] points when nothing is pending.
const IDLE: Duration = Duration::from_secs(3600);

/// How long a rejoin tries when its config sets no [`Config::rejoin_wait`].
pub const REJOIN_DEFAULT: Duration = Duration::from_secs(300);

/// How often the file sender restarts ICE again while the path stays down.
pub const RESTART_AGAIN: Duration = Duration::from_secs(3);

/// How long a path may stay down before its connection is given up and the peers recover
/// through the room: about when ICE itself would have called it failed (a restart starts
/// ICE's own clock again).
pub const PATH_GIVE_UP: Duration = Duration::from_secs(20);

/// How long a first join that meets the creator away (between two sockets) keeps trying.
const PEER_AWAY_WAIT: Duration = Duration::from_secs(60);

/// The longest pause between a rejoining joiner's attempts: once the network is back, it is
/// back in the room within this.
const RETRY_MAX: Duration = Duration::from_secs(4);

impl Rendezvous {
    /// Create a room on `server` (its base URL, which links will carry).
    pub fn create(server: &str, want: Want, config: Config, now: Duration) -> Self {
        Self::new(server, Entry::Create { knock: None }, want, config, now)
    }

    /// Drop files into the inbox `inbox` links to: a room made for the drop on the inbox's
    /// server, which the inbox joins with its secret ([`crate::inbox`]).
    pub fn knock(inbox: &InboxLink, want: Want, config: Config, now: Duration) -> Self {
        let entry = Entry::Create {
            knock: Some(inbox.clone()),
        };
        Self::new(&inbox.server, entry, want, config, now)
    }

    /// Join the room `invitation` names; typed codes meet on `default_server`.
    pub fn join(
        invitation: &Invitation,
        default_server: &str,
        want: Want,
        config: Config,
        now: Duration,
    ) -> Self {
        let (server, entry) = match invitation {
            Invitation::Link(l) => (
                l.server.as_str(),
                Entry::Join {
                    room: RoomRef::Id(l.room.clone()),
                    password: l.password(),
                    auth: AuthKind::Link,
                },
            ),
            Invitation::Code(c) => (
                default_server,
                Entry::Join {
                    room: RoomRef::Number(c.number),
                    password: c.password(),
                    auth: AuthKind::Code,
                },
            ),
        };
        Self::new(server, entry, want, config, now)
    }

    /// Join the room of `invitation` again after the connection to the other peer was lost
    /// mid-transfer (the driver closed the old socket: the server keeps the room for its
    /// creator). Says `reconnecting`; a fresh key exchange and connection follow. While the
    /// server or the other peer cannot be reached it tries again, backing off, until
    /// [`Config::rejoin_wait`] is over ([`RendezvousError::NoReturn`]); a room that is gone
    /// or a wrong secret end it at once.
    /// `place`: where the last connection was made ([`Rendezvous::place`]): the room is
    /// joined by its id (with the same password), not by a typed code's number, which the
    /// room may not have back, or which may name another room by now; the place's token
    /// takes it back from the old socket if the server still counts that one in the room.
    pub fn rejoin(
        invitation: &Invitation,
        place: Option<&Place>,
        default_server: &str,
        want: Want,
        config: Config,
        now: Duration,
    ) -> Self {
        let mut rv = Self::join(invitation, default_server, want, config, now);
        if let (Entry::Join { room: by, .. }, Some(place)) = (&mut rv.entry, place) {
            *by = RoomRef::Id(place.room.clone());
            rv.token = place.token.clone();
        }
        rv.rejoin_until = Some(now + config.rejoin_wait.unwrap_or(REJOIN_DEFAULT));
        rv.emit(event::Reconnecting {
            reason: ReconnectReason::LinkLost,
        });
        rv
    }

    fn new(server: &str, entry: Entry, want: Want, config: Config, now: Duration) -> Self {
        Self {
            config,
            server: server.trim_end_matches('/').to_string(),
            entry,
            stage: Stage::Connecting,
            now,
            deadline: Some((now + config.server_answer, Deadline::ServerAnswer)),
            link: None,
            code: CodeShare::Hidden,
            room: None,
            handshake: None,
            channel: None,
            ice_servers: Vec::new(),
            both_in_room: None,
            role: want.role(),
            peer_role: None,
            neg: Negotiation::default(),
            advertised: Vec::new(),
            rejoin_until: None,
            retry_at: None,
            attempts: 0,
            peer_away: false,
            room_gone: false,
            token: None,
            reclaiming: false,
            newcomer: None,
            told_lost: false,
            reclaim_said_lost: None,
            path: PathWatch::default(),
            away_wait: false,
            server_up: false,
            out: VecDeque::new(),
        }
    }

    /// The signalling server's base URL: open a WebSocket to
    /// [`crate::invite::websocket_url`] of it.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// When this side learnt both peers were in the room.
    pub fn both_in_room(&self) -> Option<Duration> {
        self.both_in_room
    }

    /// The id of the room this side is in (or was in last).
    pub fn room(&self) -> Option<&str> {
        self.room.as_deref()
    }

    /// This side's place in its room (or its last one), for [`Rendezvous::rejoin`].
    pub fn place(&self) -> Option<Place> {
        Some(Place {
            room: self.room.clone()?,
            token: self.token.clone(),
        })
    }

    /// This side's transfer role, once settled.
    pub fn role(&self) -> Option<TransferRole> {
        self.role.filter(|_| self.stage >= Stage::Negotiating)
    }

    /// The session's binding ([`Channel::binding`]) once the PAKE finished: what a
    /// dropping device signs ([`crate::device`]).
    pub fn binding(&self) -> Option<[u8; 32]> {
        self.channel.as_ref().map(Channel::binding)
    }

    /// The data channel is open (and its connection not given up).
    pub fn is_connected(&self) -> bool {
        self.stage == Stage::Connected && !self.told_lost && !self.path.gone
    }

    /// The STUN/TURN servers handed out so far (drivers may start probing them early).
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// Milliseconds since both peers were in the room (0 before).
    pub fn ms_since_room(&self, now: Duration) -> f64 {
        self.both_in_room
            .map(|t| now.saturating_sub(t).as_secs_f64() * 1e3)
            .unwrap_or_default()
    }

    // ── inputs ────────────────────────────────────────────────────────────────────────────

    /// The socket to the server is open.
    pub fn server_open(&mut self, now: Duration) {
        self.now = now;
        if self.retry_at.is_some() {
            // (A socket from before a setback opening late: the next attempt opens its own.)
            return;
        }
        if self.reclaiming && !self.server_up {
            return self.ask_place_back();
        }
        if self.stage != Stage::Connecting {
            return;
        }
        self.server_up = true;
        let msg = match &self.entry {
            Entry::Create { knock: None } => {
                self.stage = Stage::AwaitCreated;
                ClientMessage::Create {
                    version: SIGNAL_VERSION,
                    code: matches!(self.code, CodeShare::Asked),
                    hold: self.config.rejoin_wait.is_some(),
                }
            }
            Entry::Create { knock: Some(inbox) } => {
                self.stage = Stage::AwaitCreated;
                ClientMessage::Knock {
                    version: SIGNAL_VERSION,
                    inbox: inbox.id.to_string(),
                    hold: self.config.rejoin_wait.is_some(),
                }
            }
            Entry::Join { room, .. } => {
                self.stage = Stage::AwaitJoined;
                ClientMessage::Join {
                    version: SIGNAL_VERSION,
                    room: room.clone(),
                    reclaim: self.token.clone(),
                }
            }
        };
        self.arm(Deadline::ServerAnswer, self.config.server_answer);
        self.out.push_back(Output::ToServer(msg));
    }

    /// The socket to the server closed (or never opened).
    pub fn server_closed(&mut self, now: Duration) {
        self.now = now;
        if self.retry_at.is_some() {
            // The socket this side closed itself between attempts.
            return;
        }
        if self.reclaiming {
            return self.retry_server();
        }
        if self.can_reclaim() {
            return self.reclaim_place(false);
        }
        let was_up = std::mem::replace(&mut self.server_up, false);
        match self.stage {
            Stage::Connecting => self.fail(RendezvousError::Unreachable(self.server.clone())),
            Stage::Connected | Stage::Failed => {}
            _ if was_up => self.fail(RendezvousError::ServerLost),
            _ => {}
        }
    }

    /// A text frame from the server.
    pub fn handle_server_text(&mut self, text: &str, now: Duration) {
        match serde_json::from_str::<ServerMessage>(text) {
            Ok(msg) => self.handle_server(msg, now),
            Err(_) => {
                self.now = now;
                if self.stage < Stage::Connected {
                    self.abort_and_fail(AbortReason::Failed, RendezvousError::Unreadable);
                }
            }
        }
    }

    /// A message from the server.
    pub fn handle_server(&mut self, msg: ServerMessage, now: Duration) {
        self.now = now;
        if self.stage == Stage::Failed {
            return;
        }
        if self.reclaiming {
            return self.while_reclaiming(msg);
        }
        match msg {
            ServerMessage::IceServers { servers, .. } => {
                self.ice_servers = servers;
                self.start_early();
            }
            // A holder's message that crossed its joiner leaving (`peer_left` says it all), or
            // a connected peer's signal while the other side is away from the server.
            ServerMessage::Error {
                code: ErrorCode::NoPeer,
                ..
            } if self.holds_room() || self.stage == Stage::Connected => {}
            ServerMessage::Error { code, .. } => self.room_ended(RendezvousError::Server(code)),
            ServerMessage::PeerLeft => self.on_peer_left(),
            ServerMessage::PeerLost => self.on_peer_lost(),
            ServerMessage::PeerBack => self.on_peer_back(),
            ServerMessage::PeerAborted { reason } => self.room_ended(match reason {
                AbortReason::WrongSecret => RendezvousError::WrongSecret,
                _ => RendezvousError::PeerGaveUp,
            }),
            ServerMessage::Created {
                room,
                number,
                reclaim,
                ..
            } => self.on_created(room, number, reclaim),
            ServerMessage::Numbered { number } => self.on_numbered(number),
            ServerMessage::Joined { room, reclaim } => self.on_joined(room, reclaim),
            // Only ever the answer to a reclaim, handled above.
            ServerMessage::Reclaimed { .. } => {}
            ServerMessage::PeerJoined => self.on_peer_joined(),
            ServerMessage::Pake { auth, msg } => self.on_pake(auth, &msg),
            ServerMessage::Sealed { data } => self.on_sealed(&data),
            // An inbox's registration, on a connection of its own (native-peer's inbox).
            ServerMessage::Challenge { .. }
            | ServerMessage::Registered { .. }
            | ServerMessage::Drop { .. }
            | ServerMessage::Inboxes { .. } => {}
        }
    }

    /// The creator shows a code as well as the link (a typed code joins only a room that
    /// shows one). Before the room exists, it is created with its code; while it waits, it
    /// gets one ([`Event::Code`]). Nothing for a joiner, or once the other peer is in.
    pub fn show_code(&mut self, now: Duration) {
        self.now = now;
        let open =
            matches!(self.entry, Entry::Create { knock: None }) && self.both_in_room.is_none();
        if !open || !matches!(self.code, CodeShare::Hidden) {
            return;
        }
        match self.stage {
            Stage::Connecting | Stage::AwaitCreated => self.code = CodeShare::Asked,
            Stage::AwaitPeer => {
                self.code = CodeShare::Asked;
                self.out
                    .push_back(Output::ToServer(ClientMessage::ShowCode));
            }
            _ => {}
        }
    }

    /// The person picked the files to send (after [`Event::Pick`]).
    pub fn files_picked(&mut self, now: Duration) {
        self.now = now;
        if self.stage == Stage::Pick {
            self.send_hello(TransferRole::Sender);
            self.start_negotiation();
        }
    }

    /// What the ICE stack did.
    pub fn handle_local(&mut self, ev: LocalIce, now: Duration) {
        self.now = now;
        if !self.peer_live() {
            return;
        }
        match ev {
            LocalIce::DescriptionCreated => match self.neg.describing {
                Some(SdpKind::Offer) => {
                    self.neg.gather_deadline = Some(now + self.config.gather_wait);
                }
                // The answer goes out at once and its candidates trickle: a browser starts
                // its checks the moment the answer is set, and checks that reach an offerer
                // before it has the answer are lost (it has no credentials yet). Answering
                // first lets direct pairs win (Chromium kept a relayed pair on loopback
                // otherwise).
                Some(SdpKind::Answer) => self.request_description(),
                None => {}
            },
            LocalIce::Description(sdp) => {
                let Some(kind) = self.neg.describing.take() else {
                    return;
                };
                self.neg.gather_deadline = None;
                self.neg.described = true;
                if self.stage == Stage::Connected && !self.server_up {
                    // A restart's offer with the socket gone meanwhile: it is lost, so the
                    // next occasion (`reclaimed`) restarts again at once.
                    self.path.restarted = None;
                }
                let sdp = self.hold_relays_of(sdp, now);
                self.send_sealed(&PeerSignal::Description { kind, sdp });
                // (A restart's: the first negotiation sent them before its offer.)
                for c in std::mem::take(&mut self.neg.adverts) {
                    self.send_sealed(&c.into_signal());
                }
                if self.neg.gathering_done {
                    self.end_of_candidates();
                }
            }
            LocalIce::RemoteApplied => {
                if self.neg.remote_applied || !self.neg.remote_seen {
                    return;
                }
                self.neg.remote_applied = true;
                for c in std::mem::take(&mut self.neg.pending_remote) {
                    self.out.push_back(Output::AddCandidate(c));
                }
                if self.role == Some(TransferRole::Receiver) {
                    self.describe(SdpKind::Answer);
                }
            }
            LocalIce::Candidate(c) => {
                if self.neg.described {
                    if c.kind() == crate::path::CandidateType::Relay && self.holding_relays(now) {
                        self.neg.held_relays.push(c);
                    } else {
                        self.send_sealed(&c.into_signal());
                    }
                } else if self.neg.describing == Some(SdpKind::Offer)
                    && c.kind() == crate::path::CandidateType::Srflx
                {
                    // A server-reflexive candidate is what a punched path needs; relay
                    // candidates take two more round trips to the TURN server and are only
                    // needed if nothing direct works: they trickle.
                    self.request_description();
                }
                // Otherwise the candidate is part of the description still to be read.
            }
            LocalIce::GatheringDone => {
                self.neg.gathering_done = true;
                if self.neg.described {
                    self.end_of_candidates();
                } else if self.neg.describing.is_some() {
                    self.request_description();
                }
            }
        }
    }

    /// Offer the other peer a candidate ICE did not gather itself (a router's mapped port,
    /// a port forwarded by hand). It goes out once the hellos are through.
    pub fn advertise(&mut self, candidate: IceCandidate, now: Duration) {
        self.now = now;
        self.advertised.push(candidate.clone());
        match self.stage {
            Stage::Negotiating | Stage::Connected => self.send_sealed(&candidate.into_signal()),
            Stage::Failed => {}
            _ => self.neg.adverts.push(candidate),
        }
    }

    /// The data channel is open. From here the transfer speaks over it (and says `connected`
    /// once both sides told which pair they send on: [`crate::path::PathTrack`]); this machine
    /// only carries late candidates.
    pub fn channel_open(&mut self, now: Duration) {
        self.now = now;
        if self.stage != Stage::Negotiating {
            return;
        }
        self.stage = Stage::Connected;
        self.deadline = None;
        self.path = PathWatch::default();
        self.rejoin_until = None;
        self.away_wait = false;
        self.attempts = 0;
    }

    /// The connection to the other peer is gone with the transfer unfinished (the driver
    /// closed it). A creator holding its room waits [`Config::rejoin_wait`] for the joiner to
    /// come back and says `reconnecting`: `true`, drive the machine again (a new
    /// [`Output::StartPeer`] follows when it is back). `false`: nothing to wait for (this
    /// side joined, the room is not held, or the server is gone).
    pub fn link_lost(&mut self, now: Duration) -> bool {
        self.now = now;
        match self.stage {
            Stage::Connected
                if self.holds_room()
                    && (self.server_up || self.can_reclaim())
                    && !self.room_gone =>
            {
                let reason = match self.peer_away {
                    true => ReconnectReason::PeerLeft,
                    false => ReconnectReason::LinkLost,
                };
                self.lose_link(reason);
                // The network may have changed under a socket that still looks open (the
                // server would count it in the room until its pings go unanswered): a new
                // one takes the place back now — again if a reclaim already went out saying
                // the connection was fine (the joiner must hear it is lost).
                let said_fine = self.reclaiming && self.reclaim_said_lost == Some(false);
                if self.can_reclaim() && (!self.reclaiming || said_fine) {
                    self.reclaim_place(true);
                }
                true
            }
            // The joiner came back before the driver noticed: already on it.
            Stage::AwaitPeer | Stage::Hello | Stage::Pick | Stage::Negotiating => {
                self.rejoin_until.is_some()
            }
            _ => false,
        }
    }

    /// Connected, the path to the other peer went down under the connection (ICE says
    /// `disconnected`): take this side's place in the room back on a new socket (the old one
    /// may have died with the network); the file sender restarts ICE once the other side is
    /// heard back. See the module invariants.
    pub fn path_down(&mut self, now: Duration) {
        self.now = now;
        if !self.is_connected() || self.path.down_since.is_some() {
            return;
        }
        self.path.down_since = Some(now);
        self.emit(event::Reconnecting {
            reason: ReconnectReason::PathDown,
        });
        let reclaim = self.can_reclaim() && !self.reclaiming;
        // With its socket kept, the receiver asks for a restart at once, and the file sender
        // restarts if the receiver was heard; else both once they have their places back
        // (`Reclaimed`).
        let asks = self.role == Some(TransferRole::Receiver) || self.path.peer_back;
        if asks && !reclaim {
            self.restart_ice();
        }
        if reclaim {
            self.reclaim_place(true);
        }
    }

    /// Connected, the path down: the other peer is heard from an address ICE did not know
    /// before (its checks arrive from a port its router mapped anew): it is alive and can be
    /// reached there, which only a restart nominates. The file sender restarts now.
    pub fn peer_moved(&mut self, now: Duration) {
        self.now = now;
        if self.stage != Stage::Connected || self.path.down_since.is_none() || self.path.peer_back {
            return;
        }
        self.path.peer_back = true;
        self.restart_ice();
    }

    /// Connected, the path is up again (ICE says `connected`), on the old pair or a new one.
    pub fn path_up(&mut self, now: Duration, path: PathReport) {
        self.now = now;
        if self.stage != Stage::Connected {
            return;
        }
        let was_down = self.path.down_since.is_some();
        self.path.up();
        if was_down {
            self.emit(event::Reconnected {
                path,
                ms_since_room: self.ms_since_room(now),
            });
        }
    }

    /// The connection failed before the channel opened (ICE found no path).
    pub fn connection_failed(&mut self, now: Duration) {
        self.now = now;
        if self.stage == Stage::Negotiating {
            let relay_offered = self.relay_offered();
            self.abort_and_fail(
                AbortReason::Failed,
                RendezvousError::NoPath { relay_offered },
            );
        }
    }

    /// The driver's WebRTC stack failed (creating or applying a description…).
    pub fn local_error(&mut self, message: impl Into<String>, now: Duration) {
        self.now = now;
        if self.stage < Stage::Connected {
            self.abort_and_fail(AbortReason::Failed, RendezvousError::Local(message.into()));
        }
    }

    /// The person stopped. The room is told, so the other side does not wait.
    pub fn cancel(&mut self, now: Duration) {
        self.now = now;
        if self.stage < Stage::Connected {
            self.abort_and_fail(AbortReason::Cancelled, RendezvousError::Cancelled);
        }
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = now;
        if self.path.restart_at.is_some_and(|t| t <= now) {
            self.restart_ice();
        }
        if self.is_connected()
            && self
                .path
                .down_since
                .is_some_and(|t| now >= t + PATH_GIVE_UP)
        {
            self.path.gone = true;
            self.path.restart_at = None;
        }
        if self.neg.gather_deadline.is_some_and(|t| t <= now) {
            self.neg.gather_deadline = None;
            self.request_description();
        }
        if self.neg.relay_release.is_some_and(|t| t <= now) {
            match self.channel {
                // The description they follow has not gone out yet (`start_early`).
                None => self.neg.relay_release = Some(now + self.config.relay_wait),
                Some(_) => self.release_relays(),
            }
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.arm(Deadline::ServerAnswer, self.config.server_answer);
            self.out.push_back(Output::OpenServer);
        }
        if self.stage < Stage::Connected && self.rejoin_until.is_some_and(|t| t <= now) {
            // Whatever attempt is under way (a hello awaited, a connection being made), the
            // time to get the other peer back is over.
            self.rejoin_until = None;
            let wait = self.config.rejoin_wait.unwrap_or(REJOIN_DEFAULT);
            let e = match (self.away_wait, self.holds_room()) {
                (true, _) => RendezvousError::Server(ErrorCode::PeerAway),
                (false, true) => RendezvousError::NoRejoin(wait),
                (false, false) => RendezvousError::NoReturn(wait),
            };
            return self.abort_and_fail(AbortReason::Failed, e);
        }
        let Some((at, which)) = self.deadline else {
            return;
        };
        if at > now {
            return;
        }
        self.deadline = None;
        match which {
            Deadline::ServerAnswer if self.reclaiming => self.retry_server(),
            Deadline::ServerAnswer if self.stage == Stage::Connecting => {
                self.fail(RendezvousError::Unreachable(self.server.clone()))
            }
            Deadline::ServerAnswer => self.fail(RendezvousError::ServerSilent(self.server.clone())),
            Deadline::PeerAnswer => {
                self.abort_and_fail(AbortReason::Failed, RendezvousError::PeerSilent)
            }
            Deadline::Hello => self.abort_and_fail(
                AbortReason::Failed,
                RendezvousError::NoHello(self.config.hello_wait),
            ),
            Deadline::Connect => {
                let e = RendezvousError::ConnectTimeout {
                    timeout: self.config.connect_timeout,
                    relay_offered: self.relay_offered(),
                };
                self.abort_and_fail(AbortReason::Failed, e)
            }
        }
    }

    /// The next thing to do; [`Output::Timeout`] when there is nothing until then.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let next = [
            self.deadline.map(|(t, _)| t),
            self.neg.gather_deadline,
            self.neg.relay_release,
            self.retry_at,
            self.rejoin_until.filter(|_| self.stage < Stage::Connected),
            self.path.restart_at,
            self.path
                .down_since
                .filter(|_| self.is_connected())
                .map(|t| t + PATH_GIVE_UP),
            Some(self.now + IDLE),
        ];
        Output::Timeout(next.into_iter().flatten().min().expect("one is always set"))
    }

    // ── steps ─────────────────────────────────────────────────────────────────────────────

    fn arm(&mut self, which: Deadline, after: Duration) {
        self.deadline = Some((self.now + after, which));
    }

    fn emit(&mut self, e: impl Into<Event>) {
        self.out.push_back(Output::Event(e.into()));
    }

    fn fail(&mut self, e: RendezvousError) {
        if self.stage == Stage::Failed || self.setback(&e) {
            return;
        }
        self.retry_at = None;
        self.stage = Stage::Failed;
        self.deadline = None;
        self.neg.gather_deadline = None;
        self.neg.relay_release = None;
        self.out.push_back(Output::Failed(e));
    }

    /// Fail, telling the room first when there is one to tell.
    /// Once connected, nothing here can fail the transfer: it is ignored.
    fn abort_and_fail(&mut self, reason: AbortReason, e: RendezvousError) {
        if self.stage >= Stage::Connected || self.setback(&e) {
            return;
        }
        if self.server_up && self.room.is_some() {
            self.out
                .push_back(Output::ToServer(ClientMessage::Abort { reason }));
        }
        self.fail(e);
    }

    /// The server ended the room, or the other peer left it. Before the channel is open
    /// that ends this rendezvous; after, the transfer needs neither.
    fn room_ended(&mut self, e: RendezvousError) {
        match self.stage < Stage::Connected {
            true => self.fail(e),
            // The transfer goes on without the room; only a lost link will need to know.
            false => self.room_gone = true,
        }
    }

    /// This creator asked the server to keep its room for the joiner to come back.
    fn holds_room(&self) -> bool {
        matches!(self.entry, Entry::Create { .. }) && self.config.rejoin_wait.is_some()
    }

    fn on_peer_joined(&mut self) {
        match self.stage {
            Stage::AwaitPeer => self.mark_both_in_room(),
            // The server lets one joiner in at a time: the one we are connected to left the
            // room. Its program may be gone (this is it, back) or only its socket to the
            // server: the connection stays until the newcomer proves the secret.
            Stage::Connected if self.holds_room() => self.newcomer = Some(None),
            _ => {}
        }
    }

    /// Connected, a newcomer's key exchange message: answer it, and say hello with the new key
    /// (a page that joined a link waits for the creator's hello before saying its own).
    fn newcomer_pake(&mut self, auth: AuthKind, theirs: &str) {
        if !matches!(self.newcomer, Some(None)) {
            return;
        }
        let (Ok(password), Some(room)) = (self.password_for(auth), &self.room) else {
            // Not a key this share can agree on: the newcomer's own checks fail it.
            self.newcomer = None;
            return;
        };
        let (hs, mine) = Handshake::start_b64(&password, room, RoomRole::Creator);
        self.out
            .push_back(Output::ToServer(ClientMessage::Pake { auth, msg: mine }));
        let Ok(mut channel) = hs.finish_b64(theirs) else {
            self.newcomer = None;
            return;
        };
        if let Some(role) = self.role
            && self.server_up
        {
            let hello = PeerSignal::Hello {
                version: SIGNAL_VERSION,
                role,
            };
            self.out.push_back(sealed(&mut channel, &hello));
        }
        self.newcomer = Some(Some(channel));
    }

    /// Connected, a sealed message from a newcomer: if it opens, the newcomer has the secret
    /// and the old connection is given up for it; if not, the old connection stays (a wrong
    /// secret's newcomer fails its own key confirmation on our hello).
    fn newcomer_sealed(&mut self, data: &str) {
        let Some(Some(channel)) = self.newcomer.as_mut() else {
            return;
        };
        let Ok(plain) = channel.open_b64(data) else {
            self.newcomer = None;
            return;
        };
        let channel = self.newcomer.take().flatten();
        self.lose_link(ReconnectReason::PeerLeft);
        self.out.push_back(Output::ClosePeer);
        self.mark_both_in_room();
        self.channel = channel;
        // Our hello went out with the key; theirs is this message.
        self.stage = Stage::Hello;
        self.arm(Deadline::Hello, self.config.hello_wait);
        self.on_opened(&plain);
    }

    /// The password a joiner's key exchange uses: the link's, or the code's if this share
    /// shows one.
    fn password_for(&self, auth: AuthKind) -> Result<Vec<u8>, &'static str> {
        let link = self.link.as_ref().ok_or("a key exchange before the room")?;
        match (auth, &self.code) {
            (AuthKind::Link, _) => Ok(link.password()),
            (AuthKind::Code, CodeShare::Shown(code)) => Ok(code.password()),
            (AuthKind::Code, _) => Err("a typed code, but this share shows none"),
        }
    }

    /// The creator took its place back and says its connection to this joiner is gone (its
    /// network changed): connected, this machine is done with that connection
    /// ([`Rendezvous::is_connected`] turns `false`; the driver closes it and joins again with
    /// [`Rendezvous::rejoin`]), long before this side's ICE would notice the silence.
    /// Anywhere else it is the creator leaving.
    fn on_peer_lost(&mut self) {
        match self.stage {
            Stage::Connected if !matches!(self.entry, Entry::Create { .. }) => {
                self.told_lost = true;
                self.deadline = None;
            }
            _ => self.on_peer_left(),
        }
    }

    /// The other side took its place in the room back with its connection to this side
    /// alive: signals reach it again. The file sender whose path is down restarts ICE now.
    fn on_peer_back(&mut self) {
        if self.stage != Stage::Connected {
            return;
        }
        self.peer_away = false;
        self.path.peer_back = true;
        if self.path.down_since.is_some() {
            self.restart_ice();
        }
    }

    /// Restart ICE: the file sender makes a new offer with new credentials, its candidates
    /// and this side's advertised ones after it (the answer comes as the first one did); the
    /// receiver asks it to (`path_down`). Again after [`RESTART_AGAIN`] while the path stays
    /// down.
    fn restart_ice(&mut self) {
        if !self.is_connected() {
            self.path.restart_at = None;
            return;
        }
        if self.path.down_since.is_some() {
            self.path.restart_at = Some(self.now + RESTART_AGAIN);
        }
        // Not while either side is away from the server: nothing would reach the other side,
        // and every sealed message lost widens the gap its counter must skip. Its return
        // (`reclaimed`, `peer_back`) comes back here.
        let reachable =
            self.server_up && !self.reclaiming && self.channel.is_some() && !self.peer_away;
        if !reachable {
            return;
        }
        if self.role == Some(TransferRole::Receiver) {
            return self.send_sealed(&PeerSignal::PathDown);
        }
        // A `path_down` and a `peer_back` for the same loss come together: one restart.
        let now = self.now;
        if self
            .path
            .restarted
            .is_some_and(|t| now < t + RESTART_AGAIN / 3)
        {
            return;
        }
        self.path.restarted = Some(self.now);
        self.neg = Negotiation {
            adverts: self.advertised.clone(),
            describing: Some(SdpKind::Offer),
            ..Negotiation::default()
        };
        self.out.push_back(Output::RestartIce);
    }

    fn on_peer_left(&mut self) {
        match self.stage {
            // The transfer needs the server no more; if the connection goes too, the driver
            // says so (`link_lost`). A newcomer that had not proved the secret is gone.
            Stage::Connected => {
                self.peer_away = true;
                self.newcomer = None;
            }
            // A held room waits for the joiner again; what was half set up with it goes.
            Stage::AwaitPeer | Stage::Hello | Stage::Pick | Stage::Negotiating
                if self.holds_room() =>
            {
                self.wait_again_closing();
            }
            _ => self.room_ended(RendezvousError::PeerLeft),
        }
    }

    /// While a lost connection is being recovered, an attempt that failed for a reason that
    /// may pass (the network is not back yet, the other side is between attempts) is a
    /// setback: the creator waits for the joiner again, the joiner leaves the room and tries
    /// again later. Nothing tells the room to end. `false`: the failure stands.
    fn setback(&mut self, e: &RendezvousError) -> bool {
        use RendezvousError as E;
        if self.rejoin_until.is_none()
            && !self.away_wait
            && *e == E::Server(ErrorCode::PeerAway)
            && matches!(self.entry, Entry::Join { .. })
        {
            // A first join that meets the creator between two sockets (its network changing
            // under it): that takes a moment, so this side tries again for a while.
            self.rejoin_until = Some(self.now + PEER_AWAY_WAIT);
            self.away_wait = true;
        }
        if self.rejoin_until.is_none_or(|t| self.now >= t) {
            return false;
        }
        // A holder waiting for its joiner back meets a wrong secret: a stranger with the room
        // id (the server lets it only leave), not the joiner it waits for.
        let peer_side = matches!(
            e,
            E::PeerLeft
                | E::PeerSilent
                | E::NoHello(_)
                | E::ConnectTimeout { .. }
                | E::NoPath { .. }
                // The joiner's hello went missing on the way: it may come again.
                | E::Crypto(CryptoError::FirstLost)
        ) || (*e == E::WrongSecret && self.holds_room());
        let server_side = matches!(
            e,
            E::Unreachable(_)
                | E::ServerSilent(_)
                | E::ServerLost
                | E::Server(
                    ErrorCode::RoomFull
                        | ErrorCode::PeerAway
                        | ErrorCode::RateLimited
                        | ErrorCode::ServerBusy
                        | ErrorCode::ShuttingDown
                        | ErrorCode::NoPeer
                )
        );
        let started = self.neg.started || self.stage == Stage::Connected;
        if self.holds_room() {
            // Its room lives only as long as its socket: a lost server is the end.
            if !peer_side || !self.server_up {
                return false;
            }
            self.wait_again();
        } else {
            if !peer_side && !server_side {
                return false;
            }
            self.forget_peer();
            self.room = None;
            self.stage = Stage::Connecting;
            self.deadline = None;
            // Also a socket still connecting: a late open must not join for this attempt.
            self.server_up = false;
            self.out.push_back(Output::CloseServer);
            self.retry_at = Some(self.now + self.next_pause());
        }
        if started {
            self.out.push_back(Output::ClosePeer);
        }
        true
    }

    /// The pause before the next attempt to reach the server: 0.25, 0.5, 1, 2, 4, 4… s (the
    /// other side getting its own place back takes a moment; a network that is down longer
    /// is not hammered).
    fn next_pause(&mut self) -> Duration {
        let pause = Duration::from_millis(250 << self.attempts.min(8)).min(RETRY_MAX);
        self.attempts += 1;
        pause
    }

    /// This side can take its place back on a new socket: it has the server's token, the
    /// room is not over, and it is in it — a holding creator waiting for a joiner, with one
    /// coming back, or with the transfer running; a joiner with the transfer running on a
    /// connection it still counts as live.
    fn can_reclaim(&self) -> bool {
        let in_room = match (&self.entry, self.stage) {
            (Entry::Join { .. }, Stage::Connected) => self.is_connected(),
            (Entry::Join { .. }, _) => false,
            (Entry::Create { .. }, Stage::AwaitPeer | Stage::Connected) => self.holds_room(),
            (Entry::Create { .. }, Stage::Hello | Stage::Pick | Stage::Negotiating) => {
                self.holds_room() && self.rejoin_until.is_some()
            }
            _ => false,
        };
        self.token.is_some() && !self.room_gone && in_room
    }

    /// Get this side's place in the room back on a new socket: `at_once` when the old one
    /// may look open but be dead (it is closed first), else after a pause (it closed). A
    /// joiner half set up with goes: nothing reaches it meanwhile, and it comes back.
    fn reclaim_place(&mut self, at_once: bool) {
        let half_made = match self.stage {
            Stage::Hello | Stage::Pick | Stage::Negotiating => true,
            // A joiner in, its key exchange not through, and an early offer under way.
            Stage::AwaitPeer => self.neg.started,
            _ => false,
        };
        if half_made {
            self.wait_again_closing();
        }
        self.reclaiming = true;
        self.reclaim_said_lost = None;
        self.attempts = 0;
        match at_once {
            true => {
                self.server_up = false;
                self.out.push_back(Output::CloseServer);
                self.retry_at = Some(self.now);
            }
            false => self.retry_server(),
        }
    }

    /// Close the socket and open another after a pause.
    fn retry_server(&mut self) {
        self.server_up = false;
        // (Only the server's answer can be armed here: a holder reclaims while waiting for
        // a joiner or while connected, where nothing else is.)
        self.deadline = None;
        self.out.push_back(Output::CloseServer);
        self.retry_at = Some(self.now + self.next_pause());
    }

    /// A new socket opened: ask for the place back.
    fn ask_place_back(&mut self) {
        let (Some(room), Some(token)) = (self.room.clone(), self.token.clone()) else {
            return;
        };
        self.arm(Deadline::ServerAnswer, self.config.server_answer);
        // Waiting for the joiner (not connected to it): a joiner still in the room, maybe
        // on a connection that looks alive to it, must come back.
        let lost = self.stage != Stage::Connected;
        self.reclaim_said_lost = Some(lost);
        self.out.push_back(Output::ToServer(ClientMessage::Reclaim {
            version: SIGNAL_VERSION,
            room,
            token,
            lost,
        }));
    }

    /// The server's answer to a reclaim.
    fn while_reclaiming(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Reclaimed { .. } => {
                self.reclaiming = false;
                self.server_up = true;
                self.attempts = 0;
                self.deadline = None;
                // Its path down, a receiver is heard again: it asks for the restart. (A file
                // sender back in the room knows nothing yet of the receiver.)
                let asks = self.role == Some(TransferRole::Receiver) || self.path.peer_back;
                if self.path.down_since.is_some() && asks {
                    self.restart_ice();
                }
            }
            ServerMessage::Error {
                code:
                    ErrorCode::RateLimited
                    | ErrorCode::ServerBusy
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Idle,
                ..
            } => self.retry_server(),
            ServerMessage::Error {
                code:
                    code @ (ErrorCode::NoSuchRoom
                    | ErrorCode::Expired
                    | ErrorCode::UnsupportedVersion
                    | ErrorCode::RoomFull),
                ..
            } => {
                // The room is over on the server (or a joiner's place was taken by another
                // that proved the secret): no one can come back into it this way.
                self.reclaiming = false;
                self.out.push_back(Output::CloseServer);
                match self.stage {
                    Stage::Connected => self.room_gone = true,
                    _ => self.fail(RendezvousError::RoomGone(code)),
                }
            }
            // Nothing else answers a reclaim (what the old socket was told, if a driver
            // still hands it over, is stale).
            _ => {}
        }
    }

    /// The connection is lost: wait for the joiner to come back, and say so.
    fn lose_link(&mut self, reason: ReconnectReason) {
        let wait = self.config.rejoin_wait.unwrap_or(REJOIN_DEFAULT);
        self.rejoin_until = Some(self.now + wait);
        self.wait_again();
        self.emit(event::Reconnecting { reason });
    }

    /// Back to waiting for a joiner, forgetting everything about the last one: its key, its
    /// hello, the negotiation. The room, its link and code stay; so does the rejoin deadline
    /// (`rejoin_until`, enforced in `handle_timeout` whatever the stage).
    fn wait_again(&mut self) {
        self.stage = Stage::AwaitPeer;
        self.forget_peer();
        self.deadline = None;
    }

    /// [`Self::wait_again`], closing the peer connection if this negotiation started one
    /// (at the hellos or earlier: [`Self::start_early`]).
    fn wait_again_closing(&mut self) {
        let started = self.neg.started;
        self.wait_again();
        if started {
            self.out.push_back(Output::ClosePeer);
        }
    }

    /// Forget the other peer's key, hello and the negotiation with it.
    fn forget_peer(&mut self) {
        self.handshake = None;
        self.newcomer = None;
        self.channel = None;
        self.peer_role = None;
        self.peer_away = false;
        self.both_in_room = None;
        self.path = PathWatch::default();
        self.neg = Negotiation {
            adverts: self.advertised.clone(),
            ..Negotiation::default()
        };
    }

    fn relay_offered(&self) -> bool {
        self.ice_servers
            .iter()
            .flat_map(|s| &s.urls)
            .any(|u| u.starts_with("turn"))
    }

    fn unexpected(&mut self, who: Party, what: &'static str) {
        self.abort_and_fail(AbortReason::Failed, RendezvousError::Unexpected(who, what));
    }

    fn mark_both_in_room(&mut self) {
        if self.both_in_room.is_none() {
            self.both_in_room = Some(self.now);
            self.emit(Event::Joined);
        }
    }

    fn on_created(&mut self, room: String, number: Option<u32>, token: Option<String>) {
        if self.stage != Stage::AwaitCreated {
            // A repeated answer changes nothing.
            return;
        }
        self.token = token;
        if let Entry::Create { knock: Some(inbox) } = &self.entry {
            // Nothing to show: the inbox joins with the secret its link carries.
            self.link = Some(inbox.room_link(&room));
            self.room = Some(room);
            self.stage = Stage::AwaitPeer;
            self.deadline = None;
            return;
        }
        let link = ShareLink::new(&self.server, &room, &crate::invite::generate_secret());
        let asked = matches!(self.code, CodeShare::Asked);
        let code = match number {
            Some(n) if asked => Some(ShortCode::generate(n)),
            // A number nobody asked for stays unused: this share shows no code.
            Some(_) => None,
            None => {
                if asked {
                    // The wish came while the room was being created.
                    self.out
                        .push_back(Output::ToServer(ClientMessage::ShowCode));
                }
                None
            }
        };
        self.emit(event::Ready {
            link: link.to_string(),
            code: code.as_ref().map(ToString::to_string),
        });
        if let Some(code) = code {
            self.code = CodeShare::Shown(code);
        }
        self.link = Some(link);
        self.room = Some(room);
        self.stage = Stage::AwaitPeer;
        // Waiting for a joiner has no deadline of ours: the room expires on the server.
        self.deadline = None;
    }

    fn on_numbered(&mut self, number: u32) {
        if self.stage != Stage::AwaitPeer || !matches!(self.code, CodeShare::Asked) {
            return;
        }
        let code = ShortCode::generate(number);
        self.emit(event::Code {
            code: code.to_string(),
        });
        self.code = CodeShare::Shown(code);
    }

    fn on_joined(&mut self, room: String, token: Option<String>) {
        if self.stage != Stage::AwaitJoined {
            return;
        }
        self.token = token;
        if std::mem::take(&mut self.away_wait) {
            // In: from here it is a first join like any other.
            self.rejoin_until = None;
        }
        let Entry::Join { password, auth, .. } = &self.entry else {
            return;
        };
        let (hs, mine) = Handshake::start_b64(password, &room, RoomRole::Joiner);
        let auth = *auth;
        self.room = Some(room);
        self.handshake = Some(hs);
        self.mark_both_in_room();
        self.out
            .push_back(Output::ToServer(ClientMessage::Pake { auth, msg: mine }));
        self.stage = Stage::AwaitPake;
        self.arm(Deadline::PeerAnswer, self.config.peer_answer);
    }

    fn on_pake(&mut self, auth: AuthKind, theirs: &str) {
        let hs = match self.stage {
            Stage::Connected if self.newcomer.is_some() => {
                return self.newcomer_pake(auth, theirs);
            }
            Stage::AwaitPeer => {
                // The creator follows the joiner's choice of password.
                if self.link.is_none() || self.room.is_none() {
                    return;
                }
                let password = match self.password_for(auth) {
                    Ok(p) => p,
                    Err(what) => return self.unexpected(Party::Peer, what),
                };
                let room = self.room.as_deref().unwrap_or_default();
                let (hs, mine) = Handshake::start_b64(&password, room, RoomRole::Creator);
                self.mark_both_in_room();
                self.out
                    .push_back(Output::ToServer(ClientMessage::Pake { auth, msg: mine }));
                hs
            }
            Stage::AwaitPake => match self.handshake.take() {
                Some(hs) => hs,
                None => return,
            },
            // A repeated key exchange message changes nothing once the key is agreed.
            s if s > Stage::AwaitPake => return,
            _ => return self.unexpected(Party::Server, "a key exchange message before joining"),
        };
        match hs.finish_b64(theirs) {
            Ok(channel) => {
                self.channel = Some(channel);
                self.key_agreed();
            }
            Err(e) => self.abort_and_fail(AbortReason::Failed, RendezvousError::Crypto(e)),
        }
    }

    fn key_agreed(&mut self) {
        self.stage = Stage::Hello;
        self.arm(Deadline::Hello, self.config.hello_wait);
        if let Some(role) = self.role {
            self.send_hello(role);
        }
        for sig in std::mem::take(&mut self.neg.unsent) {
            self.send_sealed(&sig);
        }
        // Relay candidates follow the description by the wait from when it went out.
        if self.neg.relay_release.is_some() {
            self.neg.relay_release = Some(self.now + self.config.relay_wait);
        }
    }

    fn send_sealed(&mut self, sig: &PeerSignal) {
        let Some(channel) = self.channel.as_mut() else {
            if self.neg.started {
                // Made by a peer connection started before the key (`start_early`).
                self.neg.unsent.push(sig.clone());
            }
            return;
        };
        if !self.server_up {
            return;
        }
        self.out.push_back(sealed(channel, sig));
    }

    fn send_hello(&mut self, role: TransferRole) {
        self.role = Some(role);
        self.send_sealed(&PeerSignal::Hello {
            version: SIGNAL_VERSION,
            role,
        });
    }

    fn on_sealed(&mut self, data: &str) {
        if self.stage == Stage::Connected && self.newcomer.is_some() {
            return self.newcomer_sealed(data);
        }
        if self.stage == Stage::AwaitPeer && self.holds_room() {
            // Left over from a joiner this side has given up on (or that left).
            return;
        }
        if self.stage < Stage::Hello {
            return self.unexpected(Party::Server, "a sealed message before the key exchange");
        }
        let Some(channel) = self.channel.as_mut() else {
            return;
        };
        let plain = match channel.open_b64(data) {
            Ok(p) => p,
            // Too late to matter once connected (a stray late candidate).
            Err(_) if self.stage == Stage::Connected => return,
            Err(CryptoError::WrongSecret) => {
                return self.abort_and_fail(AbortReason::WrongSecret, RendezvousError::WrongSecret);
            }
            Err(e) => return self.abort_and_fail(AbortReason::Failed, RendezvousError::Crypto(e)),
        };
        self.on_opened(&plain);
    }

    /// A sealed message from the other side opened.
    fn on_opened(&mut self, plain: &[u8]) {
        // It came through the room now, so the other side is back there, whether or not the
        // server said so: one that took its place back before this side did has no
        // `peer_back` for it.
        self.peer_away = false;
        match serde_json::from_slice::<PeerSignal>(plain) {
            Ok(sig) => self.on_signal(sig),
            Err(_) => self.unexpected(Party::Peer, "an unreadable signal"),
        }
    }

    fn on_signal(&mut self, sig: PeerSignal) {
        match sig {
            PeerSignal::Hello { version, role } => self.on_hello(version, role),
            _ if self.peer_role.is_none() => self.unexpected(Party::Peer, "it skipped the hello"),
            PeerSignal::Description { kind, sdp } => self.on_description(kind, sdp),
            PeerSignal::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                let c = IceCandidate {
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                };
                if self.neg.remote_applied {
                    self.out.push_back(Output::AddCandidate(c));
                } else {
                    self.neg.pending_remote.push(c);
                }
            }
            // Nothing waits for it: ICE ends on success or its own timers.
            PeerSignal::EndOfCandidates => {}
            PeerSignal::PathDown => {
                if self.stage == Stage::Connected && self.role == Some(TransferRole::Sender) {
                    self.restart_ice();
                }
            }
        }
    }

    fn on_hello(&mut self, version: u32, theirs: TransferRole) {
        if self.peer_role.is_some() {
            return self.unexpected(Party::Peer, "it restarted the handshake");
        }
        if version != SIGNAL_VERSION {
            return self
                .abort_and_fail(AbortReason::Failed, RendezvousError::Incompatible(version));
        }
        self.peer_role = Some(theirs);
        // Opening the hello confirmed the key: the words now mean something.
        if let Some(words) = self.channel.as_ref().map(Channel::verification_words) {
            self.emit(event::Verify {
                words: words.map(str::to_string),
            });
        }
        match (self.role, theirs) {
            (Some(mine), theirs) if mine == theirs => {
                self.abort_and_fail(AbortReason::Failed, RendezvousError::SameRole(mine))
            }
            (Some(_), _) => self.start_negotiation(),
            (None, TransferRole::Sender) => {
                self.send_hello(TransferRole::Receiver);
                self.start_negotiation();
            }
            (None, TransferRole::Receiver) => {
                // A person is choosing files; the other side waits on its own deadline.
                self.stage = Stage::Pick;
                self.deadline = None;
                self.emit(Event::Pick);
            }
        }
    }

    fn start_negotiation(&mut self) {
        let role = self.role.expect("a role is settled before negotiating");
        self.stage = Stage::Negotiating;
        self.arm(Deadline::Connect, self.config.connect_timeout);
        let early = self.neg.started;
        if !early {
            self.start_peer(role);
        }
        for c in std::mem::take(&mut self.neg.adverts) {
            self.send_sealed(&c.into_signal());
        }
        if role == TransferRole::Sender && !early {
            self.describe(SdpKind::Offer);
        }
    }

    fn start_peer(&mut self, role: TransferRole) {
        self.neg.started = true;
        self.out.push_back(Output::StartPeer(PeerSetup {
            role,
            ice_servers: self.ice_servers.clone(),
        }));
    }

    /// A side that knows its role starts its peer connection as soon as both are in the room
    /// and the room's ICE servers are known, while the key exchange and the hellos run; the
    /// file sender also makes its offer then. Gathering (the server-reflexive candidate is a
    /// round trip to the STUN server) overlaps them: the offer goes out right behind this
    /// side's hello, where it used to wait for the other side's hello and then for the
    /// gathering, and a receiver whose ICE stack gathers before its first description (a
    /// candidate pool) answers with its candidates instead of trickling them later. Nothing
    /// leaves before the key is agreed (`send_sealed` holds it), and the other side still
    /// opens our hello first. A joiner that turns out to have the wrong secret, the same role
    /// or another version fails the rendezvous as before; a held room's joiner that leaves
    /// takes the half-made connection with it (`ClosePeer`). A receiver starts early only as
    /// the joiner: the creator it joined sends and says hello at once, where a creator that
    /// receives may be joined by a page whose person picks files for minutes, longer than a
    /// router keeps the mapping its server-reflexive candidate names.
    fn start_early(&mut self) {
        let before_hellos = matches!(
            self.stage,
            Stage::AwaitPeer | Stage::AwaitPake | Stage::Hello
        );
        let early = match self.role {
            Some(TransferRole::Sender) => true,
            Some(TransferRole::Receiver) => matches!(self.entry, Entry::Join { .. }),
            None => false,
        };
        let Some(role) = self.role.filter(|_| early) else {
            return;
        };
        if before_hellos
            && self.both_in_room.is_some()
            && self.peer_role.is_none()
            && !self.neg.started
        {
            self.start_peer(role);
            if role == TransferRole::Sender {
                self.describe(SdpKind::Offer);
            }
        }
    }

    /// The driver's peer connection belongs to the negotiation under way: its events count.
    fn peer_live(&self) -> bool {
        match self.stage {
            Stage::Negotiating | Stage::Connected => true,
            Stage::AwaitPeer | Stage::AwaitPake | Stage::Hello => self.neg.started,
            _ => false,
        }
    }

    fn describe(&mut self, kind: SdpKind) {
        self.neg.describing = Some(kind);
        self.neg.read_requested = false;
        self.out.push_back(Output::CreateDescription(kind));
    }

    /// Relay candidates are still held back at `now`.
    fn holding_relays(&self, now: Duration) -> bool {
        self.neg.relay_release.is_some_and(|t| now < t)
    }

    /// Take this side's relay candidates out of `sdp` to send them [`Config::relay_wait`]
    /// later, as trickled candidates; start that wait.
    fn hold_relays_of(&mut self, sdp: String, now: Duration) -> String {
        if self.config.relay_wait.is_zero() || self.neg.relay_release.is_some() {
            return sdp;
        }
        self.neg.relay_release = Some(now + self.config.relay_wait);
        let (kept, relays) = split_relay_candidates(&sdp);
        self.neg.held_relays.extend(relays);
        kept
    }

    fn release_relays(&mut self) {
        self.neg.relay_release = None;
        for c in std::mem::take(&mut self.neg.held_relays) {
            self.send_sealed(&c.into_signal());
        }
        if std::mem::take(&mut self.neg.end_held) {
            self.send_sealed(&PeerSignal::EndOfCandidates);
        }
    }

    /// End-of-candidates, behind any relay candidates still held back.
    fn end_of_candidates(&mut self) {
        if self.neg.held_relays.is_empty() || !self.holding_relays(self.now) {
            self.send_sealed(&PeerSignal::EndOfCandidates);
        } else {
            self.neg.end_held = true;
        }
    }

    /// Ask for the local description to send, once per description.
    fn request_description(&mut self) {
        if self.neg.describing.is_some() && !self.neg.read_requested {
            self.neg.read_requested = true;
            self.neg.gather_deadline = None;
            self.out.push_back(Output::ReadLocalDescription);
        }
    }

    fn on_description(&mut self, kind: SdpKind, sdp: String) {
        // No role yet: the other peer said it receives and this side's person is still
        // picking files, so nothing is being negotiated.
        let Some(role) = self.role else {
            return self.unexpected(Party::Peer, "a description out of turn");
        };
        let expected = match role {
            TransferRole::Sender => SdpKind::Answer,
            TransferRole::Receiver => SdpKind::Offer,
        };
        let restart = self.stage == Stage::Connected;
        if restart && kind == SdpKind::Offer && expected == kind {
            // The file sender restarts ICE: answer it as the first offer, with this side's
            // advertised candidates again (a new ICE generation forgets the old ones).
            self.neg = Negotiation {
                adverts: self.advertised.clone(),
                ..Negotiation::default()
            };
        } else if restart && (kind != expected || self.neg.remote_seen || !self.neg.described) {
            // Not the answer to a restart of ours (a late one, or one we did not ask for): the
            // next restart settles it.
            return;
        } else if !restart
            && (kind != expected || self.neg.remote_seen || self.stage != Stage::Negotiating)
        {
            return self.unexpected(Party::Peer, "a description out of turn");
        }
        self.neg.remote_seen = true;
        self.out.push_back(Output::ApplyDescription { kind, sdp });
    }
}

/// `sig` sealed with `channel`, for the server to forward.
fn sealed(channel: &mut Channel, sig: &PeerSignal) -> Output {
    let json = serde_json::to_vec(sig).expect("peer signals serialise");
    Output::ToServer(ClientMessage::Sealed {
        data: channel.seal_b64(&json),
    })
}

/// `sdp` without its relay candidate lines, and those candidates (with the media section they
/// were in) to trickle later.
fn split_relay_candidates(sdp: &str) -> (String, Vec<IceCandidate>) {
    let mut kept = String::with_capacity(sdp.len());
    let mut relays = Vec::new();
    let (mut mline, mut mid) = (None::<u16>, None::<String>);
    for line in sdp.split_inclusive('\n') {
        let text = line.trim_end_matches(['\r', '\n']);
        if text.starts_with("m=") {
            mline = Some(mline.map_or(0, |i| i + 1));
            mid = None;
        } else if let Some(m) = text.strip_prefix("a=mid:") {
            mid = Some(m.to_string());
        }
        if let Some(c) = text.strip_prefix("a=") {
            let c = IceCandidate {
                candidate: c.to_string(),
                sdp_mid: mid.clone(),
                sdp_mline_index: mline,
            };
            if c.candidate.starts_with("candidate:")
                && c.kind() == crate::path::CandidateType::Relay
            {
                relays.push(c);
                continue;
            }
        }
        kept.push_str(line);
    }
    // A candidate line may come before the section's `a=mid` line: name them all by the mid
    // their section ended up with.
    for c in &mut relays {
        if c.sdp_mid.is_none() {
            c.sdp_mid = section_mid(&kept, c.sdp_mline_index);
        }
    }
    (kept, relays)
}

/// The `a=mid` of media section `index` of `sdp`.
fn section_mid(sdp: &str, index: Option<u16>) -> Option<String> {
    let index = usize::from(index?);
    sdp.split("m=")
        .nth(index + 1)?
        .lines()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .map(|m| m.trim().to_string())
}

#[cfg(test)]
mod tests;
