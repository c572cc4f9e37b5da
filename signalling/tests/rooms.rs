//! End-to-end tests of the rendezvous server: a real [`signalling::Server`] on loopback, real
//! WebSocket clients (tokio-tungstenite) and plain HTTP over a raw `TcpStream`.
//!
//! Every wait is bounded by a timeout, so a misbehaving server fails a test instead of hanging
//! it. Each test spawns its own server, so rate limits and counters never leak between tests.

use futures::{SinkExt as _, StreamExt as _};
use protocol::signal::{
    AbortReason, AuthKind, ClientMessage, ErrorCode, MAX_SIGNAL_MESSAGE, RoomRef, SIGNAL_VERSION,
    ServerMessage,
};
use signalling::{Config, Server, ServerHandle};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

/// How long "nothing else arrives" is watched for.
const QUIET: Duration = Duration::from_millis(200);

fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    }
}

async fn spawn(config: Config) -> ServerHandle {
    timeout(WAIT, Server::spawn(config))
        .await
        .expect("server spawn timed out")
        .expect("server spawns")
}

async fn connect(handle: &ServerHandle) -> Ws {
    connect_addr(handle.local_addr()).await
}

async fn connect_addr(addr: SocketAddr) -> Ws {
    let url = format!("ws://{addr}/ws");
    let (ws, _response) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket connect timed out")
        .expect("WebSocket connects");
    ws
}

async fn send_frame(ws: &mut Ws, frame: Message) {
    timeout(WAIT, ws.send(frame))
        .await
        .expect("send timed out")
        .expect("send succeeds");
}

async fn send(ws: &mut Ws, msg: &ClientMessage) {
    send_frame(ws, Message::text(msg.to_json())).await;
}

/// The next server message, skipping pings, pongs and `ice_servers` (which both peers get once
/// the second joined; `ice_servers_come_only_once_both_peers_are_in` checks it). Panics on close,
/// binary or timeout.
async fn recv(ws: &mut Ws) -> ServerMessage {
    loop {
        let frame = timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a server message");
        match frame {
            Some(Ok(Message::Text(t))) => {
                let msg: ServerMessage = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("server sent invalid JSON {t:?}: {e}"));
                if matches!(msg, ServerMessage::IceServers { .. }) {
                    continue;
                }
                return msg;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a server message, got {other:?}"),
        }
    }
}

/// The connection ends within [`WAIT`] (close frame, EOF or reset) and sends no more messages
/// (but `ice_servers`, which a join may still have on the way).
async fn expect_closed(ws: &mut Ws) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = timeout(left, ws.next())
            .await
            .expect("timed out waiting for the connection to close");
        match frame {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(t))) if t.contains(r#""type":"ice_servers""#) => continue,
            Some(Ok(other)) => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

/// Nothing (but `ice_servers`) arrives for [`QUIET`].
async fn expect_silence(ws: &mut Ws) {
    let until = tokio::time::Instant::now() + QUIET;
    while let Ok(frame) = tokio::time::timeout_at(until, ws.next()).await {
        if let Some(Ok(Message::Text(t))) = &frame
            && t.as_str().starts_with(r#"{"type":"ice_servers""#)
        {
            continue;
        }
        panic!("expected no message, got {frame:?}");
    }
}

fn error(code: ErrorCode) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: code.explain().to_string(),
    }
}

/// A `create` whose creator shows a code (so the room has a number).
fn create_msg() -> ClientMessage {
    ClientMessage::Create {
        version: SIGNAL_VERSION,
        code: true,
        hold: false,
    }
}

fn join_msg(room: RoomRef) -> ClientMessage {
    ClientMessage::Join {
        version: SIGNAL_VERSION,
        room,
        reclaim: None,
    }
}

/// Create a held room (link only); returns its id and the creator's token.
async fn create_held(ws: &mut Ws) -> (String, String) {
    let hold = ClientMessage::Create {
        version: SIGNAL_VERSION,
        code: false,
        hold: true,
    };
    send(ws, &hold).await;
    match recv(ws).await {
        ServerMessage::Created {
            room,
            reclaim: Some(token),
            ..
        } => (room, token),
        other => panic!("expected Created with a token, got {other:?}"),
    }
}

/// Create a room; returns (room id, room number, expires_in_secs).
async fn create(ws: &mut Ws) -> (String, u32, u64) {
    send(ws, &create_msg()).await;
    match recv(ws).await {
        ServerMessage::Created {
            room,
            number,
            expires_in_secs,
            reclaim: None,
        } => (room, number.expect("a number, as asked"), expires_in_secs),
        other => panic!("expected Created, got {other:?}"),
    }
}

/// A creator and a joiner in one room, with Created/Joined/PeerJoined consumed.
async fn pair(handle: &ServerHandle) -> (Ws, Ws, String, u32) {
    let mut creator = connect(handle).await;
    let (room, number, _) = create(&mut creator).await;
    let mut joiner = connect(handle).await;
    send(&mut joiner, &join_msg(RoomRef::Id(room.clone()))).await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::Joined {
            room: room.clone(),
            reclaim: None
        }
    );
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerJoined);
    (creator, joiner, room, number)
}

/// `GET path` over HTTP/1.0; returns (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_full(addr, path).await;
    (status, body)
}

/// `GET path` over HTTP/1.0; returns (status, lowercased head, body).
async fn http_get_full(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("TCP connect");
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = timeout(WAIT, exchange)
        .await
        .expect("HTTP request timed out");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The value of one `punchdrop_*` sample in `/metrics` (on the admin listener).
async fn metric(handle: &ServerHandle, name: &str) -> u64 {
    let admin = handle.admin_addr().expect("tests serve /metrics");
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().expect("numeric sample"))
        })
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
}

/// Poll `/metrics` until `name` reads `value`, for at most [`WAIT`].
async fn wait_for_metric(handle: &ServerHandle, name: &str, value: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = metric(handle, name).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// 1.
#[tokio::test]
async fn create_join_pake_and_sealed_are_relayed() {
    let handle = spawn(config()).await;
    let mut creator = connect(&handle).await;
    let (room, number, expires_in_secs) = create(&mut creator).await;
    assert!(
        protocol::invite::valid_room_id(&room),
        "room id {room:?} is not a valid link room id"
    );
    assert!(
        (1..=999).contains(&number),
        "an idle server hands out 3-digit numbers, got {number}"
    );
    assert_eq!(expires_in_secs, Config::default().room_ttl.as_secs());

    let mut joiner = connect(&handle).await;
    send(&mut joiner, &join_msg(RoomRef::Id(room.clone()))).await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::Joined {
            room: room.clone(),
            reclaim: None
        }
    );
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerJoined);

    // The joiner picks the auth kind; the creator follows it.
    send(
        &mut joiner,
        &ClientMessage::Pake {
            auth: AuthKind::Link,
            msg: "am9pbmVyLXBha2U=".into(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut creator).await,
        ServerMessage::Pake {
            auth: AuthKind::Link,
            msg: "am9pbmVyLXBha2U=".into(),
        }
    );
    send(
        &mut creator,
        &ClientMessage::Pake {
            auth: AuthKind::Link,
            msg: "Y3JlYXRvci1wYWtl".into(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::Pake {
            auth: AuthKind::Link,
            msg: "Y3JlYXRvci1wYWtl".into(),
        }
    );

    // Sealed payloads pass through untouched, in order, both ways.
    let payloads = ["QQ==", "+/+/abc=", "x", &"Zm9v".repeat(500)];
    for data in payloads {
        send(&mut creator, &ClientMessage::Sealed { data: data.into() }).await;
    }
    for data in payloads {
        assert_eq!(
            recv(&mut joiner).await,
            ServerMessage::Sealed { data: data.into() }
        );
    }
    for data in payloads {
        send(&mut joiner, &ClientMessage::Sealed { data: data.into() }).await;
    }
    for data in payloads {
        assert_eq!(
            recv(&mut creator).await,
            ServerMessage::Sealed { data: data.into() }
        );
    }
    // Nobody hears their own messages echoed back.
    expect_silence(&mut creator).await;
    expect_silence(&mut joiner).await;
}

// 2.
#[tokio::test]
async fn join_by_number_and_rooms_take_one_joiner() {
    let handle = spawn(config()).await;
    let mut creator = connect(&handle).await;
    let (room, number, _) = create(&mut creator).await;

    let mut joiner = connect(&handle).await;
    send(&mut joiner, &join_msg(RoomRef::Number(number))).await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::Joined {
            room: room.clone(),
            reclaim: None
        }
    );
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerJoined);

    // The number is retired once someone joined; the id still names a (full) room.
    let mut late = connect(&handle).await;
    send(&mut late, &join_msg(RoomRef::Number(number))).await;
    assert_eq!(recv(&mut late).await, error(ErrorCode::NoSuchRoom));
    send(&mut late, &join_msg(RoomRef::Id(room.clone()))).await;
    assert_eq!(recv(&mut late).await, error(ErrorCode::RoomFull));

    // The pair is undisturbed and still relays.
    expect_silence(&mut creator).await;
    send(
        &mut joiner,
        &ClientMessage::Pake {
            auth: AuthKind::Code,
            msg: "Y29kZQ==".into(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut creator).await,
        ServerMessage::Pake {
            auth: AuthKind::Code,
            msg: "Y29kZQ==".into(),
        }
    );
}

// 3.
#[tokio::test]
async fn one_pake_per_peer() {
    let handle = spawn(config()).await;
    let (mut creator, mut joiner, _, _) = pair(&handle).await;
    let pake = |msg: &str| ClientMessage::Pake {
        auth: AuthKind::Code,
        msg: msg.into(),
    };

    send(&mut joiner, &pake("Zmlyc3Q=")).await;
    assert_eq!(
        recv(&mut creator).await,
        ServerMessage::Pake {
            auth: AuthKind::Code,
            msg: "Zmlyc3Q=".into(),
        }
    );
    send(&mut joiner, &pake("c2Vjb25k")).await;
    assert_eq!(recv(&mut joiner).await, error(ErrorCode::PakeAlreadySent));
    // The second guess never reaches the creator.
    expect_silence(&mut creator).await;

    // The creator's own single message is still allowed, and also only once.
    send(&mut creator, &pake("cmVwbHk=")).await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::Pake {
            auth: AuthKind::Code,
            msg: "cmVwbHk=".into(),
        }
    );
    send(&mut creator, &pake("YWdhaW4=")).await;
    assert_eq!(recv(&mut creator).await, error(ErrorCode::PakeAlreadySent));
    expect_silence(&mut joiner).await;
}

// 4.
#[tokio::test]
async fn abort_wrong_secret_reaches_peer_and_metrics() {
    let handle = spawn(config()).await;
    assert_eq!(metric(&handle, "punchdrop_pake_failures_total").await, 0);
    let (mut creator, mut joiner, room, _) = pair(&handle).await;

    send(
        &mut joiner,
        &ClientMessage::Abort {
            reason: AbortReason::WrongSecret,
        },
    )
    .await;
    assert_eq!(
        recv(&mut creator).await,
        ServerMessage::PeerAborted {
            reason: AbortReason::WrongSecret,
        }
    );
    // The aborting peer is out of the room; its reply also proves the abort was fully handled.
    send(&mut joiner, &ClientMessage::Sealed { data: "QQ".into() }).await;
    assert_eq!(recv(&mut joiner).await, error(ErrorCode::NotInRoom));
    // The room is gone for the other peer and for newcomers.
    send(&mut creator, &ClientMessage::Sealed { data: "QQ".into() }).await;
    assert_eq!(recv(&mut creator).await, error(ErrorCode::NoPeer));
    let mut late = connect(&handle).await;
    send(&mut late, &join_msg(RoomRef::Id(room))).await;
    assert_eq!(recv(&mut late).await, error(ErrorCode::NoSuchRoom));

    assert_eq!(metric(&handle, "punchdrop_pake_failures_total").await, 1);
    assert_eq!(metric(&handle, "punchdrop_rooms_active").await, 0);
}

#[tokio::test]
async fn abort_cancelled_is_not_a_pake_failure() {
    let handle = spawn(config()).await;
    let (mut creator, mut joiner, _, _) = pair(&handle).await;
    send(
        &mut creator,
        &ClientMessage::Abort {
            reason: AbortReason::Cancelled,
        },
    )
    .await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::PeerAborted {
            reason: AbortReason::Cancelled,
        }
    );
    send(&mut creator, &ClientMessage::Sealed { data: "QQ".into() }).await;
    assert_eq!(recv(&mut creator).await, error(ErrorCode::NotInRoom));
    assert_eq!(metric(&handle, "punchdrop_pake_failures_total").await, 0);
}

// 5.
#[tokio::test]
async fn disconnect_tells_the_other_peer() {
    let handle = spawn(config()).await;

    // Joiner closes cleanly.
    let (mut creator, mut joiner, _, _) = pair(&handle).await;
    timeout(WAIT, joiner.close(None))
        .await
        .expect("close timed out")
        .expect("close succeeds");
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerLeft);
    send(&mut creator, &ClientMessage::Sealed { data: "QQ".into() }).await;
    assert_eq!(recv(&mut creator).await, error(ErrorCode::NoPeer));

    // Creator vanishes without a close handshake.
    let (creator, mut joiner, room, _) = pair(&handle).await;
    drop(creator);
    assert_eq!(recv(&mut joiner).await, ServerMessage::PeerLeft);
    let mut late = connect(&handle).await;
    send(&mut late, &join_msg(RoomRef::Id(room))).await;
    assert_eq!(recv(&mut late).await, error(ErrorCode::NoSuchRoom));

    // A creator leaving an unjoined room frees both its id and its number.
    let mut lonely = connect(&handle).await;
    let (room, number, _) = create(&mut lonely).await;
    drop(lonely);
    // The server notices the drop asynchronously.
    wait_for_metric(&handle, "punchdrop_rooms_active", 0).await;
    let mut late = connect(&handle).await;
    send(&mut late, &join_msg(RoomRef::Id(room))).await;
    assert_eq!(recv(&mut late).await, error(ErrorCode::NoSuchRoom));
    send(&mut late, &join_msg(RoomRef::Number(number))).await;
    assert_eq!(recv(&mut late).await, error(ErrorCode::NoSuchRoom));
}

// 6.
#[tokio::test]
async fn bad_requests_get_exact_errors_and_connection_survives() {
    let handle = spawn(config()).await;
    let mut ws = connect(&handle).await;

    send(&mut ws, &join_msg(RoomRef::Id("nosuchroom234567".into()))).await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::NoSuchRoom));
    send(&mut ws, &join_msg(RoomRef::Number(123_456))).await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::NoSuchRoom));

    send(
        &mut ws,
        &ClientMessage::Create {
            version: SIGNAL_VERSION + 1,
            code: false,
            hold: false,
        },
    )
    .await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::UnsupportedVersion));
    send(
        &mut ws,
        &ClientMessage::Join {
            version: 0,
            room: RoomRef::Number(1),
            reclaim: None,
        },
    )
    .await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::UnsupportedVersion));

    for junk in [
        "not json",
        "",
        r#"{"type":"create"}"#,
        r#"{"type":"create","version":1,"extra":2}"#,
        r#"{"type":"teleport","version":1}"#,
        r#"{"type":"created","room":"r","number":1,"expires_in_secs":1}"#,
    ] {
        send_frame(&mut ws, Message::text(junk)).await;
        assert_eq!(
            recv(&mut ws).await,
            error(ErrorCode::Malformed),
            "for {junk:?}"
        );
    }
    send_frame(
        &mut ws,
        Message::binary(create_msg().to_json().into_bytes()),
    )
    .await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::Malformed));

    // Still usable: none of the above put the connection in a room or closed it.
    let (room, _, _) = create(&mut ws).await;
    assert!(protocol::invite::valid_room_id(&room));
}

// 7.
#[tokio::test]
async fn oversized_message_is_refused_and_closes() {
    let handle = spawn(config()).await;
    let (mut creator, mut joiner, _, _) = pair(&handle).await;

    // Exactly at the limit is fine.
    let envelope = ClientMessage::Sealed {
        data: String::new(),
    }
    .to_json()
    .len();
    let at_limit = "A".repeat(MAX_SIGNAL_MESSAGE - envelope);
    let msg = ClientMessage::Sealed {
        data: at_limit.clone(),
    };
    assert_eq!(msg.to_json().len(), MAX_SIGNAL_MESSAGE);
    send(&mut creator, &msg).await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::Sealed { data: at_limit }
    );

    // One byte over (and well under the 4x hard frame limit) gets a clear error, then close.
    let over = ClientMessage::Sealed {
        data: "A".repeat(MAX_SIGNAL_MESSAGE - envelope + 1),
    };
    assert_eq!(over.to_json().len(), MAX_SIGNAL_MESSAGE + 1);
    send(&mut creator, &over).await;
    assert_eq!(recv(&mut creator).await, error(ErrorCode::TooLarge));
    expect_closed(&mut creator).await;
    // Nothing was forwarded; the peer learns that the other side left.
    assert_eq!(recv(&mut joiner).await, ServerMessage::PeerLeft);

    // A big non-JSON text is also refused for size, not parsed.
    let mut ws = connect(&handle).await;
    send_frame(&mut ws, Message::text("x".repeat(3 * MAX_SIGNAL_MESSAGE))).await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::TooLarge));
    expect_closed(&mut ws).await;
}

#[tokio::test]
async fn frame_over_hard_limit_closes_connection() {
    let handle = spawn(config()).await;
    let mut ws = connect(&handle).await;
    // The server may cut the connection while this is still being written.
    let _ = timeout(
        WAIT,
        ws.send(Message::text("x".repeat(4 * MAX_SIGNAL_MESSAGE + 1))),
    )
    .await
    .expect("send timed out");
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, ws.next())
            .await
            .expect("connection stayed open")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Text(t))) => {
                let m: ServerMessage = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(m, error(ErrorCode::TooLarge));
            }
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
    // The server itself is fine.
    let (status, _) = http_get(handle.local_addr(), "/healthz").await;
    assert_eq!(status, 200);
}

// 8.
#[tokio::test]
async fn message_rate_limit() {
    let handle = spawn(Config {
        messages_per_sec: 1,
        messages_burst: 3,
        ..config()
    })
    .await;
    let mut ws = connect(&handle).await;
    for _ in 0..10 {
        send(&mut ws, &ClientMessage::Sealed { data: "QQ".into() }).await;
    }
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(recv(&mut ws).await);
    }
    // The burst passes through to the normal handling...
    for r in &replies[..3] {
        assert_eq!(*r, error(ErrorCode::NotInRoom));
    }
    // ...then the limiter answers (one more may pass if a second ticked by).
    let limited = replies
        .iter()
        .filter(|r| **r == error(ErrorCode::RateLimited))
        .count();
    assert!(limited >= 1, "no RateLimited in {replies:?}");
    assert!(
        replies
            .iter()
            .all(|r| *r == error(ErrorCode::RateLimited) || *r == error(ErrorCode::NotInRoom)),
        "{replies:?}"
    );
    assert!(metric(&handle, "punchdrop_rate_limited_total").await >= 1);
}

#[tokio::test]
async fn binary_frames_count_against_rate_limit() {
    let handle = spawn(Config {
        messages_per_sec: 1,
        messages_burst: 3,
        ..config()
    })
    .await;
    let mut ws = connect(&handle).await;
    for _ in 0..10 {
        send_frame(&mut ws, Message::binary(vec![0u8; 16])).await;
    }
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(recv(&mut ws).await);
    }
    assert!(
        replies.contains(&error(ErrorCode::RateLimited)),
        "binary frames bypass the rate limit: {replies:?}"
    );
}

#[tokio::test]
async fn room_creation_rate_limit() {
    let handle = spawn(Config {
        rooms_per_min: 2,
        ..config()
    })
    .await;
    let mut first = connect(&handle).await;
    create(&mut first).await;
    let mut second = connect(&handle).await;
    create(&mut second).await;
    let mut third = connect(&handle).await;
    send(&mut third, &create_msg()).await;
    assert_eq!(recv(&mut third).await, error(ErrorCode::RateLimited));
    // Joining shares that limit: by number (sweeping the short numbers is how rooms would be
    // squatted) and by id (probing for live rooms).
    send(&mut third, &join_msg(RoomRef::Number(999_999))).await;
    assert_eq!(recv(&mut third).await, error(ErrorCode::RateLimited));
    send(&mut third, &join_msg(RoomRef::Id("nosuchroom1234".into()))).await;
    assert_eq!(recv(&mut third).await, error(ErrorCode::RateLimited));
}

// 9.
#[tokio::test]
async fn unjoined_room_expires() {
    let ttl = Duration::from_millis(300);
    let handle = spawn(Config {
        room_ttl: ttl,
        ..config()
    })
    .await;
    let mut creator = connect(&handle).await;
    let started = Instant::now();
    let (room, number, expires_in_secs) = create(&mut creator).await;
    assert_eq!(expires_in_secs, 0);

    let expired = timeout(Duration::from_secs(2), recv(&mut creator))
        .await
        .expect("no Expired within 2 s");
    assert_eq!(expired, error(ErrorCode::Expired));
    let elapsed = started.elapsed();
    assert!(elapsed >= ttl, "expired early, after {elapsed:?}");
    expect_closed(&mut creator).await;

    let mut late = connect(&handle).await;
    send(&mut late, &join_msg(RoomRef::Id(room))).await;
    assert_eq!(recv(&mut late).await, error(ErrorCode::NoSuchRoom));
    send(&mut late, &join_msg(RoomRef::Number(number))).await;
    assert_eq!(recv(&mut late).await, error(ErrorCode::NoSuchRoom));

    assert_eq!(metric(&handle, "punchdrop_rooms_expired_total").await, 1);
    assert_eq!(metric(&handle, "punchdrop_rooms_active").await, 0);
}

// A joined room's lifetime is a unit test of `rooms` on virtual time, and
// `a_joined_room_ends_at_its_lifetime` below.

// 10.
#[tokio::test]
async fn healthz_is_ok() {
    let handle = spawn(config()).await;
    let (status, body) = http_get(handle.local_addr(), "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");
}

// 10b. The web app: the page for `/` and share links (or, in a build without the generated
// client, how to build it), its static files with their types, and nothing else.
#[tokio::test]
async fn web_app_and_share_pages_are_served() {
    let handle = spawn(config()).await;
    let addr = handle.local_addr();
    let (status, head, body) = http_get_full(addr, "/").await;
    match status {
        200 => {
            assert!(head.contains("content-type: text/html"), "{head}");
            assert!(
                head.contains("content-security-policy: default-src 'self'"),
                "{head}"
            );
            // The page connects to its own origin only, and no opener keeps a handle on it.
            assert!(head.contains("connect-src 'self';"), "{head}");
            assert!(
                head.contains("cross-origin-opener-policy: same-origin"),
                "{head}"
            );
            assert!(body.contains("/app.js"), "{body}");
            let (status, _, share) = http_get_full(addr, "/r/abcdefghjkmnpqrs").await;
            assert_eq!(status, 200);
            assert_eq!(share, body, "a share link serves the app");
        }
        503 => assert!(body.contains("cargo xtask web"), "{body}"),
        other => panic!("GET / answered {other}: {body}"),
    }
    for (path, kind) in [
        ("/app.js", "text/javascript"),
        ("/sinks.js", "text/javascript"),
        ("/device.js", "text/javascript"),
        ("/sw.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let (status, head, _) = http_get_full(addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
    }
    for path in [
        // The operator's counters are not on the clients' listener.
        "/metrics",
        "/r/not-a-room!",
        "/index.html",
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/nope.js",
    ] {
        let (status, _, _) = http_get_full(addr, path).await;
        assert_eq!(status, 404, "{path}");
    }
}

// 11.
#[tokio::test]
async fn graceful_shutdown_tells_clients() {
    let handle = spawn(config()).await;
    let addr = handle.local_addr();
    let (mut creator, mut joiner, _, _) = pair(&handle).await;
    let mut idle = connect(&handle).await;

    timeout(WAIT, handle.shutdown())
        .await
        .expect("shutdown did not finish within 5 s");

    for ws in [&mut creator, &mut joiner, &mut idle] {
        // A room member may first hear that its peer (also shutting down) left.
        let mut msg = recv(ws).await;
        if msg == ServerMessage::PeerLeft {
            msg = recv(ws).await;
        }
        assert_eq!(msg, error(ErrorCode::ShuttingDown));
        expect_closed(ws).await;
    }

    // Nobody is listening any more.
    let again = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out");
    assert!(again.is_err(), "server still accepts connections");
}

/// Like `main`: the runtime goes away as soon as `shutdown` returns, so peers are only told if
/// `shutdown` really waits for the connections.
#[tokio::test]
async fn shutdown_returns_after_peers_were_told() {
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let handle = rt.block_on(Server::spawn(config())).expect("server spawns");
        let _ = addr_tx.send(handle.local_addr());
        if rt.block_on(go_rx).is_ok() {
            rt.block_on(handle.shutdown());
        }
        drop(rt);
        let _ = done_tx.send(());
    });
    let addr = timeout(WAIT, addr_rx)
        .await
        .expect("server start timed out")
        .expect("server started");
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect_addr(addr).await);
    }
    // Make sure the server has accepted every connection as a WebSocket peer.
    for ws in &mut clients {
        send(ws, &ClientMessage::Sealed { data: "QQ".into() }).await;
        assert_eq!(recv(ws).await, error(ErrorCode::NotInRoom));
    }
    go_tx.send(()).expect("server thread alive");
    timeout(WAIT, done_rx)
        .await
        .expect("shutdown did not finish within 5 s")
        .expect("server thread finished");
    for ws in &mut clients {
        assert_eq!(recv(ws).await, error(ErrorCode::ShuttingDown));
        expect_closed(ws).await;
    }
}

// 12.
#[tokio::test]
async fn room_state_errors() {
    let handle = spawn(config()).await;

    // Not in a room yet.
    let mut ws = connect(&handle).await;
    send(
        &mut ws,
        &ClientMessage::Pake {
            auth: AuthKind::Link,
            msg: "QQ".into(),
        },
    )
    .await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::NotInRoom));
    send(&mut ws, &ClientMessage::Sealed { data: "QQ".into() }).await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::NotInRoom));
    send(
        &mut ws,
        &ClientMessage::Abort {
            reason: AbortReason::Cancelled,
        },
    )
    .await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::NotInRoom));

    // In a room, but alone.
    let (room, _, _) = create(&mut ws).await;
    send(&mut ws, &ClientMessage::Sealed { data: "QQ".into() }).await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::NoPeer));
    send(
        &mut ws,
        &ClientMessage::Pake {
            auth: AuthKind::Link,
            msg: "ZWFybHk=".into(),
        },
    )
    .await;
    assert_eq!(recv(&mut ws).await, error(ErrorCode::NoPeer));

    // A PAKE that was refused for lack of a peer was never delivered, so it does not use up
    // the creator's single attempt.
    let mut joiner = connect(&handle).await;
    send(&mut joiner, &join_msg(RoomRef::Id(room.clone()))).await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::Joined {
            room,
            reclaim: None
        }
    );
    assert_eq!(recv(&mut ws).await, ServerMessage::PeerJoined);
    send(
        &mut ws,
        &ClientMessage::Pake {
            auth: AuthKind::Link,
            msg: "bm93".into(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut joiner).await,
        ServerMessage::Pake {
            auth: AuthKind::Link,
            msg: "bm93".into(),
        }
    );
    expect_silence(&mut ws).await;
}

#[tokio::test]
async fn ice_servers_come_only_once_both_peers_are_in() {
    let secret = signalling::credentials::TurnSecret::new(b"shared".to_vec());
    let handle = spawn(Config {
        ice: signalling::IceSettings {
            stun_urls: vec!["stun:198.51.100.1:3478".into()],
            turn_urls: vec!["turn:198.51.100.1:3478?transport=udp".into()],
            secret: Some(secret.clone()),
            credential_ttl: Duration::from_secs(3600),
        },
        ..config()
    })
    .await;
    let mut a = connect(&handle).await;
    send(&mut a, &create_msg()).await;
    let room = match next_raw(&mut a).await {
        ServerMessage::Created { room, .. } => room,
        other => panic!("{other:?}"),
    };
    // A `create` alone buys no TURN credential (it is an open relay for its lifetime).
    assert_no_message_within(&mut a, QUIET).await;
    let check = |msg: ServerMessage| match msg {
        ServerMessage::IceServers {
            servers,
            expires_in_secs,
        } => {
            assert_eq!(expires_in_secs, 3600);
            assert_eq!(servers[0].urls, vec!["stun:198.51.100.1:3478".to_string()]);
            assert_eq!(servers[0].username, None);
            let user = servers[1].username.clone().unwrap();
            let pass = servers[1].credential.clone().unwrap();
            let now = std::time::SystemTime::now();
            assert_eq!(
                secret.check(&user, now).unwrap(),
                pass,
                "a valid REST credential"
            );
            assert!(
                user.ends_with(&secret.room_tag(&room)),
                "bound to this room"
            );
            user
        }
        other => panic!("expected ice_servers, got {other:?}"),
    };
    let mut b = connect(&handle).await;
    send(&mut b, &join_msg(RoomRef::Id(room.clone()))).await;
    assert!(matches!(
        next_raw(&mut b).await,
        ServerMessage::Joined { .. }
    ));
    let ub = check(next_raw(&mut b).await);
    assert!(matches!(next_raw(&mut a).await, ServerMessage::PeerJoined));
    let ua = check(next_raw(&mut a).await);
    assert_eq!(
        ua.split(':').nth(1),
        ub.split(':').nth(1),
        "same room, same tag"
    );
    handle.shutdown().await;
}

/// Not even `ice_servers` arrives for `within`.
async fn assert_no_message_within(ws: &mut Ws, within: Duration) {
    if let Ok(frame) = timeout(within, ws.next()).await {
        panic!("expected no message, got {frame:?}");
    }
}

/// The next message, `ice_servers` included.
async fn next_raw(ws: &mut Ws) -> ServerMessage {
    loop {
        match timeout(WAIT, ws.next()).await.expect("timed out") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a server message, got {other:?}"),
        }
    }
}

// 13. Abuse limits: each of these was a hole a hostile client could use.

/// A WebSocket to `handle` from the loopback address `from`, with extra request headers; the
/// HTTP status when the server refuses the upgrade.
async fn connect_as(
    handle: &ServerHandle,
    from: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = format!("ws://{}/ws", handle.local_addr())
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let tcp = timeout(WAIT, socket.connect(handle.local_addr()))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connects");
    match timeout(
        WAIT,
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("WebSocket handshake timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("handshake failed otherwise: {e}"),
    }
}

#[tokio::test]
async fn a_connection_that_never_creates_or_joins_is_closed() {
    let handle = spawn(Config {
        first_message_within: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut idle = connect(&handle).await;
    let mut creator = connect(&handle).await;
    create(&mut creator).await;
    let started = Instant::now();
    assert_eq!(recv(&mut idle).await, error(ErrorCode::Idle));
    expect_closed(&mut idle).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    // A connection in a room is waiting for its peer, not idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    expect_silence(&mut creator).await;
    assert_eq!(
        metric(&handle, "punchdrop_idle_connections_closed_total").await,
        1
    );
}

#[tokio::test]
async fn connections_are_capped_per_client_and_in_total() {
    let handle = spawn(Config {
        admission: signalling::admission::AdmissionConfig {
            max_connections: 3,
            max_connections_per_client: 2,
            ..Default::default()
        },
        ..config()
    })
    .await;
    let first = connect_as(&handle, "127.0.0.1", &[]).await.unwrap();
    let _second = connect_as(&handle, "127.0.0.1", &[]).await.unwrap();
    assert_eq!(
        connect_as(&handle, "127.0.0.1", &[]).await.unwrap_err(),
        429
    );
    // Another client is still served, up to the total.
    let _third = connect_as(&handle, "127.0.0.2", &[]).await.unwrap();
    assert_eq!(
        connect_as(&handle, "127.0.0.3", &[]).await.unwrap_err(),
        503
    );
    // A closed connection gives its place back.
    drop(first);
    wait_for_metric(&handle, "punchdrop_connections_open", 2).await;
    let _again = connect_as(&handle, "127.0.0.1", &[]).await.unwrap();
    let refused =
        |reason: &str| format!("punchdrop_connections_refused_total{{reason=\"{reason}\"}}");
    assert_eq!(metric(&handle, &refused("client_cap")).await, 1);
    assert_eq!(metric(&handle, &refused("total_cap")).await, 1);
}

#[tokio::test]
async fn pings_count_against_the_rate_limit() {
    let handle = spawn(Config {
        messages_per_sec: 1,
        messages_burst: 5,
        ..config()
    })
    .await;
    let mut ws = connect(&handle).await;
    create(&mut ws).await;
    for _ in 0..10 {
        send_frame(&mut ws, Message::Ping(vec![1].into())).await;
    }
    assert_eq!(recv(&mut ws).await, error(ErrorCode::RateLimited));
    assert!(metric(&handle, "punchdrop_rate_limited_total").await >= 1);
}

#[tokio::test]
async fn browser_connections_from_foreign_origins_are_refused() {
    let handle = spawn(config()).await;
    let own = format!("http://{}", handle.local_addr());
    // Programs send no Origin; a page of this server sends its own.
    connect_as(&handle, "127.0.0.1", &[]).await.unwrap();
    connect_as(&handle, "127.0.0.1", &[("origin", &own)])
        .await
        .unwrap();
    assert_eq!(
        connect_as(&handle, "127.0.0.1", &[("origin", "https://evil.example")])
            .await
            .unwrap_err(),
        403
    );
    assert_eq!(
        metric(
            &handle,
            "punchdrop_connections_refused_total{reason=\"origin\"}"
        )
        .await,
        1
    );
    // Behind a proxy, the configured public origin is the one.
    let handle = spawn(Config {
        admission: signalling::admission::AdmissionConfig {
            public_origin: Some("https://drop.example".into()),
            ..Default::default()
        },
        ..config()
    })
    .await;
    let own = format!("http://{}", handle.local_addr());
    connect_as(&handle, "127.0.0.1", &[("origin", "https://drop.example")])
        .await
        .unwrap();
    assert_eq!(
        connect_as(&handle, "127.0.0.1", &[("origin", &own)])
            .await
            .unwrap_err(),
        403
    );
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let one_each = signalling::admission::AdmissionConfig {
        max_connections_per_client: 1,
        ..Default::default()
    };
    let xff = |ip| [("x-forwarded-for", ip)];
    // From a trusted proxy, each forwarded client has its own allowance.
    let handle = spawn(Config {
        admission: signalling::admission::AdmissionConfig {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
            ..one_each.clone()
        },
        ..config()
    })
    .await;
    let _a = connect_as(&handle, "127.0.0.1", &xff("203.0.113.1"))
        .await
        .unwrap();
    let _b = connect_as(&handle, "127.0.0.1", &xff("203.0.113.2"))
        .await
        .unwrap();
    assert_eq!(
        connect_as(&handle, "127.0.0.1", &xff("203.0.113.1"))
            .await
            .unwrap_err(),
        429
    );
    // From anyone else the header is ignored: it cannot buy a fresh allowance.
    let handle = spawn(Config {
        admission: one_each,
        ..config()
    })
    .await;
    let _a = connect_as(&handle, "127.0.0.1", &xff("203.0.113.1"))
        .await
        .unwrap();
    assert_eq!(
        connect_as(&handle, "127.0.0.1", &xff("203.0.113.2"))
            .await
            .unwrap_err(),
        429
    );
}

#[tokio::test]
async fn a_half_sent_request_is_cut_off() {
    let handle = spawn(Config {
        header_read_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut tcp = TcpStream::connect(handle.local_addr()).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    // The server answers 408 or just closes; either way the connection ends.
    timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("a slow request kept its connection")
        .ok();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    let head = String::from_utf8_lossy(&rest);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 408"),
        "{head}"
    );
}

#[tokio::test]
async fn a_joined_room_ends_at_its_lifetime() {
    let handle = spawn(Config {
        room_max_lifetime: Duration::from_millis(400),
        ..config()
    })
    .await;
    let (mut creator, mut joiner, _, _) = pair(&handle).await;
    let started = Instant::now();
    assert_eq!(recv(&mut creator).await, error(ErrorCode::Expired));
    assert_eq!(recv(&mut joiner).await, error(ErrorCode::Expired));
    assert!(started.elapsed() >= Duration::from_millis(300));
    expect_closed(&mut creator).await;
    expect_closed(&mut joiner).await;
    assert_eq!(
        metric(&handle, "punchdrop_rooms_lifetime_ended_total").await,
        1
    );
}

#[tokio::test]
async fn a_room_has_a_number_only_when_its_creator_shows_a_code() {
    let handle = spawn(config()).await;
    let mut creator = connect(&handle).await;
    send(
        &mut creator,
        &ClientMessage::Create {
            version: SIGNAL_VERSION,
            code: false,
            hold: false,
        },
    )
    .await;
    let ServerMessage::Created { number: None, .. } = recv(&mut creator).await else {
        panic!("a link-only room got a number");
    };
    // Nobody can join it by number; the misses are counted (sweeping shows).
    let mut sweeper = connect(&handle).await;
    for n in [1, 2, 3] {
        send(&mut sweeper, &join_msg(RoomRef::Number(n))).await;
        assert_eq!(recv(&mut sweeper).await, error(ErrorCode::NoSuchRoom));
    }
    assert_eq!(metric(&handle, "punchdrop_code_join_misses_total").await, 3);
    // Asked for a code while it waits, it gets a number, and the number joins it.
    send(&mut creator, &ClientMessage::ShowCode).await;
    let ServerMessage::Numbered { number } = recv(&mut creator).await else {
        panic!("no number");
    };
    send(&mut creator, &ClientMessage::ShowCode).await;
    assert_eq!(recv(&mut creator).await, ServerMessage::Numbered { number });
    let mut joiner = connect(&handle).await;
    send(&mut joiner, &join_msg(RoomRef::Number(number))).await;
    assert!(matches!(
        recv(&mut joiner).await,
        ServerMessage::Joined { .. }
    ));
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerJoined);
    // Too late now, and not an error: the wish and the join can cross.
    send(&mut creator, &ClientMessage::ShowCode).await;
    expect_silence(&mut creator).await;
}

#[tokio::test]
async fn half_sent_requests_are_capped_per_client_and_others_are_served() {
    let handle = spawn(Config {
        admission: signalling::admission::AdmissionConfig {
            max_tcp_per_client: 3,
            ..Default::default()
        },
        ..config()
    })
    .await;
    let addr = handle.local_addr();
    let tcp_from = |ip: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(ip.parse().unwrap(), 0))
            .unwrap();
        timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = tcp_from("127.0.0.1").await;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(tcp);
    }
    // The fourth is closed at once, before the header timeout (10 s here) could.
    let mut fourth = tcp_from("127.0.0.1").await;
    let _ = fourth.write_all(b"GET /healthz HTTP/1.1\r\n").await;
    let mut rest = Vec::new();
    let started = Instant::now();
    let _ = timeout(WAIT, fourth.read_to_end(&mut rest))
        .await
        .expect("the fourth stays open");
    assert!(rest.is_empty() && started.elapsed() < Duration::from_secs(2));
    // Another client is served meanwhile.
    let mut other = tcp_from("127.0.0.2").await;
    other
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    timeout(WAIT, other.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert_eq!(
        metric(
            &handle,
            "punchdrop_connections_refused_total{reason=\"http_cap\"}"
        )
        .await,
        1
    );
    drop(held);
}

#[tokio::test]
async fn turn_credentials_live_no_longer_than_the_room() {
    let handle = spawn(Config {
        room_max_lifetime: Duration::from_secs(3600),
        ice: signalling::IceSettings {
            turn_urls: vec!["turn:198.51.100.1:3478?transport=udp".into()],
            secret: Some(signalling::credentials::TurnSecret::new(b"s".to_vec())),
            credential_ttl: Duration::from_secs(24 * 3600),
            ..Default::default()
        },
        ..config()
    })
    .await;
    let mut a = connect(&handle).await;
    send(&mut a, &create_msg()).await;
    let ServerMessage::Created { room, .. } = next_raw(&mut a).await else {
        panic!("no room");
    };
    let mut b = connect(&handle).await;
    send(&mut b, &join_msg(RoomRef::Id(room))).await;
    assert!(matches!(
        next_raw(&mut b).await,
        ServerMessage::Joined { .. }
    ));
    match next_raw(&mut b).await {
        ServerMessage::IceServers {
            expires_in_secs, ..
        } => assert_eq!(expires_in_secs, 3600, "capped at the room's lifetime"),
        other => panic!("expected ice_servers, got {other:?}"),
    }
}

/// A peer that stops answering the server's pings (its network changed or died without a
/// close) is dropped after three, and a held room takes its joiner again; a peer that
/// answers stays.
#[tokio::test]
async fn a_silent_peer_is_dropped_and_a_held_room_takes_its_joiner_again() {
    let handle = spawn(Config {
        ping_every: Duration::from_millis(200),
        ..config()
    })
    .await;
    let mut creator = connect(&handle).await;
    let (room, _) = create_held(&mut creator).await;
    let mut silent = connect(&handle).await;
    send(&mut silent, &join_msg(RoomRef::Id(room.clone()))).await;
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerJoined);
    // The joiner reads nothing from here on, so it answers no ping; the creator reads (and
    // so answers) all along.
    let t0 = Instant::now();
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerLeft);
    let gone_after = t0.elapsed();
    assert!(
        gone_after >= Duration::from_millis(400) && gone_after < Duration::from_secs(3),
        "{gone_after:?}"
    );
    let mut back = connect(&handle).await;
    send(&mut back, &join_msg(RoomRef::Id(room.clone()))).await;
    assert!(matches!(
        recv(&mut back).await,
        ServerMessage::Joined { room: r, reclaim: Some(_) } if r == room
    ));
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerJoined);
    // Peers that answer (by reading: the client answers pings as it reads) stay however
    // long they wait.
    for _ in 0..8 {
        for ws in [&mut creator, &mut back] {
            let until = tokio::time::Instant::now() + Duration::from_millis(100);
            while let Ok(frame) = tokio::time::timeout_at(until, ws.next()).await {
                match frame {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Text(t))) if t.as_str().contains("ice_servers") => {}
                    other => panic!("expected only pings, got {other:?}"),
                }
            }
        }
    }
    send(
        &mut back,
        &ClientMessage::Sealed {
            data: "eHl6".into(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut creator).await,
        ServerMessage::Sealed {
            data: "eHl6".into()
        }
    );
    drop(silent);
}

/// A held room's creator whose socket closed takes its place back with its token from a new
/// socket (the joiner is told it went, and a joiner coming back meanwhile is asked to try
/// again); one whose old socket is still there (silent: its network changed) takes it back
/// at once, without waiting for the pings to give up, and the old socket is closed. A
/// joiner's token does the same for a joiner.
#[tokio::test]
async fn a_held_rooms_peers_take_their_places_back_with_their_tokens() {
    let handle = spawn(config()).await;
    let mut creator = connect(&handle).await;
    let (room, token) = create_held(&mut creator).await;
    let mut joiner = connect(&handle).await;
    send(&mut joiner, &join_msg(RoomRef::Id(room.clone()))).await;
    let ServerMessage::Joined {
        reclaim: Some(jtoken),
        ..
    } = recv(&mut joiner).await
    else {
        panic!("expected Joined with a token");
    };
    assert_eq!(recv(&mut creator).await, ServerMessage::PeerJoined);
    let reclaim = |token: &str| ClientMessage::Reclaim {
        version: SIGNAL_VERSION,
        room: room.clone(),
        token: token.into(),
        lost: false,
    };

    // The creator's socket closes: the joiner hears it, the room stays.
    drop(creator);
    assert_eq!(recv(&mut joiner).await, ServerMessage::PeerLeft);
    let mut other = connect(&handle).await;
    send(&mut other, &join_msg(RoomRef::Id(room.clone()))).await;
    assert_eq!(recv(&mut other).await, error(ErrorCode::PeerAway));
    send(&mut other, &reclaim("not-the-token")).await;
    assert_eq!(recv(&mut other).await, error(ErrorCode::NoSuchRoom));
    let mut creator = connect(&handle).await;
    send(&mut creator, &reclaim(&token)).await;
    assert_eq!(
        recv(&mut creator).await,
        ServerMessage::Reclaimed { room: room.clone() }
    );
    assert_eq!(recv(&mut joiner).await, ServerMessage::PeerLeft);
    assert_eq!(recv(&mut joiner).await, ServerMessage::PeerBack);
    let sealed = ClientMessage::Sealed {
        data: "eHl6".into(),
    };
    send(&mut joiner, &sealed).await;
    assert_eq!(
        recv(&mut creator).await,
        ServerMessage::Sealed {
            data: "eHl6".into()
        }
    );

    // Its new socket goes silent (not closed): a third one takes the place back at once.
    let mut again = connect(&handle).await;
    send(&mut again, &reclaim(&token)).await;
    assert!(matches!(
        recv(&mut again).await,
        ServerMessage::Reclaimed { .. }
    ));
    expect_closed(&mut creator).await;
    assert_eq!(recv(&mut joiner).await, ServerMessage::PeerLeft);
    assert_eq!(recv(&mut joiner).await, ServerMessage::PeerBack);

    // The joiner's socket goes silent; joining with its token takes its place back.
    let mut back = connect(&handle).await;
    send(&mut back, &join_msg(RoomRef::Id(room.clone()))).await;
    assert_eq!(recv(&mut back).await, error(ErrorCode::RoomFull));
    send(
        &mut back,
        &ClientMessage::Join {
            version: SIGNAL_VERSION,
            room: RoomRef::Id(room.clone()),
            reclaim: Some(jtoken),
        },
    )
    .await;
    let ServerMessage::Joined {
        reclaim: Some(jtoken),
        ..
    } = recv(&mut back).await
    else {
        panic!("a held room's joiner gets a token");
    };
    expect_closed(&mut joiner).await;
    assert_eq!(recv(&mut again).await, ServerMessage::PeerLeft);
    assert_eq!(recv(&mut again).await, ServerMessage::PeerJoined);
    assert_eq!(metric(&handle, "punchdrop_rooms_reclaimed_total").await, 2);
    assert_eq!(metric(&handle, "punchdrop_rooms_rejoined_total").await, 1);

    // Connected, the joiner's socket goes silent: a new one takes its place back with the
    // token, quietly (no new key exchange); the creator hears it is back.
    let mut quiet = connect(&handle).await;
    send(&mut quiet, &reclaim(&jtoken)).await;
    assert_eq!(
        recv(&mut quiet).await,
        ServerMessage::Reclaimed { room: room.clone() }
    );
    expect_closed(&mut back).await;
    assert_eq!(recv(&mut again).await, ServerMessage::PeerBack);
    send(&mut quiet, &sealed).await;
    assert!(matches!(
        recv(&mut again).await,
        ServerMessage::Sealed { .. }
    ));
    assert_eq!(metric(&handle, "punchdrop_rooms_reclaimed_total").await, 3);
}
