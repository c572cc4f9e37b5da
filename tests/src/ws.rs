//! A signalling client at the protocol level, over a plain WebSocket: what tests use to
//! speak to the server message by message (rooms, forwarding, refusals) without a peer.

use protocol::signal::{ClientMessage, RoomRef, SIGNAL_VERSION, ServerMessage};
use std::net::TcpStream;
use std::time::Duration;

/// A connection to the signalling server's `/ws`.
pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// Connect to `server` (http://…), reads timing out after 10 s.
pub fn connect(server: &str) -> Ws {
    let url = format!("{}/ws", server.replacen("http", "ws", 1));
    let ws = tungstenite::connect(url)
        .expect("WebSocket to the server")
        .0;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

/// Send one message.
pub fn send(ws: &mut Ws, msg: ClientMessage) {
    ws.send(tungstenite::Message::text(msg.to_json())).unwrap();
}

/// The next message from the server, within 10 s (the server's pings, answered by the
/// read, do not count: a message that never comes fails the test rather than hanging it).
pub fn next(ws: &mut Ws) -> ServerMessage {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let tungstenite::Message::Text(t) = ws.read().expect("a message") {
            return serde_json::from_str(&t).unwrap();
        }
        assert!(
            std::time::Instant::now() < until,
            "no message from the server within 10 s, only pings"
        );
    }
}

/// Send `msg` and read the answer.
pub fn ask(ws: &mut Ws, msg: ClientMessage) -> ServerMessage {
    send(ws, msg);
    next(ws)
}

/// `create` a room with neither a code nor a hold.
pub fn create() -> ClientMessage {
    ClientMessage::Create {
        version: SIGNAL_VERSION,
        code: false,
        hold: false,
    }
}

/// `join` room `room` by its id.
pub fn join(room: &str) -> ClientMessage {
    ClientMessage::Join {
        version: SIGNAL_VERSION,
        room: RoomRef::Id(room.to_owned()),
        reclaim: None,
    }
}

/// Sealed data goes from `from` to `to` (what a room in progress needs of the server).
pub fn relays(from: &mut Ws, to: &mut Ws, data: &str) {
    send(
        from,
        ClientMessage::Sealed {
            data: data.to_owned(),
        },
    );
    loop {
        match next(to) {
            ServerMessage::Sealed { data: got } => {
                assert_eq!(got, data);
                return;
            }
            ServerMessage::IceServers { .. } | ServerMessage::PeerJoined => {}
            other => panic!("expected sealed data, got {other:?}"),
        }
    }
}

/// The TURN URLs (one list per relay, those with credentials) handed to the peers of a room
/// made and joined through `server`.
pub fn relays_handed(server: &str) -> Vec<Vec<String>> {
    let mut creator = connect(server);
    let ServerMessage::Created { room, .. } = ask(&mut creator, create()) else {
        panic!("no room");
    };
    let mut joiner = connect(server);
    assert!(matches!(
        ask(&mut joiner, join(&room)),
        ServerMessage::Joined { .. }
    ));
    let ServerMessage::IceServers { servers, .. } = next(&mut joiner) else {
        panic!("no ice_servers after joined");
    };
    servers
        .into_iter()
        .filter(|s| s.credential.is_some())
        .map(|s| s.urls)
        .collect()
}
