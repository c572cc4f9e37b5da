//! The peer's side of signalling: create or join a room, run the PAKE, then exchange sealed
//! [`PeerSignal`]s with the other peer through the server.
//!
//! Once the PAKE is done, [`Session::spawn`] moves the WebSocket into a background task and
//! hands back channels. That task ending (server gone) closes the incoming channel; callers
//! treat that as fatal only while the data channel is not yet open.

use anyhow::{Context as _, anyhow, bail};
use futures::{SinkExt as _, StreamExt as _};
use protocol::crypto::{Channel, Handshake, RoomRole};
use protocol::invite::{Invitation, ShareLink, ShortCode, websocket_url};
use protocol::signal::{
    AbortReason, AuthKind, ClientMessage, IceServer, PeerSignal, RoomRef, SIGNAL_VERSION,
    ServerMessage,
};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a joiner waits for the room's creator to answer the key exchange (the creator
/// is already there; only a broken peer or server takes longer).
const PEER_ANSWER: std::time::Duration = std::time::Duration::from_secs(30);
/// How long connecting to the signalling server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A room this peer created, waiting for the other peer.
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
    /// When this peer learnt both peers were in the room.
    pub both_in_room: Instant,
    /// STUN/TURN servers (with credentials) the server handed out for this room.
    pub ice_servers: Vec<IceServer>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

async fn connect(server: &str) -> anyhow::Result<Ws> {
    let url = websocket_url(server)?;
    // No Nagle: signalling is small messages whose latency is connection setup time.
    let (ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
    )
    .await
    .map_err(|_| anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot reach the signalling server at {server}"))?;
    Ok(ws)
}

async fn send(ws: &mut Ws, msg: &ClientMessage) -> anyhow::Result<()> {
    ws.send(Message::text(msg.to_json()))
        .await
        .context("lost the signalling server")
}

/// Next message from the server; server errors become errors here.
async fn recv(ws: &mut Ws) -> anyhow::Result<ServerMessage> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let msg: ServerMessage = serde_json::from_str(t.as_str())
                    .context("the signalling server sent something unreadable")?;
                return match msg.failure() {
                    Some(text) => Err(anyhow!(text)),
                    None => Ok(msg),
                };
            }
            Some(Ok(Message::Close(_))) | None => {
                bail!("the signalling server closed the connection")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e).context("lost the signalling server"),
        }
    }
}

/// Create a room on `server`.
pub async fn create(server: &str) -> anyhow::Result<Created> {
    let mut ws = connect(server).await?;
    send(
        &mut ws,
        &ClientMessage::Create {
            version: SIGNAL_VERSION,
        },
    )
    .await?;
    match recv(&mut ws).await? {
        ServerMessage::Created { room, number, .. } => {
            let link = ShareLink::new(server, &room, &protocol::invite::generate_secret());
            let code = ShortCode::generate(number);
            Ok(Created {
                ws,
                link,
                code,
                ice_servers: Vec::new(),
            })
        }
        other => bail!("unexpected answer from the server: {other:?}"),
    }
}

impl Created {
    /// Wait for the other peer to join and run the PAKE with the password it chose.
    pub async fn wait_for_peer(mut self) -> anyhow::Result<Session> {
        let mut joined_at = None;
        let (auth, msg) = loop {
            match recv(&mut self.ws).await? {
                ServerMessage::PeerJoined => joined_at = Some(Instant::now()),
                ServerMessage::IceServers { servers, .. } => self.ice_servers = servers,
                ServerMessage::Pake { auth, msg } => break (auth, msg),
                other => bail!("unexpected message while waiting for a peer: {other:?}"),
            }
        };
        let password = match auth {
            AuthKind::Link => self.link.password(),
            AuthKind::Code => self.code.password(),
        };
        let (hs, mine) = Handshake::start_b64(&password, &self.link.room, RoomRole::Creator);
        send(&mut self.ws, &ClientMessage::Pake { auth, msg: mine }).await?;
        let channel = hs.finish_b64(&msg).map_err(|e| anyhow!("{e}"))?;
        Ok(Session {
            ws: self.ws,
            channel,
            both_in_room: joined_at.unwrap_or_else(Instant::now),
            ice_servers: self.ice_servers,
        })
    }
}

/// Join the room an invitation names. `default_server` is used for typed codes.
pub async fn join(invitation: &Invitation, default_server: &str) -> anyhow::Result<Session> {
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
    let mut ws = connect(server).await?;
    send(
        &mut ws,
        &ClientMessage::Join {
            version: SIGNAL_VERSION,
            room: room_ref,
        },
    )
    .await?;
    let room = match recv(&mut ws).await? {
        ServerMessage::Joined { room } => room,
        other => bail!("unexpected answer from the server: {other:?}"),
    };
    let both_in_room = Instant::now();
    let (hs, mine) = Handshake::start_b64(&password, &room, RoomRole::Joiner);
    send(&mut ws, &ClientMessage::Pake { auth, msg: mine }).await?;
    let mut ice_servers = Vec::new();
    let theirs = tokio::time::timeout(PEER_ANSWER, async {
        loop {
            match recv(&mut ws).await? {
                ServerMessage::Pake { msg, .. } => break Ok(msg),
                ServerMessage::IceServers { servers, .. } => ice_servers = servers,
                other => bail!("unexpected message during key exchange: {other:?}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("the other peer did not answer the key exchange"))??;
    let channel = hs.finish_b64(&theirs).map_err(|e| anyhow!("{e}"))?;
    Ok(Session {
        ws,
        channel,
        both_in_room,
        ice_servers,
    })
}

/// The live signalling link after the PAKE.
#[derive(Debug)]
pub struct Signals {
    pub outgoing: mpsc::UnboundedSender<PeerSignal>,
    /// Closes when the server connection ends (or the peer's messages stop making sense).
    pub incoming: mpsc::UnboundedReceiver<anyhow::Result<PeerSignal>>,
}

impl Session {
    /// Move the WebSocket into a background task. The first message each way is sealed
    /// `hello`; a peer whose hello fails to open used another secret: the room is aborted and
    /// the error is the first thing on `incoming`.
    pub fn spawn(self) -> Signals {
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<PeerSignal>();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let Session {
            mut ws,
            mut channel,
            ..
        } = self;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = out_rx.recv() => {
                        let Some(sig) = out else { break };
                        let json = serde_json::to_vec(&sig).expect("peer signals serialise");
                        let data = channel.seal_b64(&json);
                        if send(&mut ws, &ClientMessage::Sealed { data }).await.is_err() {
                            tracing::info!("signalling connection lost while sending");
                            break;
                        }
                    }
                    msg = recv(&mut ws) => {
                        let item = match msg {
                            Ok(ServerMessage::Sealed { data }) => match channel.open_b64(&data) {
                                Ok(plain) => serde_json::from_slice::<PeerSignal>(&plain)
                                    .map_err(|_| anyhow!("the other peer sent an unreadable signal")),
                                Err(e) => {
                                    if e == protocol::crypto::CryptoError::WrongSecret {
                                        let _ = send(&mut ws, &ClientMessage::Abort { reason: AbortReason::WrongSecret }).await;
                                    }
                                    Err(anyhow!("{e}"))
                                }
                            },
                            // Refreshed credentials: not needed once connected.
                            Ok(ServerMessage::IceServers { .. }) => continue,
                            Ok(other) => Err(anyhow!("unexpected message from the server: {other:?}")),
                            Err(e) => {
                                tracing::info!("signalling connection ended: {e:#}");
                                let _ = in_tx.send(Err(e));
                                break;
                            }
                        };
                        let fatal = item.is_err();
                        if in_tx.send(item).is_err() || fatal {
                            break;
                        }
                    }
                }
            }
            let _ = ws.close(None).await;
        });
        Signals {
            outgoing: out_tx,
            incoming: in_rx,
        }
    }
}
