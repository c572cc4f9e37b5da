//! The vendored DTLS (`patches/rtc-dtls`) driven on virtual time through its sans-IO
//! endpoint: a client and a server, datagrams carried with a fixed one-way delay, chosen
//! ones dropped. It checks two handshake patches:
//! - `rtc-dtls-0.21.1-skip-hello-verify.patch`: the server answers the first ClientHello
//!   with its ServerHello flight, so the handshake takes two round trips, not three;
//! - `rtc-dtls-0.21.1-retransmit-kept.patch`: a server whose flight was lost still sends it
//!   again when the client's repeated flight arrives first (that arrival used to cancel its
//!   retransmission timer, leaving both sides waiting until the client gave up).
//! - `rtc-dtls-0.21.1-false-start.patch`: a client's first application data leaves with its
//!   Finished (RFC 7918), a round trip before the server's Finished comes back;
//! - `rtc-dtls-0.21.1-record-copies.patch`: application data after the handshake is sealed
//!   and opened with one copy of each record and few allocations (counted per thread by
//!   `allocation-counter`).

use bytes::BytesMut;
use dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use dtls::crypto::Certificate;
use dtls::crypto_provider::default_provider;
use dtls::endpoint::{Endpoint, EndpointEvent};
use shared::TransportProtocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ONE_WAY: Duration = Duration::from_millis(50);

fn config(is_client: bool, flight_interval: Duration) -> Arc<HandshakeConfig> {
    let provider = default_provider().expect("a crypto provider");
    let cert = Certificate::generate_self_signed(vec!["punchdrop".to_owned()], provider.crypto())
        .expect("a certificate");
    let remote = is_client.then(|| addr(2));
    Arc::new(
        ConfigBuilder::default()
            .with_crypto_provider(provider)
            .with_certificates(vec![cert])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_insecure_skip_verify_hello(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .with_flight_interval(flight_interval)
            .build(is_client, remote)
            .expect("a DTLS configuration"),
    )
}

fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], 5000))
}

/// One datagram on its way: when it arrives, to whom (true: the server), what.
type Flight = (Instant, bool, BytesMut);

/// Runs a handshake; `drop(to_server, sent_at)` loses a datagram. Returns when each side
/// completed (time since the start), `None` for one that had not after 20 s.
fn handshake(
    flight_interval: Duration,
    drop: impl Fn(bool, Duration) -> bool,
) -> (Option<Duration>, Option<Duration>) {
    let h = run_handshake(flight_interval, drop, None);
    (h.client_done, h.server_done)
}

/// Both endpoints after [`run_handshake`], and when each was done.
struct Handshaken {
    client: Endpoint,
    server: Endpoint,
    now: Instant,
    client_done: Option<Duration>,
    server_done: Option<Duration>,
    /// When the server read the client's `early` bytes.
    server_read_early: Option<Duration>,
}

/// `early`: bytes the client writes as soon as it may (`KeysReady`, else `HandshakeComplete`).
fn run_handshake(
    flight_interval: Duration,
    drop: impl Fn(bool, Duration) -> bool,
    early: Option<&[u8]>,
) -> Handshaken {
    let start = Instant::now();
    let (c, s) = (addr(1), addr(2));
    let mut client = Endpoint::new(c, TransportProtocol::UDP, None);
    let mut server = Endpoint::new(
        s,
        TransportProtocol::UDP,
        Some(config(false, flight_interval)),
    );
    client
        .connect(start, s, config(true, flight_interval), None)
        .expect("connect");
    let mut wire: Vec<Flight> = Vec::new();
    let (mut client_done, mut server_done) = (None, None);
    let early_bytes = early;
    let mut early = early;
    let mut server_read_early = None;
    let mut now = start;
    while now - start < Duration::from_secs(20)
        && (client_done.is_none()
            || server_done.is_none()
            || (early_bytes.is_some() && server_read_early.is_none()))
    {
        for (ep, to_server) in [(&mut client, true), (&mut server, false)] {
            while let Some(t) = ep.poll_transmit() {
                if !drop(to_server, now - start) {
                    wire.push((now + ONE_WAY, to_server, t.message));
                }
            }
        }
        let timers = [client.poll_timeout(&s), server.poll_timeout(&c)];
        let next = wire
            .iter()
            .map(|f| f.0)
            .chain(timers.into_iter().flatten())
            .min();
        let Some(next) = next else { break };
        now = next.max(now);
        if let Some(i) = wire.iter().position(|f| f.0 <= now) {
            let (_, to_server, data) = wire.remove(i);
            let (ep, from, done) = match to_server {
                true => (&mut server, c, &mut server_done),
                false => (&mut client, s, &mut client_done),
            };
            // A datagram the handshake rejects is lost for it, as on a real path.
            let events = ep.read(now, from, None, data).unwrap_or_default();
            if events
                .iter()
                .any(|e| matches!(e, EndpointEvent::HandshakeComplete))
            {
                done.get_or_insert(now - start);
            }
            let may_write = events.iter().any(|e| {
                matches!(
                    e,
                    EndpointEvent::KeysReady | EndpointEvent::HandshakeComplete
                )
            });
            if !to_server
                && may_write
                && let Some(bytes) = early.take()
            {
                ep.write(now, s, bytes).expect("the client writes");
            }
            if to_server
                && events
                    .iter()
                    .any(|e| matches!(e, EndpointEvent::ApplicationData(d) if Some(&d[..]) == early_bytes))
            {
                server_read_early.get_or_insert(now - start);
            }
            continue;
        }
        let _ = client.handle_timeout(s, now);
        let _ = server.handle_timeout(c, now);
    }
    Handshaken {
        client,
        server,
        now,
        client_done,
        server_done,
        server_read_early,
    }
}

#[test]
fn the_handshake_takes_two_round_trips() {
    // A long flight interval: nothing is sent twice.
    let (client, server) = handshake(Duration::from_secs(5), |_, _| false);
    let rtt = ONE_WAY * 2;
    // The client's ClientHello, the server's flight 4, the client's flight 5 (the server is
    // done), the server's flight 6 (the client is done).
    assert_eq!(
        server,
        Some(rtt + ONE_WAY),
        "server done at 1.5 round trips"
    );
    assert_eq!(
        client,
        Some(rtt * 2),
        "client done at 2 round trips (3 with a HelloVerifyRequest)"
    );
}

/// False Start (`rtc-dtls-0.21.1-false-start.patch`): what the client writes once it has
/// sent its Finished travels with that flight, so the server reads it as its own handshake
/// completes, at 1.5 round trips, not at 2.5 (after the server's Finished reached the client
/// and the data came back). WebRTC's SCTP INIT is that first write.
#[test]
fn the_clients_first_data_leaves_with_its_finished() {
    let early: &[u8] = b"sctp init";
    let h = run_handshake(Duration::from_secs(5), |_, _| false, Some(early));
    let rtt = ONE_WAY * 2;
    assert_eq!(
        h.server_done,
        Some(rtt + ONE_WAY),
        "server done at 1.5 round trips"
    );
    assert_eq!(h.client_done, Some(rtt * 2), "client done at 2 round trips");
    assert_eq!(
        h.server_read_early,
        Some(rtt + ONE_WAY),
        "the server read the client's first data with its Finished"
    );
}

#[test]
fn a_lost_server_flight_is_sent_again_after_the_clients_repeat() {
    // Everything the server sends in its first 60 ms (its first flight 4) is lost. The
    // client repeats its ClientHello after 100 ms, which reaches the server before the
    // server's own timer would resend.
    let (client, server) = handshake(Duration::from_millis(100), |to_server, sent| {
        !to_server && sent < Duration::from_millis(60)
    });
    eprintln!("done: client {client:?}, server {server:?}");
    assert!(
        client.is_some() && server.is_some(),
        "the handshake did not complete in 20 s (client {client:?}, server {server:?}): the \
         server's repeat of its flight never came"
    );
    assert!(client.unwrap() < Duration::from_secs(1), "{client:?}");
}

/// Application data after the handshake: the records of SCTP packets, sealed by one side and
/// opened by the other, with what each costs in allocations counted. Before the patch a
/// record was copied four times on its way out (into a `Packet`, marshalled, sealed,
/// compacted into the datagram) and twice on its way in (decrypted into a new buffer, then
/// unmarshalled into another), in seven and four allocations.
#[test]
fn records_are_sealed_and_opened_with_one_copy() {
    const RECORDS: u64 = 200;
    let body: Vec<u8> = (0..1100u32).map(|i| (i * 7) as u8).collect();
    let mut h = run_handshake(Duration::from_secs(5), |_, _| false, None);
    assert!(
        h.client_done.is_some() && h.server_done.is_some(),
        "no handshake"
    );
    let (c, s) = (addr(1), addr(2));
    let now = h.now;
    // Whatever the handshake left to send or deliver, first.
    while h.client.poll_transmit().is_some() {}
    while h.server.poll_transmit().is_some() {}

    let mut datagrams = Vec::with_capacity(RECORDS as usize);
    let sealing = allocation_counter::measure(|| {
        for _ in 0..RECORDS {
            h.client.write(now, s, &body).expect("written");
            while let Some(t) = h.client.poll_transmit() {
                datagrams.push(t.message);
            }
        }
    });
    let (sealed_allocs, sealed_bytes) = (sealing.count_total, sealing.bytes_total);
    assert_eq!(datagrams.len() as u64, RECORDS, "one datagram per record");

    let mut received = Vec::with_capacity(RECORDS as usize);
    let opening = allocation_counter::measure(|| {
        for d in datagrams {
            for e in h.server.read(now, c, None, d).expect("read") {
                if let EndpointEvent::ApplicationData(data) = e {
                    received.push(data);
                }
            }
        }
    });
    let (opened_allocs, opened_bytes) = (opening.count_total, opening.bytes_total);
    assert_eq!(received.len() as u64, RECORDS, "every record arrived");
    assert!(
        received.iter().all(|r| r[..] == body[..]),
        "a record arrived altered"
    );

    let record = (body.len() + 13 + 8 + 16) as u64;
    eprintln!(
        "per record: sealing {:.2} allocations, {} bytes; opening {:.2} allocations, {} bytes \
         (a record is {record} bytes)",
        sealed_allocs as f64 / RECORDS as f64,
        sealed_bytes / RECORDS,
        opened_allocs as f64 / RECORDS as f64,
        opened_bytes / RECORDS,
    );
    // Sealing: the datagram, sealed where it is built (and the cipher's additional data).
    // Before: 10 allocations and 4.4 records' bytes per record.
    assert!(
        sealed_allocs <= RECORDS * 2 + 8 && sealed_bytes <= RECORDS * record * 5 / 4,
        "sealing {RECORDS} records took {sealed_allocs} allocations and {sealed_bytes} bytes"
    );
    // Opening: the record split out of its datagram (opened where it lies), the lists it
    // comes in. Before: 6 allocations and 3.2 records' bytes per record.
    assert!(
        opened_allocs <= RECORDS * 4 + 8 && opened_bytes <= RECORDS * record * 3 / 2,
        "opening {RECORDS} records took {opened_allocs} allocations and {opened_bytes} bytes"
    );
}
