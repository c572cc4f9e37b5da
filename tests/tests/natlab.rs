//! The NAT traversal ladder in the namespace lab (`punchdrop_e2e::lab`): each test builds its
//! own small internet, sends a real file from host A to host B, compares hashes, and checks
//! the path both peers report. Needs root (CI runs as root).

use punchdrop_e2e::lab::{B, Impair, Lab, Nat, OutageOutcome, Outcome, Spec, V6};
use punchdrop_e2e::*;
use std::time::Duration;

const SIZE: u64 = 3 << 20;

fn lab(a: Nat, b: B) -> Lab {
    Lab::new(Spec::new(a, b)).expect("build the NAT lab")
}

/// Sends a `size`-byte file from host A to host B: `waiting` runs once the sender waits in
/// its room (before B joins), `joined` once B runs (given B). Checks the file arrived
/// intact; returns what both said, and the sender's `done`.
fn send_between<W, M>(
    lab: &Lab,
    size: u64,
    waiting: impl FnOnce() -> W,
    joined: impl FnOnce(&mut Peer) -> M,
) -> (W, M, event::Done) {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("f.bin");
    make_file(&file, size, size ^ 0x5e4d);
    let (sender, link) = lab.sender(&[], &[&file]).unwrap();
    let w = waiting();
    let mut receiver = lab.receiver(&[], dst.path(), &link);
    let m = joined(&mut receiver);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    let done = expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("f.bin")), hash_file(&file));
    (w, m, done)
}

/// `probe` every 50 ms until `enough` says so, for 10 s at most; its last answer.
fn poll_until<T>(probe: impl Fn() -> T, enough: impl Fn(&T) -> bool) -> T {
    let since = std::time::Instant::now();
    loop {
        let got = probe();
        if enough(&got) || since.elapsed() > Duration::from_secs(10) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn show(o: &Outcome) -> String {
    format!(
        "sender: {:?}\nreceiver: {:?}",
        o.sender_connected, o.receiver_connected
    )
}

#[test]
fn cone_to_cone_punches_a_direct_path() {
    let lab = lab(Nat::Cone, B::Behind(Nat::Cone));
    let o = lab.transfer(SIZE, &[], &[]);
    for c in [&o.sender_connected.path, &o.receiver_connected.path] {
        assert_eq!(c.kind, PathKind::Direct, "{}", show(&o));
        assert_eq!(c.protocol, Transport::Udp, "{}", show(&o));
        // Hole punched: the pair runs between the NATs' public sides (srflx, or the same
        // address learnt from a check: prflx), never a host address across the internet.
        assert_ne!(c.remote, CandidateType::Host, "{}", show(&o));
        assert_eq!(c.reason, None, "{}", show(&o));
    }
    assert_eq!(o.sender_done.path.kind, PathKind::Direct);
    assert_eq!(o.receiver_done.path.kind, PathKind::Direct);
}

#[test]
fn cone_to_symmetric_connects_by_whichever_path_ice_chose() {
    let lab = lab(Nat::Cone, B::Behind(Nat::Symmetric));
    let o = lab.transfer(SIZE, &[], &[]);
    let (a, b) = o.paths();
    // A port-restricted cone in front of a symmetric NAT: B's check to A's srflx leaves from
    // a fresh port A never sent to, so A's NAT drops it; the pair can only work if A's own
    // checks open a hole to the exact port B's NAT picked, which it never learns. ICE falls
    // back to the relay; both sides must agree and say why.
    assert_eq!(a, b, "both ends report the same path\n{}", show(&o));
    if a == PathKind::Relay {
        for c in [&o.sender_connected.path, &o.receiver_connected.path] {
            assert_eq!(c.protocol, Transport::Udp, "{}", show(&o));
            assert_eq!(c.reason, Some(RelayReason::NoDirectPair), "{}", show(&o));
        }
    } else {
        assert_eq!(a, PathKind::Direct, "{}", show(&o));
    }
}

#[test]
fn symmetric_to_symmetric_relays_over_udp() {
    let lab = lab(Nat::Symmetric, B::Behind(Nat::Symmetric));
    let o = lab.transfer(SIZE, &[], &[]);
    for c in [&o.sender_connected.path, &o.receiver_connected.path] {
        assert_eq!(c.kind, PathKind::Relay, "{}", show(&o));
        assert_eq!(c.protocol, Transport::Udp, "{}", show(&o));
        assert_eq!(c.reason, Some(RelayReason::NoDirectPair), "{}", show(&o));
    }
}

#[test]
fn udp_blocked_relays_over_tcp() {
    let lab = lab(Nat::UdpBlocked, B::Behind(Nat::Cone));
    let o = lab.transfer(SIZE, &[], &[]);
    assert_a_relays_without_udp_over(&o, Transport::Tcp);
}

/// Host A, whose network lets no UDP out, relayed over `transport`; B relayed too.
fn assert_a_relays_without_udp_over(o: &Outcome, transport: Transport) {
    let a = &o.sender_connected.path;
    assert_eq!(a.kind, PathKind::Relay, "{}", show(o));
    assert_eq!(a.protocol, transport, "{}", show(o));
    assert_eq!(a.reason, Some(RelayReason::UdpBlocked), "{}", show(o));
    assert_eq!(
        o.receiver_connected.path.kind,
        PathKind::Relay,
        "{}",
        show(o)
    );
}

#[test]
fn web_only_network_relays_over_tls() {
    // Only the web gets out of A's network: the server's https port and TURN over TLS. A's
    // probe hears nothing over UDP and cannot open TCP to TURN's 3478: the last rung.
    let lab = Lab::new(Spec::new(Nat::WebOnly, B::Behind(Nat::Cone)).with_tls())
        .expect("build the NAT lab");
    assert!(lab.url.starts_with("https://"), "{}", lab.url);
    let o = lab.transfer(SIZE, &[], &[]);
    assert_a_relays_without_udp_over(&o, Transport::Tls);
    assert_eq!(o.receiver_done.path.kind, PathKind::Relay);
}

#[test]
fn upnp_router_to_symmetric_goes_direct_through_the_mapped_port() {
    let lab = lab(Nat::Upnp, B::Behind(Nat::Symmetric));
    let o = lab.transfer(SIZE, &[], &[]);
    let a = &o.sender_connected.path;
    // Without the mapping this is symmetric ↔ symmetric: relay (see the test below).
    assert_eq!(a.portmap, Some(PortmapState::Mapped), "{}", show(&o));
    assert_eq!(a.mapped_by, Some(MapProtocol::Upnp), "{}", show(&o));
    assert_eq!(a.kind, PathKind::Mapped, "{}", show(&o));
    assert_eq!(a.protocol, Transport::Udp, "{}", show(&o));
    let b = &o.receiver_connected.path;
    assert_eq!(b.kind, PathKind::Direct, "{}", show(&o));
    // B's router maps nothing (B may still be searching when it connects).
    assert_ne!(b.portmap, Some(PortmapState::Mapped), "{}", show(&o));
    assert_eq!(o.sender_done.path.kind, PathKind::Mapped);
    assert_eq!(lab.router_mappings("a").unwrap(), 0, "released on exit");
}

/// A router that speaks PCP and NAT-PMP but not UPnP (Apple's, many pfSense/OPNsense): the
/// same direct path, mapped over PCP, and the router's table empty once the peer exited.
#[test]
fn pcp_router_to_symmetric_goes_direct_through_the_mapped_port() {
    let lab = lab(Nat::Pcp, B::Behind(Nat::Symmetric));
    let o = lab.transfer(SIZE, &[], &[]);
    let a = &o.sender_connected.path;
    assert_eq!(a.portmap, Some(PortmapState::Mapped), "{}", show(&o));
    assert_eq!(a.mapped_by, Some(MapProtocol::Pcp), "{}", show(&o));
    assert_eq!(a.kind, PathKind::Mapped, "{}", show(&o));
    assert_eq!(
        o.receiver_connected.path.kind,
        PathKind::Direct,
        "{}",
        show(&o)
    );
    assert_eq!(o.sender_done.path.kind, PathKind::Mapped);
    assert_eq!(o.sender_done.path.mapped_by, Some(MapProtocol::Pcp));
    assert_eq!(lab.router_mappings("a").unwrap(), 0, "released on exit");
}

/// A router that speaks NAT-PMP but not PCP (nor UPnP): PCP goes unanswered from a router
/// that answered the NAT-PMP probe, so the port is mapped over NAT-PMP (a few seconds later,
/// after PCP's tries: the report at the end says so); released on exit.
#[test]
fn a_nat_pmp_only_router_maps_over_nat_pmp() {
    let lab = lab(Nat::NatPmp, B::Behind(Nat::Symmetric));
    // PCP's tries run out (with their take-back) before NAT-PMP maps.
    let mapped = || poll_until(|| lab.router_mappings("a").unwrap(), |n| *n > 0);
    let (held, (), done) = send_between(&lab, SIZE, mapped, |_| ());
    assert_eq!(held, 1);
    assert_eq!(done.path.portmap, Some(PortmapState::Mapped), "{done:?}");
    assert_eq!(done.path.mapped_by, Some(MapProtocol::NatPmp), "{done:?}");
    assert_eq!(done.path.kind, PathKind::Mapped, "{done:?}");
    assert_eq!(lab.router_mappings("a").unwrap(), 0, "released on exit");
}

/// A router speaking UPnP IGD, PCP and NAT-PMP, asked over all at once: it holds one mapping
/// of ours while the transfer runs, none after the peer exited.
#[test]
fn a_router_speaking_all_three_holds_one_mapping_released_on_exit() {
    let lab = lab(Nat::Mapping, B::Behind(Nat::Symmetric));
    // Bytes moving: the sender is connected (over its mapping) and still running.
    let moving = |b: &mut Peer| {
        b.wait_for_progress(1);
        lab.router_mappings("a").unwrap()
    };
    let ((), held, done) = send_between(&lab, 128 << 20, || (), moving);
    assert_eq!(held, 1, "mappings on the router mid-transfer");
    assert_eq!(done.path.kind, PathKind::Mapped, "{done:?}");
    assert!(done.path.mapped_by.is_some(), "{done:?}");
    assert_eq!(lab.router_mappings("a").unwrap(), 0, "released on exit");
}

/// The sender's router reboots mid-transfer: its mappings and connections are gone, its
/// PCP epoch starts again. The path goes down; the sender asks for its mapping again at
/// once (not at half its lease), ICE restarts, and the transfer goes on over the mapping
/// made anew, on the same connection. Hash checked, nothing sent twice.
#[test]
fn a_router_reboot_mid_transfer_is_survived_through_the_mapping_made_anew() {
    let lab = lab(Nat::Pcp, B::Behind(Nat::Symmetric));
    let o = lab.transfer_through(128 << 20, |lab| lab.restart_mapper("a").unwrap());
    eprintln!("bytes moved again {:?} after the reboot", o.moving_again);
    same_connection_all_along(&o);
    // The path at the end, as the sender's `done` describes it (the sender may not have
    // seen its path go down itself: the receiver's restart can come first).
    let back = o
        .sender_events
        .iter()
        .find_map(event::Done::of)
        .expect("the sender said done");
    assert_eq!(back.path.kind, PathKind::Mapped, "{back:?}");
    assert_eq!(back.path.mapped_by, Some(MapProtocol::Pcp), "{back:?}");
    assert_eq!(lab.router_mappings("a").unwrap(), 0, "released on exit");
}

#[test]
fn upnp_router_without_port_mapping_relays() {
    // The control for the test above: the same lab, the mapping switched off.
    let lab = lab(Nat::Upnp, B::Behind(Nat::Symmetric));
    let o = lab.transfer(SIZE, &["--no-portmap"], &[]);
    let a = &o.sender_connected.path;
    assert_eq!(a.portmap, Some(PortmapState::Off), "{}", show(&o));
    assert_eq!(a.kind, PathKind::Relay, "{}", show(&o));
}

/// Both hosts dual-stack behind home routers: symmetric NAT on IPv4 (which relays, see
/// `symmetric_to_symmetric_relays_over_udp`), stateful firewalls without NAT on IPv6. The
/// peers open the IPv6 firewalls from both sides at once and go direct over IPv6, host to
/// host, rather than through the relay.
#[test]
fn ipv6_goes_direct_through_two_stateful_firewalls_where_ipv4_would_relay() {
    let lab =
        Lab::new(Spec::new(Nat::Symmetric, B::Behind(Nat::Symmetric)).with_ipv6(V6::DualStack))
            .expect("build the NAT lab");
    // The firewalls are closed to what nobody asked for, both ways.
    assert!(!lab.unsolicited_udp6_arrives("b", "a").unwrap());
    assert!(!lab.unsolicited_udp6_arrives("a", "b").unwrap());
    let o = lab.transfer(SIZE, &[], &[]);
    for c in [&o.sender_connected.path, &o.receiver_connected.path] {
        assert_eq!(c.kind, PathKind::Direct, "{}", show(&o));
        assert_eq!(c.family, Some(IpFamily::Ipv6), "{}", show(&o));
        assert_eq!(c.local, CandidateType::Host, "{}", show(&o));
    }
    for d in [&o.sender_done.path, &o.receiver_done.path] {
        assert_eq!((d.kind, d.family), (PathKind::Direct, Some(IpFamily::Ipv6)));
    }
}

/// A UPnP router maps the sender's ICE port on IPv4, and the same port is bound on IPv6:
/// whichever family ICE takes, the report names it right (an IPv6 pair on that port is not
/// through the IPv4 mapping).
#[test]
fn a_mapped_ipv4_port_does_not_name_an_ipv6_path() {
    let lab = Lab::new(Spec::new(Nat::Upnp, B::Behind(Nat::Symmetric)).with_ipv6(V6::DualStack))
        .expect("build the NAT lab");
    let o = lab.transfer(SIZE, &[], &[]);
    println!("the sender's path: {}", o.sender_done.path);
    // As it stood at the end (the mapping may come after the connection opened).
    assert_eq!(
        o.sender_done.path.portmap,
        Some(PortmapState::Mapped),
        "{}",
        show(&o)
    );
    for p in [&o.sender_connected.path, &o.sender_done.path] {
        let expected = match p.family {
            Some(IpFamily::Ipv6) => PathKind::Direct,
            _ => PathKind::Mapped,
        };
        assert_eq!(p.kind, expected, "{p:?}");
    }
}

/// A router that speaks PCP opens its IPv6 firewall to the peer's ICE port when asked (a
/// PCP MAP without translation), so the other side may come in first; the pinhole is closed
/// when the peer exits.
#[test]
fn a_pcp_router_opens_an_ipv6_pinhole_for_the_peer_and_closes_it_on_exit() {
    let lab = Lab::new(Spec::new(Nat::Pcp, B::Behind(Nat::Symmetric)).with_ipv6(V6::DualStack))
        .expect("build the NAT lab");
    assert_eq!(lab.router_pinholes("a").unwrap(), []);
    // Asked for as the sender starts, before anyone joins.
    let opened = || poll_until(|| lab.router_pinholes("a").unwrap(), |h| !h.is_empty());
    let (holes, (), _) = send_between(&lab, SIZE, opened, |_| ());
    assert_eq!(holes.len(), 1, "{holes:?}");
    assert_eq!(
        holes[0].ip(),
        &"2001:db8:1::2".parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(lab.router_pinholes("a").unwrap(), [], "closed on exit");
}

/// A host with IPv6 only (no IPv4 address at all) and a dual-stack one: they meet over IPv6
/// and go direct over it.
#[test]
fn an_ipv6_only_host_and_a_dual_stack_host_go_direct() {
    let lab = Lab::new(Spec::new(Nat::Cone, B::Behind(Nat::Cone)).with_ipv6(V6::BOnly))
        .expect("build the NAT lab");
    let o = lab.transfer(SIZE, &[], &[]);
    for c in [&o.sender_connected.path, &o.receiver_connected.path] {
        assert_eq!(c.kind, PathKind::Direct, "{}", show(&o));
        assert_eq!(c.family, Some(IpFamily::Ipv6), "{}", show(&o));
    }
}

#[test]
fn same_lan_goes_direct_over_host_candidates() {
    let lab = lab(Nat::Cone, B::SameLan);
    let o = lab.transfer(SIZE, &[], &[]);
    for c in [&o.sender_connected.path, &o.receiver_connected.path] {
        assert_eq!(c.kind, PathKind::Direct, "{}", show(&o));
        assert_eq!(c.local, CandidateType::Host, "{}", show(&o));
        // The remote host candidate, or the same address learnt from its first check.
        assert!(
            matches!(c.remote, CandidateType::Host | CandidateType::Prflx),
            "{}",
            show(&o)
        );
    }
}

#[test]
fn forwarded_port_with_public_addr_goes_direct() {
    // Ladder step 1: A's user forwarded UDP 40000 by hand (a DNAT rule on a symmetric
    // router) and runs `--port 40000 --public-addr` with the router's address.
    let lab = lab(Nat::Symmetric, B::Behind(Nat::Symmetric));
    lab.forward_port("a", 40000).unwrap();
    let o = lab.transfer(
        SIZE,
        &["--port", "40000", "--public-addr", "198.18.0.2"],
        &[],
    );
    assert_eq!(
        o.sender_connected.path.kind,
        PathKind::Forwarded,
        "{}",
        show(&o)
    );
    assert_eq!(
        o.receiver_connected.path.kind,
        PathKind::Direct,
        "{}",
        show(&o)
    );
}

#[test]
fn cone_to_cone_survives_losing_the_signalling_server_mid_transfer() {
    let lab = lab(Nat::Cone, B::Behind(Nat::Cone));
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    make_file(&file, 64 << 20, 9);
    let (sender, link) = lab.sender(&[], &[&file]).unwrap();
    let mut receiver = lab.receiver(&[], dst.path(), &link);
    let connected: event::Connected = receiver.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(connected.path.kind, PathKind::Direct, "{connected:?}");
    receiver
        .wait::<event::Progress>(Duration::from_secs(30))
        .unwrap();
    lab.cut_server().unwrap();
    // The file was not complete when the server went: no final file yet (it is linked into
    // place only once verified, before either side's `done`).
    assert!(
        !dst.path().join("big.bin").exists(),
        "the transfer had already finished when the server was cut"
    );
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("big.bin")), hash_file(&file));
}

#[test]
fn loss_and_delay_on_a_router_still_deliver_intact() {
    // Router A's WAN egress (netem-like): 100 ms and 5 % of frames lost.
    let mut spec = Spec::new(Nat::Cone, B::Behind(Nat::Cone));
    spec.wan[0] = Impair {
        delay_ms: 100,
        loss: 0.05,
    };
    let lab = Lab::new(spec).expect("build the NAT lab");
    let o = lab.transfer(2 << 20, &[], &[]);
    let (a, b) = o.paths();
    assert_eq!(a, b, "{}", show(&o));
    // Usually the punched path; when 5 % loss eats enough of the first checks the relay
    // wins its 1 s race instead (3 of 16 runs here), and must say why.
    match a {
        PathKind::Direct => {}
        PathKind::Relay => {
            let why = o.sender_connected.path.reason;
            assert_eq!(why, Some(RelayReason::NoDirectPair), "{}", show(&o));
        }
        other => panic!("unexpected path {other:?}: {}", show(&o)),
    }
}

#[test]
fn a_path_with_a_long_round_trip_still_connects() {
    // 600 ms out of each router: 1.2 s between the peers and back, as a geostationary
    // satellite link with a busy uplink has. The DTLS handshake must wait that long for an
    // answer; its retransmissions back off (patches/rtc-dtls): with a constant 100 ms timer it
    // gave up after eight, before the first answer came.
    let lab = cone_lab_with_delay(600);
    let o = lab.transfer(64 << 10, &[], &[]);
    let (a, b) = o.paths();
    assert_eq!((a, b), (PathKind::Direct, PathKind::Direct), "{}", show(&o));
}

/// Cone / cone, each router delaying what it sends out by `ms`.
fn cone_lab_with_delay(ms: u32) -> Lab {
    let mut spec = Spec::new(Nat::Cone, B::Behind(Nat::Cone));
    spec.wan = [Impair {
        delay_ms: ms,
        loss: 0.0,
    }; 2];
    Lab::new(spec).expect("build the NAT lab")
}

/// Both sides reconnected, the receiver continued its part, and the sender sent little twice.
fn assert_continued(o: &OutageOutcome) {
    assert_reconnected("sender", &o.sender_events);
    assert_reconnected("receiver", &o.receiver_events);
    assert!(
        event::find::<event::Resumed>(&o.receiver_events).is_some(),
        "the receiver continued its part: {:?}",
        o.receiver_events
    );
    assert!(
        o.sender_transferred <= o.size + (16 << 20),
        "sent {} for {}",
        o.sender_transferred,
        o.size
    );
}

/// An outage longer than SCTP's retransmission backoff grows to without a cap: 16 s. With
/// RFC 9260's 60 s cap the retransmissions go out about 1, 3, 7, 15 and 31 s into the cut, so
/// bytes would move again some 15 s after connectivity returned, and webrtc-rs stopped
/// retransmitting for good after the fifth; with patches/rtc-sctp (a 3 s cap, as Chromium's,
/// and no limit on T3-rtx) at the next retransmission, 18 s into the cut: 2 s after. With its
/// path-restored hook SCTP retransmits as soon as ICE finds the path back, which a
/// disconnected agent checks for every 50 ms (patches/rtc-ice, disconnected checks; every
/// second before, which took up to 1.5 s): the test allows 1.5 s. One side's router drops
/// everything meanwhile, keeping its NAT mappings.
const OUTAGE: Duration = Duration::from_secs(16);

#[test]
fn cone_to_cone_moves_again_within_seconds_of_an_outage_ending() {
    let lab = cone_lab_with_delay(5);
    let o = lab.transfer_through_outage(128 << 20, "b", OUTAGE);
    eprintln!(
        "bytes moved again {:?} after the outage ended",
        o.moving_again
    );
    assert!(
        o.moving_again < Duration::from_millis(1500),
        "nothing moved for {:?} after the outage ended\n{}",
        o.moving_again,
        o.logs
    );
    // The connection lived through it: nothing was sent twice above SCTP.
    assert_eq!(o.sender_transferred, o.size);
    assert_same_connection("sender", &o.sender_events);
    assert_same_connection("receiver", &o.receiver_events);
}

/// An outage longer than ICE waits (5 s to disconnected, 15 more to failed): both sides give
/// the connection up. The sender, who made the room, waits in it; the receiver joins it
/// again, retrying while its network is down, and the transfer continues on a new
/// connection from what the receiver kept.
#[test]
fn cone_to_cone_reconnects_after_an_outage_longer_than_ice_waits() {
    let lab = cone_lab_with_delay(5);
    let size = 128 << 20;
    let o = lab.transfer_through_outage(size, "b", Duration::from_secs(25));
    eprintln!(
        "bytes moved again {:?} after the outage ended",
        o.moving_again
    );
    assert_continued(&o);
}

/// The receiver's host gets a new address mid-transfer (its old one removed): its
/// connection and its socket to the server die without a word. It notices (the kernel's
/// source address towards the sender changed), gives the connection up, joins the room again
/// from the new address — its token takes its place back from the old socket the server
/// still counts in the room — and the transfer continues from what it kept.
#[test]
fn a_receiver_whose_address_changes_reconnects_and_continues() {
    continues_through_an_address_change("b", 2);
}

/// 128 MiB from A to B; once a fifth arrived, host `host` (on LAN 10.0.`subnet`) moves from
/// .2 to .102. Recovery must not wait for ICE to give up on the old path (≈ 20 s of silence):
/// bytes moving again within 10 s proves the moved host noticed by itself and (as the
/// creator) called the other peer back.
fn continues_through_an_address_change(host: &str, subnet: u8) {
    let lab = cone_lab_with_delay(10);
    let size = 128 << 20;
    let o = lab.transfer_through(size, |lab| lab.move_host(host, subnet, 2, 102).unwrap());
    eprintln!(
        "bytes moved again {:?} after the address changed",
        o.moving_again
    );
    assert_continued(&o);
    assert!(
        o.moving_again < Duration::from_secs(10),
        "recovery waited {:?}: as long as ICE takes to give up\n{}",
        o.moving_again,
        o.logs
    );
}

/// The sender's host — the one that made the room — gets a new address mid-transfer: its
/// connection and its socket to the server die without a word, the server still counting
/// the old socket in the room. It notices, opens a new socket and takes its place in the
/// room back with the token the server gave it (`reclaim`, saying its connection is lost);
/// the receiver, whose connection still looks alive, hears `peer_lost` and joins again, and
/// the transfer continues from what the receiver kept. Before the token, the room was lost
/// with the creator's socket.
#[test]
fn a_sender_whose_address_changes_keeps_its_room_and_continues() {
    continues_through_an_address_change("a", 1);
}

/// The receiver's interface goes down for 8 s and comes back with its address: no route
/// meanwhile is no address change, so the connection rides it out as an outage (nobody
/// reconnects), and the transfer completes having sent nothing twice.
#[test]
fn an_interface_down_and_up_again_is_ridden_out_on_the_same_connection() {
    let lab = cone_lab_with_delay(5);
    let size = 128 << 20;
    let o = lab.transfer_through(size, |lab| {
        lab.bounce_host("b", 2, Duration::from_secs(8)).unwrap()
    });
    eprintln!(
        "bytes moved again {:?} after the interface came back",
        o.moving_again
    );
    same_connection_all_along(&o);
}

/// The connection was brought back in place, and said so: `reconnecting` `path_down` then
/// `reconnected` on the side whose router forgot (at least), nothing through the room.
fn same_connection_all_along(o: &OutageOutcome) {
    assert_same_connection("sender", &o.sender_events);
    assert!(
        assert_same_connection("receiver", &o.receiver_events),
        "the receiver, whose path went down, said nothing: {:?}",
        o.receiver_events
    );
    assert_eq!(o.sender_transferred, o.size, "nothing sent twice");
}

/// The receiver's router forgets its NAT mappings mid-transfer (a reboot) and maps what
/// comes next to other ports: the sender sees the receiver's packets from a port it never
/// checked, the server sees segments of a connection it does not know. Once ICE calls the
/// path down, the receiver takes its place in the room back on a new socket, the sender hears
/// it and restarts ICE through the room: the same connection goes on, over the new mapping,
/// long before ICE alone would have failed (≈ 20 s) and the peers reconnected. Hash checked,
/// nothing sent twice.
#[test]
fn a_router_that_forgets_its_mappings_mid_transfer_is_survived_by_an_ice_restart() {
    let lab = cone_lab_with_delay(5);
    let size = 128 << 20;
    let o = lab.transfer_through(size, |lab| lab.forget_mappings("b").unwrap());
    eprintln!(
        "bytes moved again {:?} after the router forgot its mappings",
        o.moving_again
    );
    same_connection_all_along(&o);
    assert!(
        o.moving_again < Duration::from_secs(15),
        "nothing moved for {:?} after the router forgot its mappings",
        o.moving_again
    );
}

/// A long outage on the receiver's side, and the signalling server unreachable meanwhile:
/// nobody can re-signal. Both sides stop with a clear error once `--reconnect-timeout` is
/// over, the receiver keeps its part, and the next run (server back) continues it.
#[test]
fn without_the_server_a_long_outage_ends_clearly_and_the_next_run_continues() {
    let lab = lab(Nat::Cone, B::Behind(Nat::Cone));
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let size: u64 = 160 << 20;
    make_file(&file, size, 23);
    let wait = ["--reconnect-timeout", "10"];
    let (sender, link) = lab.sender(&wait, &[&file]).unwrap();
    let mut receiver = lab.receiver(&wait, dst.path(), &link);
    receiver.wait_for_progress(size / 5);
    lab.cut_router("b").unwrap();
    lab.cut_server().unwrap();
    std::thread::sleep(Duration::from_secs(25));
    lab.restore_router("b").unwrap();
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let rmsg = expect_error(rs, &revents);
    let smsg = expect_error(ss, &sevents);
    assert!(rmsg.contains("could not get the other peer back"), "{rmsg}");
    assert!(rmsg.contains("kept in"), "{rmsg}");
    assert!(
        smsg.contains("did not come back") || smsg.contains("signalling server"),
        "{smsg}"
    );
    assert!(!dst.path().join("big.bin").exists());

    lab.restore_server().unwrap();
    let (sender, link) = lab.sender(&[], &[&file]).unwrap();
    let receiver = lab.receiver(&[], dst.path(), &link);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    expect_done(ss, &sevents);
    let resumed = event::find::<event::Resumed>(&revents).expect("the part was continued");
    assert!(resumed.offset >= size / 5, "{resumed:?}");
    assert_eq!(done.transferred, size - resumed.offset);
    assert_eq!(hash_file(&dst.path().join("big.bin")), hash_file(&file));
}

// ---- The relay pool's volunteers ----

/// Bytes the relays `vs` reported relaying, together.
fn relayed_by(vs: &[&punchdrop_e2e::volunteer::Volunteer]) -> u64 {
    vs.iter().map(|v| v.relayed()).sum()
}

/// Wait (up to 10 s) until the relays `vs` reported at least `bytes` together.
fn wait_relayed(vs: &[&punchdrop_e2e::volunteer::Volunteer], bytes: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relayed_by(vs) < bytes && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    relayed_by(vs)
}

/// Two peers behind symmetric NATs cannot reach each other; two volunteers, each on a host
/// behind a UPnP router, map their TURN and relay ports there and register with the server,
/// which checks it can reach them and hands rooms the two of them instead of its own TURN.
/// The transfer is relayed by the volunteers, and the server's TURN relays nothing.
#[test]
fn symmetric_peers_relay_through_volunteers_behind_upnp_routers() {
    let lab = Lab::new(Spec::new(Nat::Symmetric, B::Behind(Nat::Symmetric)).with_volunteers(2))
        .expect("build the NAT lab");
    let (v0, v1) = (lab.volunteer(0).unwrap(), lab.volunteer(1).unwrap());
    for v in [&v0, &v1] {
        assert!(
            v.events().iter().any(|e| matches!(
                e,
                protocol::relay::RelayEvent::Listening { mapped: true, .. }
            )),
            "the router mapped the relay's ports: {:?}",
            v.events()
        );
    }
    let size = 16 << 20;
    let o = lab.transfer(size, &[], &[]);
    for c in [&o.sender_connected.path, &o.receiver_connected.path] {
        assert_eq!(c.kind, PathKind::Relay, "{}", show(&o));
    }
    // One peer's relay candidate paired with the other's address, or both relayed: the file
    // crosses a volunteer at least once.
    let relayed = wait_relayed(&[&v0, &v1], size);
    assert!(relayed >= size, "the volunteers relayed {relayed} bytes");
    assert_eq!(lab.server_metric("punchdrop_turn_allocations_total"), 0);
    assert_eq!(lab.server_metric("punchdrop_turn_relayed_bytes_total"), 0);
    assert!(lab.server_metric("punchdrop_volunteer_relayed_bytes_total") >= size);
}

/// The volunteer carrying a transfer dies (SIGKILL) mid-way: it leaves the pool as its
/// WebSocket closes, the peers lose the path and get another through the other volunteer or
/// the server's TURN, and the transfer ends intact without starting over.
#[test]
fn a_volunteer_relay_dying_mid_transfer_is_replaced_and_the_transfer_continues() {
    let lab = Lab::new(Spec::new(Nat::Symmetric, B::Behind(Nat::Symmetric)).with_volunteers(2))
        .expect("build the NAT lab");
    let mut vs = [lab.volunteer(0).unwrap(), lab.volunteer(1).unwrap()];
    let size = 192 << 20;
    let mut killed = None;
    let o = lab.transfer_through(size, |lab| {
        // The carrier is the one whose reports show bytes (every 200 ms here).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let carrier = loop {
            if let Some(i) = (0..2).find(|&i| vs[i].relayed() > (1 << 20)) {
                break i;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no volunteer reports bytes: {:?} {:?}",
                vs[0].events(),
                vs[1].events()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        vs[carrier].kill();
        killed = Some(carrier);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lab.server_metric("punchdrop_volunteer_relays") > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the dead relay is still listed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let other = 1 - killed.expect("killed one");
    let after = vs[other].relayed() + lab.server_metric("punchdrop_turn_relayed_bytes_total");
    eprintln!(
        "bytes moved again {:?} after the relay died; the other volunteer relayed {}, the \
         server's TURN {}",
        o.moving_again,
        vs[other].relayed(),
        lab.server_metric("punchdrop_turn_relayed_bytes_total")
    );
    assert!(after > 0, "no other relay carried the rest");
    assert!(
        o.sender_transferred <= o.size + (32 << 20),
        "sent {} for {}: the transfer started over",
        o.sender_transferred,
        o.size
    );
}
