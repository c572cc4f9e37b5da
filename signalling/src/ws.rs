//! One WebSocket connection: parse, check limits, hand to the room registry, forward.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use futures::{SinkExt as _, StreamExt as _};
use protocol::signal::{
    ClientMessage, ErrorCode, MAX_SIGNAL_MESSAGE, SIGNAL_VERSION, ServerMessage,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

use crate::AppState;
use crate::admission::{Refusal, Slot};
use crate::audit::{self, Refused};
use crate::inboxes::{Pending, Registration};
use crate::limits::redact_ip;
use crate::rooms::{Departure, Membership, Outgoing};

/// Frames above this are cut off by the WebSocket layer itself; between
/// [`MAX_SIGNAL_MESSAGE`] and this, the peer gets a clear [`ErrorCode::TooLarge`].
const HARD_FRAME_LIMIT: usize = 4 * MAX_SIGNAL_MESSAGE;
/// Buffers of one WebSocket: signalling messages are a few KiB, and thousands of peers wait
/// idle in rooms (tungstenite's defaults, 128 KiB each way, made an idle peer cost ≈ 134 KiB).
const READ_BUFFER: usize = 4 << 10;
const WRITE_BUFFER: usize = 4 << 10;
/// Messages a connection's outbox holds for it; a peer that does not read loses its room.
const OUTBOX: usize = 64;

pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let client = state.admission.client_ip(peer.ip(), &headers);
    if !state.admission.origin_ok(&headers) {
        return refuse(&state, Refusal::ForeignOrigin, client);
    }
    let slot = match state.admission.admit(client) {
        Ok(slot) => slot,
        Err(r) => return refuse(&state, r, client),
    };
    // Taken while the HTTP server still tracks this request, so shutdown waits for it.
    let tracked = state.connections.token();
    ws.max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            connection(socket, client, slot, state).await;
            drop(tracked);
        })
}

fn refuse(state: &AppState, why: Refusal, client: IpAddr) -> Response {
    tracing::debug!(?why, "connection refused");
    state.metrics.refused(why);
    audit_refusal(state, why.into(), client);
    let status = match why {
        Refusal::ForeignOrigin => StatusCode::FORBIDDEN,
        Refusal::TooManyFromClient => StatusCode::TOO_MANY_REQUESTS,
        Refusal::TooMany => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, why.explain()).into_response()
}

impl From<Refusal> for Refused {
    fn from(why: Refusal) -> Self {
        match why {
            Refusal::ForeignOrigin => Self::ForeignOrigin,
            Refusal::TooManyFromClient => Self::TooManyFromClient,
            Refusal::TooMany => Self::ServerFull,
        }
    }
}

/// Record a refusal in the audit log (a few per client per minute at most).
pub(crate) fn audit_refusal(state: &AppState, reason: Refused, client: IpAddr) {
    if state.limits.audit_refusal(client) {
        state.audit.record(audit::Event::Refused {
            reason,
            client: audit::client(client),
        });
    }
}

/// The refusals of requests the audit log records.
fn audited(code: ErrorCode) -> Option<Refused> {
    match code {
        ErrorCode::RateLimited => Some(Refused::RateLimited),
        ErrorCode::ShuttingDown => Some(Refused::Draining),
        ErrorCode::ServerBusy => Some(Refused::ServerFull),
        _ => None,
    }
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

async fn connection(socket: WebSocket, ip: IpAddr, _slot: Slot, state: Arc<AppState>) {
    state.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let who = redact_ip(ip);
    tracing::debug!(peer = %who, "connection opened");
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(OUTBOX);
    let mut member: Option<Membership> = None;
    let mut inbox = InboxConn::default();
    // A connection is for meeting in a room: one that does not create or join soon is idle.
    let idle = tokio::time::sleep(state.first_message_within);
    tokio::pin!(idle);
    let mut in_a_room = false;
    // A peer whose network went away without closing (an address change, a lid shut) would
    // hold its place in a room for ever: the pings' answers say it is still there.
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + state.ping_every,
        state.ping_every,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    // How it ended, for a held room to tell a stopped creator from an away one: broken off
    // (no close frame) unless the peer said goodbye or its pings went unanswered.
    let mut how = Departure::BrokeOff;

    loop {
        tokio::select! {
            _ = heartbeat.tick(), if in_a_room => {
                if last_heard.elapsed() >= state.ping_every * 3 {
                    tracing::debug!(peer = %who, "no answer to pings: connection dropped");
                    how = Departure::Silent;
                    break;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() { break; }
            }
            _ = state.shutdown.cancelled() => {
                let _ = sink.send(text(&error(ErrorCode::ShuttingDown))).await;
                // The room ends with the server (`Rooms::close_all`), not as if this peer had
                // left it.
                member = None;
                break;
            }
            // A draining server keeps rooms in progress, not inboxes: they wait for drops
            // that may never come, and register again (elsewhere, or after the restart).
            _ = state.draining.cancelled(), if inbox.registered.is_some() => {
                let _ = sink.send(text(&error(ErrorCode::ShuttingDown))).await;
                break;
            }
            () = &mut idle, if !in_a_room => {
                tracing::debug!(peer = %who, "idle connection closed");
                state.metrics.idle_closed.fetch_add(1, Ordering::Relaxed);
                let _ = sink.send(text(&error(ErrorCode::Idle))).await;
                break;
            }
            out = rx.recv() => match out {
                Some(Outgoing::Msg(m)) => {
                    tracing::trace!(peer = %who, kind = kind_of(&m.to_json()), "to peer");
                    if sink.send(text(&m)).await.is_err() { break; }
                }
                Some(Outgoing::Final(m)) => {
                    let _ = sink.send(text(&m)).await;
                    // The room is already gone; do not "leave" it again.
                    member = None;
                    break;
                }
                Some(Outgoing::Replaced) => {
                    tracing::debug!(peer = %who, "its place in the room was taken back by a new connection");
                    member = None;
                    break;
                }
                None => break,
            },
            incoming = stream.next() => {
                last_heard = tokio::time::Instant::now();
                let raw = match incoming {
                    Some(Ok(Message::Text(t))) => Some(t),
                    // Binary frames are never valid, but still count against the rate limit.
                    Some(Ok(Message::Binary(_))) => None,
                    // Pings and pongs cost the server too: they count, and are not errors.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        if state.limits.message(ip) {
                            continue;
                        }
                        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                        let _ = sink.send(text(&error(ErrorCode::RateLimited))).await;
                        continue;
                    }
                    Some(Ok(Message::Close(_))) => {
                        how = Departure::Closed;
                        break;
                    }
                    None => break,
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
                tracing::trace!(peer = %who, kind = kind_of(raw.as_str()), "from peer");
                match handle(&state, ip, &tx, (&mut member, &mut inbox), msg) {
                    Ok(Some(reply)) => {
                        in_a_room = true;
                        let joined = match (&reply, &member) {
                            (ServerMessage::Joined { room, .. }, Some(m)) => Some((room.clone(), m.clone())),
                            _ => None,
                        };
                        if sink.send(text(&reply)).await.is_err() { break; }
                        // STUN/TURN servers and credentials only once both peers are in the
                        // room (a credential is an open relay; one `create` must not buy it).
                        if let Some((room, m)) = joined {
                            let ice = state.ice.message_for(&room);
                            state.rooms.to_other(&m, ice.clone());
                            if sink.send(text(&ice)).await.is_err() { break; }
                        }
                    }
                    Ok(None) => {}
                    Err(code) => {
                        tracing::debug!(peer = %who, ?code, "request refused");
                        if let Some(reason) = audited(code) {
                            audit_refusal(&state, reason, ip);
                        }
                        if sink.send(text(&error(code))).await.is_err() { break; }
                    }
                }
            }
        }
    }
    if let Some(m) = member {
        state.rooms.depart(&m, std::time::Instant::now(), how);
    }
    if let Some(r) = inbox.registered {
        state.inboxes.unregister(&r);
    }
    tracing::debug!(peer = %who, "connection closed");
}

fn kind_of(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// A connection may take one place in one room, at the room rate limit.
fn may_enter(state: &AppState, ip: IpAddr, member: &Option<Membership>) -> Result<(), ErrorCode> {
    if member.is_some() {
        return Err(ErrorCode::RoomFull);
    }
    if !state.limits.room(ip) {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(ErrorCode::RateLimited);
    }
    Ok(())
}

/// A room was made: `(code, held)` say whether it has a number and is held.
fn audit_created(
    state: &AppState,
    room: &str,
    ip: IpAddr,
    (code, held): (bool, bool),
    inbox: bool,
) {
    state.audit.record(audit::Event::RoomCreated {
        room: audit::room(room),
        client: audit::client(ip),
        code,
        held,
        inbox,
    });
}

/// Whether a `created` reply hands out a reclaim token (the room is held).
fn reply_held(reply: &ServerMessage) -> bool {
    matches!(
        reply,
        ServerMessage::Created {
            reclaim: Some(_),
            ..
        }
    )
}

/// A connection that is (or is becoming) an inbox's ([`crate::inboxes`]).
#[derive(Debug, Default)]
struct InboxConn {
    pending: Option<Pending>,
    registered: Option<Registration>,
}

fn handle(
    state: &AppState,
    ip: std::net::IpAddr,
    tx: &mpsc::Sender<Outgoing>,
    (member, inbox): (&mut Option<Membership>, &mut InboxConn),
    msg: ClientMessage,
) -> Result<Option<ServerMessage>, ErrorCode> {
    match msg {
        ClientMessage::Create { version, .. }
        | ClientMessage::Join { version, .. }
        | ClientMessage::Reclaim { version, .. }
        | ClientMessage::Register { version, .. }
        | ClientMessage::Knock { version, .. }
        | ClientMessage::Look { version, .. }
            if version != SIGNAL_VERSION =>
        {
            Err(ErrorCode::UnsupportedVersion)
        }
        // Draining: rooms in progress go on (joins included), nothing new starts.
        ClientMessage::Create { .. }
        | ClientMessage::Knock { .. }
        | ClientMessage::Register { .. }
        | ClientMessage::Look { .. }
            if state.draining.is_cancelled() =>
        {
            Err(ErrorCode::ShuttingDown)
        }
        // An inbox's connection is its registration and nothing else; a room's, its room.
        ClientMessage::Create { .. }
        | ClientMessage::Join { .. }
        | ClientMessage::Reclaim { .. }
            if inbox.registered.is_some() || inbox.pending.is_some() =>
        {
            Err(ErrorCode::RoomFull)
        }
        ClientMessage::Register {
            inbox: id,
            key,
            name,
            ..
        } => {
            if inbox.registered.is_some() || inbox.pending.is_some() {
                return Err(ErrorCode::RoomFull);
            }
            may_enter(state, ip, member)?;
            let (pending, challenge) = Pending::start(&id, &key, name)?;
            inbox.pending = Some(pending);
            Ok(Some(challenge))
        }
        ClientMessage::Prove { sig } => {
            let pending = inbox.pending.take().ok_or(ErrorCode::NotInRoom)?;
            let (id, name) = pending.prove(&sig)?;
            let reply = ServerMessage::Registered {
                inbox: id.to_string(),
            };
            inbox.registered = Some(state.inboxes.register(id, tx.clone(), name));
            Ok(Some(reply))
        }
        ClientMessage::Look { inboxes, .. } => {
            // Rate-limited as entering a room is: ids are not to be probed in bulk.
            may_enter(state, ip, member)?;
            state.inboxes.look(&inboxes).map(Some)
        }
        ClientMessage::Knock {
            inbox: id, hold, ..
        } => {
            if inbox.registered.is_some() || inbox.pending.is_some() {
                return Err(ErrorCode::RoomFull);
            }
            may_enter(state, ip, member)?;
            let id = protocol::inbox::InboxId::parse(&id).map_err(|_| ErrorCode::Malformed)?;
            if !state.inboxes.online(&id) {
                return Err(ErrorCode::InboxOffline);
            }
            let now = std::time::Instant::now();
            let (m, _, reclaim) = state.rooms.create(tx.clone(), ip, now, false, hold)?;
            audit_created(state, &m.room, ip, (false, reclaim.is_some()), true);
            if let Err(code) = state.inboxes.knock(&id, &m.room) {
                // Ended, not left: a held room would wait for a creator that has no token.
                state
                    .rooms
                    .abort(&m, protocol::signal::AbortReason::Failed, now);
                return Err(code);
            }
            let reply = ServerMessage::Created {
                room: m.room.clone(),
                number: None,
                expires_in_secs: state.rooms.ttl().as_secs(),
                reclaim,
            };
            *member = Some(m);
            Ok(Some(reply))
        }
        ClientMessage::Create { code, hold, .. } => {
            may_enter(state, ip, member)?;
            let (m, number, reclaim) =
                state
                    .rooms
                    .create(tx.clone(), ip, std::time::Instant::now(), code, hold)?;
            let reply = ServerMessage::Created {
                room: m.room.clone(),
                number,
                expires_in_secs: state.rooms.ttl().as_secs(),
                reclaim,
            };
            audit_created(
                state,
                &m.room,
                ip,
                (number.is_some(), reply_held(&reply)),
                false,
            );
            *member = Some(m);
            Ok(Some(reply))
        }
        ClientMessage::Join { room, reclaim, .. } => {
            may_enter(state, ip, member)?;
            let now = std::time::Instant::now();
            let (m, reclaim) = state
                .rooms
                .join(tx.clone(), &room, reclaim.as_deref(), now)?;
            let reply = ServerMessage::Joined {
                room: m.room.clone(),
                reclaim,
            };
            *member = Some(m);
            Ok(Some(reply))
        }
        ClientMessage::Reclaim {
            room, token, lost, ..
        } => {
            may_enter(state, ip, member)?;
            let now = std::time::Instant::now();
            let m = state.rooms.reclaim(tx.clone(), &room, &token, lost, now)?;
            let reply = ServerMessage::Reclaimed {
                room: m.room.clone(),
            };
            *member = Some(m);
            Ok(Some(reply))
        }
        ClientMessage::ShowCode => {
            let m = member.as_ref().ok_or(ErrorCode::NotInRoom)?;
            let number = state.rooms.show_code(m)?;
            Ok(number.map(|number| ServerMessage::Numbered { number }))
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
            state.rooms.abort(&m, reason, std::time::Instant::now());
            Ok(None)
        }
    }
}
