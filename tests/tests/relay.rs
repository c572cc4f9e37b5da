//! Relayed transfers: TURN servers on loopback, peers forced to relay candidates.

use punchdrop_e2e::*;
use std::time::Duration;

/// A transfer with `--relay-only` on both peers through the given signalling server; returns
/// the receiver's `done` event after checking the bytes.
fn relayed_transfer(sig: &Signalling, size: u64) -> event::Done {
    relayed_transfer_with(sig, size, &[])
}

fn relayed_transfer_with(sig: &Signalling, size: u64, extra: &[&str]) -> event::Done {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("relayed.bin");
    make_file(&file, size, 77);
    let mut flags = vec!["--relay-only"];
    flags.extend_from_slice(extra);
    let (sender, link, _) = start_sender(&sig.url, &flags, &[&file]).unwrap();
    let dir = dst.path().display().to_string();
    let mut args = flags.clone();
    args.extend(["recv", "--dir", &dir, &link]);
    let receiver = Peer::spawn(&args);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    let sdone = expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("relayed.bin")), hash_file(&file));
    assert_eq!(done.path.kind, PathKind::Relay, "{done:?}");
    assert_eq!(sdone.path.kind, PathKind::Relay, "{sdone:?}");
    assert_eq!(done.path.reason, Some(RelayReason::Forced), "{done:?}");
    let connected = event::find::<event::Connected>(&revents).unwrap();
    assert_eq!(connected.path.local, CandidateType::Relay, "{connected:?}");
    done
}

#[test]
fn relay_only_through_external_coturn_with_shared_secret() {
    let secret = "coturn-test-secret";
    let coturn = Coturn::start(secret).unwrap();
    let url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let sig = Signalling::start_with(&["--no-turn", "--turn", &url, "--turn-secret", secret]);
    let done = relayed_transfer(&sig, 3 << 20);
    assert_eq!(done.path.protocol, Transport::Udp);
}

#[test]
fn relay_only_through_the_bundled_turn_server() {
    let sig = Signalling::start();
    let size = 5 << 20;
    relayed_transfer_with(&sig, size, &["--relay-transport", "udp"]);
    assert_eq!(
        sig.metric("punchdrop_turn_allocations_total"),
        2,
        "one allocation per peer"
    );
    // Both peers' allocations relay the whole file once each way (plus protocol overhead).
    let relayed = sig.metric("punchdrop_turn_relayed_bytes_total");
    assert!(relayed >= 2 * size, "relayed {relayed} bytes");
    assert_eq!(sig.metric("punchdrop_turn_auth_refused_total"), 0);
}

#[test]
fn relay_only_without_a_relay_fails_clearly() {
    let sig = Signalling::start_with(&["--no-turn"]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("x");
    make_file(&file, 10, 1);
    let (sender, link, _) = start_sender(
        &sig.url,
        &["--relay-only", "--connect-timeout", "5"],
        &[&file],
    )
    .unwrap();
    let dst = tempfile::tempdir().unwrap();
    let dir = dst.path().display().to_string();
    let receiver = Peer::spawn(&[
        "--relay-only",
        "--connect-timeout",
        "5",
        "recv",
        "--dir",
        &dir,
        &link,
    ]);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    // Both start their connections as soon as both are in the room (while the key exchange
    // runs): whichever gets there first says why, the other may hear only that it gave up.
    let msgs = [expect_error(ss, &sevents), expect_error(rs, &revents)];
    for msg in &msgs {
        assert!(
            msg.contains("needs a TURN server") || msg.contains("gave up"),
            "{msg}"
        );
    }
    assert!(
        msgs.iter().any(|m| m.contains("needs a TURN server")),
        "{msgs:?}"
    );
}

#[test]
fn relay_only_over_tcp_through_the_bundled_turn_server() {
    let sig = Signalling::start();
    let done = relayed_transfer_with(&sig, 4 << 20, &["--relay-transport", "tcp"]);
    assert_eq!(done.path.protocol, Transport::Tcp, "{done:?}");
    assert_eq!(sig.metric("punchdrop_turn_allocations_total"), 2);
}

#[test]
fn relay_only_over_tcp_through_external_coturn() {
    let secret = "coturn-tcp-secret";
    let coturn = Coturn::start(secret).unwrap();
    let url = format!("turn:127.0.0.1:{}?transport=tcp", coturn.port);
    let sig = Signalling::start_with(&["--no-turn", "--turn", &url, "--turn-secret", secret]);
    let done = relayed_transfer_with(&sig, 3 << 20, &["--relay-transport", "tcp"]);
    assert_eq!(done.path.protocol, Transport::Tcp, "{done:?}");
}

/// Behind a server that refuses private and loopback relay peers (as a public one does), the
/// peers' relay permissions for each other's loopback addresses are refused with 403: a normal
/// outcome that costs only those relay pairs. The transfer goes direct and neither peer prints
/// an error about it (patches/webrtc-0.21.1-turn-permission-quiet.patch).
#[test]
fn refused_relay_permissions_are_not_errors() {
    let sig = Signalling::start_refusing_private_peers();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("x.bin");
    make_file(&file, 20 << 20, 3);
    // Relay candidates at once, so ICE pairs them (and asks permissions) during the transfer.
    let env = [("PUNCHDROP_RELAY_WAIT_MS", "0")];
    let (sender, link, _) = start_sender_env(&sig.url, &file, &env).unwrap();
    let mut cmd = std::process::Command::new(bin("native-peer"));
    cmd.env("PUNCHDROP_RELAY_WAIT_MS", "0");
    let d = dst.path().display().to_string();
    let receiver = Peer::spawn_cmd(cmd, &["--server", &sig.url, "recv", "--dir", &d, &link]);
    let (rs, revents, rerr) = receiver.finish_all(LONG).unwrap();
    let (ss, sevents, serr) = sender.finish_all(LONG).unwrap();
    assert_eq!(expect_done(rs, &revents).path.kind, PathKind::Direct);
    expect_done(ss, &sevents);
    assert!(
        sig.metric("punchdrop_turn_peer_refused_total") > 0,
        "the server refused no permission: the test proves nothing"
    );
    for (who, err) in [("receiver", rerr), ("sender", serr)] {
        assert!(
            !err.contains("ERROR"),
            "{who} printed an error for a refused relay permission:\n{err}"
        );
    }
}

// ---- The relay pool's volunteers (`native-peer relay --register URL`) ----

use protocol::relay::{PoolMessage, RELAY_VERSION, RelayRefusal, VolunteerMessage};
use punchdrop_e2e::volunteer::Volunteer;

/// Two volunteers on loopback, preferred by the server: a relay-only transfer goes through
/// them and the server's own TURN allocates nothing; their load reports reach the server's
/// metrics; a volunteer that stops leaves the pool, and rooms get the server's TURN again.
#[test]
fn relay_only_through_volunteer_relays_leaves_the_servers_turn_idle() {
    let sig = Signalling::start_with(&["--volunteer-relays", "open", "--prefer-volunteers"]);
    let mut v1 = Volunteer::on_loopback(&sig.url, &[]);
    let mut v2 = Volunteer::on_loopback(&sig.url, &[]);
    v1.wait_listed(Duration::from_secs(20)).unwrap();
    v2.wait_listed(Duration::from_secs(20)).unwrap();
    assert_eq!(sig.metric("punchdrop_volunteer_relays"), 2);
    let handed = ws::relays_handed(&sig.url);
    assert_eq!(handed.len(), 2, "two relays per room at most: {handed:?}");
    let size = 5 << 20;
    relayed_transfer_with(&sig, size, &["--relay-transport", "udp"]);
    assert_eq!(sig.metric("punchdrop_turn_allocations_total"), 0);
    assert_eq!(sig.metric("punchdrop_turn_relayed_bytes_total"), 0);
    // Both peers' allocations relay the file once each way; reports come every 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while v1.relayed() + v2.relayed() < 2 * size && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        v1.relayed() + v2.relayed() >= 2 * size,
        "the volunteers report {} and {} bytes",
        v1.relayed(),
        v2.relayed()
    );
    let reported = sig.metric("punchdrop_volunteer_relayed_bytes_total");
    assert!(reported >= 2 * size, "the server counted {reported} bytes");

    v1.kill();
    v2.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sig.metric("punchdrop_volunteer_relays") > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sig.metric("punchdrop_volunteer_relays"), 0);
    let handed = ws::relays_handed(&sig.url);
    assert_eq!(handed.len(), 1, "{handed:?}");
    assert!(
        handed[0].iter().any(|u| u.starts_with("turn:127.0.0.1:")),
        "{handed:?}"
    );
}

/// A server with its own TURN and volunteers not preferred hands a room its TURN first and
/// one volunteer: two relays, never more.
#[test]
fn a_room_gets_the_servers_turn_and_one_volunteer_unless_volunteers_are_preferred() {
    let sig = Signalling::start_with(&["--volunteer-relays", "open"]);
    let mut vs: Vec<Volunteer> = (0..3)
        .map(|_| Volunteer::on_loopback(&sig.url, &[]))
        .collect();
    for v in &mut vs {
        v.wait_listed(Duration::from_secs(20)).unwrap();
    }
    let handed = ws::relays_handed(&sig.url);
    assert_eq!(handed.len(), 2, "{handed:?}");
    let is_volunteer = |urls: &Vec<String>| vs.iter().any(|v| v.is_in(urls));
    assert!(
        !is_volunteer(&handed[0]),
        "the server's TURN first: {handed:?}"
    );
    assert!(is_volunteer(&handed[1]), "then a volunteer: {handed:?}");
}

/// Admission: a token issued with the server's secret and still valid lists the relay; no
/// token, another server's token, an expired one are refused with a reason the volunteer
/// prints; a port nobody answers on is refused as unreachable.
#[test]
fn volunteer_relays_need_a_valid_token_and_a_reachable_port() {
    let secret = "pool-secret";
    let sig = Signalling::start_with(&["--volunteer-relays", "token", "--turn-secret", secret]);
    let issue = |secret: &str, days: &str| {
        let out = std::process::Command::new(bin("signalling"))
            .args(["--turn-secret", secret, "--issue-relay-token", days])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let refused = |args: &[&str], expect: &str| {
        let v = Volunteer::on_loopback(&sig.url, args);
        let (status, stderr) = v.finish(Duration::from_secs(20)).unwrap();
        assert!(!status.success());
        assert!(stderr.contains(expect), "expected {expect:?} in:\n{stderr}");
    };
    refused(&[], "the relay token is missing or not this server's");
    refused(&["--token", &issue("another", "30")], "not this server's");
    refused(
        &["--token", &issue(secret, "0")],
        "the relay token has expired",
    );
    refused(&["--token", "rt1.9999999999.00.zz"], "not this server's");
    let mut good = Volunteer::on_loopback(&sig.url, &["--token", &issue(secret, "30")]);
    good.wait_listed(Duration::from_secs(20)).unwrap();

    // A valid token and a port where nothing answers STUN.
    let url = format!("{}/relay", sig.url.replacen("http", "ws", 1));
    let (mut raw, _) = tungstenite::connect(url).unwrap();
    let say = |ws: &mut tungstenite::WebSocket<_>, m: VolunteerMessage| {
        ws.send(tungstenite::Message::text(m.to_json())).unwrap()
    };
    let hear = |ws: &mut tungstenite::WebSocket<
        tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
    >|
     -> PoolMessage {
        loop {
            if let tungstenite::Message::Text(t) = ws.read().unwrap() {
                return serde_json::from_str(&t).unwrap();
            }
        }
    };
    say(
        &mut raw,
        VolunteerMessage::Offer {
            version: RELAY_VERSION,
            token: Some(issue(secret, "1")),
        },
    );
    assert!(matches!(hear(&mut raw), PoolMessage::Welcome { .. }));
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    say(
        &mut raw,
        VolunteerMessage::Ready {
            udp_port: silent.local_addr().unwrap().port(),
            tcp_port: None,
        },
    );
    match hear(&mut raw) {
        PoolMessage::Refused { code, .. } => assert_eq!(code, RelayRefusal::Unreachable),
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert_eq!(sig.metric("punchdrop_volunteer_relays"), 1);
    assert_eq!(sig.metric("punchdrop_volunteer_relays_listed_total"), 1);
    assert_eq!(sig.metric("punchdrop_volunteer_relays_refused_total"), 5);
}

/// A server that takes no volunteers says so.
#[test]
fn a_server_without_volunteers_refuses_them_clearly() {
    let sig = Signalling::start();
    let (status, stderr) = Volunteer::on_loopback(&sig.url, &[])
        .finish(Duration::from_secs(20))
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("this server takes no volunteer relays"),
        "{stderr}"
    );
}

/// The server dies mid-transfer: a transfer relayed by volunteers goes on to its end on the
/// same connection (a volunteer's TURN outlives its connection to the server), and once the
/// server is back at its address the volunteers are listed again, with new secrets.
#[test]
fn a_transfer_relayed_by_volunteers_outlives_the_server() {
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--volunteer-relays", "open", "--prefer-volunteers"];
    let mut sig = Signalling::start_at_with(&listen, &args);
    let mut vs = [
        Volunteer::on_loopback(&sig.url, &[]),
        Volunteer::on_loopback(&sig.url, &[]),
    ];
    for v in &mut vs {
        v.wait_listed(Duration::from_secs(20)).unwrap();
    }
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("outlives.bin");
    let size = 24 << 20;
    make_file(&file, size, 9);
    // Paced (8 MiB/s, a test hook) so the server's death falls mid-transfer.
    let mut cmd = std::process::Command::new(bin("native-peer"));
    cmd.env("PUNCHDROP_TEST_PACE_MIB", "8");
    let (sender, link, _) = start_sender_with(cmd, &sig.url, &["--relay-only"], &[&file]).unwrap();
    let d = dst.path().display().to_string();
    let mut receiver = Peer::spawn(&["--relay-only", "recv", "--dir", &d, &link]);
    receiver.wait_for_progress(size / 5);
    sig.kill();
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(done.path.kind, PathKind::Relay, "{done:?}");
    assert!(
        !assert_same_connection("receiver", &revents),
        "the relayed path never went down"
    );
    assert_eq!(
        hash_file(&dst.path().join("outlives.bin")),
        hash_file(&file)
    );
    let sig = Signalling::start_at_with(&listen, &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while sig.metric("punchdrop_volunteer_relays") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the volunteers did not register again: {:?}\n{}",
            vs[0].events(),
            vs[0].stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Their reports (which stop while the server is away) count what they carried meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while vs.iter().map(|v| v.relayed()).sum::<u64>() < size {
        assert!(
            std::time::Instant::now() < deadline,
            "the volunteers did not carry it: {:?} {:?}",
            vs[0].events(),
            vs[1].events()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    relayed_transfer_with(&sig, 2 << 20, &["--relay-transport", "udp"]);
    assert_eq!(sig.metric("punchdrop_turn_allocations_total"), 0);
}
