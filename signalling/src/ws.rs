//! One WebSocket connection: parse, check limits, hand to the room registry, forward.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use futures::{SinkExt as _, StreamExt as _};
use protocol::signal::{
    ClientMessage, ErrorCode, MAX_SIGNAL_MESSAGE, SIGNAL_VERSION, ServerMessage,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

use crate::AppState;
use crate::limits::redact_ip;
use crate::rooms::{Membership, Outgoing};

/// Frames above this are cut off by the WebSocket layer itself; between
/// [`MAX_SIGNAL_MESSAGE`] and this, the peer gets a clear [`ErrorCode::TooLarge`].
const HARD_FRAME_LIMIT: usize = 4 * MAX_SIGNAL_MESSAGE;

pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    // Taken while the HTTP server still tracks this request, so shutdown waits for it.
    let tracked = state.connections.token();
    ws.max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .on_upgrade(move |socket| async move {
            connection(socket, peer, state).await;
            drop(tracked);
        })
}

fn error(code: ErrorCode) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: code.explain().to_string(),
    }
}

fn text(msg: &ServerMessage) -> Message {
    Message::Text(Utf8Bytes::from(msg.to_json()))
}

async fn connection(socket: WebSocket, peer: SocketAddr, state: Arc<AppState>) {
    state.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let ip = peer.ip();
    let who = redact_ip(ip);
    tracing::debug!(peer = %who, "connection opened");
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
    let mut member: Option<Membership> = None;

    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                let _ = sink.send(text(&error(ErrorCode::ShuttingDown))).await;
                break;
            }
            out = rx.recv() => match out {
                Some(Outgoing::Msg(m)) => {
                    if sink.send(text(&m)).await.is_err() { break; }
                }
                Some(Outgoing::Final(m)) => {
                    let _ = sink.send(text(&m)).await;
                    // The room is already gone; do not "leave" it again.
                    member = None;
                    break;
                }
                None => break,
            },
            incoming = stream.next() => {
                let raw = match incoming {
                    Some(Ok(Message::Text(t))) => Some(t),
                    // Binary frames are never valid, but still count against the rate limit.
                    Some(Ok(Message::Binary(_))) => None,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        tracing::debug!(peer = %who, error = %e, "connection error");
                        break;
                    }
                };
                if !state.limits.message(ip) {
                    state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %who, "rate limited");
                    let _ = sink.send(text(&error(ErrorCode::RateLimited))).await;
                    continue;
                }
                let Some(raw) = raw else {
                    state.metrics.rejected_messages.fetch_add(1, Ordering::Relaxed);
                    let _ = sink.send(text(&error(ErrorCode::Malformed))).await;
                    continue;
                };
                if raw.len() > MAX_SIGNAL_MESSAGE {
                    state.metrics.rejected_messages.fetch_add(1, Ordering::Relaxed);
                    let _ = sink.send(text(&error(ErrorCode::TooLarge))).await;
                    break;
                }
                let msg = match serde_json::from_str::<ClientMessage>(raw.as_str()) {
                    Ok(m) => m,
                    Err(_) => {
                        state.metrics.rejected_messages.fetch_add(1, Ordering::Relaxed);
                        let _ = sink.send(text(&error(ErrorCode::Malformed))).await;
                        continue;
                    }
                };
                match handle(&state, ip, &tx, &mut member, msg) {
                    Ok(Some(reply)) => {
                        let room = match &reply {
                            ServerMessage::Created { room, .. } | ServerMessage::Joined { room } => Some(room.clone()),
                            _ => None,
                        };
                        if sink.send(text(&reply)).await.is_err() { break; }
                        // Each peer in a room learns its STUN/TURN servers and credentials.
                        if let Some(room) = room
                            && sink.send(text(&state.ice.message_for(&room))).await.is_err()
                        {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(code) => {
                        tracing::debug!(peer = %who, ?code, "request refused");
                        if sink.send(text(&error(code))).await.is_err() { break; }
                    }
                }
            }
        }
    }
    if let Some(m) = member {
        state.rooms.leave(&m);
    }
    tracing::debug!(peer = %who, "connection closed");
}

fn handle(
    state: &AppState,
    ip: std::net::IpAddr,
    tx: &mpsc::Sender<Outgoing>,
    member: &mut Option<Membership>,
    msg: ClientMessage,
) -> Result<Option<ServerMessage>, ErrorCode> {
    match msg {
        ClientMessage::Create { version } | ClientMessage::Join { version, .. }
            if version != SIGNAL_VERSION =>
        {
            Err(ErrorCode::UnsupportedVersion)
        }
        ClientMessage::Create { .. } => {
            if member.is_some() {
                return Err(ErrorCode::RoomFull);
            }
            if !state.limits.room(ip) {
                state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(ErrorCode::RateLimited);
            }
            let (m, number) = state.rooms.create(tx.clone(), std::time::Instant::now())?;
            let reply = ServerMessage::Created {
                room: m.room.clone(),
                number,
                expires_in_secs: state.rooms.ttl().as_secs(),
            };
            *member = Some(m);
            Ok(Some(reply))
        }
        ClientMessage::Join { room, .. } => {
            if member.is_some() {
                return Err(ErrorCode::RoomFull);
            }
            if matches!(room, protocol::signal::RoomRef::Number(_)) && !state.limits.room(ip) {
                state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(ErrorCode::RateLimited);
            }
            let m = state
                .rooms
                .join(tx.clone(), &room, std::time::Instant::now())?;
            let reply = ServerMessage::Joined {
                room: m.room.clone(),
            };
            *member = Some(m);
            Ok(Some(reply))
        }
        ClientMessage::Pake { auth, msg } => {
            let m = member.as_ref().ok_or(ErrorCode::NotInRoom)?;
            state.rooms.pake(m, auth, msg).map(|()| None)
        }
        ClientMessage::Sealed { data } => {
            let m = member.as_ref().ok_or(ErrorCode::NotInRoom)?;
            state.rooms.sealed(m, data).map(|()| None)
        }
        ClientMessage::Abort { reason } => {
            let m = member.take().ok_or(ErrorCode::NotInRoom)?;
            state.rooms.abort(&m, reason);
            Ok(None)
        }
    }
}
