//! Relayed transport addresses: the UDP sockets an allocation relays through, wrapped so
//! that policy holds whatever the turn crate does with them.
//!
//! [`Generator`] is the turn crate's `RelayAddressGenerator`: it binds a socket on the relay
//! address within the port range and returns it as a [`RelayConn`]. The wrapper
//!
//! - drops traffic to and from peers outside the allowed ranges, and to and from the
//!   server's own addresses except its live relays (defence in depth: the gate already
//!   refuses their permissions with 403, so the turn crate should never try);
//! - holds the allocation's [`Lease`] on the server's caps, and polices its rate if the
//!   operator set one;
//! - counts relayed bytes both ways and ends the allocation when it passes the byte quota or
//!   its hard lifetime, whatever refreshes it got;
//! - ends with the client's TCP connection, for allocations made over TCP.
//!
//! Ending means `recv_from` fails: the turn crate's relay loop then removes the allocation
//! and drops the socket, which frees the port. An allocation counts as active from the first
//! `recv_from` (the turn crate also binds throwaway sockets to probe for even ports) until
//! it ends, exactly once.
//!
//! A datagram one of our relays sends to another of our relayed addresses (both peers
//! relayed through this server) is handed over in memory ([`LocalRelays`]) instead of
//! through the kernel: a `sendto` and a `recvfrom` fewer per packet, which were a third of
//! the server's CPU on that path. It arrives exactly as the kernel would deliver it, from
//! the sender's relayed address, and both relays apply their policy and count the bytes as
//! they do for any other peer. Like a socket's receive buffer the hand-over queue is
//! bounded, and a datagram that does not fit is dropped.

use super::gate::CurrentClient;
use super::peers;
use super::quota::{Lease, Quotas};
use super::tcp::Links;
use super::udp::{BatchedUdp, Flusher};
use super::{TurnMetrics, lock};
use crate::limits::redact_ip;
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use webrtc_util::Conn;

/// Ports tried before an allocation fails with 508 (Insufficient Capacity).
const MAX_BIND_TRIES: u32 = 64;

/// What every relay of one server obeys.
#[derive(Debug)]
pub(crate) struct RelayPolicy {
    /// Advertised in relayed addresses.
    pub ip: IpAddr,
    /// Relay sockets bind here.
    pub bind_ip: IpAddr,
    pub ports: RangeInclusive<u16>,
    pub allow_private_peers: bool,
    pub max_bytes: u64,
    pub max_lifetime: Duration,
    pub metrics: Arc<TurnMetrics>,
    pub shutdown: CancellationToken,
    /// Relay sockets not yet dropped, so shutdown can wait for their ports to be free.
    pub live: Arc<AtomicUsize>,
    pub local: LocalRelays,
    pub flusher: Arc<Flusher>,
    /// The server's own addresses (relay, listeners): no peer may be reached there but a
    /// live relay, so a credential cannot reach the server's local UDP services or nest
    /// allocations through a port that is not one.
    pub own: Vec<IpAddr>,
    pub quotas: Arc<Quotas>,
    pub audit: crate::audit::Audit,
}

impl RelayPolicy {
    pub fn peer_allowed(&self, peer: SocketAddr) -> bool {
        if self.own.contains(&peer.ip()) && self.local.get(&peer).is_none() {
            return false;
        }
        self.allow_private_peers || peers::is_public(peer.ip())
    }
}

/// This server's relays by relayed address, for the in-process hop (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LocalRelays(Mutex<HashMap<SocketAddr, Weak<Inbox>>>);

impl LocalRelays {
    fn insert(&self, addr: SocketAddr, inbox: &Arc<Inbox>) {
        lock(&self.0).insert(addr, Arc::downgrade(inbox));
    }

    fn remove(&self, addr: SocketAddr, inbox: &Arc<Inbox>) {
        let mut map = lock(&self.0);
        if map
            .get(&addr)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(inbox)))
        {
            map.remove(&addr);
        }
    }

    fn get(&self, addr: &SocketAddr) -> Option<Arc<Inbox>> {
        lock(&self.0).get(addr).and_then(Weak::upgrade)
    }
}

/// Datagrams with the relayed address they came from, and their total size.
type Queue = (VecDeque<(Vec<u8>, SocketAddr)>, usize);

/// Datagrams handed over in memory to one relay.
#[derive(Debug, Default)]
struct Inbox {
    queue: Mutex<Queue>,
    /// `notify_one` keeps a permit when nobody waits, so a push between an empty `pop` and
    /// the wait is not missed.
    ready: Notify,
}

impl Inbox {
    /// As much as a relay socket's receive buffer holds (see `super::UDP_BUFFER`).
    const MAX_BYTES: usize = super::UDP_BUFFER;

    /// False when the datagram does not fit and is dropped.
    fn push(&self, data: &[u8], from: SocketAddr) -> bool {
        {
            let mut q = lock(&self.queue);
            if q.1 + Self::cost(data) > Self::MAX_BYTES {
                return false;
            }
            q.1 += Self::cost(data);
            q.0.push_back((data.to_vec(), from));
        }
        self.ready.notify_one();
        true
    }

    /// Bytes a datagram counts against [`Inbox::MAX_BYTES`]: empty ones cost something too.
    fn cost(data: &[u8]) -> usize {
        data.len().max(64)
    }

    fn pop_into(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let (data, from) = {
            let mut q = lock(&self.queue);
            let d = q.0.pop_front()?;
            q.1 -= Self::cost(&d.0);
            d
        };
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Some((n, from))
    }
}

/// One per listener: the turn crate keeps allocations per listener.
pub(crate) struct Generator {
    pub policy: Arc<RelayPolicy>,
    pub transport: &'static str,
    pub current: Arc<CurrentClient>,
    /// For the TCP listener: the connections, so an allocation can end with its client's.
    pub tcp: Option<Arc<Links>>,
}

impl Generator {
    async fn bind(&self, requested: u16) -> Result<UdpSocket, turn::Error> {
        let sock = self.bind_port(requested).await?;
        super::size_udp_buffers(&sock);
        Ok(sock)
    }

    async fn bind_port(&self, requested: u16) -> Result<UdpSocket, turn::Error> {
        let ip = self.policy.bind_ip;
        let (lo, hi) = (*self.policy.ports.start(), *self.policy.ports.end());
        let any_port = hi == 0;
        if requested != 0 {
            // EVEN-PORT / RESERVATION-TOKEN: the turn crate picked the port with us earlier.
            if !any_port && !(lo..=hi).contains(&requested) {
                return Err(turn::Error::Other(
                    "requested port outside the relay range".into(),
                ));
            }
            return Ok(UdpSocket::bind((ip, requested)).await?);
        }
        if any_port {
            return Ok(UdpSocket::bind((ip, 0)).await?);
        }
        let span = u32::from(hi - lo) + 1;
        let start = rand::random::<u32>() % span;
        for i in 0..span.min(MAX_BIND_TRIES) {
            let port = lo + ((start + i) % span) as u16;
            match UdpSocket::bind((ip, port)).await {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(turn::Error::ErrMaxRetriesExceeded)
    }
}

#[async_trait]
impl turn::relay::RelayAddressGenerator for Generator {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.policy.ip.is_ipv4() {
            return Err(turn::Error::Other(
                "requested address family is not relayed here".into(),
            ));
        }
        let client = self.current.get();
        let lease = match &client {
            Some((addr, user)) => {
                let user = user.as_deref().unwrap_or_default();
                match self.policy.quotas.take(self.transport, *addr, user) {
                    Ok(lease) => Some(lease),
                    Err(over) => {
                        self.policy.metrics.quota_refused(over);
                        return Err(turn::Error::Other(format!("allocation quota: {over:?}")));
                    }
                }
            }
            None => None,
        };
        let client = client.map(|(addr, _)| addr);
        let socket = self.bind(requested_port).await?;
        let relay_addr = SocketAddr::new(self.policy.ip, socket.local_addr()?.port());
        let client_gone = match (&self.tcp, client) {
            (Some(links), Some(c)) => match links.closed_token(c) {
                Some(t) => Some(t),
                // The connection closed while its Allocate waited: relay nothing.
                None => return Err(turn::Error::Other("client connection closed".into())),
            },
            _ => None,
        };
        let conn = RelayConn::new(
            socket,
            relay_addr,
            self.policy.clone(),
            self.transport,
            (client, lease),
            client_gone,
        )?;
        Ok((Arc::new(conn), relay_addr))
    }
}

/// A token bucket: `rate` bytes a second, bursts of up to a second's worth.
#[derive(Debug)]
struct Bucket {
    rate: u64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: u64, now: tokio::time::Instant) -> Self {
        Self {
            rate,
            tokens: rate as f64,
            at: now,
        }
    }

    fn take(&mut self, n: u64, now: tokio::time::Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate as f64;
        self.tokens = (self.tokens + refill).min(self.rate as f64);
        self.at = now;
        if self.tokens < n as f64 {
            return false;
        }
        self.tokens -= n as f64;
        true
    }
}

const CREATED: u8 = 0;
const RELAYING: u8 = 1;
const ENDED: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The turn crate closed it: expiry, a zero-lifetime Refresh, server shutdown.
    Closed,
    ByteQuota,
    Lifetime,
    ClientGone,
    Shutdown,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::ByteQuota => "byte_quota",
            Self::Lifetime => "lifetime",
            Self::ClientGone => "client_gone",
            Self::Shutdown => "shutdown",
        }
    }
}

pub(crate) struct RelayConn {
    socket: Arc<BatchedUdp>,
    relay_addr: SocketAddr,
    inbox: Arc<Inbox>,
    /// Whether the next read tries the inbox before the socket.
    inbox_first: AtomicBool,
    policy: Arc<RelayPolicy>,
    transport: &'static str,
    client: Option<SocketAddr>,
    /// Its place in the server's caps, given back when the relay is dropped.
    _lease: Option<Lease>,
    /// The rate police, when the operator caps the rate.
    rate: Option<Mutex<Bucket>>,
    client_gone: Option<CancellationToken>,
    deadline: tokio::time::Instant,
    bytes: AtomicU64,
    /// When it was made (the audit log says how long it lived).
    born: tokio::time::Instant,
    state: AtomicU8,
    /// Cancelled when the relay ends for any reason; a child of the server's (and for TCP,
    /// the client connection's) token, so shutdown and disconnects reach it.
    ended: CancellationToken,
}

impl std::fmt::Debug for RelayConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConn")
            .field("relay_port", &self.relay_addr.port())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl RelayConn {
    fn new(
        socket: UdpSocket,
        relay_addr: SocketAddr,
        policy: Arc<RelayPolicy>,
        transport: &'static str,
        (client, lease): (Option<SocketAddr>, Option<Lease>),
        client_gone: Option<CancellationToken>,
    ) -> std::io::Result<Self> {
        // One GRO buffer: a relay reads from one peer, and there may be thousands of relays.
        let socket = BatchedUdp::new(socket, 1, policy.flusher.clone())?;
        let inbox = Arc::<Inbox>::default();
        policy.local.insert(relay_addr, &inbox);
        let ended = client_gone
            .as_ref()
            .unwrap_or(&policy.shutdown)
            .child_token();
        policy.live.fetch_add(1, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        // A "no limit" lifetime like Duration::MAX must not overflow the clock.
        let deadline = now
            .checked_add(policy.max_lifetime)
            .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        let rate = policy
            .quotas
            .caps()
            .bytes_per_sec_per_allocation
            .map(|r| Mutex::new(Bucket::new(r, now)));
        Ok(Self {
            socket,
            relay_addr,
            _lease: lease,
            rate,
            inbox,
            inbox_first: AtomicBool::new(false),
            deadline,
            policy,
            transport,
            client,
            client_gone,
            bytes: AtomicU64::new(0),
            born: now,
            state: AtomicU8::new(CREATED),
            ended,
        })
    }

    fn start(&self) {
        if self
            .state
            .compare_exchange(CREATED, RELAYING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let m = &self.policy.metrics;
            m.allocations_total.fetch_add(1, Ordering::Relaxed);
            m.allocations_active.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                transport = self.transport,
                client = %self.client_redacted(),
                relay_port = self.relay_addr.port(),
                "TURN allocation started"
            );
        }
    }

    /// Ends the relay once: later calls do nothing.
    fn end(&self, why: End) {
        let was = self.state.swap(ENDED, Ordering::AcqRel);
        self.ended.cancel();
        if was != RELAYING {
            return;
        }
        let m = &self.policy.metrics;
        m.allocations_active.fetch_sub(1, Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.policy
            .audit
            .record(crate::audit::Event::TurnAllocation {
                client: self.client_redacted(),
                transport: self.transport,
                bytes,
                lived_secs: crate::audit::secs(self.born.elapsed()),
                ended: why.as_str(),
            });
        if matches!(why, End::ByteQuota | End::Lifetime) {
            m.quota_ended_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                transport = self.transport,
                client = %self.client_redacted(),
                reason = ?why,
                bytes,
                "TURN allocation ended by quota"
            );
        } else {
            tracing::debug!(
                transport = self.transport,
                client = %self.client_redacted(),
                reason = ?why,
                bytes,
                "TURN allocation ended"
            );
        }
    }

    /// Why `ended` fired, when nobody called [`RelayConn::end`] first.
    fn cancel_reason(&self) -> End {
        if self.policy.shutdown.is_cancelled() {
            End::Shutdown
        } else if self.client_gone.is_some() {
            End::ClientGone
        } else {
            End::Closed
        }
    }

    /// Whether the rate police let `n` bytes through now (always, without a rate cap).
    fn within_rate(&self, n: usize) -> bool {
        let Some(bucket) = &self.rate else {
            return true;
        };
        let ok = lock(bucket).take(n as u64, tokio::time::Instant::now());
        if !ok {
            self.policy
                .metrics
                .rate_dropped_total
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Counts `n` relayed bytes; false (and the relay ended) if they would pass the quota.
    fn account(&self, n: usize) -> bool {
        let n = n as u64;
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.policy.max_bytes {
            self.end(End::ByteQuota);
            return false;
        }
        self.policy
            .metrics
            .relayed_bytes_total
            .fetch_add(n, Ordering::Relaxed);
        true
    }

    fn refuse_peer(&self, peer: SocketAddr, direction: &'static str) {
        self.policy
            .metrics
            .peer_refused_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            transport = self.transport,
            peer = %redact_ip(peer.ip()),
            direction,
            "TURN relay dropped a packet for a refused peer"
        );
    }

    /// Policy and accounting for a datagram read from the socket or handed over in memory:
    /// `None` if it is dropped and the next one should be read.
    fn inbound(
        &self,
        (n, from): (usize, SocketAddr),
    ) -> Option<webrtc_util::Result<(usize, SocketAddr)>> {
        if tokio::time::Instant::now() >= self.deadline {
            self.end(End::Lifetime);
            return Some(Err(ended_error()));
        }
        if !self.policy.peer_allowed(from) {
            self.refuse_peer(from, "inbound");
            return None;
        }
        if !self.within_rate(n) {
            return None;
        }
        if !self.account(n) {
            return Some(Err(ended_error()));
        }
        Some(Ok((n, from)))
    }

    fn client_redacted(&self) -> String {
        self.client
            .map_or_else(|| "?".to_owned(), |c| redact_ip(c.ip()))
    }
}

impl Drop for RelayConn {
    fn drop(&mut self) {
        self.end(End::Closed);
        self.policy.local.remove(self.relay_addr, &self.inbox);
        self.policy.live.fetch_sub(1, Ordering::Relaxed);
    }
}

fn ended_error() -> webrtc_util::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "TURN allocation ended").into()
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported).into())
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported).into())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        // The turn crate's relay loop polls this from the allocation's creation to its end,
        // so this is where every end (quota, lifetime, disconnect, shutdown) is noticed.
        self.start();
        // Datagrams from memory never make the task wait: let tokio's budget make it yield.
        tokio::task::consume_budget().await;
        loop {
            if self.ended.is_cancelled() {
                self.end(self.cancel_reason());
                return Err(ended_error());
            }
            // The two sources take turns going first, so neither starves the other.
            let inbox_first = self.inbox_first.fetch_xor(true, Ordering::Relaxed);
            let got = if inbox_first {
                match self.inbox.pop_into(buf) {
                    Some(v) => Ok(Some(v)),
                    None => self.socket.try_recv(buf),
                }
            } else {
                match self.socket.try_recv(buf) {
                    Ok(None) => Ok(self.inbox.pop_into(buf)),
                    r => r,
                }
            };
            match got {
                Ok(Some(v)) => match self.inbound(v) {
                    Some(r) => return r,
                    None => continue,
                },
                Ok(None) => {}
                Err(e) => {
                    // An error here would end the allocation; UDP errors are transient.
                    tracing::debug!(error = %e, "TURN relay read failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            // Nothing left to relay: what the turn crate queued for clients goes out now.
            self.socket.flusher().flush_all();
            tokio::select! {
                biased;
                _ = self.ended.cancelled() => {
                    self.end(self.cancel_reason());
                    return Err(ended_error());
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.end(End::Lifetime);
                    return Err(ended_error());
                }
                _ = self.inbox.ready.notified() => {}
                r = self.socket.readable() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "TURN relay read failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported).into())
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.ended.is_cancelled() {
            return Err(ended_error());
        }
        self.start();
        if !self.policy.peer_allowed(target) {
            self.refuse_peer(target, "outbound");
            // Dropped like a datagram the network lost: the turn crate logs errors loudly.
            return Ok(buf.len());
        }
        if !self.within_rate(buf.len()) {
            return Ok(buf.len());
        }
        if !self.account(buf.len()) {
            return Err(ended_error());
        }
        if let Some(inbox) = self.policy.local.get(&target) {
            // Counted as relayed above, like a datagram the kernel accepts and then drops.
            if !inbox.push(buf, self.relay_addr) {
                tracing::trace!("in-process relay hop full: datagram dropped");
            }
            return Ok(buf.len());
        }
        self.socket.queue(buf, target);
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local())
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.end(End::Closed);
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
