//! The punchdrop signalling server.
//!
//! Peers meet in rooms over `/ws` and exchange sealed signalling (see
//! [`protocol::signal`]); the server forwards it blind and never carries file bytes: messages
//! are capped at [`protocol::signal::MAX_SIGNAL_MESSAGE`] and rate-limited per address. Once
//! the peers' data channel is open they no longer need this server.
//!
//! Built like iroh-relay or mini-redis: [`Server::spawn`] binds (port 0 works), serves in the
//! background and returns a [`ServerHandle`] with [`ServerHandle::local_addr`] and a graceful
//! [`ServerHandle::shutdown`].
//!
//! Privacy invariant: logs and `/metrics` never contain secrets, file names or full IP
//! addresses ([`limits::redact_ip`]).

pub mod admission;
pub mod audit;
mod cluster;
pub mod credentials;
mod inboxes;
pub mod limits;
pub mod metrics;
mod rooms;
pub mod settings;
pub mod tls;
pub mod turn;
pub mod volunteers;
mod web;
mod ws;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`ServerHandle::shutdown`] waits for WebSocket connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Server settings. `Default` is what `signalling` runs with when given no flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// How long a room waits for its second peer.
    pub room_ttl: Duration,
    pub max_rooms: usize,
    /// Signalling messages per second allowed from one address (sustained).
    pub messages_per_sec: u32,
    /// Burst of messages allowed from one address.
    pub messages_burst: u32,
    /// Rooms one client (IPv4 address or IPv6 /64) may create or join per minute.
    pub rooms_per_min: u32,
    /// A joined room ends this long after the second peer came (its TURN credentials live as
    /// long): the peers need it only to meet.
    pub room_max_lifetime: Duration,
    /// A connection that has not created or joined a room by then is closed.
    pub first_message_within: Duration,
    /// A peer in a room is pinged this often; one silent for three of these is gone (its
    /// network changed or died without closing), and its place in the room is freed.
    pub ping_every: Duration,
    /// An HTTP request's headers must arrive within this (a client holding a half-sent
    /// request would otherwise keep its connection forever).
    pub header_read_timeout: Duration,
    /// Who may connect, how many, from where.
    pub admission: admission::AdmissionConfig,
    /// Where `/metrics` is served (loopback by default in the binary): counters are for the
    /// operator, not for the clients the main listener faces. `None`: not served.
    pub admin_listen: Option<SocketAddr>,
    /// STUN/TURN servers handed to peers in a room.
    pub ice: IceSettings,
    /// Run the bundled TURN/STUN server; its URLs are added to `ice`, with `ice.secret`.
    pub turn: Option<BundledTurn>,
    /// Serve https and wss (not http and ws) on `listen`, with this certificate; pages
    /// then carry HSTS.
    pub tls: Option<Arc<tls::Certificates>>,
    /// With `tls`: answer plain http here with a redirect to the https origin.
    pub redirect_listen: Option<SocketAddr>,
    /// Where rooms, relays and refusals are recorded ([`audit`]).
    pub audit: audit::Audit,
    /// Share rooms, numbers and limits with other nodes through this Redis ([`cluster`]).
    pub redis: Option<String>,
    /// Volunteer relays in the relay pool ([`volunteers`]).
    pub volunteers: volunteers::VolunteerSettings,
}

/// The bundled TURN server's settings and the host name peers reach it by.
#[derive(Debug, Clone)]
pub struct BundledTurn {
    pub config: turn::TurnConfig,
    /// Host (name or IP) put in the `stun:`/`turn:` URLs handed to peers.
    pub advertise_host: String,
    /// Host put in the `turns:` URL, the name the certificate is for [default:
    /// `advertise_host`].
    pub tls_host: Option<String>,
}

/// The STUN/TURN servers peers are told about, and how their TURN credentials are made.
#[derive(Debug, Clone)]
pub struct IceSettings {
    /// Handed out as they are (no credentials): `stun:HOST:PORT`.
    pub stun_urls: Vec<String>,
    /// Handed out with REST-API credentials minted from `secret` for the peer's room.
    pub turn_urls: Vec<String>,
    pub secret: Option<credentials::TurnSecret>,
    /// Lifetime of minted credentials: allocations are refreshed with the same credentials,
    /// so a relayed transfer lasts at most this long. Handed out only once both peers are in
    /// a room, and no longer than a joined room lives.
    pub credential_ttl: Duration,
}

impl Default for IceSettings {
    fn default() -> Self {
        Self {
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            secret: None,
            credential_ttl: Duration::from_secs(2 * 3600),
        }
    }
}

impl IceSettings {
    /// The `ice_servers` message for a peer of `room`: the STUN servers, and at most
    /// [`volunteers::RELAYS_PER_ROOM`] relays from the pool — this node's TURN and `--turn`
    /// servers counting as one, volunteers by load — each with credentials of its own.
    pub fn message_for(
        &self,
        room: &str,
        volunteers: &volunteers::Pool,
    ) -> protocol::signal::ServerMessage {
        use protocol::signal::IceServer;
        use volunteers::{RELAYS_PER_ROOM, Relay};
        let mut servers = Vec::new();
        if !self.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        let node = match (self.turn_urls.is_empty(), &self.secret) {
            (false, Some(secret)) => Some(Relay {
                urls: self.turn_urls.clone(),
                secret: secret.clone(),
                volunteer: false,
            }),
            _ => None,
        };
        let prefer = volunteers.settings.prefer;
        let room_for_volunteers = match (&node, prefer) {
            (Some(_), false) => RELAYS_PER_ROOM - 1,
            _ => RELAYS_PER_ROOM,
        };
        let mut relays = volunteers.pick(room_for_volunteers, std::time::Instant::now());
        if let Some(node) = node.filter(|_| relays.len() < RELAYS_PER_ROOM) {
            // The operator's relay first unless volunteers are preferred.
            relays.insert(if prefer { relays.len() } else { 0 }, node);
        }
        let now = std::time::SystemTime::now();
        for relay in relays {
            let (user, pass) = relay.mint(room, self.credential_ttl, now);
            servers.push(IceServer {
                urls: relay.urls,
                username: Some(user),
                credential: Some(pass),
            });
        }
        protocol::signal::ServerMessage::IceServers {
            servers,
            expires_in_secs: self.credential_ttl.as_secs(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            room_ttl: Duration::from_secs(30 * 60),
            max_rooms: 10_000,
            messages_per_sec: 50,
            messages_burst: 200,
            rooms_per_min: 60,
            room_max_lifetime: Duration::from_secs(2 * 3600),
            first_message_within: Duration::from_secs(10),
            ping_every: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            admission: admission::AdmissionConfig::default(),
            admin_listen: None,
            ice: IceSettings::default(),
            turn: None,
            tls: None,
            redirect_listen: None,
            audit: audit::Audit::off(),
            redis: None,
            volunteers: volunteers::VolunteerSettings::default(),
        }
    }
}

/// Shared by every connection.
#[derive(Debug)]
pub(crate) struct AppState {
    pub rooms: rooms::Rooms,
    pub inboxes: inboxes::Inboxes,
    pub limits: limits::Limits,
    pub admission: Arc<admission::Admission>,
    pub first_message_within: Duration,
    pub ping_every: Duration,
    pub metrics: Arc<metrics::Metrics>,
    pub turn_metrics: Option<Arc<turn::TurnMetrics>>,
    pub ice: IceSettings,
    pub audit: audit::Audit,
    /// The https certificate, when there is TLS (`/readyz` waits for an ACME one).
    pub tls: Option<Arc<tls::Certificates>>,
    pub shutdown: CancellationToken,
    /// Cancelled when the server starts draining ([`ServerHandle::drain`]): no new rooms or
    /// inboxes; rooms in progress go on.
    pub draining: CancellationToken,
    /// Upgraded WebSocket connections, which outlive the HTTP server's own connection tracking.
    pub connections: TaskTracker,
    /// The other nodes, with `--redis`.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Volunteer relays listed here.
    pub volunteers: volunteers::Pool,
}

#[derive(Debug)]
pub struct Server;

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    redirect_addr: Option<SocketAddr>,
    tls: Option<Arc<tls::Certificates>>,
    shutdown: CancellationToken,
    connections: TaskTracker,
    task: JoinHandle<()>,
    turn: Option<turn::TurnHandle>,
    state: Arc<AppState>,
}

impl Server {
    /// Bind `config.listen` and serve in the background.
    pub async fn spawn(config: Config) -> anyhow::Result<ServerHandle> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} for /metrics"))?,
            ),
            None => None,
        };
        let admin_addr = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let redirect_listener = match (config.redirect_listen, &config.tls) {
            (Some(addr), Some(_)) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} for the https redirect"))?,
            ),
            (Some(_), None) => anyhow::bail!("an https redirect needs a TLS certificate"),
            (None, _) => None,
        };
        let redirect_addr = redirect_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let metrics = Arc::new(metrics::Metrics::default());
        let shutdown = CancellationToken::new();
        let connections = TaskTracker::new();
        let mut ice = config.ice.clone();
        // Credentials never outlive the room they were handed out in.
        ice.credential_ttl = ice.credential_ttl.min(config.room_max_lifetime);
        let (turn_handle, turn_metrics) = match &config.turn {
            Some(bundled) => {
                let (handle, metrics) =
                    spawn_bundled_turn(bundled, &mut ice, local_addr, &config.audit).await?;
                (Some(handle), Some(metrics))
            }
            None => (None, None),
        };
        let cluster = match &config.redis {
            Some(url) => Some(Arc::new(
                cluster::Cluster::connect(url, config.rooms_per_min)
                    .await
                    .context("cannot reach the Redis given with --redis")?,
            )),
            None => None,
        };
        let state = Arc::new(AppState {
            rooms: rooms::Rooms::new(
                config.room_ttl,
                config.room_max_lifetime,
                config.max_rooms,
                metrics.clone(),
            )
            .with_audit(config.audit.clone()),
            inboxes: inboxes::Inboxes::default(),
            limits: limits::Limits::new(&config),
            admission: admission::Admission::new(config.admission.clone()),
            first_message_within: config.first_message_within,
            ping_every: config.ping_every,
            metrics,
            turn_metrics,
            ice,
            audit: config.audit.clone(),
            tls: config.tls.clone(),
            shutdown: shutdown.clone(),
            draining: CancellationToken::new(),
            connections: connections.clone(),
            cluster: cluster.clone(),
            volunteers: volunteers::Pool::new(config.volunteers.clone()),
        });
        if let Some(cluster) = cluster {
            // Alive and subscribed before the first client: a join through this node is
            // answered by the room's node on this node's channel, and that node checks this
            // one is alive.
            cluster
                .heartbeat()
                .await
                .context("cannot say this node is alive in the Redis given with --redis")?;
            let subscribed = spawn_cluster(cluster, &state);
            match tokio::time::timeout(CLUSTER_READY_WITHIN, subscribed).await {
                Ok(Ok(())) => {}
                _ => anyhow::bail!(
                    "could not subscribe to this node's channel in the Redis given with \
                     --redis within {CLUSTER_READY_WITHIN:?}"
                ),
            }
        }
        let mut app = router(state.clone());
        if config.tls.is_some() {
            app = app.layer(axum::middleware::map_response(web::strict_transport));
        }
        // HTTP/1.1 only: what the server speaks.
        let acceptor = config.tls.as_ref().map(|c| c.acceptor(&[b"http/1.1"]));

        // Expire unjoined rooms and forget idle rate-limit entries.
        let sweeper = {
            let state = state.clone();
            let token = shutdown.clone();
            let period = (config.room_ttl.min(config.room_max_lifetime) / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(30));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tick.tick() => {
                            state.rooms.sweep(std::time::Instant::now());
                            state.limits.forget_idle();
                        }
                    }
                }
            })
        };

        let token = shutdown.clone();
        let header_read_timeout = config.header_read_timeout;
        let admin = admin_listener.map(|listener| {
            let app = admin_router(state.clone());
            tokio::spawn(serve_http(
                listener,
                app,
                token.clone(),
                header_read_timeout,
                None,
                None,
            ))
        });
        let redirect = redirect_listener.map(|listener| {
            let app = web::redirect_router(state.clone(), local_addr.port());
            tokio::spawn(serve_http(
                listener,
                app,
                token.clone(),
                header_read_timeout,
                Some(state.clone()),
                None,
            ))
        });
        let gated = state.clone();
        let task = tokio::spawn(async move {
            serve_http(
                listener,
                app,
                token,
                header_read_timeout,
                Some(gated),
                acceptor,
            )
            .await;
            sweeper.abort();
            for side in [admin, redirect].into_iter().flatten() {
                let _ = side.await;
            }
        });
        tracing::info!(addr = %local_addr, "signalling server listening");
        Ok(ServerHandle {
            local_addr,
            admin_addr,
            redirect_addr,
            tls: config.tls.clone(),
            shutdown,
            connections,
            task,
            turn: turn_handle,
            state,
        })
    }
}

/// Keep this node in the deployment: its channel served (each other node's client in a room
/// here becomes a connection task), its liveness renewed, its rooms recorded again when
/// Redis lost them.
/// Returns what tells when the node's channel is first subscribed.
fn spawn_cluster(
    cluster: Arc<cluster::Cluster>,
    state: &Arc<AppState>,
) -> tokio::sync::oneshot::Receiver<()> {
    tracing::info!(
        node = cluster.node(),
        "sharing rooms with other nodes through redis"
    );
    let serve = {
        let state = state.clone();
        let cluster = cluster.clone();
        move |client| {
            let task = ws::remote_connection(state.clone(), cluster.clone(), client);
            state.connections.spawn(task);
        }
    };
    let lost = {
        let state = state.clone();
        let cluster = cluster.clone();
        move || {
            let state = state.clone();
            let cluster = cluster.clone();
            tokio::spawn(async move { ws::record_rooms_again(&state, &cluster).await });
        }
    };
    tokio::spawn(record_inboxes(cluster.clone(), state.clone()));
    tokio::spawn(read_relays(cluster.clone(), state.clone()));
    let (subscribed, first) = tokio::sync::oneshot::channel();
    tokio::spawn(cluster.run(state.shutdown.clone(), serve, lost, subscribed));
    first
}

/// How long a node with `--redis` may take to subscribe to its channel at start.
const CLUSTER_READY_WITHIN: Duration = Duration::from_secs(10);

/// Keep the volunteer relays listed on other nodes in this node's pool.
async fn read_relays(cluster: Arc<cluster::Cluster>, state: Arc<AppState>) {
    let (volunteers::Admit::Token | volunteers::Admit::Open, Some(master)) =
        (state.volunteers.settings.admit, state.ice.secret.clone())
    else {
        return;
    };
    let mut every = tokio::time::interval(cluster::LIVENESS_CHECK);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        match cluster.other_relays().await {
            Ok(relays) => state.volunteers.set_others(relays, &master),
            // Not knowing is not handing out relays that may be gone.
            Err(e) => {
                tracing::debug!(error = %e, "could not read the other nodes' relays");
                state.volunteers.set_others(Vec::new(), &master);
            }
        }
    }
}

/// Keep this node's inboxes recorded for the other nodes (a knock or a look reaching another
/// node finds them here), well within their records' lifetime; record again what Redis
/// lost, and let go of an inbox that registered through another node since.
async fn record_inboxes(cluster: Arc<cluster::Cluster>, state: Arc<AppState>) {
    let mut every = tokio::time::interval(cluster::INBOX_TTL / 5);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        let ids = state.inboxes.ids();
        if ids.is_empty() {
            continue;
        }
        let renewals = match cluster.renew_inboxes(&ids).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "could not renew this node's inboxes");
                continue;
            }
        };
        for (id, renewal) in ids.iter().zip(renewals) {
            match renewal {
                cluster::Renewal::Kept => {}
                // Only if still here: it may have left while its record was read.
                cluster::Renewal::Missing => {
                    if let Some(name) = state.inboxes.name(id) {
                        let _ = cluster.claim_inbox(id, name.as_deref()).await;
                    }
                }
                cluster::Renewal::Elsewhere => state.inboxes.moved_away(id),
            }
        }
    }
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The bundled TURN server's UDP and TCP addresses, when it runs.
    pub fn turn_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.turn.as_ref().map(|t| (t.udp_addr(), t.tcp_addr()))
    }

    /// The bundled TURN server's second-family UDP and TCP addresses, when it has them.
    pub fn turn_also_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.turn.as_ref().and_then(|t| t.also_addrs())
    }

    /// Where the bundled TURN server takes TURN over TLS, when it does.
    pub fn turn_tls_addr(&self) -> Option<SocketAddr> {
        self.turn.as_ref().and_then(|t| t.tls_addr())
    }

    /// Where plain http is redirected to https, if anywhere.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_addr
    }

    /// `http://ADDR` or `https://ADDR`, the base URL peers use (with TLS, a name the
    /// certificate holds is needed instead of the address).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Read the TLS certificate and key files again (SIGHUP): new connections get what they
    /// hold now; on error the current certificate stays.
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        match &self.tls {
            Some(certs) => certs.reload(),
            None => Ok(()),
        }
    }

    /// [`ServerHandle::reload_tls`], callable from a signal handler's task.
    pub fn tls_reloader(&self) -> impl Fn() -> Result<(), tls::TlsError> + Send + 'static {
        let tls = self.tls.clone();
        move || match &tls {
            Some(certs) => certs.reload(),
            None => Ok(()),
        }
    }

    /// A handle that starts a drain: [`Drain::start`].
    pub fn drainer(&self) -> Drain {
        Drain {
            state: self.state.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Stop accepting, tell connected peers, and wait for connections to close.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Wait until the server stops (after [`ServerHandle::shutdown`] or an error) and its
    /// WebSocket connections have closed, for at most [`SHUTDOWN_GRACE`] after it stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
        if let Some(t) = self.turn {
            t.shutdown().await;
        }
        // The HTTP server has stopped; WebSocket connections run on in their own tasks.
        self.shutdown.cancel();
        self.connections.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.connections.wait()).await;
        self.state.rooms.close_all(std::time::Instant::now());
    }

    /// A token that stops the server when cancelled (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Drains a server (SIGTERM): no new rooms, inbox registrations or lookups (they get
/// [`protocol::signal::ErrorCode::ShuttingDown`]) and `/readyz` says 503, while rooms in
/// progress go on, joins of existing rooms included, and the bundled TURN keeps relaying;
/// the server stops when no room has a peer in it and the relays are idle, or when the time
/// is up.
///
/// A relay is in use while it moves data ([`RELAY_BUSY_BYTES`] within [`RELAY_IDLE`]), not
/// while its allocation exists: peers that are gone leave allocations behind until they
/// expire (minutes), and a relayed transfer whose peers closed their sockets to the server
/// (a page may) has no room left, only bytes.
#[derive(Debug, Clone)]
pub struct Drain {
    state: Arc<AppState>,
    shutdown: CancellationToken,
}

/// How long relays must be (nearly) silent for a drain to count them idle.
const RELAY_IDLE: Duration = Duration::from_secs(5);
/// Relayed bytes within [`RELAY_IDLE`] that still count as silence: ICE consent checks and
/// keepalives on relays that carry no transfer (a few hundred bytes per relay), not a slow
/// transfer's (3 KiB/s is busy).
const RELAY_BUSY_BYTES: u64 = 16 << 10;

impl Drain {
    /// Start draining, and stop the server once drained or after `within`. Returns at once.
    pub fn start(&self, within: Duration) {
        if self.state.draining.is_cancelled() {
            return;
        }
        self.state.draining.cancel();
        let (state, shutdown) = (self.state.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            // "Forever" (a huge --drain-timeout) must not overflow the clock.
            let deadline = started
                .checked_add(within)
                .unwrap_or(started + Duration::from_secs(100 * 365 * 86_400));
            tracing::info!(
                rooms = state.rooms.occupied(),
                "draining: no new rooms; rooms and relays in progress go on"
            );
            // (when, relayed bytes so far), over the last RELAY_IDLE.
            let mut samples = std::collections::VecDeque::new();
            loop {
                let now = tokio::time::Instant::now();
                samples.push_back((now, state.relayed_bytes()));
                while samples.len() > 1 && now - samples[1].0 >= RELAY_IDLE {
                    samples.pop_front();
                }
                let (oldest, newest) = (samples[0], samples[samples.len() - 1]);
                let watched = now - oldest.0 >= RELAY_IDLE;
                let relays_idle = watched && newest.1 - oldest.1 < RELAY_BUSY_BYTES;
                // Rooms here with a peer, and this node's peers in rooms on other nodes.
                let rooms =
                    state.rooms.occupied() + state.cluster.as_ref().map_or(0, |c| c.proxied());
                if rooms == 0 && relays_idle {
                    tracing::info!(secs = started.elapsed().as_secs(), "drained");
                    break;
                }
                if now >= deadline {
                    tracing::info!(rooms, relays_idle, "drain time is up: stopping");
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            shutdown.cancel();
        });
    }

    /// Whether [`Drain::start`] was called.
    pub fn is_draining(&self) -> bool {
        self.state.draining.is_cancelled()
    }
}

impl AppState {
    /// Bytes the bundled TURN relayed so far.
    fn relayed_bytes(&self) -> u64 {
        self.turn_metrics.as_ref().map_or(0, |t| {
            t.relayed_bytes_total
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}

/// Start the bundled TURN server with the credentials secret of `ice` (made up if there is
/// none) and add its URLs to what peers are told.
async fn spawn_bundled_turn(
    bundled: &BundledTurn,
    ice: &mut IceSettings,
    listen: SocketAddr,
    audit: &audit::Audit,
) -> anyhow::Result<(turn::TurnHandle, Arc<turn::TurnMetrics>)> {
    let secret = ice
        .secret
        .get_or_insert_with(credentials::TurnSecret::random)
        .clone();
    let mut config = bundled.config.clone();
    config.secret = secret;
    config.audit = audit.clone();
    // No relay reaches the signalling server's own address either.
    if !listen.ip().is_unspecified() {
        config.own_addresses.push(listen.ip());
    }
    let metrics = Arc::new(turn::TurnMetrics::default());
    let handle = turn::spawn(config, metrics.clone())
        .await
        .context("cannot start the bundled TURN server")?;
    let host = &bundled.advertise_host;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let (udp, tcp) = (handle.udp_addr().port(), handle.tcp_addr().port());
    if let Some(tls) = handle.tls_addr() {
        let name = match &bundled.tls_host {
            Some(name) => name.clone(),
            None => {
                tracing::warn!(
                    "TURN over TLS is handed out by address, which certificates rarely name: \
                     set --turn-public-host to the certificate's name"
                );
                host.clone()
            }
        };
        ice.turn_urls
            .insert(0, format!("turns:{name}:{}?transport=tcp", tls.port()));
    }
    // The second family's after the first's: a client of both families uses each.
    let mut stun = vec![format!("stun:{host}:{udp}")];
    let mut turn = vec![
        format!("turn:{host}:{udp}?transport=udp"),
        format!("turn:{host}:{tcp}?transport=tcp"),
    ];
    if let Some((udp, tcp)) = handle.also_addrs() {
        let host = match udp.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        stun.push(format!("stun:{host}:{}", udp.port()));
        turn.push(format!("turn:{host}:{}?transport=udp", udp.port()));
        turn.push(format!("turn:{host}:{}?transport=tcp", tcp.port()));
    }
    ice.stun_urls.splice(0..0, stun);
    ice.turn_urls.splice(0..0, turn);
    tracing::info!(udp = %handle.udp_addr(), tcp = %handle.tcp_addr(), "bundled TURN server listening");
    Ok((handle, metrics))
}

/// Serve HTTP/1.1 and WebSocket upgrades on `listener` until `token` is cancelled: axum's
/// router on hyper's connection builder, which (unlike `axum::serve`) bounds how long a
/// request's headers may take, so a client holding a half-sent request cannot keep its
/// connection (a slowloris). The same loop as axum's `serve-with-hyper` example. With
/// `state`, each connection first needs a place ([`admission::Admission::accept_tcp`]).
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    token: CancellationToken,
    header_read_timeout: Duration,
    state: Option<Arc<AppState>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    use tower::Service as _;
    let mut make = app.into_make_service_with_connect_info::<SocketAddr>();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and such: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = token.cancelled() => break,
        };
        let place = match &state {
            Some(state) => match state.admission.accept_tcp(remote.ip()) {
                Ok(place) => Some(place),
                Err(why) => {
                    state.metrics.refused_http();
                    tracing::debug!(?why, client = %limits::redact_ip(remote.ip()), "HTTP connection refused");
                    ws::audit_refusal(state, why.into(), remote.ip());
                    continue;
                }
            },
            None => None,
        };
        // Signalling is many tiny messages: Nagle plus delayed ACKs added ~40 ms per hop.
        let _ = tcp.set_nodelay(true);
        let Ok(tower_service) = make.call(remote).await;
        let service =
            hyper::service::service_fn(move |request| tower_service.clone().call(request));
        let stop = token.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, service, header_read_timeout, stop).await,
                // The handshake has the headers' time limit: a client that opens TCP and
                // says nothing is a slowloris too.
                Some(tls) => match tokio::time::timeout(header_read_timeout, tls.accept(tcp)).await
                {
                    Ok(Ok(stream)) => {
                        serve_connection(stream, service, header_read_timeout, stop).await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
            // Ended, or became a WebSocket (which holds a place of its own).
            drop(place);
        });
    }
}

/// Serve one connection's requests (and its upgrade to a WebSocket) until it ends or `stop`.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    header_read_timeout: Duration,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = stop.cancelled() => {
            // Stop taking requests; an open one gets a moment to finish. (Upgraded
            // WebSockets have left this connection and are told by their own tasks.)
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(Duration::from_secs(1), connection)
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// The operator's listener: `/metrics`, `/healthz` (the process answers) and `/readyz`
/// (it takes new rooms: 503 while draining, for a load balancer to send them elsewhere).
fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(web::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(web::ready))
        .with_state(state)
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/relay", get(volunteers::upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(web::index))
        .route("/r/{room}", get(web::share_page))
        .route("/i/{inbox}", get(web::inbox_page))
        .route("/{*asset}", get(web::asset))
        .with_state(state)
}
