//! The bundled TURN/STUN server: answers STUN binding requests and relays for peers that
//! cannot reach each other directly (RFC 5766), over UDP and over TCP, on one address, or
//! two of different IP families ([`TurnConfig::also_listen`]); relays are IPv4 (RFC 6156's
//! default: a request for an IPv6 relay is refused).
//!
//! Built on webrtc-rs's `turn` crate (its server does the protocol: nonces, allocations,
//! permissions, channels), with our own pieces around it:
//!
//! - credentials are the short-lived REST-API ones from [`crate::credentials`], checked by
//!   HMAC, so the signalling server can mint them per room with no shared state (`auth.rs`);
//! - a gate in front of each listener counts refused credentials and refuses peers outside
//!   the allowed ranges with 403 at CreatePermission/ChannelBind (`gate.rs`);
//! - relay sockets are wrapped to drop traffic to or from refused peers, count bytes, end
//!   allocations at the byte quota or the hard lifetime, and hand traffic between two of our
//!   own relays over in memory (`relay.rs`);
//! - the UDP listener and relay sockets are read and written in GRO/GSO batches under the
//!   crate's one-datagram-at-a-time `Conn` (`udp.rs`);
//! - TURN over TCP is a `Conn` that frames the stream (`tcp.rs`).
//!
//! Invariants: the relay never talks to loopback, private, link-local, multicast or other
//! non-global addresses unless `allow_private_peers`, nor to the server's own addresses
//! except its live relays; allocations and TCP connections stay within [`TurnCaps`] (per
//! credential, per client, in total: `quota.rs`); an allocation relays at most
//! `max_bytes_per_allocation` bytes and lives at most `max_allocation_lifetime`; logs carry
//! addresses only through [`crate::limits::redact_ip`] and never usernames or passwords;
//! metrics are counts. (The turn crate itself logs full addresses through the `log` crate at
//! debug/info/error level: keep the `turn` target off in production log filters.)
//!
//! This depends on how turn 0.17.2 drives its `Conn`s (one message handled at a time; an
//! error from a relay socket's `recv_from` removes its allocation; `close` on the listener
//! whenever any allocation closes; every socket read in a loop that calls `recv_from`
//! again after handling, which is where queued writes are flushed), which is why the
//! version is pinned.

mod auth;
mod gate;
mod peers;
mod quota;
mod relay;
mod tcp;
#[cfg(test)]
mod tests;
mod udp;

use anyhow::{Context as _, bail};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};

/// The TURN gate's STUN decoding, for the fuzz targets in `fuzz/` only (cargo feature
/// `fuzzing`, off by default).
#[cfg(feature = "fuzzing")]
pub use gate::fuzzing;
pub(crate) use peers::is_public;
pub use quota::TurnCaps;
/// How long [`TurnHandle::shutdown`] waits for tasks and relay sockets to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A lock whose data stays usable after a panic elsewhere: every lock here guards plain
/// bookkeeping that a panicking holder cannot leave half-updated.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Socket buffer size asked for on the listener and relay sockets: relayed traffic arrives in
/// bursts of a whole SCTP window; the kernel's default 208 KiB receive buffer dropped hundreds
/// of datagrams per 50 MB relayed, each a retransmission for the peers.
const UDP_BUFFER: usize = net::UDP_BUFFER;

pub(crate) fn size_udp_buffers(sock: &UdpSocket) {
    net::size_udp_buffers(sock, UDP_BUFFER);
}

/// TURN server settings.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// UDP and TCP listen here (the TURN default port is 3478). With port 0 each gets its own
    /// ephemeral port (the same one when it is free for both).
    pub listen: SocketAddr,
    /// A second address for UDP and TCP, of the other IP family (IPv6 beside IPv4): STUN for
    /// clients' reflexive addresses in that family (a browser hides its host addresses and
    /// shows its IPv6 one only as server-reflexive), and TURN for clients that have only that
    /// family. Relays are still made on `relay_ip` (RFC 6156's default family; a request for
    /// another family is refused).
    pub also_listen: Option<SocketAddr>,
    /// The address relayed sockets are advertised to clients at.
    pub relay_ip: IpAddr,
    /// The address relayed sockets bind to, when it is not `relay_ip`: a relay behind a NAT
    /// whose ports the router forwards (a volunteer relay) binds its LAN address and
    /// advertises the router's.
    pub relay_bind_ip: Option<IpAddr>,
    /// Ports for relayed sockets, e.g. `49152..=65535`; `0..=0` means any ephemeral port.
    pub relay_ports: RangeInclusive<u16>,
    pub realm: String,
    pub secret: crate::credentials::TurnSecret,
    /// Relay to loopback, private, link-local, multicast and other non-global peers too
    /// (tests, LAN deployments). Off, such peers are refused.
    pub allow_private_peers: bool,
    /// Bytes an allocation may relay, both directions together, before it is ended.
    pub max_bytes_per_allocation: u64,
    /// How long an allocation may live, however often it is refreshed.
    pub max_allocation_lifetime: Duration,
    /// Caps on allocations and TCP connections.
    pub caps: TurnCaps,
    /// More of the server's own addresses (besides the relay and listen addresses), e.g. the
    /// signalling server's: no relay reaches them.
    pub own_addresses: Vec<IpAddr>,
    /// Where ended allocations are recorded, with their bytes ([`crate::audit`]).
    pub audit: crate::audit::Audit,
    /// TURN over TLS too (`turns:`, the last rung for networks that let only TLS out).
    pub tls: Option<TurnTls>,
}

/// Where TURN over TLS listens, and its certificate (the web server's: one name).
#[derive(Debug, Clone)]
pub struct TurnTls {
    pub listen: SocketAddr,
    pub certificates: Arc<crate::tls::Certificates>,
}

/// Counters for `/metrics`. Counts only: no addresses or credentials.
#[derive(Debug, Default)]
pub struct TurnMetrics {
    pub allocations_total: AtomicU64,
    pub allocations_active: AtomicU64,
    pub relayed_bytes_total: AtomicU64,
    pub auth_refused_total: AtomicU64,
    pub peer_refused_total: AtomicU64,
    pub quota_ended_total: AtomicU64,
    pub rate_dropped_total: AtomicU64,
    pub tcp_refused_total: AtomicU64,
    quota_refused_total: AtomicU64,
    quota_refused_client: AtomicU64,
    quota_refused_credential: AtomicU64,
}

impl TurnMetrics {
    pub(crate) fn quota_refused(&self, over: quota::OverCap) {
        let counter = match over {
            quota::OverCap::Total => &self.quota_refused_total,
            quota::OverCap::Client => &self.quota_refused_client,
            quota::OverCap::Credential => &self.quota_refused_credential,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text format, one `punchdrop_turn_*` metric per counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP punchdrop_turn_allocations_refused_total TURN allocations refused by a cap, by cap.\n\
             # TYPE punchdrop_turn_allocations_refused_total counter"
        );
        for (cap, v) in [
            ("total", &self.quota_refused_total),
            ("client", &self.quota_refused_client),
            ("credential", &self.quota_refused_credential),
        ] {
            let _ = writeln!(
                out,
                "punchdrop_turn_allocations_refused_total{{cap=\"{cap}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let mut put = |name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP punchdrop_turn_{name} {help}\n# TYPE punchdrop_turn_{name} {kind}\npunchdrop_turn_{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        put(
            "allocations_total",
            "counter",
            "TURN allocations made.",
            &self.allocations_total,
        );
        put(
            "allocations_active",
            "gauge",
            "TURN allocations currently relaying.",
            &self.allocations_active,
        );
        put(
            "relayed_bytes_total",
            "counter",
            "Bytes relayed by TURN allocations, both directions.",
            &self.relayed_bytes_total,
        );
        put(
            "auth_refused_total",
            "counter",
            "TURN requests refused for malformed, expired or wrong credentials.",
            &self.auth_refused_total,
        );
        put(
            "peer_refused_total",
            "counter",
            "TURN permissions and packets refused because of the peer address.",
            &self.peer_refused_total,
        );
        put(
            "quota_ended_total",
            "counter",
            "TURN allocations ended by the byte or lifetime quota.",
            &self.quota_ended_total,
        );
        put(
            "rate_dropped_total",
            "counter",
            "Datagrams dropped by the per-allocation rate cap.",
            &self.rate_dropped_total,
        );
        put(
            "tcp_refused_total",
            "counter",
            "TURN-over-TCP connections closed at accept by a cap.",
            &self.tcp_refused_total,
        );
        out
    }
}

/// A running TURN server. Dropping it stops the server too, without waiting.
pub struct TurnHandle {
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    server: Server,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    live_relays: Arc<AtomicUsize>,
    /// The second family's UDP and TCP addresses ([`TurnConfig::also_listen`]).
    also: Option<(SocketAddr, SocketAddr)>,
    /// The listeners as the turn crate holds them: gone once it has let go of the sockets.
    listeners: Vec<Weak<gate::Gate>>,
    auth: Arc<auth::Auth>,
}

impl std::fmt::Debug for TurnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnHandle")
            .field("udp_addr", &self.udp_addr)
            .field("tcp_addr", &self.tcp_addr)
            .finish_non_exhaustive()
    }
}

impl TurnHandle {
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The second family's UDP and TCP addresses, when there is one.
    pub fn also_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.also
    }

    /// Check new credentials against `secret` from now on, keeping the earlier secrets for
    /// credentials minted with them ([`crate::credentials::TurnSecret::mint_tagged`]): a
    /// volunteer relay registering again keeps its allocations.
    pub fn add_secret(&self, secret: crate::credentials::TurnSecret) {
        self.auth.add_secret(secret);
    }

    /// Where TURN over TLS listens, when it does.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Stop listening, end every allocation and wait (briefly) until the listening and relay
    /// ports are free.
    pub async fn shutdown(self) {
        // Ends every relay (their tokens are children of this one), the TCP connections and
        // the listeners' reads, whatever state the turn crate is in.
        self.shutdown.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.server.close()).await;
        self.tasks.close();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let _ = tokio::time::timeout_at(deadline, self.tasks.wait()).await;
        // The turn crate lets go of its sockets a little after `close` returns.
        while (self.live_relays.load(Ordering::Relaxed) > 0
            || self.listeners.iter().any(|l| l.strong_count() > 0))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!("TURN server stopped");
    }
}

impl Drop for TurnHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// UDP and TCP on `listen`: with port 0, the same port for both when it is free, so one
/// `turn:HOST:PORT` URL covers both.
async fn bind_pair(listen: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let udp = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("cannot listen for TURN on UDP {listen}"))?;
    size_udp_buffers(&udp);
    let tcp = if listen.port() == 0 {
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(l) => l,
            Err(_) => TcpListener::bind(listen).await?,
        }
    } else {
        TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for TURN on TCP {listen}"))?
    };
    Ok((udp, tcp))
}

/// Bind `config.listen` (UDP and TCP), and `config.also_listen`, and serve in the background.
pub async fn spawn(config: TurnConfig, metrics: Arc<TurnMetrics>) -> anyhow::Result<TurnHandle> {
    let (lo, hi) = (*config.relay_ports.start(), *config.relay_ports.end());
    if lo > hi || (lo == 0 && hi != 0) {
        bail!("relay port range must be LOW..=HIGH with LOW >= 1, or 0..=0 for any port");
    }
    if config.relay_ip.is_unspecified() {
        bail!("the relay address is advertised to clients: it cannot be unspecified");
    }

    if let Some(also) = config.also_listen
        && (also.is_ipv4() == config.listen.is_ipv4() || config.listen.ip().is_unspecified())
    {
        bail!(
            "TURN's second address ({also}) must be of the other IP family than {}, which must \
             not be a wildcard (an IPv6 wildcard takes both families)",
            config.listen
        );
    }
    let (udp, tcp) = bind_pair(config.listen).await?;
    let (udp_addr, tcp_addr) = (udp.local_addr()?, tcp.local_addr()?);
    let also = match config.also_listen {
        Some(addr) => Some(bind_pair(addr).await?),
        None => None,
    };
    let also_addrs = match &also {
        Some((u, t)) => Some((u.local_addr()?, t.local_addr()?)),
        None => None,
    };
    let mut tls = match &config.tls {
        Some(t) => {
            let listener = TcpListener::bind(t.listen)
                .await
                .with_context(|| format!("cannot listen for TURN over TLS on {}", t.listen))?;
            Some((listener, t.certificates.acceptor(&[])))
        }
        None => None,
    };
    let tls_addr = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let live_relays = Arc::new(AtomicUsize::new(0));
    let flusher = Arc::new(udp::Flusher::default());
    tasks.spawn(flusher.clone().run(shutdown.clone()));
    let auth = Arc::new(auth::Auth::new(config.secret, config.realm.clone()));
    let mut own = config.own_addresses.clone();
    own.push(config.relay_ip);
    own.extend(config.relay_bind_ip);
    let also_own = also_addrs.into_iter().flat_map(|(u, t)| [u, t]);
    for addr in [Some(udp_addr), Some(tcp_addr), tls_addr]
        .into_iter()
        .flatten()
        .chain(also_own)
    {
        if !addr.ip().is_unspecified() {
            own.push(addr.ip());
        }
    }
    own.sort();
    own.dedup();
    let policy = Arc::new(relay::RelayPolicy {
        ip: config.relay_ip,
        bind_ip: config.relay_bind_ip.unwrap_or(config.relay_ip),
        ports: config.relay_ports,
        allow_private_peers: config.allow_private_peers,
        max_bytes: config.max_bytes_per_allocation,
        max_lifetime: config.max_allocation_lifetime,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        live: live_relays.clone(),
        local: relay::LocalRelays::default(),
        flusher: flusher.clone(),
        own,
        quotas: quota::Quotas::new(config.caps.clone()),
        audit: config.audit.clone(),
    });
    let gate = |inner: Arc<dyn gate::Listener>, transport| {
        Arc::new(gate::Gate::new(
            inner,
            transport,
            auth.clone(),
            policy.clone(),
            metrics.clone(),
            shutdown.clone(),
        ))
    };

    let caps = tcp::TcpCaps {
        total: config.caps.tcp_connections,
        per_client: config.caps.tcp_connections_per_client,
    };
    let mut listeners = Vec::new();
    let mut conn_configs = Vec::new();
    // The total TCP cap is the server's, across both families' listeners.
    let tcp_open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (udp, tcp) in std::iter::once((udp, tcp)).chain(also) {
        // Four GRO buffers per read: the listener hears from every client.
        let udp_gate = gate(udp::BatchedUdp::new(udp, 4, flusher.clone())?, "udp");
        // TURN over TLS is served beside the first family's TCP only.
        let tcp_conn = tcp::TcpConn::start(
            tcp,
            tls.take(),
            (caps, tcp_open.clone()),
            metrics.clone(),
            flusher.clone(),
            shutdown.clone(),
            &tasks,
        )?;
        let tcp_links = tcp_conn.links();
        let tcp_gate = gate(tcp_conn, "tcp");
        listeners.extend([Arc::downgrade(&udp_gate), Arc::downgrade(&tcp_gate)]);
        conn_configs.push(ConnConfig {
            relay_addr_generator: Box::new(relay::Generator {
                policy: policy.clone(),
                transport: "udp",
                current: udp_gate.current_client(),
                tcp: None,
            }),
            conn: udp_gate,
        });
        conn_configs.push(ConnConfig {
            relay_addr_generator: Box::new(relay::Generator {
                policy: policy.clone(),
                transport: "tcp",
                current: tcp_gate.current_client(),
                tcp: Some(tcp_links),
            }),
            conn: tcp_gate,
        });
    }
    let server = Server::new(ServerConfig {
        conn_configs,
        realm: config.realm,
        auth_handler: auth.clone(),
        // Zero means the turn crate's default (10 minutes).
        channel_bind_timeout: Duration::ZERO,
        // Not used: allocations our relay ends itself never reach it (see relay.rs).
        alloc_close_notify: None,
    })
    .await
    .context("cannot start the TURN server")?;
    tracing::info!(udp = %udp_addr, tcp = %tcp_addr, tls = ?tls_addr, also = ?also_addrs, "TURN server listening");
    Ok(TurnHandle {
        udp_addr,
        tcp_addr,
        tls_addr,
        also: also_addrs,
        server,
        shutdown,
        tasks,
        live_relays,
        listeners,
        auth,
    })
}
