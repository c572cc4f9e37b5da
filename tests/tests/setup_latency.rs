//! Connection setup must not wait for timer ticks.
//!
//! webrtc-rs 0.21.1 held DTLS and SCTP handshake packets until the next timer tick (see
//! `patches/README.md`). With the ICE check interval stretched to 2 s, a peer that depends on
//! ticks needs ≈ 600 ms from "both in room" to the first byte (measured: 610 ms without the
//! patches, every run); with the patches the handshakes run back to back (≈ 8–10 ms). This
//! test fails if the patches are dropped or stop working. It is a separate test binary so it
//! does not share the CPU with the other end-to-end tests.
//!
//! The round trips themselves are counted by `cargo xtask bench-lab` (both in room → first
//! byte, in RTT); what one patch removes is checked here by what the peers log: the DTLS
//! server answers the first ClientHello with its ServerHello, no HelloVerifyRequest
//! (`patches/rtc-dtls-0.21.1-skip-hello-verify.patch`, one round trip); and the sender's
//! channel opens before the other side's DATA_CHANNEL_ACK comes back
//! (`patches/rtc-0.21.1-dcep-open-early.patch`, with the offer sent behind the hello: one
//! more). A lab test of the round-trip count itself was tried and dropped: from one
//! transfer to the next it varies by half a round trip, as much as one change removes.

use punchdrop_e2e::*;

#[test]
fn handshakes_do_not_wait_for_timer_ticks() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("small.bin");
    make_file(&file, 100_000, 1);
    let mut first_bytes = Vec::new();
    for _ in 0..3 {
        let dst = tempfile::tempdir().unwrap();
        // Peers inherit this: ICE checks every 2 s, so any wait for a tick shows.
        let (sender, link, _) =
            start_sender_env(&sig.url, &file, &[("PUNCHDROP_ICE_CHECK_MS", "2000")]).unwrap();
        let dir = dst.path().display().to_string();
        let mut cmd = std::process::Command::new(bin("native-peer"));
        cmd.env("PUNCHDROP_ICE_CHECK_MS", "2000");
        let receiver = Peer::spawn_cmd(cmd, &["--server", &sig.url, "recv", "--dir", &dir, &link]);
        let (rs, revents) = receiver.finish(LONG).unwrap();
        let (ss, sevents) = sender.finish(LONG).unwrap();
        expect_done(rs, &revents);
        expect_done(ss, &sevents);
        let fb = event::find::<event::FirstByte>(&revents).expect("first_byte event");
        first_bytes.push(fb.ms_since_room);
        assert_eq!(hash_file(&dst.path().join("small.bin")), hash_file(&file));
    }
    first_bytes.sort_by(f64::total_cmp);
    let median = first_bytes[1];
    assert!(
        median < 150.0,
        "both in room → first byte took {median:.0} ms (runs: {first_bytes:?}); the handshake is waiting for timer ticks — are patches/ applied?"
    );
}

/// One small transfer on loopback, both peers logging with `filter`; their stderr, sender's
/// then receiver's, once the file arrived intact.
fn logged_transfer(filter: &str) -> (String, String) {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("small.bin");
    make_file(&file, 100_000, 2);
    let log = [("PUNCHDROP_LOG", filter)];
    let (sender, link, _) = start_sender_env(&sig.url, &file, &log).unwrap();
    let dir = dst.path().display().to_string();
    let mut cmd = std::process::Command::new(bin("native-peer"));
    cmd.envs(log);
    let receiver = Peer::spawn_cmd(cmd, &["--server", &sig.url, "recv", "--dir", &dir, &link]);
    let (rs, revents, rerr) = receiver.finish_all(LONG).unwrap();
    let (ss, sevents, serr) = sender.finish_all(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("small.bin")), hash_file(&file));
    (serr, rerr)
}

#[test]
fn the_dtls_server_skips_the_cookie_round_trip() {
    // Each handshake message is logged at debug by rtc-dtls's connection ("Send …").
    let (serr, rerr) = logged_transfer("warn,rtc_dtls=debug");
    let both = format!("{serr}{rerr}");
    assert!(
        both.contains("-> ServerHello"),
        "no DTLS handshake messages logged; did rtc-dtls's log lines change?\n{both}"
    );
    assert!(
        !both.contains("HelloVerifyRequest"),
        "the DTLS server asked for a cookie (a round trip more); is \
         patches/rtc-dtls-0.21.1-skip-hello-verify.patch applied?\n{both}"
    );
}

/// The sender's channel opens when its DATA_CHANNEL_OPEN goes out, not when the ACK comes
/// back (`patches/rtc-0.21.1-dcep-open-early.patch`), so its hello and offer leave half a
/// round trip sooner; on loopback that shows as the order of the two log lines.
#[test]
fn the_senders_channel_opens_before_the_ack() {
    let (serr, _) =
        logged_transfer("warn,rtc::peer_connection::handler::endpoint=debug,rtc_datachannel=debug");
    let open = serr.find("data channel is open");
    let ack = serr.find("Received DATA_CHANNEL_ACK");
    assert!(
        open.is_some() && ack.is_some(),
        "the open and the ACK were not both logged; did rtc's log lines change?\n{serr}"
    );
    assert!(
        open < ack,
        "the sender's channel opened only on the ACK (a round trip later); is \
         patches/rtc-0.21.1-dcep-open-early.patch applied?\n{serr}"
    );
}

/// The DTLS client (the receiver, which answers with `a=setup:active`) starts SCTP when it
/// has sent its Finished, so its INIT travels with that flight (False Start,
/// `patches/rtc-dtls-0.21.1-false-start.patch` and `patches/rtc-0.21.1-dtls-false-start.patch`),
/// a round trip before the server's Finished completes its handshake; on loopback that shows
/// as the order of the two log lines.
#[test]
fn the_dtls_client_starts_sctp_with_its_finished() {
    let (_, rerr) = logged_transfer(
        "warn,rtc::peer_connection::handler::sctp=debug,rtc::peer_connection::handler::dtls=debug",
    );
    let line = |what: &str| {
        rerr.lines()
            .position(|l| l.contains(what) && !l.contains("sctp recv"))
    };
    let init = line("sctp endpoint initiates connection");
    // The DTLS handler's line, not the SCTP handler's "sctp recv dtls handshake complete".
    let complete = line("dtls handshake complete");
    assert!(
        init.is_some() && complete.is_some(),
        "the INIT and the handshake's end were not both logged; did rtc's log lines change?\n{rerr}"
    );
    assert!(
        init < complete,
        "the receiver started SCTP only when its DTLS handshake completed (a round trip \
         later); are the False Start patches applied?\n{rerr}"
    );
}
