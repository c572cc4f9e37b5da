//! Signalling messages.
//!
//! Two layers:
//! - [`ClientMessage`] / [`ServerMessage`]: JSON text frames on the `/ws` WebSocket between a
//!   peer and the server. The server understands these and nothing more.
//! - [`PeerSignal`]: what one peer tells the other (SDP, ICE candidates). It is serialised to
//!   JSON and then sealed with [`crate::crypto::Channel`]; the server sees only the
//!   base64 ciphertext in [`ClientMessage::Sealed`].
//!
//! Every message that opens a conversation carries [`SIGNAL_VERSION`]; a server that does not
//! speak it answers [`ErrorCode::UnsupportedVersion`]. Field names are part of the wire format
//! and pinned by golden JSON tests.

use serde::{Deserialize, Serialize};

/// Version of the signalling protocol spoken by this build. 2: a room has a number only when
/// its creator shows a code (`create.code`, `show_code`). 3: `create.hold` keeps a room for its
/// joiner to come back. 4: the peers of a held room get a token (`created.reclaim`,
/// `joined.reclaim`) that takes their place back from a connection that died (`reclaim`,
/// `join.reclaim`); a held room outlives its creator's connection too (`peer_away`).
/// 5: a creator that lost its connection to the joiner says so as it takes its place back
/// (`reclaim.lost`), and the joiner hears `peer_lost`; a join meets `peer_gone` once a held
/// room's creator stopped.
/// 6: a held room's joiner takes its place back too (`reclaim` with its token, while its
/// connection to the creator lives on; the creator hears `peer_back`), and connected peers
/// restart ICE with a new sealed offer and answer (asked for with a sealed `path_down`).
/// 7: inboxes (`register`, `challenge`, `prove`, `registered`; `knock` → `drop`; `look`
/// → `inboxes`).
pub const SIGNAL_VERSION: u32 = 7;

/// Largest WebSocket text frame the server accepts. Signalling only: SDP with a handful of
/// candidates sealed and base64-encoded fits in a few KiB; files never travel here.
pub const MAX_SIGNAL_MESSAGE: usize = 16 * 1024;

/// Which room to join.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RoomRef {
    /// The room id from a share link.
    Id(String),
    /// The short room number from a typed code.
    Number(u32),
}

/// Which password the joining peer feeds to SPAKE2: the long link secret or the typed words.
/// The creator knows both and follows the joiner's choice.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    Link,
    Code,
}

/// Peer → server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Create a room and wait for one other peer. `code`: the creator shows a code at once,
    /// so the room needs a number; without one, only its link (room id) joins it.
    Create {
        version: u32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        code: bool,
        /// When the joiner's connection closes, keep the room for it to join again (a
        /// restarted receiver continues on the same link) instead of ending it. Each return
        /// runs the key exchange again; the server bounds how often (a typed code once).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold: bool,
    },
    /// The creator of a waiting room shows a code after all: give the room a number.
    ShowCode,
    /// Join an existing room. `reclaim`: the token of the place this peer had in the room
    /// (a held room, [`ServerMessage::Joined`]); a connection of its that is still there (its
    /// network went away without closing it) is closed, and this one takes its place.
    Join {
        version: u32,
        room: RoomRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reclaim: Option<String>,
    },
    /// A peer of a held room takes its place back with the token it was given
    /// ([`ServerMessage::Created`], [`ServerMessage::Joined`]), after its connection to the
    /// server died; an old connection still in its place is closed. Answered with
    /// [`ServerMessage::Reclaimed`]. A joiner does this only while its connection to the
    /// creator lives (the creator hears [`ServerMessage::PeerBack`]); one whose connection is
    /// gone joins again. `lost` (creators only): the creator's connection to the joiner is
    /// gone too (its network changed): a joiner in the room is told
    /// [`ServerMessage::PeerLost`] rather than `peer_left`.
    Reclaim {
        version: u32,
        room: String,
        token: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lost: bool,
    },
    /// This peer's single SPAKE2 message (base64). One per peer per room: the server refuses a
    /// second, which bounds online guessing of a typed code to one try.
    Pake { auth: AuthKind, msg: String },
    /// A sealed [`PeerSignal`] (base64), forwarded verbatim to the other peer.
    Sealed { data: String },
    /// This peer gives up on the room (e.g. the PAKE failed); the server closes it.
    Abort { reason: AbortReason },
    /// An inbox registers its id ([`crate::inbox`]) with its public key (base64); the server
    /// answers [`ServerMessage::Challenge`].
    Register {
        version: u32,
        inbox: String,
        key: String,
        /// The inbox's name sealed with its secret ([`crate::inbox::seal_name`]): shown to
        /// link holders who [`ClientMessage::Look`], unreadable to the server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// The inbox's signature (base64) of [`crate::inbox::proof_message`] for the challenge:
    /// answered [`ServerMessage::Registered`], or `not_yours`.
    Prove { sig: String },
    /// Drop files into inbox `inbox`: like [`ClientMessage::Create`] (answered `created`),
    /// and the server tells the inbox [`ServerMessage::Drop`]; `inbox_offline` if it is not
    /// connected.
    Knock {
        version: u32,
        inbox: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold: bool,
    },
    /// Are these inboxes online, and what are their (sealed) names? Answered
    /// [`ServerMessage::Inboxes`]; at most [`MAX_LOOK`] at once.
    Look { version: u32, inboxes: Vec<String> },
}

/// The most inboxes one [`ClientMessage::Look`] asks about.
pub const MAX_LOOK: usize = 32;
/// The longest sealed inbox name a server keeps (base64 characters).
pub const MAX_SEALED_NAME: usize = 400;

/// Why a peer aborted a room.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// Key confirmation failed: the peers used different secrets.
    WrongSecret,
    /// The user or program stopped.
    Cancelled,
    /// The peer could not set up the connection.
    Failed,
}

/// Server → peer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The room exists; share `room` in a link, and `number` in a code if one was asked for.
    Created {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        number: Option<u32>,
        expires_in_secs: u64,
        /// A held room: the token that takes the creator's place back ([`ClientMessage::Reclaim`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reclaim: Option<String>,
    },
    /// The room's number, after [`ClientMessage::ShowCode`].
    Numbered { number: u32 },
    /// This peer joined `room`; the creator is there. `reclaim`: in a held room, the token
    /// that takes this place back ([`ClientMessage::Join`]).
    Joined {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reclaim: Option<String>,
    },
    /// The creator has its place back ([`ClientMessage::Reclaim`]).
    Reclaimed { room: String },
    /// The second peer arrived (sent to the creator).
    PeerJoined,
    /// The other peer's SPAKE2 message.
    Pake { auth: AuthKind, msg: String },
    /// A sealed payload from the other peer.
    Sealed { data: String },
    /// The other peer's WebSocket closed.
    PeerLeft,
    /// The creator of a held room took its place back and says its connection to this peer
    /// is gone (sent to the joiner): come back through the room.
    PeerLost,
    /// The joiner, whose socket to the server had closed, took its place back (sent to the
    /// creator): its connection to this peer lives, and signals reach it again.
    PeerBack,
    /// The other peer aborted the room.
    PeerAborted { reason: AbortReason },
    /// STUN/TURN servers for this room, with short-lived credentials. Sent to each peer right
    /// after `created`/`joined`; a server without TURN sends an empty list.
    IceServers {
        servers: Vec<IceServer>,
        expires_in_secs: u64,
    },
    /// A request failed; the connection may be closed after this.
    Error { code: ErrorCode, message: String },
    /// Sign this nonce (base64) to prove the inbox is yours ([`ClientMessage::Prove`]).
    Challenge { nonce: String },
    /// This connection is inbox `inbox`'s for as long as it lives.
    Registered { inbox: String },
    /// Someone knocked (sent to a registered inbox): join `room` with the inbox's secret.
    Drop { room: String },
    /// The answer to [`ClientMessage::Look`], in its order.
    Inboxes { inboxes: Vec<InboxStatus> },
}

/// One inbox in [`ServerMessage::Inboxes`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InboxStatus {
    pub inbox: String,
    /// Registered right now: drops can come.
    pub online: bool,
    /// Its name as it registered it, sealed ([`crate::inbox::open_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One entry of [`ServerMessage::IceServers`], shaped like WebRTC's `RTCIceServer`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:HOST:PORT`, `turn:HOST:PORT?transport=udp|tcp`, `turns:HOST:PORT`.
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Machine-readable reasons for [`ServerMessage::Error`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnsupportedVersion,
    Malformed,
    TooLarge,
    RateLimited,
    NoSuchRoom,
    RoomFull,
    NotInRoom,
    PakeAlreadySent,
    NoPeer,
    Expired,
    ServerBusy,
    ShuttingDown,
    /// The connection neither created nor joined a room in time.
    Idle,
    /// The creator of a held room lost its connection to the server and has not taken its
    /// place back yet: try again in a moment.
    PeerAway,
    /// The creator of a held room closed its connection and did not come back: its program
    /// stopped. The room is over.
    PeerGone,
    /// The inbox knocked on is not connected to the server.
    InboxOffline,
    /// An inbox registration whose key or proof is not the id's.
    NotYours,
    /// Another connection registered this inbox (sent to the one it replaced).
    Replaced,
}

impl ErrorCode {
    /// What a user should read for this code.
    pub fn explain(self) -> &'static str {
        match self {
            Self::UnsupportedVersion => {
                "the server speaks another protocol version; update punchdrop"
            }
            Self::Malformed => "the server could not read a message",
            Self::TooLarge => "a signalling message was too large",
            Self::RateLimited => "too many requests from this address; wait a minute and retry",
            Self::NoSuchRoom => "no such room: the link or code is wrong, expired or already used",
            Self::RoomFull => "this link or code has already been used by someone else",
            Self::NotInRoom => "not in a room yet",
            Self::PakeAlreadySent => "only one attempt per room is allowed",
            Self::NoPeer => "the other peer is not there",
            Self::Expired => "the room expired; create a new link",
            Self::ServerBusy => "the server has too many rooms; retry later",
            Self::ShuttingDown => {
                "the server is restarting or shutting down; try again in a minute"
            }
            Self::Idle => "the connection was idle too long; open the link or code again",
            Self::PeerAway => {
                "the other peer lost its connection to the server; try again in a moment"
            }
            Self::PeerGone => {
                "the other peer's program stopped; start it again (the same files) to continue"
            }
            Self::InboxOffline => {
                "that inbox is offline (not connected to its server); try again when it is back"
            }
            Self::NotYours => "this inbox id belongs to another key: it cannot be registered here",
            Self::Replaced => {
                "another copy of this inbox registered with the server; only one may run"
            }
        }
    }
}

/// Which side of the WebRTC negotiation and of the transfer a peer is on.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferRole {
    Sender,
    Receiver,
}

/// Kind of a session description.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SdpKind {
    Offer,
    Answer,
}

/// Peer → peer, always sealed. The first sealed message each way is a [`PeerSignal::Hello`]:
/// opening it is the key confirmation (a wrong secret fails right there).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerSignal {
    Hello {
        version: u32,
        role: TransferRole,
    },
    /// An SDP offer or answer. The file sender offers. The DTLS fingerprint inside is thereby
    /// authenticated by the PAKE.
    Description {
        kind: SdpKind,
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        candidate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mline_index: Option<u16>,
    },
    /// Gathering finished; no more candidates follow.
    EndOfCandidates,
    /// Connected, this side's path to the other is down (sent by the side that did not make
    /// the offer): restart ICE. It arriving says this side hears signals again.
    PathDown,
}

impl ClientMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("signalling messages always serialise")
    }
}

impl ServerMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("signalling messages always serialise")
    }
}

/// What a peer reads when the two secrets differ (its own key confirmation failed, or the
/// other peer's did).
pub const WRONG_SECRET: &str = "wrong code or link: the other peer's secret does not match";

/// What a peer reads when both peers want the same side of the transfer (said at the
/// rendezvous, and again by the transfer protocol should two peers get that far).
pub fn role_clash(both: TransferRole) -> &'static str {
    match both {
        TransferRole::Sender => "the other peer is also sending: one side must receive",
        TransferRole::Receiver => "the other peer is also receiving: one side must send",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden JSON: these strings are the wire format. Changing one is a protocol change.
    #[test]
    fn client_messages_golden() {
        let cases: Vec<(ClientMessage, &str)> = vec![
            (
                ClientMessage::Create {
                    version: 2,
                    code: false,
                    hold: false,
                },
                r#"{"type":"create","version":2}"#,
            ),
            (
                ClientMessage::Create {
                    version: 2,
                    code: true,
                    hold: false,
                },
                r#"{"type":"create","version":2,"code":true}"#,
            ),
            (
                ClientMessage::Create {
                    version: 3,
                    code: false,
                    hold: true,
                },
                r#"{"type":"create","version":3,"hold":true}"#,
            ),
            (ClientMessage::ShowCode, r#"{"type":"show_code"}"#),
            (
                ClientMessage::Join {
                    version: 1,
                    room: RoomRef::Id("abcd1234".into()),
                    reclaim: None,
                },
                r#"{"type":"join","version":1,"room":{"id":"abcd1234"}}"#,
            ),
            (
                ClientMessage::Join {
                    version: 4,
                    room: RoomRef::Id("abcd1234".into()),
                    reclaim: Some("t0k3n".into()),
                },
                r#"{"type":"join","version":4,"room":{"id":"abcd1234"},"reclaim":"t0k3n"}"#,
            ),
            (
                ClientMessage::Reclaim {
                    version: 4,
                    room: "abcd1234".into(),
                    token: "t0k3n".into(),
                    lost: false,
                },
                r#"{"type":"reclaim","version":4,"room":"abcd1234","token":"t0k3n"}"#,
            ),
            (
                ClientMessage::Reclaim {
                    version: 5,
                    room: "abcd1234".into(),
                    token: "t0k3n".into(),
                    lost: true,
                },
                r#"{"type":"reclaim","version":5,"room":"abcd1234","token":"t0k3n","lost":true}"#,
            ),
            (
                ClientMessage::Join {
                    version: 1,
                    room: RoomRef::Number(42),
                    reclaim: None,
                },
                r#"{"type":"join","version":1,"room":{"number":42}}"#,
            ),
            (
                ClientMessage::Pake {
                    auth: AuthKind::Code,
                    msg: "QUJD".into(),
                },
                r#"{"type":"pake","auth":"code","msg":"QUJD"}"#,
            ),
            (
                ClientMessage::Sealed {
                    data: "eHl6".into(),
                },
                r#"{"type":"sealed","data":"eHl6"}"#,
            ),
            (
                ClientMessage::Abort {
                    reason: AbortReason::WrongSecret,
                },
                r#"{"type":"abort","reason":"wrong_secret"}"#,
            ),
            (
                ClientMessage::Register {
                    version: 7,
                    inbox: "mfrggzdfmztwq2lk".into(),
                    key: "a2V5".into(),
                    name: None,
                },
                r#"{"type":"register","version":7,"inbox":"mfrggzdfmztwq2lk","key":"a2V5"}"#,
            ),
            (
                ClientMessage::Register {
                    version: 7,
                    inbox: "mfrggzdfmztwq2lk".into(),
                    key: "a2V5".into(),
                    name: Some("bmFtZQ==".into()),
                },
                r#"{"type":"register","version":7,"inbox":"mfrggzdfmztwq2lk","key":"a2V5","name":"bmFtZQ=="}"#,
            ),
            (
                ClientMessage::Look {
                    version: 7,
                    inboxes: vec!["mfrggzdfmztwq2lk".into()],
                },
                r#"{"type":"look","version":7,"inboxes":["mfrggzdfmztwq2lk"]}"#,
            ),
            (
                ClientMessage::Prove { sig: "c2ln".into() },
                r#"{"type":"prove","sig":"c2ln"}"#,
            ),
            (
                ClientMessage::Knock {
                    version: 7,
                    inbox: "mfrggzdfmztwq2lk".into(),
                    hold: true,
                },
                r#"{"type":"knock","version":7,"inbox":"mfrggzdfmztwq2lk","hold":true}"#,
            ),
        ];
        for (msg, json) in cases {
            assert_eq!(msg.to_json(), json);
            assert_eq!(serde_json::from_str::<ClientMessage>(json).unwrap(), msg);
        }
    }

    #[test]
    fn server_messages_golden() {
        let cases: Vec<(ServerMessage, &str)> = vec![
            (
                ServerMessage::Created {
                    room: "r1".into(),
                    number: Some(7),
                    expires_in_secs: 600,
                    reclaim: None,
                },
                r#"{"type":"created","room":"r1","number":7,"expires_in_secs":600}"#,
            ),
            (
                ServerMessage::Created {
                    room: "r1".into(),
                    number: None,
                    expires_in_secs: 600,
                    reclaim: Some("t0k3n".into()),
                },
                r#"{"type":"created","room":"r1","expires_in_secs":600,"reclaim":"t0k3n"}"#,
            ),
            (
                ServerMessage::Created {
                    room: "r1".into(),
                    number: None,
                    expires_in_secs: 600,
                    reclaim: None,
                },
                r#"{"type":"created","room":"r1","expires_in_secs":600}"#,
            ),
            (
                ServerMessage::Numbered { number: 7 },
                r#"{"type":"numbered","number":7}"#,
            ),
            (
                ServerMessage::Joined {
                    room: "r1".into(),
                    reclaim: None,
                },
                r#"{"type":"joined","room":"r1"}"#,
            ),
            (
                ServerMessage::Joined {
                    room: "r1".into(),
                    reclaim: Some("t0k3n".into()),
                },
                r#"{"type":"joined","room":"r1","reclaim":"t0k3n"}"#,
            ),
            (
                ServerMessage::Reclaimed { room: "r1".into() },
                r#"{"type":"reclaimed","room":"r1"}"#,
            ),
            (ServerMessage::PeerJoined, r#"{"type":"peer_joined"}"#),
            (
                ServerMessage::Pake {
                    auth: AuthKind::Link,
                    msg: "QQ".into(),
                },
                r#"{"type":"pake","auth":"link","msg":"QQ"}"#,
            ),
            (
                ServerMessage::Sealed { data: "QQ".into() },
                r#"{"type":"sealed","data":"QQ"}"#,
            ),
            (ServerMessage::PeerLeft, r#"{"type":"peer_left"}"#),
            (ServerMessage::PeerLost, r#"{"type":"peer_lost"}"#),
            (ServerMessage::PeerBack, r#"{"type":"peer_back"}"#),
            (
                ServerMessage::IceServers {
                    servers: vec![
                        IceServer {
                            urls: vec!["stun:h:3478".into()],
                            username: None,
                            credential: None,
                        },
                        IceServer {
                            urls: vec!["turn:h:3478?transport=udp".into()],
                            username: Some("1700000000:r1".into()),
                            credential: Some("c2VjcmV0".into()),
                        },
                    ],
                    expires_in_secs: 86400,
                },
                r#"{"type":"ice_servers","servers":[{"urls":["stun:h:3478"]},{"urls":["turn:h:3478?transport=udp"],"username":"1700000000:r1","credential":"c2VjcmV0"}],"expires_in_secs":86400}"#,
            ),
            (
                ServerMessage::PeerAborted {
                    reason: AbortReason::Cancelled,
                },
                r#"{"type":"peer_aborted","reason":"cancelled"}"#,
            ),
            (
                ServerMessage::Error {
                    code: ErrorCode::NoSuchRoom,
                    message: "x".into(),
                },
                r#"{"type":"error","code":"no_such_room","message":"x"}"#,
            ),
            (
                ServerMessage::Error {
                    code: ErrorCode::PeerAway,
                    message: "x".into(),
                },
                r#"{"type":"error","code":"peer_away","message":"x"}"#,
            ),
            (
                ServerMessage::Error {
                    code: ErrorCode::PeerGone,
                    message: "x".into(),
                },
                r#"{"type":"error","code":"peer_gone","message":"x"}"#,
            ),
            (
                ServerMessage::Error {
                    code: ErrorCode::InboxOffline,
                    message: "x".into(),
                },
                r#"{"type":"error","code":"inbox_offline","message":"x"}"#,
            ),
            (
                ServerMessage::Error {
                    code: ErrorCode::NotYours,
                    message: "x".into(),
                },
                r#"{"type":"error","code":"not_yours","message":"x"}"#,
            ),
            (
                ServerMessage::Error {
                    code: ErrorCode::Replaced,
                    message: "x".into(),
                },
                r#"{"type":"error","code":"replaced","message":"x"}"#,
            ),
            (
                ServerMessage::Inboxes {
                    inboxes: vec![
                        InboxStatus {
                            inbox: "mfrggzdfmztwq2lk".into(),
                            online: true,
                            name: Some("bmFtZQ==".into()),
                        },
                        InboxStatus {
                            inbox: "mfrggzdfmztwq2ll".into(),
                            online: false,
                            name: None,
                        },
                    ],
                },
                r#"{"type":"inboxes","inboxes":[{"inbox":"mfrggzdfmztwq2lk","online":true,"name":"bmFtZQ=="},{"inbox":"mfrggzdfmztwq2ll","online":false}]}"#,
            ),
            (
                ServerMessage::Challenge {
                    nonce: "bm9uY2U=".into(),
                },
                r#"{"type":"challenge","nonce":"bm9uY2U="}"#,
            ),
            (
                ServerMessage::Registered {
                    inbox: "mfrggzdfmztwq2lk".into(),
                },
                r#"{"type":"registered","inbox":"mfrggzdfmztwq2lk"}"#,
            ),
            (
                ServerMessage::Drop { room: "r1".into() },
                r#"{"type":"drop","room":"r1"}"#,
            ),
        ];
        for (msg, json) in cases {
            assert_eq!(msg.to_json(), json);
            assert_eq!(serde_json::from_str::<ServerMessage>(json).unwrap(), msg);
        }
    }

    #[test]
    fn peer_signals_golden() {
        let cases: Vec<(PeerSignal, &str)> = vec![
            (
                PeerSignal::Hello {
                    version: 1,
                    role: TransferRole::Sender,
                },
                r#"{"type":"hello","version":1,"role":"sender"}"#,
            ),
            (
                PeerSignal::Description {
                    kind: SdpKind::Answer,
                    sdp: "v=0".into(),
                },
                r#"{"type":"description","kind":"answer","sdp":"v=0"}"#,
            ),
            (
                PeerSignal::Candidate {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: None,
                },
                r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdp_mid":"0"}"#,
            ),
            (
                PeerSignal::EndOfCandidates,
                r#"{"type":"end_of_candidates"}"#,
            ),
            (PeerSignal::PathDown, r#"{"type":"path_down"}"#),
        ];
        for (msg, json) in cases {
            assert_eq!(serde_json::to_string(&msg).unwrap(), json);
            assert_eq!(serde_json::from_str::<PeerSignal>(json).unwrap(), msg);
        }
    }

    #[test]
    fn unknown_or_extra_fields_are_rejected() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"create"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope","version":1}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"create","version":1,"x":2}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<ClientMessage>("not json").is_err());
    }
}
