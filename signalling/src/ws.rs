//! One WebSocket connection: parse, check limits, hand to the room registry, forward.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use futures::{SinkExt as _, StreamExt as _};
use protocol::signal::{
    AbortReason, ClientMessage, ErrorCode, MAX_SIGNAL_MESSAGE, RoomRef, SIGNAL_VERSION,
    ServerMessage,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

use crate::AppState;
use crate::admission::{Refusal, Slot};
use crate::audit::{self, Refused};
use crate::cluster::{self, Cluster, RemoteClient, Upstream};
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
    // With `--redis`: the node of this connection's room, when it is not this one.
    let mut upstream: Option<Upstream> = None;
    let mut upstream_check = tokio::time::interval_at(
        tokio::time::Instant::now() + cluster::LIVENESS_CHECK,
        cluster::LIVENESS_CHECK,
    );
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
            _ = upstream_check.tick(), if upstream.is_some() => {
                let (Some(c), Some(up)) = (&state.cluster, &upstream) else { continue };
                if !c.is_alive(&up.node).await {
                    // The room's node died, and the room with it.
                    tracing::debug!(peer = %who, "the room's node is gone");
                    let _ = sink.send(text(&ServerMessage::PeerLeft)).await;
                    break;
                }
            }
            _ = state.shutdown.cancelled() => {
                let _ = sink.send(text(&error(ErrorCode::ShuttingDown))).await;
                // A room on another node hears its client closed, not broke off.
                how = Departure::Closed;
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
                Some(Outgoing::Detached(replies)) => {
                    if let (Some(c), Some(up)) = (&state.cluster, upstream.take()) {
                        c.detach(&up);
                    }
                    in_a_room = member.is_some();
                    if !in_a_room {
                        // In no room again: it has as long as a new connection to enter one.
                        idle.as_mut().reset(tokio::time::Instant::now() + state.first_message_within);
                    }
                    let mut failed = false;
                    for m in replies {
                        if sink.send(text(&m)).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed { break; }
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
                let outcome = match &state.cluster {
                    Some(c) => {
                        let conn = (&mut member, &mut inbox, &mut upstream);
                        match across_nodes(&state, c, ip, &tx, conn, msg).await {
                            Routed::Here(msg) => {
                                let r = handle(&state, ip, &tx, (&mut member, &mut inbox), msg);
                                let r = inboxes_across(&state, c, r).await;
                                record(&state, c, &mut member, r).await
                            }
                            Routed::There => {
                                in_a_room = true;
                                continue;
                            }
                            Routed::Refused(code) => Err(code),
                        }
                    }
                    None => handle(&state, ip, &tx, (&mut member, &mut inbox), msg),
                };
                in_a_room |= matches!(outcome, Ok(Some(_)));
                let mut failed = false;
                for m in replies(&state, ip, &member, outcome) {
                    if sink.send(text(&m)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed { break; }
            }
        }
    }
    if let Some(m) = member {
        state.rooms.depart(&m, std::time::Instant::now(), how);
    }
    if let Some(r) = inbox.registered {
        state.inboxes.unregister(&r);
        if let Some(c) = &state.cluster
            && !state.inboxes.online(&r.id)
            && let Err(e) = c.release_inbox(&r.id).await
        {
            // Its record ends by itself within seconds.
            tracing::debug!(error = %e, "could not release an inbox's record");
        }
    }
    if let (Some(c), Some(up)) = (&state.cluster, upstream) {
        c.unproxy(&up, how);
    }
    tracing::debug!(peer = %who, "connection closed");
}

/// What a request's outcome sends back: its reply, or the error (audited where it says
/// something about the client). A `joined` reply brings the room's STUN/TURN servers and
/// credentials to both peers — only once both are in the room (a credential is an open
/// relay; one `create` must not buy it).
fn replies(
    state: &AppState,
    ip: IpAddr,
    member: &Option<Membership>,
    outcome: Result<Option<ServerMessage>, ErrorCode>,
) -> Vec<ServerMessage> {
    match outcome {
        Ok(Some(reply)) => {
            let ice = match (&reply, member) {
                (ServerMessage::Joined { room, .. }, Some(m)) => {
                    let ice = state.ice.message_for(room, &state.volunteers);
                    state.rooms.to_other(m, ice.clone());
                    Some(ice)
                }
                _ => None,
            };
            std::iter::once(reply).chain(ice).collect()
        }
        Ok(None) => Vec::new(),
        Err(code) => {
            tracing::debug!(peer = %redact_ip(ip), ?code, "request refused");
            if let Some(reason) = audited(code) {
                audit_refusal(state, reason, ip);
            }
            vec![error(code)]
        }
    }
}

/// Where a request is handled, with other nodes.
enum Routed {
    /// Here, as without them.
    Here(ClientMessage),
    /// Forwarded to the room's node; the answer comes back through the connection's outbox.
    There,
    Refused(ErrorCode),
}

/// Route a request when nodes share rooms: the limit on entering rooms is the deployment's;
/// a `join` or `reclaim` of a room that another node has makes this connection that room's
/// node's client (and everything it sends afterwards goes there).
async fn across_nodes(
    state: &AppState,
    c: &Arc<Cluster>,
    ip: IpAddr,
    tx: &mpsc::Sender<Outgoing>,
    (member, inbox, upstream): (
        &mut Option<Membership>,
        &mut InboxConn,
        &mut Option<Upstream>,
    ),
    msg: ClientMessage,
) -> Routed {
    if let Some(up) = upstream {
        return match c.forward(up, ip, msg).await {
            Ok(true) => Routed::There,
            Ok(false) => Routed::Refused(ErrorCode::NoPeer),
            Err(e) => Routed::Refused(e.into()),
        };
    }
    let free = member.is_none() && inbox.registered.is_none() && inbox.pending.is_none();
    let enters = matches!(
        msg,
        ClientMessage::Create { .. }
            | ClientMessage::Join { .. }
            | ClientMessage::Reclaim { .. }
            | ClientMessage::Knock { .. }
    );
    if free && enters {
        match c.room_allowed(ip).await {
            Ok(true) => {}
            Ok(false) => {
                state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Routed::Refused(ErrorCode::RateLimited);
            }
            // Without Redis the node's own limit stands in (a peer coming back into a room
            // here needs nothing shared).
            Err(e) => tracing::debug!(error = %e, "shared room limit unavailable"),
        }
    }
    // The node the request belongs on, and what to answer if that node is gone.
    let (node, gone) = if let Some(target) = room_named(&msg) {
        if !free || state.rooms.knows(&target) {
            return Routed::Here(msg);
        }
        match c.locate(&target).await {
            Ok(Some((_, node))) if node != c.node() => (node, ErrorCode::NoSuchRoom),
            Ok(_) => return Routed::Here(msg),
            Err(e) => return Routed::Refused(e.into()),
        }
    } else if let ClientMessage::Knock { inbox: id, .. } = &msg {
        // A drop into an inbox registered through another node is made there (nothing new
        // starts from a draining node: `handle` refuses it).
        let Ok(id) = protocol::inbox::InboxId::parse(id) else {
            return Routed::Here(msg);
        };
        if !free || state.inboxes.online(&id) || state.draining.is_cancelled() {
            return Routed::Here(msg);
        }
        match c.locate_inboxes(std::slice::from_ref(&id)).await {
            Ok(found) => match found.into_iter().next().flatten() {
                Some((node, _)) => (node, ErrorCode::InboxOffline),
                None => return Routed::Here(msg),
            },
            Err(e) => return Routed::Refused(e.into()),
        }
    } else {
        return Routed::Here(msg);
    };
    let up = c.proxy(node, tx.clone());
    match c.forward(&up, ip, msg).await {
        Ok(true) => {
            *upstream = Some(up);
            state
                .metrics
                .cluster_forwarded
                .fetch_add(1, Ordering::Relaxed);
            Routed::There
        }
        // Its node is gone: so is the room (or the inbox).
        Ok(false) => {
            c.unproxy(&up, Departure::Closed);
            Routed::Refused(gone)
        }
        Err(e) => {
            c.unproxy(&up, Departure::Closed);
            Routed::Refused(e.into())
        }
    }
}

/// The room a `join` or `reclaim` names.
fn room_named(msg: &ClientMessage) -> Option<RoomRef> {
    match msg {
        ClientMessage::Join { room, .. } => Some(room.clone()),
        ClientMessage::Reclaim { room, .. } => Some(RoomRef::Id(room.clone())),
        _ => None,
    }
}

/// With other nodes: an inbox registered here is recorded for them at once (a knock through
/// another node is then carried here), and a `look` also finds inboxes registered through
/// other nodes.
async fn inboxes_across(
    state: &AppState,
    c: &Cluster,
    outcome: Result<Option<ServerMessage>, ErrorCode>,
) -> Result<Option<ServerMessage>, ErrorCode> {
    match outcome {
        Ok(Some(ServerMessage::Registered { inbox })) => {
            if let Ok(id) = protocol::inbox::InboxId::parse(&inbox)
                && let Some(name) = state.inboxes.name(&id)
                && let Err(e) = c.claim_inbox(&id, name.as_deref()).await
            {
                // Recorded again within seconds by the node's own round.
                tracing::debug!(error = %e, "could not record an inbox");
            }
            Ok(Some(ServerMessage::Registered { inbox }))
        }
        Ok(Some(ServerMessage::Inboxes { mut inboxes })) => {
            let elsewhere: Vec<(usize, protocol::inbox::InboxId)> = inboxes
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.online)
                .filter_map(|(i, s)| Some((i, protocol::inbox::InboxId::parse(&s.inbox).ok()?)))
                .collect();
            let ids: Vec<_> = elsewhere.iter().map(|(_, id)| id.clone()).collect();
            let found = c.locate_inboxes(&ids).await.map_err(ErrorCode::from)?;
            for ((i, _), found) in elsewhere.into_iter().zip(found) {
                if let Some((_, name)) = found {
                    inboxes[i].online = true;
                    inboxes[i].name = name;
                }
            }
            Ok(Some(ServerMessage::Inboxes { inboxes }))
        }
        other => other,
    }
}

/// A room made here (or given a number) is recorded for the other nodes before its creator
/// hears of it; a number another node has is swapped for a free one. Without Redis the
/// room cannot be joined elsewhere: it is undone and the creator told to try again.
async fn record(
    state: &AppState,
    c: &Cluster,
    member: &mut Option<Membership>,
    outcome: Result<Option<ServerMessage>, ErrorCode>,
) -> Result<Option<ServerMessage>, ErrorCode> {
    let Some(m) = member.as_ref() else {
        return outcome;
    };
    match outcome {
        Ok(Some(ServerMessage::Created {
            room,
            number,
            expires_in_secs,
            reclaim,
        })) => {
            let recorded = async {
                c.claim_room(&room, state.rooms.longest_life()).await?;
                match number {
                    Some(n) => unique_number(state, c, m, n).await,
                    None => Ok(None),
                }
            };
            match recorded.await {
                Ok(number) => Ok(Some(ServerMessage::Created {
                    room,
                    number,
                    expires_in_secs,
                    reclaim,
                })),
                Err(code) => {
                    if let Some(m) = member.take() {
                        state
                            .rooms
                            .abort(&m, AbortReason::Failed, std::time::Instant::now());
                    }
                    Err(code)
                }
            }
        }
        Ok(Some(ServerMessage::Numbered { number })) => {
            match unique_number(state, c, m, number).await? {
                Some(number) => Ok(Some(ServerMessage::Numbered { number })),
                None => Err(ErrorCode::ServerBusy),
            }
        }
        other => other,
    }
}

/// Number `n` of `m`'s room, or another if a room elsewhere has it.
async fn unique_number(
    state: &AppState,
    c: &Cluster,
    m: &Membership,
    mut n: u32,
) -> Result<Option<u32>, ErrorCode> {
    for _ in 0..8 {
        if c.claim_number(n, &m.room, state.rooms.ttl()).await? {
            return Ok(Some(n));
        }
        n = state.rooms.renumber(m).ok_or(ErrorCode::ServerBusy)?;
    }
    Err(ErrorCode::ServerBusy)
}

/// Serve another node's client in a room here, as [`connection`] serves a socket: its
/// requests come through the cluster, and what the room has for it goes back there. It
/// ends when that node says the client left, when that node is no longer alive, or when
/// the room closes the place.
pub(crate) async fn remote_connection(
    state: Arc<AppState>,
    c: Arc<Cluster>,
    mut client: RemoteClient,
) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(OUTBOX);
    let mut member: Option<Membership> = None;
    let mut inbox = InboxConn::default();
    let mut how = Departure::BrokeOff;
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + cluster::LIVENESS_CHECK,
        cluster::LIVENESS_CHECK,
    );
    let (node, conn, ip) = (client.node.clone(), client.conn, client.ip);
    state.metrics.cluster_served.fetch_add(1, Ordering::Relaxed);
    let mut next = Some(client.first.clone());
    loop {
        let msg = match next.take() {
            Some(msg) => msg,
            None => tokio::select! {
                // The client's departure first: its queue ends with it.
                biased;
                _ = client.gone.changed() => {
                    how = (*client.gone.borrow()).unwrap_or(Departure::BrokeOff);
                    break;
                }
                _ = state.shutdown.cancelled() => {
                    c.to_remote(&node, conn, Outgoing::Final(error(ErrorCode::ShuttingDown))).await;
                    member = None;
                    break;
                }
                _ = check.tick() => {
                    if c.is_alive(&node).await { continue; }
                    // Taken for dead: should it live after all, its client hears the room
                    // is over for it rather than waiting for ever.
                    c.to_remote(&node, conn, Outgoing::Final(ServerMessage::PeerLeft)).await;
                    break;
                }
                out = rx.recv() => {
                    let Some(out) = out else { break };
                    let last = !matches!(out, Outgoing::Msg(_));
                    c.to_remote(&node, conn, out).await;
                    if last {
                        member = None;
                        break;
                    }
                    continue;
                }
                inbound = client.inbound.recv() => match inbound {
                    Some(msg) => msg,
                    None => {
                        how = (*client.gone.borrow()).unwrap_or(Departure::BrokeOff);
                        break;
                    }
                },
            },
        };
        let outcome = handle(&state, ip, &tx, (&mut member, &mut inbox), msg);
        let outcome = record(&state, &c, &mut member, outcome).await;
        let replies = replies(&state, ip, &member, outcome);
        if member.is_none() {
            // Refused, or it left: let it go with its answers in one message, so that its
            // node is free of this one before the client's next request.
            c.forget_remote(&node, conn);
            c.to_remote(&node, conn, Outgoing::Detached(replies)).await;
            return;
        }
        for m in replies {
            c.to_remote(&node, conn, Outgoing::Msg(m)).await;
        }
    }
    if let Some(m) = member {
        state.rooms.depart(&m, std::time::Instant::now(), how);
    }
    if let Some(r) = inbox.registered {
        state.inboxes.unregister(&r);
    }
    c.forget_remote(&node, conn);
}

/// Redis lost this node's records (it restarted empty): record its rooms and numbers again.
pub(crate) async fn record_rooms_again(state: &AppState, c: &Cluster) {
    let rooms = state.rooms.records(std::time::Instant::now());
    if let Err(e) = c.record_all(&rooms, state.rooms.longest_life()).await {
        tracing::warn!(error = %e, "could not record this node's rooms in redis again");
    }
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
