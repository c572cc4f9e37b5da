//! The TURN server against the turn crate's own client and raw sockets, on 127.0.0.1 with
//! ephemeral ports. Every wait is bounded.

use super::gate::Listener as _;
use super::*;
use crate::credentials::TurnSecret;
use std::future::Future;
use std::time::SystemTime;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    BINDING_REQUEST, BINDING_SUCCESS, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    Getter as _, METHOD_ALLOCATE, METHOD_REFRESH, Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use turn::client::{Client, ClientConfig};
use turn::relay::RelayAddressGenerator as _;
use webrtc_util::Conn;

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// The server's own address: not the clients' and peers' (those are on [`LOCALHOST`]), as
/// no relay may reach the server's own addresses but its live relays.
const SERVER_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

struct Setup {
    handle: TurnHandle,
    metrics: Arc<TurnMetrics>,
    secret: TurnSecret,
}

/// The test server's settings: on [`SERVER_IP`], any ports, private peers allowed.
fn config(secret: &TurnSecret) -> TurnConfig {
    TurnConfig {
        listen: SocketAddr::new(SERVER_IP, 0),
        also_listen: None,
        relay_ip: SERVER_IP,
        relay_bind_ip: None,
        relay_ports: 0..=0,
        realm: "punchdrop".into(),
        secret: secret.clone(),
        allow_private_peers: true,
        max_bytes_per_allocation: u64::MAX,
        max_allocation_lifetime: Duration::from_secs(3600),
        caps: TurnCaps::default(),
        own_addresses: Vec::new(),
        audit: Default::default(),
        tls: None,
    }
}

async fn start(tweak: impl FnOnce(&mut TurnConfig)) -> Setup {
    let secret = TurnSecret::new(b"test secret".to_vec());
    let mut config = config(&secret);
    tweak(&mut config);
    let metrics = Arc::new(TurnMetrics::default());
    let handle = spawn(config, metrics.clone()).await.unwrap();
    Setup {
        handle,
        metrics,
        secret,
    }
}

fn creds(secret: &TurnSecret, room: &str) -> (String, String) {
    secret.mint(room, Duration::from_secs(600), SystemTime::now())
}

async fn client_over(
    conn: Arc<dyn Conn + Send + Sync>,
    server: SocketAddr,
    (username, password): (String, String),
) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username,
        password,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

async fn udp_client(server: SocketAddr, creds: (String, String)) -> (Client, SocketAddr) {
    let sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let local = sock.local_addr().unwrap();
    (client_over(Arc::new(sock), server, creds).await, local)
}

async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = within("a datagram", sock.recv_from(&mut buf))
        .await
        .unwrap();
    (buf[..n].to_vec(), from)
}

async fn assert_quiet(sock: &UdpSocket) {
    let mut buf = vec![0u8; 2048];
    if let Ok(r) = tokio::time::timeout(QUIET, sock.recv_from(&mut buf)).await {
        panic!("nothing should arrive, got {r:?}");
    }
}

/// Relays data from a turn client's allocation to a plain UDP peer and back.
async fn relay_both_ways(relay: &impl Conn, peer: &UdpSocket) -> u64 {
    let relay_addr = relay.local_addr().unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut bytes = 0;
    // The first packets go as Send indications, the later ones as ChannelData once the
    // client's ChannelBind is through.
    for i in 0..20 {
        let msg = format!("to the peer {i}");
        within("relay send", relay.send_to(msg.as_bytes(), peer_addr))
            .await
            .unwrap();
        assert_eq!(recv(peer).await, (msg.clone().into_bytes(), relay_addr));
        bytes += msg.len() as u64;
    }
    for i in 0..20 {
        let msg = format!("to the client {i}");
        peer.send_to(msg.as_bytes(), relay_addr).await.unwrap();
        let mut buf = vec![0u8; 1500];
        let (n, from) = within("relay recv", relay.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!((&buf[..n], from), (msg.as_bytes(), peer_addr));
        bytes += msg.len() as u64;
    }
    bytes
}

#[tokio::test]
async fn stun_binding_returns_the_reflexive_address() {
    let s = start(|_| {}).await;
    // No credentials needed for STUN.
    let (client, local) = udp_client(s.handle.udp_addr(), (String::new(), String::new())).await;
    let mapped = within("binding", client.send_binding_request())
        .await
        .unwrap();
    assert_eq!(mapped, local);
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

/// The second family's address answers STUN with the client's own address of that family
/// and allocates relays on the relay IP (IPv4), which relay to peers of that family.
#[tokio::test]
async fn the_second_family_answers_stun_and_relays_on_the_first() {
    let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    let s = start(|c| c.also_listen = Some(SocketAddr::new(v6, 0))).await;
    let (udp6, tcp6) = s.handle.also_addrs().expect("a second family");
    assert_eq!((udp6.ip(), tcp6.ip()), (v6, v6));
    let client_over_v6 = |creds| async move {
        let sock = UdpSocket::bind((v6, 0)).await.unwrap();
        let local = sock.local_addr().unwrap();
        (client_over(Arc::new(sock), udp6, creds).await, local)
    };
    let (client, local) = client_over_v6((String::new(), String::new())).await;
    let mapped = within("binding", client.send_binding_request())
        .await
        .unwrap();
    assert_eq!(mapped, local);
    client.close().await.unwrap();

    let (client, _) = client_over_v6(creds(&s.secret, "room-6")).await;
    let relay = within("allocate", client.allocate()).await.unwrap();
    assert_eq!(relay.local_addr().unwrap().ip(), SERVER_IP);
    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    assert!(relay_both_ways(&relay, &peer).await > 0);
    relay.close().await.unwrap();
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

#[tokio::test]
async fn a_second_address_of_the_same_family_is_refused() {
    let mut c = config(&TurnSecret::new(b"test secret".to_vec()));
    c.also_listen = Some(SocketAddr::new(LOCALHOST, 0));
    let err = spawn(c, Arc::default()).await.unwrap_err();
    assert!(format!("{err:#}").contains("other IP family"), "{err:#}");
}

#[tokio::test]
async fn udp_allocation_relays_both_ways_and_is_counted() {
    let s = start(|_| {}).await;
    let (client, _) = udp_client(s.handle.udp_addr(), creds(&s.secret, "room-1")).await;
    let relay = within("allocate", client.allocate()).await.unwrap();
    assert_eq!(relay.local_addr().unwrap().ip(), SERVER_IP);
    assert_eq!(get(&s.metrics.allocations_total), 1);
    assert_eq!(get(&s.metrics.allocations_active), 1);

    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let bytes = relay_both_ways(&relay, &peer).await;
    // Payload bytes, both directions, nothing else (headers, STUN requests) counted.
    assert_eq!(get(&s.metrics.relayed_bytes_total), bytes);

    // A zero-lifetime Refresh ends the allocation; the gauge follows.
    relay.close().await.unwrap();
    eventually("allocation gone", || {
        get(&s.metrics.allocations_active) == 0
    })
    .await;
    assert_eq!(get(&s.metrics.quota_ended_total), 0);
    assert_eq!(get(&s.metrics.auth_refused_total), 0);
    let text = s.metrics.render();
    assert!(
        text.contains("\npunchdrop_turn_allocations_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\npunchdrop_turn_allocations_active 0\n"),
        "{text}"
    );
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

#[tokio::test]
async fn expired_forged_and_altered_credentials_are_refused() {
    let s = start(|_| {}).await;
    let now = SystemTime::now();
    let expired = s.secret.mint(
        "room",
        Duration::from_secs(60),
        now - Duration::from_secs(3600),
    );
    let (user, _) = creds(&s.secret, "room");
    let forged = (user, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned());
    // Room A's password under a username naming room B (same expiry).
    let (user_a, pass_a) = creds(&s.secret, "room-a");
    let expiry = user_a.split_once(':').unwrap().0;
    let other_room = (format!("{expiry}:{}", s.secret.room_tag("room-b")), pass_a);
    let other_secret = creds(&TurnSecret::new(b"not ours".to_vec()), "room");
    let malformed = ("no-colon".to_owned(), "x".to_owned());

    for (i, bad) in [expired, forged, other_room, other_secret, malformed]
        .into_iter()
        .enumerate()
    {
        let (client, _) = udp_client(s.handle.udp_addr(), bad).await;
        let r = within("allocate", client.allocate()).await;
        assert!(r.is_err(), "credential {i} must be refused");
        assert_eq!(get(&s.metrics.auth_refused_total), i as u64 + 1);
        client.close().await.unwrap();
    }
    assert_eq!(get(&s.metrics.allocations_total), 0);

    // The same server still serves good credentials.
    let (client, _) = udp_client(s.handle.udp_addr(), creds(&s.secret, "room")).await;
    within("allocate", client.allocate()).await.unwrap();
    assert_eq!(get(&s.metrics.auth_refused_total), 5);
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

#[tokio::test]
async fn private_peers_are_refused_with_403() {
    let s = start(|c| c.allow_private_peers = false).await;
    let (client, _) = udp_client(s.handle.udp_addr(), creds(&s.secret, "room")).await;
    let relay = within("allocate", client.allocate()).await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();

    // The client's CreatePermission is refused, so its send fails and nothing is relayed.
    let err = within(
        "send",
        relay.send_to(b"to loopback", peer.local_addr().unwrap()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert_quiet(&peer).await;
    assert_eq!(get(&s.metrics.peer_refused_total), 1);

    // Packets from the refused peer to the relay are dropped and counted.
    peer.send_to(b"from loopback", relay_addr).await.unwrap();
    eventually("inbound refusal counted", || {
        get(&s.metrics.peer_refused_total) == 2
    })
    .await;
    let mut buf = vec![0u8; 1500];
    assert!(
        tokio::time::timeout(QUIET, relay.recv_from(&mut buf))
            .await
            .is_err()
    );
    assert_eq!(get(&s.metrics.relayed_bytes_total), 0);
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

/// A relay generator outside any server: its relays are driven by the test alone.
fn bare_generator(allow_private_peers: bool, metrics: &Arc<TurnMetrics>) -> relay::Generator {
    bare_generator_with(allow_private_peers, TurnCaps::default(), metrics)
}

fn bare_generator_with(
    allow_private_peers: bool,
    caps: TurnCaps,
    metrics: &Arc<TurnMetrics>,
) -> relay::Generator {
    relay::Generator {
        policy: Arc::new(relay::RelayPolicy {
            ip: SERVER_IP,
            bind_ip: SERVER_IP,
            ports: 0..=0,
            allow_private_peers,
            max_bytes: u64::MAX,
            max_lifetime: Duration::from_secs(60),
            metrics: metrics.clone(),
            shutdown: CancellationToken::new(),
            live: Arc::default(),
            local: Default::default(),
            flusher: Default::default(),
            own: vec![SERVER_IP],
            quotas: quota::Quotas::new(caps),
            audit: Default::default(),
        }),
        transport: "udp",
        current: Arc::default(),
        tcp: None,
    }
}

/// The relay socket filter, below the 403: even a permission the turn crate installed would
/// not let traffic through to or from a refused peer.
#[tokio::test]
async fn relay_socket_drops_refused_peers_both_ways() {
    let metrics = Arc::new(TurnMetrics::default());
    let generator = bare_generator(false, &metrics);
    let (conn, relay_addr) = generator.allocate_conn(true, 0).await.unwrap();
    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    assert_eq!(
        conn.send_to(b"out", peer.local_addr().unwrap())
            .await
            .unwrap(),
        3
    );
    assert_quiet(&peer).await;
    peer.send_to(b"in", relay_addr).await.unwrap();
    let mut buf = vec![0u8; 1500];
    assert!(
        tokio::time::timeout(QUIET, conn.recv_from(&mut buf))
            .await
            .is_err()
    );
    assert_eq!(get(&metrics.peer_refused_total), 2);
    assert_eq!(get(&metrics.relayed_bytes_total), 0);
}

#[tokio::test]
async fn byte_quota_ends_the_allocation() {
    const QUOTA: u64 = 64 * 1024;
    let s = start(|c| c.max_bytes_per_allocation = QUOTA).await;
    let (client, _) = udp_client(s.handle.udp_addr(), creds(&s.secret, "room")).await;
    let relay = within("allocate", client.allocate()).await.unwrap();
    let peer = Arc::new(UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
    let peer_addr = peer.local_addr().unwrap();
    let received = tokio::spawn({
        let peer = peer.clone();
        async move {
            let mut total = 0u64;
            let mut buf = vec![0u8; 2048];
            // Until a second of silence, once packets have started to arrive.
            loop {
                let wait = if total == 0 {
                    WAIT
                } else {
                    Duration::from_secs(1)
                };
                match tokio::time::timeout(wait, peer.recv_from(&mut buf)).await {
                    Ok(Ok((n, _))) => total += n as u64,
                    _ => break,
                }
            }
            total
        }
    });

    let chunk = vec![7u8; 1000];
    for i in 0..100 {
        // Errors are fine once the allocation is gone; the turn client may not notice.
        let _ = within("relay send", relay.send_to(&chunk, peer_addr)).await;
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    eventually("quota end counted", || {
        get(&s.metrics.quota_ended_total) == 1
    })
    .await;
    eventually("allocation gone", || {
        get(&s.metrics.allocations_active) == 0
    })
    .await;
    // 65 whole packets fit in 64 KiB; the 66th would pass the quota and ended it instead.
    let total = within("peer drained", received).await.unwrap();
    assert_eq!(total, 65_000);
    assert_eq!(get(&s.metrics.relayed_bytes_total), 65_000);

    // Nothing more goes through, either way.
    let _ = relay.send_to(b"after the end", peer_addr).await;
    assert_quiet(&peer).await;
    let _ = peer
        .send_to(b"after the end", relay.local_addr().unwrap())
        .await;
    let mut buf = vec![0u8; 1500];
    assert!(
        tokio::time::timeout(QUIET, relay.recv_from(&mut buf))
            .await
            .is_err()
    );
    assert_eq!(get(&s.metrics.quota_ended_total), 1);
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

#[tokio::test]
async fn lifetime_cap_stops_relaying() {
    let s = start(|c| c.max_allocation_lifetime = Duration::from_millis(300)).await;
    let (client, _) = udp_client(s.handle.udp_addr(), creds(&s.secret, "room")).await;
    let relay = within("allocate", client.allocate()).await.unwrap();
    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    relay
        .send_to(b"before", peer.local_addr().unwrap())
        .await
        .unwrap();
    assert_eq!(recv(&peer).await.0, b"before");
    eventually("lifetime end", || {
        get(&s.metrics.quota_ended_total) == 1 && get(&s.metrics.allocations_active) == 0
    })
    .await;
    let _ = relay.send_to(b"after", peer.local_addr().unwrap()).await;
    assert_quiet(&peer).await;
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

/// A bare TURN client over UDP, its messages built by hand: the turn crate's client refreshes
/// only on its own schedule (half the allocation's lifetime), and a test of refreshes needs
/// them on demand.
struct RawTurn {
    sock: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

impl RawTurn {
    /// Allocate, answering the server's 401 challenge as clients do.
    async fn allocate(server: SocketAddr, creds: (String, String)) -> Self {
        Self::try_allocate(server, creds)
            .await
            .unwrap_or_else(|refused| panic!("allocation refused: {refused}"))
    }

    /// Allocate; the server's final answer if it refused.
    async fn try_allocate(
        server: SocketAddr,
        (username, password): (String, String),
    ) -> Result<Self, Message> {
        use turn::proto::{PROTO_UDP, reqtrans::RequestedTransport};
        let sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let mut t = Self {
            sock,
            server,
            username,
            password,
            realm: String::new(),
            nonce: String::new(),
        };
        let transport = || -> Box<dyn Setter> {
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })
        };
        let challenge = t.request(METHOD_ALLOCATE, false, transport()).await;
        assert_eq!(challenge.typ.class, CLASS_ERROR_RESPONSE, "{challenge}");
        t.realm = TextAttribute::get_from_as(&challenge, ATTR_REALM)
            .unwrap()
            .text;
        t.nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)
            .unwrap()
            .text;
        let answer = t.request(METHOD_ALLOCATE, true, transport()).await;
        if answer.typ.class != CLASS_SUCCESS_RESPONSE {
            return Err(answer);
        }
        Ok(t)
    }

    /// The relayed address of a successful allocation's answer is not kept; this asks for a
    /// permission towards `peer`, given as a raw XOR-PEER-ADDRESS value, and returns the
    /// answer.
    async fn create_permission(&mut self, peer: RawAttr) -> Message {
        self.request(
            stun::message::METHOD_CREATE_PERMISSION,
            true,
            Box::new(peer),
        )
        .await
    }

    /// Ask for ten more minutes; the answer, if one comes within [`QUIET`].
    async fn refresh(&mut self) -> Option<Message> {
        let lifetime = turn::proto::lifetime::Lifetime(Duration::from_secs(600));
        self.send(METHOD_REFRESH, true, Box::new(lifetime)).await;
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(QUIET, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(decode(buf[..n].to_vec()))
    }

    /// A request and its answer.
    async fn request(&mut self, method: Method, auth: bool, attr: Box<dyn Setter>) -> Message {
        self.send(method, auth, attr).await;
        decode(recv(&self.sock).await.0)
    }

    async fn send(&mut self, method: Method, auth: bool, attr: Box<dyn Setter>) {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            attr,
        ];
        if auth {
            setters.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                self.username.clone(),
                self.realm.clone(),
                self.password.clone(),
            )));
        }
        setters.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters).unwrap();
        self.sock.send_to(&m.raw, self.server).await.unwrap();
    }
}

/// An attribute with exactly these bytes, well formed or not.
struct RawAttr(stun::attributes::AttrType, Vec<u8>);

impl Setter for RawAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

/// XOR-PEER-ADDRESS of an IPv4 `peer` (RFC 5389 §15.2).
fn xor_peer(peer: SocketAddr) -> RawAttr {
    let SocketAddr::V4(v4) = peer else {
        panic!("IPv4 only")
    };
    let cookie = stun::message::MAGIC_COOKIE.to_be_bytes();
    let mut v = vec![0, 0x01];
    v.extend((v4.port() ^ 0x2112).to_be_bytes());
    v.extend(v4.ip().octets().iter().zip(cookie).map(|(a, c)| a ^ c));
    RawAttr(stun::attributes::ATTR_XOR_PEER_ADDRESS, v)
}

fn error_code(m: &Message) -> u16 {
    let mut code = stun::error_code::ErrorCodeAttribute::default();
    code.get_from(m)
        .unwrap_or_else(|e| panic!("no error code in {m}: {e}"));
    code.code.0
}

fn decode(raw: Vec<u8>) -> Message {
    let mut m = Message::new();
    m.raw = raw;
    m.decode().unwrap();
    m
}

#[tokio::test]
async fn lifetime_cap_ends_the_allocation_despite_refreshes() {
    let cap = Duration::from_millis(400);
    let s = start(|c| c.max_allocation_lifetime = cap).await;
    let started = std::time::Instant::now();
    let mut turn = RawTurn::allocate(s.handle.udp_addr(), creds(&s.secret, "room")).await;
    assert_eq!(get(&s.metrics.allocations_active), 1);
    // Refreshed every 50 ms, each asking for ten minutes: each refresh is granted...
    let mut granted = 0;
    while started.elapsed() < cap / 2 {
        let answer = turn.refresh().await.expect("an answer to a refresh");
        assert_eq!(answer.typ.class, CLASS_SUCCESS_RESPONSE, "{answer}");
        granted += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(granted >= 2, "{granted} refreshes");
    // ...and the cap ends the allocation all the same, no earlier.
    eventually("lifetime end", || {
        get(&s.metrics.quota_ended_total) == 1 && get(&s.metrics.allocations_active) == 0
    })
    .await;
    assert!(
        started.elapsed() >= cap,
        "ended after {:?}",
        started.elapsed()
    );
    // A refresh after the cap finds no allocation (the turn crate then stays silent rather
    // than answering 437, which is still no extension).
    if let Some(late) = turn.refresh().await {
        assert_eq!(
            late.typ.class, CLASS_ERROR_RESPONSE,
            "a refresh after the cap is refused: {late}"
        );
    }
    assert_eq!(get(&s.metrics.allocations_active), 0);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_allocations_and_frees_every_port() {
    let s = start(|_| {}).await;
    let (client, _) = udp_client(s.handle.udp_addr(), creds(&s.secret, "room")).await;
    let relay = within("allocate", client.allocate()).await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let (udp_addr, tcp_addr) = (s.handle.udp_addr(), s.handle.tcp_addr());
    assert_eq!(get(&s.metrics.allocations_active), 1);
    within("shutdown", s.handle.shutdown()).await;
    assert_eq!(get(&s.metrics.allocations_active), 0);
    assert_eq!(get(&s.metrics.quota_ended_total), 0);
    UdpSocket::bind(relay_addr)
        .await
        .expect("relay port released");
    UdpSocket::bind(udp_addr).await.expect("UDP port released");
    TcpListener::bind(tcp_addr)
        .await
        .expect("TCP port released");
    client.close().await.unwrap();
}

fn binding_request() -> Message {
    let mut m = Message::new();
    m.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .unwrap();
    m
}

#[tokio::test]
async fn tcp_answers_stun_binding_requests() {
    let s = start(|_| {}).await;
    let mut stream = TcpStream::connect(s.handle.tcp_addr()).await.unwrap();
    let local = stream.local_addr().unwrap();
    // Two requests in one write: the server must frame them by length, not by reads.
    let (a, b) = (binding_request(), binding_request());
    stream
        .write_all(&[a.raw.clone(), b.raw.clone()].concat())
        .await
        .unwrap();
    for req in [a, b] {
        let raw = within("response", tcp::read_frame(&mut stream))
            .await
            .unwrap();
        let mut res = Message::new();
        res.raw = raw;
        res.decode().unwrap();
        assert_eq!(res.typ, BINDING_SUCCESS);
        assert_eq!(res.transaction_id, req.transaction_id);
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&res).unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), local);
    }

    // Garbage closes the connection.
    stream.write_all(&[0xff; 64]).await.unwrap();
    let closed = within("close on garbage", tcp::read_frame(&mut stream)).await;
    assert!(closed.is_err());
    s.handle.shutdown().await;
}

/// A turn client's `Conn` over one TCP connection to the server, framed like the server.
struct TcpClientConn {
    rd: tokio::sync::Mutex<OwnedReadHalf>,
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    local: SocketAddr,
    server: SocketAddr,
}

impl TcpClientConn {
    async fn connect(server: SocketAddr) -> Arc<Self> {
        let stream = TcpStream::connect(server).await.unwrap();
        let local = stream.local_addr().unwrap();
        let (rd, wr) = stream.into_split();
        Arc::new(Self {
            rd: rd.into(),
            wr: wr.into(),
            local,
            server,
        })
    }
}

#[async_trait::async_trait]
impl Conn for TcpClientConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let frame = tcp::read_frame(&mut *self.rd.lock().await).await?;
        buf[..frame.len()].copy_from_slice(&frame);
        Ok((frame.len(), self.server))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.server).await
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut frame = buf.to_vec();
        tcp::pad_channel_data(&mut frame);
        self.wr.lock().await.write_all(&frame).await?;
        Ok(buf.len())
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(self.wr.lock().await.shutdown().await?)
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[tokio::test]
async fn tcp_allocation_relays_and_ends_with_its_connection() {
    let s = start(|_| {}).await;
    let conn = TcpClientConn::connect(s.handle.tcp_addr()).await;
    let client = client_over(conn.clone(), s.handle.tcp_addr(), creds(&s.secret, "room")).await;
    let relay = within("allocate over TCP", client.allocate())
        .await
        .unwrap();
    assert_eq!(get(&s.metrics.allocations_active), 1);
    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let bytes = relay_both_ways(&relay, &peer).await;
    assert_eq!(get(&s.metrics.relayed_bytes_total), bytes);

    // Closing the TCP connection ends its allocation (no Refresh sent) and frees the port.
    let relay_addr = relay.local_addr().unwrap();
    conn.close().await.unwrap();
    eventually("allocation gone with its connection", || {
        get(&s.metrics.allocations_active) == 0
    })
    .await;
    within("relay port released", async {
        while UdpSocket::bind(relay_addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(get(&s.metrics.quota_ended_total), 0);
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

#[tokio::test]
async fn tcp_connections_beyond_the_limit_are_closed() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let conn = tcp::TcpConn::start(
        listener,
        None,
        (
            tcp::TcpCaps {
                total: 1,
                per_client: 1,
            },
            Default::default(),
        ),
        Default::default(),
        Default::default(),
        shutdown.clone(),
        &tasks,
    )
    .unwrap();

    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(&binding_request().raw).await.unwrap();
    let mut buf = vec![0u8; 1500];
    let (_, from) = within("first frame", conn.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(from, first.local_addr().unwrap());

    let mut second = TcpStream::connect(addr).await.unwrap();
    let closed = within("second closed", tcp::read_frame(&mut second)).await;
    assert_eq!(
        closed.unwrap_err().kind(),
        std::io::ErrorKind::UnexpectedEof
    );
    shutdown.cancel();
    tasks.close();
    within("tasks stop", tasks.wait()).await;
}

/// Two relays of one server talking to each other (both peers relayed here) go through
/// memory, not the kernel, and must look the same to the turn crate: the datagram comes from
/// the sender's relayed address, both sides count it, and peer policy still holds.
#[tokio::test]
async fn relay_to_relay_hop_keeps_addresses_counts_and_policy() {
    for allow_private_peers in [true, false] {
        let metrics = Arc::new(TurnMetrics::default());
        let generator = bare_generator(allow_private_peers, &metrics);
        let (a, a_addr) = generator.allocate_conn(true, 0).await.unwrap();
        let (b, b_addr) = generator.allocate_conn(true, 0).await.unwrap();
        let mut buf = vec![0u8; 1500];
        for i in 0..100u32 {
            let msg = i.to_be_bytes().repeat(i as usize % 300 + 1);
            assert_eq!(a.send_to(&msg, b_addr).await.unwrap(), msg.len());
            if !allow_private_peers {
                continue;
            }
            let (n, from) = within("hop", b.recv_from(&mut buf)).await.unwrap();
            assert_eq!((&buf[..n], from), (&msg[..], a_addr));
        }
        // And back, interleaved with a plain peer writing to the same relay socket.
        let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        if allow_private_peers {
            b.send_to(b"back", a_addr).await.unwrap();
            peer.send_to(b"kernel", a_addr).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..2 {
                let (n, from) = within("both", a.recv_from(&mut buf)).await.unwrap();
                got.push((buf[..n].to_vec(), from));
            }
            got.sort();
            assert_eq!(
                got,
                [
                    (b"back".to_vec(), b_addr),
                    (b"kernel".to_vec(), peer.local_addr().unwrap())
                ]
            );
            let relayed: u64 = (0..100u64).map(|i| 4 * (i % 300 + 1)).sum::<u64>() + 4 + 6;
            // The hop counts on both relays, the kernel datagram once.
            assert_eq!(get(&metrics.relayed_bytes_total), 2 * relayed - 6);
        } else {
            assert!(
                tokio::time::timeout(QUIET, b.recv_from(&mut buf))
                    .await
                    .is_err()
            );
            assert_eq!(get(&metrics.peer_refused_total), 100);
            assert_eq!(get(&metrics.relayed_bytes_total), 0);
        }
    }
}

#[tokio::test]
async fn allocations_beyond_the_caps_are_refused_with_486() {
    let s = start(|c| {
        c.caps = TurnCaps {
            allocations: 3,
            allocations_per_client: 2,
            allocations_per_credential: 1,
            ..TurnCaps::default()
        }
    })
    .await;
    let server = s.handle.udp_addr();
    let room = |r: &str| creds(&s.secret, r);
    let _a = RawTurn::allocate(server, room("a")).await;
    // One credential, one allocation: a second under it is refused.
    let refused = RawTurn::try_allocate(server, room("a"))
        .await
        .err()
        .unwrap();
    assert_eq!(error_code(&refused), 486, "{refused}");
    // One client (this address), two allocations.
    let _b = RawTurn::allocate(server, room("b")).await;
    let refused = RawTurn::try_allocate(server, room("c"))
        .await
        .err()
        .unwrap();
    assert_eq!(error_code(&refused), 486, "{refused}");
    let line = |cap: &str| {
        s.metrics
            .render()
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "punchdrop_turn_allocations_refused_total{{cap=\"{cap}\"}}"
                ))
            })
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(line("credential"), "1");
    assert_eq!(line("client"), "1");
    assert_eq!(get(&s.metrics.allocations_active), 2);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn the_total_cap_holds_and_ended_allocations_give_their_place_back() {
    let metrics = Arc::new(TurnMetrics::default());
    let caps = TurnCaps {
        allocations: 2,
        ..TurnCaps::default()
    };
    let generator = bare_generator_with(true, caps, &metrics);
    let current = |port: u16, user: &str| {
        generator
            .current
            .set_for_tests(SocketAddr::new(LOCALHOST, port), Some(user.to_owned()))
    };
    current(1000, "u1");
    let (a, _) = generator.allocate_conn(true, 0).await.unwrap();
    current(1001, "u2");
    let (_b, _) = generator.allocate_conn(true, 0).await.unwrap();
    current(1002, "u3");
    assert!(
        generator.allocate_conn(true, 0).await.is_err(),
        "beyond the total"
    );
    drop(a);
    generator
        .allocate_conn(true, 0)
        .await
        .expect("a place came back");
}

#[tokio::test]
async fn the_servers_own_addresses_are_refused_but_its_live_relays() {
    // Even where private peers are allowed (a LAN deployment), the server's own addresses
    // are off limits: its listeners, its other local services, and relay ports that are
    // not live allocations (no nesting through them).
    let s = start(|_| {}).await;
    let server = s.handle.udp_addr();
    let mut turn = RawTurn::allocate(server, creds(&s.secret, "room")).await;
    let service = UdpSocket::bind((SERVER_IP, 0)).await.unwrap();
    for own in [server, s.handle.tcp_addr(), service.local_addr().unwrap()] {
        let answer = turn.create_permission(xor_peer(own)).await;
        assert_eq!(answer.typ.class, CLASS_ERROR_RESPONSE, "{own}: {answer}");
        assert_eq!(error_code(&answer), 403, "{own}");
    }
    // Another live allocation's relayed address is a peer like any other.
    let (client, _) = udp_client(server, creds(&s.secret, "room")).await;
    let relay = within("allocate", client.allocate()).await.unwrap();
    let answer = turn
        .create_permission(xor_peer(relay.local_addr().unwrap()))
        .await;
    assert_eq!(answer.typ.class, CLASS_SUCCESS_RESPONSE, "{answer}");
    // An ordinary peer elsewhere is fine.
    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let answer = turn
        .create_permission(xor_peer(peer.local_addr().unwrap()))
        .await;
    assert_eq!(answer.typ.class, CLASS_SUCCESS_RESPONSE, "{answer}");
    assert_eq!(get(&s.metrics.peer_refused_total), 3);
    client.close().await.unwrap();
    s.handle.shutdown().await;
}

#[tokio::test]
async fn a_peer_address_that_does_not_decode_is_forbidden() {
    for allow_private_peers in [true, false] {
        let s = start(|c| c.allow_private_peers = allow_private_peers).await;
        let mut turn = RawTurn::allocate(s.handle.udp_addr(), creds(&s.secret, "room")).await;
        // Family 1 (IPv4) with a truncated address: the turn crate would read what is there.
        let bad = RawAttr(
            stun::attributes::ATTR_XOR_PEER_ADDRESS,
            vec![0, 1, 0x21, 0x12, 1, 2],
        );
        let answer = turn.create_permission(bad).await;
        assert_eq!(error_code(&answer), 403, "{answer}");
        assert_eq!(get(&s.metrics.peer_refused_total), 1);
        s.handle.shutdown().await;
    }
}

#[tokio::test]
async fn the_rate_cap_drops_what_goes_beyond_it() {
    const RATE: u64 = 20_000;
    let metrics = Arc::new(TurnMetrics::default());
    let caps = TurnCaps {
        bytes_per_sec_per_allocation: Some(RATE),
        ..TurnCaps::default()
    };
    let generator = bare_generator_with(true, caps, &metrics);
    // Writes are queued; in a server, readers and this task send them.
    let stop = CancellationToken::new();
    tokio::spawn(generator.policy.flusher.clone().run(stop.clone()));
    let (conn, _) = generator.allocate_conn(true, 0).await.unwrap();
    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let started = std::time::Instant::now();
    // 100 kB at once: a second's worth passes, the rest is dropped.
    for _ in 0..100 {
        conn.send_to(&[7u8; 1000], peer.local_addr().unwrap())
            .await
            .unwrap();
    }
    let mut got = 0u64;
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, _))) = tokio::time::timeout(QUIET, peer.recv_from(&mut buf)).await {
        got += n as u64;
    }
    let allowed = RATE + (started.elapsed().as_secs_f64() * RATE as f64) as u64 + 1000;
    assert!(got >= RATE - 1000 && got <= allowed, "{got} bytes through");
    assert!(get(&metrics.rate_dropped_total) >= 70);
    stop.cancel();
}

#[tokio::test]
async fn tcp_connections_are_capped_per_client() {
    let listener = TcpListener::bind((SERVER_IP, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let metrics = Arc::new(TurnMetrics::default());
    let caps = tcp::TcpCaps {
        total: 10,
        per_client: 1,
    };
    let conn = tcp::TcpConn::start(
        listener,
        None,
        (caps, Default::default()),
        metrics.clone(),
        Default::default(),
        shutdown.clone(),
        &tasks,
    )
    .unwrap();
    let connect_from = |ip: IpAddr| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
        socket.connect(addr).await.unwrap()
    };
    let mut first = connect_from(LOCALHOST).await;
    first.write_all(&binding_request().raw).await.unwrap();
    let mut buf = vec![0u8; 1500];
    within("first frame", conn.recv_from(&mut buf))
        .await
        .unwrap();
    // A second from the same client is closed; another client is served.
    let mut second = connect_from(LOCALHOST).await;
    let closed = within("second closed", tcp::read_frame(&mut second)).await;
    assert_eq!(
        closed.unwrap_err().kind(),
        std::io::ErrorKind::UnexpectedEof
    );
    let mut other = connect_from(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3))).await;
    other.write_all(&binding_request().raw).await.unwrap();
    let (_, from) = within("other frame", conn.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(from, other.local_addr().unwrap());
    assert_eq!(get(&metrics.tcp_refused_total), 1);
    shutdown.cancel();
    tasks.close();
    within("tasks stop", tasks.wait()).await;
}
