//! Relayed transfers: TURN servers on loopback, peers forced to relay candidates.

use punchdrop_e2e::*;

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
    let msg = expect_error(rs, &revents);
    expect_error(ss, &sevents);
    assert!(msg.contains("needs a TURN server"), "{msg}");
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
