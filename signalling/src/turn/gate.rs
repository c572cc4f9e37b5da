//! The listener-side `Conn` the turn crate reads from: a thin wrapper over a [`Listener`], the
//! UDP socket ([`super::udp::BatchedUdp`]) or the TCP listener ([`super::tcp::TcpConn`]),
//! that looks at requests before the turn crate does.
//!
//! - Every request carrying MESSAGE-INTEGRITY is checked against our credentials, so refusals
//!   (malformed, expired, forged or altered) are counted and logged once, without the
//!   username. The request then goes on to the turn crate, which refuses it the same way.
//! - An authenticated CreatePermission or ChannelBind naming a peer outside the allowed
//!   ranges, one of the server's own addresses that is not a live relay, or a peer address
//!   that does not decode (the turn crate would take it all the same) is answered here with
//!   403 (Forbidden) and never reaches the turn crate, which has no hook for refusing peers:
//!   no permission is installed, so no data flows to or from it.
//! - An authenticated Allocate beyond the server's caps ([`super::quota`]) is answered here
//!   with 486 (Allocation Quota Reached).
//! - It remembers which client sent the last message, and under which credential if it was
//!   an Allocate. The turn crate (0.17.2) handles one message at a time, reading the next
//!   only after the previous one is handled, so while it allocates a relay that is the
//!   client asking; the relay generator uses this to count the allocation against the caps
//!   and to tie a TCP client's allocations to its connection.
//!
//! Data (ChannelData, Send indications) passes with a constant-time look at the first bytes.

use super::TurnMetrics;
use super::auth::Auth;
use super::relay::RelayPolicy;
use crate::credentials::CredentialError;
use crate::limits::redact_ip;
use async_trait::async_trait;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::{CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN, ErrorCode, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, MAGIC_COOKIE, METHOD_ALLOCATE, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, Message, MessageType, Setter,
};
use stun::textattrs::TextAttribute;
use tokio_util::sync::CancellationToken;
use webrtc_util::Conn;

/// What a gate reads from and answers through: the part of `Conn` a listener needs.
#[async_trait]
pub(crate) trait Listener: Send + Sync {
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)>;
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize>;
    fn local_addr(&self) -> SocketAddr;
}

/// The client whose message the turn crate is handling, and the credential of its Allocate
/// (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct CurrentClient(Mutex<Option<(SocketAddr, Option<String>)>>);

impl CurrentClient {
    pub fn get(&self) -> Option<(SocketAddr, Option<String>)> {
        super::lock(&self.0).clone()
    }
    fn set(&self, addr: SocketAddr, credential: Option<String>) {
        *super::lock(&self.0) = Some((addr, credential));
    }
    #[cfg(test)]
    pub fn set_for_tests(&self, addr: SocketAddr, credential: Option<String>) {
        self.set(addr, credential);
    }
}

pub(crate) struct Gate {
    inner: Arc<dyn Listener>,
    transport: &'static str,
    auth: Arc<Auth>,
    policy: Arc<RelayPolicy>,
    metrics: Arc<TurnMetrics>,
    current: Arc<CurrentClient>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// What to do with one inbound message.
enum Verdict {
    /// Hand it to the turn crate.
    Pass,
    /// Answered here: send this back and read the next message.
    Answer(Vec<u8>),
    /// Refused here without an answer.
    Drop,
}

impl Gate {
    pub fn new(
        inner: Arc<dyn Listener>,
        transport: &'static str,
        auth: Arc<Auth>,
        policy: Arc<RelayPolicy>,
        metrics: Arc<TurnMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner,
            transport,
            auth,
            policy,
            metrics,
            current: Arc::default(),
            shutdown,
        }
    }

    pub fn current_client(&self) -> Arc<CurrentClient> {
        self.current.clone()
    }

    fn inspect(&self, raw: &[u8], from: SocketAddr) -> Verdict {
        if !stun::message::is_message(raw) {
            return Verdict::Pass; // ChannelData
        }
        // Class bits C1 (0x0100) and C0 (0x0010) are both zero only for requests; indications
        // (Send, the data path) are not decoded here.
        if u16::from_be_bytes([raw[0], raw[1]]) & 0x0110 != 0 {
            return Verdict::Pass;
        }
        let mut m = Message::new();
        m.raw = raw.to_vec();
        if m.decode().is_err() || !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return Verdict::Pass; // the turn crate answers 400 or 401
        }
        let user = TextAttribute::get_from_as(&m, ATTR_USERNAME).map(|u| u.text);
        let key = match &user {
            Ok(user) => self.auth.key(user),
            Err(_) => Err(CredentialError::Malformed),
        };
        let key = match key {
            Ok(key) => key,
            Err(e) => {
                self.refuse_auth(from, &e.to_string());
                return Verdict::Pass;
            }
        };
        if MessageIntegrity(key.clone()).check(&mut m).is_err() {
            self.refuse_auth(from, "wrong password or altered username");
            return Verdict::Pass;
        }
        let user = user.unwrap_or_default();
        match m.typ.method {
            METHOD_ALLOCATE => self.inspect_allocate(&m, key, from, user),
            METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND => self.inspect_peers(&m, key, from),
            _ => Verdict::Pass,
        }
    }

    /// An authenticated Allocate: remembered with its credential, refused beyond the caps.
    fn inspect_allocate(
        &self,
        m: &Message,
        key: Vec<u8>,
        from: SocketAddr,
        user: String,
    ) -> Verdict {
        let over = self.policy.quotas.check(self.transport, from, &user);
        self.current.set(from, Some(user));
        let Some(over) = over else {
            return Verdict::Pass;
        };
        self.metrics.quota_refused(over);
        tracing::debug!(
            transport = self.transport,
            client = %redact_ip(from.ip()),
            cap = ?over,
            "TURN allocation refused (486)"
        );
        self.answer_error(
            m,
            key,
            CODE_ALLOC_QUOTA_REACHED,
            b"Allocation Quota Reached",
        )
    }

    /// An authenticated CreatePermission or ChannelBind: every peer it names must be one the
    /// relay may talk to, and must decode.
    fn inspect_peers(&self, m: &Message, key: Vec<u8>, from: SocketAddr) -> Verdict {
        let refused = xor_peer_addresses(m)
            .into_iter()
            .find(|peer| !peer.is_some_and(|p| self.policy.peer_allowed(p)));
        let Some(peer) = refused else {
            return Verdict::Pass;
        };
        self.metrics
            .peer_refused_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            transport = self.transport,
            client = %redact_ip(from.ip()),
            peer = %peer.map_or_else(|| "undecodable".to_owned(), |p| redact_ip(p.ip())),
            "TURN peer refused (403)"
        );
        self.answer_error(m, key, CODE_FORBIDDEN, b"Forbidden")
    }

    fn answer_error(&self, m: &Message, key: Vec<u8>, code: ErrorCode, reason: &[u8]) -> Verdict {
        match error_response(m, key, code, reason) {
            Ok(raw) => Verdict::Answer(raw),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a TURN error response");
                // Still never let the turn crate act on the request.
                Verdict::Drop
            }
        }
    }

    fn refuse_auth(&self, from: SocketAddr, reason: &str) {
        self.metrics
            .auth_refused_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            transport = self.transport,
            client = %redact_ip(from.ip()),
            reason,
            "TURN credentials refused"
        );
    }
}

/// An error response to `req`, signed with the requester's key as RFC 5389 §10.2.2 asks.
fn error_response(
    req: &Message,
    key: Vec<u8>,
    code: ErrorCode,
    reason: &[u8],
) -> Result<Vec<u8>, stun::Error> {
    let id = Message {
        transaction_id: req.transaction_id,
        ..Default::default()
    };
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(id),
        Box::new(MessageType::new(req.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.to_vec(),
        }),
        Box::new(MessageIntegrity(key)),
        Box::new(FINGERPRINT),
    ];
    let mut msg = Message::new();
    msg.build(&setters)?;
    Ok(msg.raw)
}

/// Every XOR-PEER-ADDRESS in `m` (`None` for one that does not decode). The turn crate reads
/// only the first one, however many there are, so each is decoded here by hand.
fn xor_peer_addresses(m: &Message) -> Vec<Option<SocketAddr>> {
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .map(|a| decode_xor_address(&a.value, &m.transaction_id.0))
        .collect()
}

/// RFC 5389 §15.2: family, port XOR the cookie's high half, address XOR cookie (+ id for v6).
fn decode_xor_address(v: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&cookie);
    pad[4..].copy_from_slice(transaction_id);
    let ip = match (v.get(1)?, v.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ pad[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ pad[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn closed() -> webrtc_util::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "TURN server stopped").into()
}

#[async_trait]
impl Conn for Gate {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported).into())
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported).into())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(closed()),
                r = self.inner.recv_from(buf) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // The turn crate stops serving on the first error, so a transient
                        // one (ENOBUFS, a stray ICMP report) must not reach it.
                        tracing::debug!(transport = self.transport, error = %e, "TURN listener read failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            self.current.set(from, None);
            match self.inspect(&buf[..n], from) {
                Verdict::Pass => return Ok((n, from)),
                Verdict::Drop => {}
                Verdict::Answer(raw) => {
                    if let Err(e) = self.inner.send_to(&raw, from).await {
                        tracing::debug!(transport = self.transport, error = %e, "TURN answer not sent");
                    }
                }
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported).into())
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        // The turn crate asks on every ChannelData: the listeners keep it, no syscall.
        Ok(self.inner.local_addr())
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Does nothing: the turn crate calls this on the listener whenever any one allocation
    /// closes. The listener stops with the server's shutdown token.
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// For the fuzz targets in `fuzz/` only (cargo feature `fuzzing`, off by default and enabled
/// by nothing but the fuzz crate): the decoding [`Gate::inspect`] does on every datagram a
/// client sends, reachable from outside the crate. Release builds do not contain it.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;
    use crate::credentials::TurnSecret;
    use std::time::SystemTime;

    /// A listener nothing arrives on: [`Gate::inspect`] never reads or writes through it.
    struct Silent;

    #[async_trait]
    impl Listener for Silent {
        async fn recv_from(&self, _buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
            Err(closed())
        }
        async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
            Ok(buf.len())
        }
        fn local_addr(&self) -> SocketAddr {
            SocketAddr::new(SERVER_IP, 3478)
        }
    }

    const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const REALM: &str = "punchdrop";

    /// A gate built as `turn::spawn` builds one (private peers refused, default caps), around
    /// a listener nothing arrives on, with a fixed secret.
    #[derive(Debug)]
    pub struct FuzzGate {
        gate: Gate,
        auth: Arc<Auth>,
        secret: TurnSecret,
    }

    impl Default for FuzzGate {
        fn default() -> Self {
            Self::new()
        }
    }

    impl FuzzGate {
        pub fn new() -> Self {
            let secret = TurnSecret::new(b"fuzzing secret".to_vec());
            let auth = Arc::new(Auth::new(secret.clone(), REALM.into()));
            let metrics = Arc::new(super::super::TurnMetrics::default());
            let shutdown = CancellationToken::new();
            let policy = Arc::new(RelayPolicy {
                ip: SERVER_IP,
                bind_ip: SERVER_IP,
                ports: 0..=0,
                allow_private_peers: false,
                max_bytes: u64::MAX,
                max_lifetime: Duration::from_secs(60),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                live: Arc::default(),
                local: Default::default(),
                flusher: Default::default(),
                own: vec![SERVER_IP],
                quotas: super::super::quota::Quotas::new(super::super::TurnCaps::default()),
                audit: Default::default(),
            });
            let gate = Gate::new(
                Arc::new(Silent),
                "udp",
                auth.clone(),
                policy,
                metrics,
                shutdown,
            );
            Self { gate, auth, secret }
        }

        /// A username the gate takes (well formed, valid for years) and its long-term key, to
        /// sign requests that get past the MESSAGE-INTEGRITY check.
        pub fn credential(&self) -> (String, Vec<u8>) {
            let ttl = Duration::from_secs(10 * 365 * 86_400);
            let (user, _) = self.secret.mint("room", ttl, SystemTime::now());
            let key = self.auth.key(&user).expect("a freshly minted username");
            (user, key)
        }

        /// What the gate does with `raw` from `from`: `"pass"` (to the turn crate),
        /// `"answer"` (an error response sent back) or `"drop"`.
        pub fn inspect(&self, raw: &[u8], from: SocketAddr) -> &'static str {
            match self.gate.inspect(raw, from) {
                Verdict::Pass => "pass",
                Verdict::Answer(_) => "answer",
                Verdict::Drop => "drop",
            }
        }
    }

    /// `raw` decoded as a STUN message, then its XOR-PEER-ADDRESSes as the gate decodes them
    /// (`None` when `raw` does not decode).
    pub fn xor_peer_addresses(raw: &[u8]) -> Option<Vec<Option<SocketAddr>>> {
        let mut m = Message::new();
        m.raw = raw.to_vec();
        m.decode().ok()?;
        Some(super::xor_peer_addresses(&m))
    }

    /// One XOR-PEER-ADDRESS value, as the gate decodes it.
    pub fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
        super::decode_xor_address(value, transaction_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::CLASS_REQUEST;

    #[test]
    fn xor_peer_addresses_decode_every_attribute() {
        let peers: [SocketAddr; 3] = [
            "198.51.100.7:4000".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            "[2001:db8::5]:65535".parse().unwrap(),
        ];
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
        ];
        for p in peers {
            setters.push(Box::new(turn::proto::peeraddr::PeerAddress {
                ip: p.ip(),
                port: p.port(),
            }));
        }
        let mut m = Message::new();
        m.build(&setters).unwrap();
        let mut decoded = Message::new();
        decoded.raw = m.raw.clone();
        decoded.decode().unwrap();
        let got: Vec<_> = xor_peer_addresses(&decoded).into_iter().flatten().collect();
        assert_eq!(got, peers);
    }
}
