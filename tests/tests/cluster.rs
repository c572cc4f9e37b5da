//! Nodes sharing rooms through Redis (`signalling --redis`): Debian's redis-server on a free
//! loopback port and several signalling processes on it. A room made through one node is
//! joined through another and signalling crosses between them; a node that dies loses only
//! its own sockets; Redis restarting is survived; the limit on rooms is the deployment's.

use protocol::signal::{ClientMessage, ErrorCode, RoomRef, SIGNAL_VERSION, ServerMessage};
use punchdrop_e2e::redis::Redis;
use punchdrop_e2e::ws::*;
use punchdrop_e2e::*;
use std::time::{Duration, Instant};

/// `n` nodes sharing `redis`, each with `extra` arguments.
fn nodes(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Signalling> {
    let url = redis.url();
    let args = [&["--redis", url.as_str()], extra].concat();
    (0..n).map(|_| Signalling::start_with(&args)).collect()
}

/// The link's server replaced by `server` (another node of the same deployment).
fn through(link: &str, server: &str) -> String {
    let path = link.splitn(4, '/').nth(3).expect("a link has a path");
    format!("{server}/{path}")
}

/// The next message that is not the room's ICE servers (which come whenever both are in).
fn next_not_ice(ws: &mut Ws) -> ServerMessage {
    loop {
        match next(ws) {
            ServerMessage::IceServers { .. } => {}
            other => return other,
        }
    }
}

/// Wait up to `within` for `ws` to hear `peer_left` (the connection may close after it).
fn hears_peer_left(ws: &mut Ws, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                if let Ok(ServerMessage::PeerLeft) = serde_json::from_str(&t) {
                    return true;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    false
}

/// A room with its creator on `a` and its joiner through `b`: both told, sealed data going
/// both ways between the nodes.
fn room_across(a: &Signalling, b: &Signalling) -> (Ws, Ws) {
    let mut creator = connect(&a.url);
    let ServerMessage::Created { room, .. } = ask(&mut creator, create()) else {
        panic!("no room made")
    };
    let mut joiner = connect(&b.url);
    match ask(&mut joiner, join(&room)) {
        ServerMessage::Joined { room: r, .. } => assert_eq!(r, room),
        other => panic!("joining through the other node: {other:?}"),
    }
    assert!(
        matches!(next(&mut joiner), ServerMessage::IceServers { .. }),
        "the joiner gets the room's ICE servers"
    );
    assert_eq!(next_not_ice(&mut creator), ServerMessage::PeerJoined);
    relays(&mut creator, &mut joiner, "from the creator");
    relays(&mut joiner, &mut creator, "from the joiner");
    (creator, joiner)
}

#[test]
fn a_room_made_through_one_node_is_joined_through_another() {
    let redis = Redis::start().unwrap();
    let sig = nodes(&redis, 2, &[]);
    let (a, b) = (&sig[0], &sig[1]);
    for by_code in [false, true] {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let file = src.path().join("across.bin");
        make_file(&file, 3 << 20, 16);
        let (sender, link, code) = start_sender(&a.url, &[], &[&file]).unwrap();
        // By link, the link naming the other node; by code, told the other node's address.
        let invitation = match by_code {
            true => code,
            false => through(&link, &b.url),
        };
        let d = dst.path().display().to_string();
        let receiver = Peer::spawn(&["--server", &b.url, "recv", "--dir", &d, &invitation]);
        let (rs, revents, rerr) = receiver.finish_all(LONG).unwrap();
        let (ss, sevents, serr) = sender
            .finish_all(LONG)
            .unwrap_or_else(|e| panic!("{e:#}\nreceiver {rs}: {revents:?}\n{rerr}"));
        if !(rs.success() && ss.success()) {
            panic!("receiver {rs}: {revents:?}\n{rerr}\nsender {ss}: {sevents:?}\n{serr}");
        }
        expect_done(rs, &revents);
        expect_done(ss, &sevents);
        assert_eq!(
            hash_file(&dst.path().join("across.bin")),
            hash_file(&file),
            "by_code={by_code}"
        );
    }
    // Each room was made on A, and B carried its joiner.
    assert_eq!(a.metric("punchdrop_rooms_created_total"), 2);
    assert_eq!(b.metric("punchdrop_rooms_created_total"), 0);
    assert_eq!(a.metric("punchdrop_rooms_joined_total"), 2);
    assert_eq!(a.metric("punchdrop_cluster_served_total"), 2);
    assert_eq!(b.metric("punchdrop_cluster_forwarded_total"), 2);
}

#[test]
fn a_node_that_dies_loses_only_its_own_sockets() {
    let redis = Redis::start().unwrap();
    let mut sig = nodes(&redis, 3, &[]);
    // A room on node 0 joined through node 1, and one on node 2 joined through node 0.
    let (mut creator, _joiner) = room_across(&sig[0], &sig[1]);
    let (_creator2, mut joiner2) = room_across(&sig[2], &sig[0]);
    // Node 1 dies: the creator on node 0 hears its joiner left (once node 1 stops saying it
    // is alive: 10 s, and a check every 3).
    sig[1].kill();
    assert!(
        hears_peer_left(&mut creator, Duration::from_secs(30)),
        "the creator on a live node hears its joiner's node died"
    );
    // Node 2 dies with its room: the joiner on node 0 hears the other peer left.
    sig[2].kill();
    assert!(
        hears_peer_left(&mut joiner2, Duration::from_secs(30)),
        "the joiner on a live node hears the room's node died"
    );
    // Node 0 itself goes on.
    let _ = room_across(&sig[0], &sig[0]);
}

#[test]
fn redis_restarting_is_survived() {
    let mut redis = Redis::start().unwrap();
    // Joins are tried until the room is back: not to be taken for a flood.
    let sig = nodes(&redis, 2, &["--room-rate", "600"]);
    let (a, b) = (&sig[0], &sig[1]);
    let mut creator = connect(&a.url);
    let ServerMessage::Created { room, .. } = ask(&mut creator, create()) else {
        panic!("no room made")
    };
    // And a room already across the two nodes, signalling on.
    let (mut across_a, mut across_b) = room_across(a, b);

    redis.kill();
    // Without Redis a new room cannot be shared: refused at once with a clear error, not
    // left hanging.
    let mut other = connect(&b.url);
    let asked = Instant::now();
    assert_eq!(
        ask(&mut other, create()),
        ServerMessage::Error {
            code: ErrorCode::ShuttingDown,
            message: ErrorCode::ShuttingDown.explain().into(),
        }
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    // Redis back, empty: the room made before is recorded again by its node and can be
    // joined through the other node.
    redis.restart().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let mut joiner = loop {
        let mut joiner = connect(&b.url);
        match ask(&mut joiner, join(&room)) {
            ServerMessage::Joined { .. } => break joiner,
            other => {
                assert!(
                    Instant::now() < until,
                    "the room was never joinable again: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(next_not_ice(&mut creator), ServerMessage::PeerJoined);
    relays(&mut creator, &mut joiner, "after the restart");
    relays(&mut joiner, &mut creator, "both ways");
    // The room across the nodes was not taken for one whose node died while the nodes'
    // liveness keys were gone with Redis's memory (checked every 3 s, dead after 5 s missing).
    std::thread::sleep(Duration::from_secs(9));
    relays(&mut across_a, &mut across_b, "through the restart");
    relays(&mut across_b, &mut across_a, "and back");
    // And new rooms are made again.
    let mut fresh = connect(&b.url);
    assert!(matches!(
        ask(&mut fresh, create()),
        ServerMessage::Created { .. }
    ));
}

#[test]
fn the_limit_on_rooms_is_the_deployments() {
    let redis = Redis::start().unwrap();
    let sig = nodes(&redis, 2, &["--room-rate", "3"]);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&sig[0].url);
        assert!(matches!(
            ask(&mut ws, create()),
            ServerMessage::Created { .. }
        ));
        held.push(ws);
    }
    // The same address, the other node: over its limit there too (node 1 alone has seen
    // none of its rooms).
    let mut ws = connect(&sig[1].url);
    let refused = ask(
        &mut ws,
        ClientMessage::Join {
            version: SIGNAL_VERSION,
            room: RoomRef::Number(123),
            reclaim: None,
        },
    );
    assert!(
        matches!(
            refused,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(matches!(
        ask(&mut ws, create()),
        ServerMessage::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    ));
}

#[test]
fn a_join_refused_by_another_node_leaves_the_connection_free() {
    let redis = Redis::start().unwrap();
    let sig = nodes(&redis, 2, &[]);
    let (a, b) = (&sig[0], &sig[1]);
    let mut creator = connect(&a.url);
    let ServerMessage::Created { room, .. } = ask(&mut creator, create()) else {
        panic!("no room made")
    };
    let mut joiner = connect(&b.url);
    assert!(matches!(
        ask(&mut joiner, join(&room)),
        ServerMessage::Joined { .. }
    ));
    // A third comes through B: node A refuses it, and it is B's own connection again.
    let mut third = connect(&b.url);
    assert!(matches!(
        ask(&mut third, join(&room)),
        ServerMessage::Error {
            code: ErrorCode::RoomFull,
            ..
        }
    ));
    assert!(matches!(
        ask(&mut third, create()),
        ServerMessage::Created { .. }
    ));
    assert_eq!(b.metric("punchdrop_rooms_created_total"), 1);
    // The refused join did not disturb the room: its peers still signal.
    assert_eq!(next_not_ice(&mut creator), ServerMessage::PeerJoined);
    relays(&mut creator, &mut joiner, "still here");
}

/// An inbox registered through node A takes a drop made through node B: B finds it in Redis
/// and carries the dropper to A, where the drop's room is made. A `look` through B sees it
/// online with its (sealed) name; once the inbox stops, B says it is offline again.
#[test]
fn an_inbox_on_one_node_takes_drops_made_through_another() {
    let redis = Redis::start().unwrap();
    let sig = nodes(&redis, 2, &[]);
    let (a, b) = (&sig[0], &sig[1]);
    let (src, dst, st) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (d, s) = (
        dst.path().display().to_string(),
        st.path().join("inbox.json").display().to_string(),
    );
    let mut inbox = Peer::spawn(&[
        "--server", &a.url, "inbox", "--dir", &d, "--state", &s, "--name", "nas",
    ]);
    let ready: event::Ready = inbox
        .wait(Duration::from_secs(10))
        .expect("the inbox's link");
    let id = ready
        .link
        .split("/i/")
        .nth(1)
        .and_then(|rest| rest.split('#').next())
        .expect("an inbox link")
        .to_owned();
    let look_for = |node: &Signalling, id: &str| {
        let mut ws = connect(&node.url);
        match ask(
            &mut ws,
            ClientMessage::Look {
                version: SIGNAL_VERSION,
                inboxes: vec![id.to_owned()],
            },
        ) {
            ServerMessage::Inboxes { inboxes } => inboxes.into_iter().next().unwrap(),
            other => panic!("look: {other:?}"),
        }
    };
    let look = |node: &Signalling| look_for(node, &id);
    let seen = look(b);
    assert!(seen.online, "{seen:?}");
    assert!(seen.name.is_some(), "the sealed name travels too: {seen:?}");
    // Ids are case-insensitive on every node.
    assert!(look_for(b, &id.to_uppercase()).online);

    let file = src.path().join("via-b.bin");
    make_file(&file, 2 << 20, 21);
    let f = file.display().to_string();
    let link = through(&ready.link, &b.url);
    let (status, events) = Peer::spawn(&["--server", &b.url, "send", "--to", &link, &f])
        .finish(LONG)
        .unwrap();
    expect_done(status, &events);
    assert_eq!(hash_file(&dst.path().join("via-b.bin")), hash_file(&file));
    assert_eq!(a.metric("punchdrop_rooms_created_total"), 1, "made on A");
    assert_eq!(b.metric("punchdrop_rooms_created_total"), 0);
    assert_eq!(b.metric("punchdrop_cluster_forwarded_total"), 1);

    // Released when it stops: well before its record would expire (15 s).
    inbox.kill();
    let deadline = Instant::now() + Duration::from_secs(3);
    while look(b).online {
        assert!(
            Instant::now() < deadline,
            "the stopped inbox still looks online"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Volunteer relays registered with node A are handed to rooms on node B too (the pool is
/// the deployment's), with credentials they accept: a relay-only transfer through B goes
/// through them, B's own TURN allocating nothing. Once they stop, B no longer hands them out.
#[test]
fn volunteers_registered_with_one_node_relay_for_rooms_on_another() {
    let redis = Redis::start().unwrap();
    let sig = nodes(
        &redis,
        2,
        // One TURN secret for the deployment, as the README says: relays' secrets derive from it.
        &[
            "--volunteer-relays",
            "open",
            "--prefer-volunteers",
            "--turn-secret",
            "one-deployment",
            // Each look at what B hands out makes a room: not to be taken for a flood.
            "--room-rate",
            "600",
        ],
    );
    let (a, b) = (&sig[0], &sig[1]);
    let mut vs = [
        punchdrop_e2e::volunteer::Volunteer::on_loopback(&a.url, &[]),
        punchdrop_e2e::volunteer::Volunteer::on_loopback(&a.url, &[]),
    ];
    for v in &mut vs {
        v.wait_listed(Duration::from_secs(20)).unwrap();
    }
    // How many of the volunteers B hands a room.
    let handed_by_b = |vs: &[punchdrop_e2e::volunteer::Volunteer]| {
        relays_handed(&b.url)
            .iter()
            .filter(|urls| vs.iter().any(|v| v.is_in(urls)))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while handed_by_b(&vs) < 2 {
        assert!(
            Instant::now() < deadline,
            "node B never handed out A's volunteers"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("via-volunteer.bin");
    make_file(&file, 3 << 20, 31);
    let flags = ["--relay-only", "--relay-transport", "udp"];
    let (sender, link, _) = start_sender(&b.url, &flags, &[&file]).unwrap();
    let d = dst.path().display().to_string();
    let mut args = flags.to_vec();
    args.extend(["recv", "--dir", &d, &link]);
    let (rs, revents) = Peer::spawn(&args).finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(
        hash_file(&dst.path().join("via-volunteer.bin")),
        hash_file(&file)
    );
    assert_eq!(b.metric("punchdrop_turn_allocations_total"), 0);
    for v in &mut vs {
        v.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while handed_by_b(&vs) > 0 {
        assert!(
            Instant::now() < deadline,
            "node B still hands out stopped volunteers"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
