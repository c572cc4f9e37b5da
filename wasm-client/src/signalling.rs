//! The browser's side of signalling: create or join a room over the server's WebSocket, run
//! the PAKE, then exchange sealed [`PeerSignal`]s. Same messages and same sealing as the
//! native peer (`protocol::signal`, `protocol::crypto`).

use core::time::Duration;
use futures::StreamExt as _;
use futures::channel::mpsc;
use protocol::crypto::{Channel, CryptoError, Handshake, RoomRole};
use protocol::invite::{Invitation, ShareLink, ShortCode, websocket_url};
use protocol::signal::{
    AbortReason, AuthKind, ClientMessage, IceServer, PeerSignal, RoomRef, SIGNAL_VERSION,
    ServerMessage, TransferRole,
};
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::error::{Error, Result};
use crate::js::{self, Listener};

/// How long connecting to the signalling server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a joiner waits for the room's creator to answer the key exchange.
const PEER_ANSWER: Duration = Duration::from_secs(30);

enum WsEvent {
    Open,
    Text(String),
    Closed,
}

/// A WebSocket to the signalling server; closed on drop.
pub struct Ws {
    ws: WebSocket,
    rx: mpsc::UnboundedReceiver<WsEvent>,
    _listeners: [Listener; 4],
}

impl std::fmt::Debug for Ws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ws").finish_non_exhaustive()
    }
}

impl Drop for Ws {
    fn drop(&mut self) {
        let _ = self.ws.close();
    }
}

fn lost() -> Error {
    Error::Signalling("lost the signalling server".into())
}

impl Ws {
    async fn connect(server: &str) -> Result<Ws> {
        let url = websocket_url(server).map_err(|e| Error::Signalling(e.to_string()))?;
        let unreachable =
            || Error::Signalling(format!("cannot reach the signalling server at {server}"));
        let ws = WebSocket::new(&url).map_err(|_| unreachable())?;
        let (tx, rx) = mpsc::unbounded();
        let t = ws.unchecked_ref();
        let on = |tx: &mpsc::UnboundedSender<WsEvent>| tx.clone();
        let (a, b, c, d) = (on(&tx), on(&tx), on(&tx), tx);
        let listeners = [
            Listener::new(t, "open", move |_: web_sys::Event| {
                let _ = a.unbounded_send(WsEvent::Open);
            }),
            Listener::new(t, "message", move |e: MessageEvent| {
                if let Some(s) = e.data().as_string() {
                    let _ = b.unbounded_send(WsEvent::Text(s));
                }
            }),
            Listener::new(t, "close", move |_: CloseEvent| {
                let _ = c.unbounded_send(WsEvent::Closed);
            }),
            Listener::new(t, "error", move |_: web_sys::Event| {
                let _ = d.unbounded_send(WsEvent::Closed);
            }),
        ];
        let mut ws = Ws {
            ws,
            rx,
            _listeners: listeners,
        };
        let first = futures::select! {
            e = ws.rx.next() => e,
            _ = futures::FutureExt::fuse(js::sleep(CONNECT_TIMEOUT)) => None,
        };
        match first {
            Some(WsEvent::Open) => Ok(ws),
            _ => Err(unreachable()),
        }
    }

    fn send(&self, msg: &ClientMessage) -> Result<()> {
        self.ws.send_with_str(&msg.to_json()).map_err(|_| lost())
    }

    /// Next message from the server; room failures become errors.
    async fn recv(&mut self) -> Result<ServerMessage> {
        loop {
            match self.rx.next().await {
                Some(WsEvent::Text(t)) => {
                    let msg: ServerMessage = serde_json::from_str(&t).map_err(|_| {
                        Error::Signalling("the signalling server sent something unreadable".into())
                    })?;
                    return match msg.failure() {
                        Some(_) if msg == wrong_secret() => Err(Error::WrongSecret),
                        Some(text) => Err(Error::Signalling(text)),
                        None => Ok(msg),
                    };
                }
                Some(WsEvent::Open) => continue,
                Some(WsEvent::Closed) | None => {
                    return Err(Error::Signalling(
                        "the signalling server closed the connection".into(),
                    ));
                }
            }
        }
    }
}

fn wrong_secret() -> ServerMessage {
    ServerMessage::PeerAborted {
        reason: AbortReason::WrongSecret,
    }
}

/// A room this page created, waiting for the other peer.
#[derive(Debug)]
pub struct Created {
    ws: Ws,
    pub link: ShareLink,
    pub code: ShortCode,
    ice_servers: Vec<IceServer>,
}

/// A room with both peers in it and a key agreed.
pub struct Session {
    ws: Ws,
    channel: Channel,
    /// When this page learnt both peers were in the room ([`js::now`] clock).
    pub both_in_room: Duration,
    pub ice_servers: Vec<IceServer>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

pub async fn create(server: &str) -> Result<Created> {
    let mut ws = Ws::connect(server).await?;
    ws.send(&ClientMessage::Create {
        version: SIGNAL_VERSION,
    })?;
    match ws.recv().await? {
        ServerMessage::Created { room, number, .. } => Ok(Created {
            link: ShareLink::new(server, &room, &protocol::invite::generate_secret()),
            code: ShortCode::generate(number),
            ws,
            ice_servers: Vec::new(),
        }),
        _ => Err(Error::Signalling(
            "unexpected answer from the server".into(),
        )),
    }
}

impl Created {
    /// Wait for the other peer to join and run the PAKE with the password it chose.
    pub async fn wait_for_peer(mut self) -> Result<Session> {
        let mut joined_at = None;
        let (auth, msg) = loop {
            match self.ws.recv().await? {
                ServerMessage::PeerJoined => joined_at = Some(js::now()),
                ServerMessage::IceServers { servers, .. } => self.ice_servers = servers,
                ServerMessage::Pake { auth, msg } => break (auth, msg),
                _ => {
                    return Err(Error::Signalling(
                        "unexpected message while waiting for a peer".into(),
                    ));
                }
            }
        };
        let password = match auth {
            AuthKind::Link => self.link.password(),
            AuthKind::Code => self.code.password(),
        };
        let (hs, mine) = Handshake::start_b64(&password, &self.link.room, RoomRole::Creator);
        self.ws.send(&ClientMessage::Pake { auth, msg: mine })?;
        let channel = hs.finish_b64(&msg).map_err(crypto_error)?;
        Ok(Session {
            ws: self.ws,
            channel,
            both_in_room: joined_at.unwrap_or_else(js::now),
            ice_servers: self.ice_servers,
        })
    }
}

fn crypto_error(e: CryptoError) -> Error {
    match e {
        CryptoError::WrongSecret => Error::WrongSecret,
        other => Error::Signalling(other.to_string()),
    }
}

/// Join the room an invitation names; typed codes use `default_server`.
pub async fn join(invitation: &Invitation, default_server: &str) -> Result<Session> {
    let (server, room_ref, password, auth) = match invitation {
        Invitation::Link(l) => (
            l.server.as_str(),
            RoomRef::Id(l.room.clone()),
            l.password(),
            AuthKind::Link,
        ),
        Invitation::Code(c) => (
            default_server,
            RoomRef::Number(c.number),
            c.password(),
            AuthKind::Code,
        ),
    };
    let mut ws = Ws::connect(server).await?;
    ws.send(&ClientMessage::Join {
        version: SIGNAL_VERSION,
        room: room_ref,
    })?;
    let room = match ws.recv().await? {
        ServerMessage::Joined { room } => room,
        _ => {
            return Err(Error::Signalling(
                "unexpected answer from the server".into(),
            ));
        }
    };
    let both_in_room = js::now();
    let (hs, mine) = Handshake::start_b64(&password, &room, RoomRole::Joiner);
    ws.send(&ClientMessage::Pake { auth, msg: mine })?;
    let mut ice_servers = Vec::new();
    let theirs = {
        let answer = async {
            loop {
                match ws.recv().await? {
                    ServerMessage::Pake { msg, .. } => break Ok(msg),
                    ServerMessage::IceServers { servers, .. } => ice_servers = servers,
                    _ => {
                        break Err(Error::Signalling(
                            "unexpected message during key exchange".into(),
                        ));
                    }
                }
            }
        };
        futures::pin_mut!(answer);
        futures::select! {
            r = futures::FutureExt::fuse(answer) => r?,
            _ = futures::FutureExt::fuse(js::sleep(PEER_ANSWER)) => {
                return Err(Error::Signalling("the other peer did not answer the key exchange".into()));
            }
        }
    };
    let channel = hs.finish_b64(&theirs).map_err(crypto_error)?;
    Ok(Session {
        ws,
        channel,
        both_in_room,
        ice_servers,
    })
}

impl Session {
    /// Seal and send one signal to the other peer.
    pub fn send(&mut self, sig: &PeerSignal) -> Result<()> {
        let json = serde_json::to_vec(sig).expect("peer signals serialise");
        let data = self.channel.seal_b64(&json);
        self.ws.send(&ClientMessage::Sealed { data })
    }

    /// Next signal from the other peer. A signal that does not open means the other peer
    /// used another secret: the room is aborted so it learns too.
    pub async fn recv(&mut self) -> Result<PeerSignal> {
        loop {
            match self.ws.recv().await? {
                ServerMessage::Sealed { data } => {
                    return match self.channel.open_b64(&data) {
                        Ok(plain) => serde_json::from_slice(&plain).map_err(|_| {
                            Error::Signalling("the other peer sent an unreadable signal".into())
                        }),
                        Err(e) => {
                            if e == CryptoError::WrongSecret {
                                let _ = self.ws.send(&ClientMessage::Abort {
                                    reason: AbortReason::WrongSecret,
                                });
                            }
                            Err(crypto_error(e))
                        }
                    };
                }
                // Refreshed credentials: the connection already has its servers.
                ServerMessage::IceServers { .. } => continue,
                _ => {
                    return Err(Error::Signalling(
                        "unexpected message from the server".into(),
                    ));
                }
            }
        }
    }

    /// Tell the other peer which side of the transfer this page takes.
    pub fn send_hello(&mut self, role: TransferRole) -> Result<()> {
        self.send(&PeerSignal::Hello {
            version: SIGNAL_VERSION,
            role,
        })
    }

    /// Wait for the other peer's hello and return its role.
    pub async fn recv_hello(&mut self) -> Result<TransferRole> {
        match self.recv().await? {
            PeerSignal::Hello { version, role } => {
                if version != SIGNAL_VERSION {
                    return Err(Error::Connect(format!(
                        "the other peer runs an incompatible punchdrop (signalling v{version})"
                    )));
                }
                Ok(role)
            }
            _ => Err(Error::Connect("the other peer skipped the hello".into())),
        }
    }

    /// Tell the server this page gives up on the room.
    pub fn abort(&mut self, reason: AbortReason) {
        let _ = self.ws.send(&ClientMessage::Abort { reason });
    }
}
