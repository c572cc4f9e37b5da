//! The relay pool's volunteers: peers with a reachable port that run the bundled TURN code
//! (`native-peer relay --register URL`) and offer it on `/relay` ([`protocol::relay`]).
//!
//! - Admission: `--volunteer-relays token` takes volunteers with an operator-issued token
//!   ([`crate::credentials::TurnSecret::relay_token`]), `open` takes anyone, `off` (the
//!   default) nobody. A relay gets its own secret, derived from the master TURN secret and its
//!   id, and never learns the master.
//! - A relay is listed only after a STUN binding request from this server to the address the
//!   volunteer connected from, at the port it names, was answered ([`probe`]): what peers are
//!   handed must be reachable from the internet, and a volunteer cannot name someone else's
//!   address.
//! - Health: a listed relay reports its load every [`LOAD_EVERY_SECS`]; one silent for
//!   [`LOAD_STALE_SECS`], or whose WebSocket closed, leaves the pool at once. Rooms are
//!   handed the least loaded (allocations, then bytes relayed) at the moment of `joined`.
//! - With `--redis` the pool is the deployment's: each node records its listed volunteers
//!   (id, URLs, load; renewed by every report, expiring with them) and reads the others'
//!   every few seconds ([`Pool::set_others`]); any node derives a relay's secret from its id.
//!
//! Invariant: logs and metrics carry no relay id, secret or full address.

use crate::AppState;
use crate::credentials::TurnSecret;
use crate::limits::redact_ip;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use protocol::relay::{
    LOAD_EVERY_SECS, LOAD_STALE_SECS, PoolMessage, RELAY_VERSION, RelayRefusal, VolunteerMessage,
};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Who may volunteer a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Admit {
    /// Nobody: the pool is the node's TURN and `--turn` servers.
    #[default]
    Off,
    /// Volunteers with a relay token (`--issue-relay-token`).
    Token,
    /// Anyone.
    Open,
}

/// The volunteers' settings.
#[derive(Debug, Clone)]
pub struct VolunteerSettings {
    pub admit: Admit,
    /// Hand rooms volunteers before this node's own TURN (which then goes only to rooms that
    /// get fewer than [`RELAYS_PER_ROOM`] volunteers).
    pub prefer: bool,
    /// Most relays listed at once.
    pub max: usize,
    /// Time a volunteer has to map its ports and start TURN after its welcome.
    pub ready_within: Duration,
    /// List volunteers at loopback, private and link-local addresses too (tests, LANs; the
    /// server's `--turn-allow-private-peers`). Off, only public addresses are listed.
    pub allow_private: bool,
}

impl Default for VolunteerSettings {
    fn default() -> Self {
        Self {
            admit: Admit::Off,
            prefer: false,
            max: 256,
            ready_within: Duration::from_secs(30),
            allow_private: false,
        }
    }
}

/// Relays (this node's TURN counting as one) handed to one room at most.
pub const RELAYS_PER_ROOM: usize = 2;
/// Relays listed at most from one address: one host cannot fill the pool or most rooms'
/// relay slots by registering many times.
const PER_ADDRESS: usize = 4;
/// `load` messages a listed relay may send per report period (it sends one).
const MAX_MESSAGES_PER_PERIOD: u32 = 100;
/// Bytes one report may add to the relayed count at most (what 10 Gbit/s moves in a
/// period): a relay cannot make the counter wrap.
const MAX_BYTES_PER_REPORT: u64 = 10_000_000_000 / 8 * LOAD_EVERY_SECS;
/// Tries of the reachability probe, each waiting this long for the answer.
const PROBE_TRIES: u32 = 3;
const PROBE_WAIT: Duration = Duration::from_millis(700);

/// A relay rooms can be handed: its URLs and the secret its credentials are minted with.
#[derive(Debug, Clone)]
pub struct Relay {
    pub urls: Vec<String>,
    pub secret: TurnSecret,
    /// A volunteer: its usernames name their secret ([`TurnSecret::mint_tagged`]).
    pub volunteer: bool,
}

impl Relay {
    /// Credentials for `room`'s peers on this relay.
    pub fn mint(&self, room: &str, ttl: Duration, now: SystemTime) -> (String, String) {
        if self.volunteer {
            self.secret.mint_tagged(room, ttl, now)
        } else {
            self.secret.mint(room, ttl, now)
        }
    }
}

#[derive(Debug)]
struct Listed {
    relay: Relay,
    ip: IpAddr,
    allocations: u64,
    relayed: u64,
    reported: Instant,
}

/// A volunteer listed on another node, as last read from Redis.
#[derive(Debug)]
struct Elsewhere {
    relay: Relay,
    allocations: u64,
    relayed: u64,
}

/// The listed volunteers of this node (and, with other nodes, theirs).
#[derive(Debug)]
pub struct Pool {
    pub settings: VolunteerSettings,
    listed: Mutex<HashMap<String, Listed>>,
    others: Mutex<Vec<Elsewhere>>,
    relayed_bytes: AtomicU64,
    listed_total: AtomicU64,
    refused_total: AtomicU64,
}

impl Pool {
    pub fn new(settings: VolunteerSettings) -> Self {
        Self {
            settings,
            listed: Mutex::default(),
            others: Mutex::default(),
            relayed_bytes: AtomicU64::new(0),
            listed_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
        }
    }

    /// Up to `n` healthy relays, least loaded first, from this node's and the others'.
    pub fn pick(&self, n: usize, now: Instant) -> Vec<Relay> {
        let listed = crate::turn::lock(&self.listed);
        let others = crate::turn::lock(&self.others);
        let mut healthy: Vec<(u64, u64, &Relay)> = listed
            .values()
            .filter(|l| now.duration_since(l.reported) < Duration::from_secs(LOAD_STALE_SECS))
            .map(|l| (l.allocations, l.relayed, &l.relay))
            .chain(others.iter().map(|o| (o.allocations, o.relayed, &o.relay)))
            .collect();
        healthy.sort_by_key(|&(allocations, relayed, _)| (allocations, relayed));
        healthy
            .into_iter()
            .take(n)
            .map(|(_, _, relay)| relay.clone())
            .collect()
    }

    /// The volunteers listed on other nodes, as just read; their secrets derive from
    /// `master` and their ids.
    pub(crate) fn set_others(&self, relays: Vec<crate::cluster::SharedRelay>, master: &TurnSecret) {
        let others = relays
            .into_iter()
            .map(|r| Elsewhere {
                relay: Relay {
                    urls: r.urls,
                    secret: master.for_relay(&r.id),
                    volunteer: true,
                },
                allocations: r.allocations,
                relayed: r.relayed,
            })
            .collect();
        *crate::turn::lock(&self.others) = others;
    }

    /// Whether a relay is listed (for the tests' view through metrics).
    pub fn len(&self) -> usize {
        crate::turn::lock(&self.listed).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn list(&self, id: &str, relay: Relay, ip: IpAddr, now: Instant) -> Result<(), RelayRefusal> {
        let mut listed = crate::turn::lock(&self.listed);
        let same_address = listed.values().filter(|l| l.ip == ip).count();
        if listed.len() >= self.settings.max || same_address >= PER_ADDRESS {
            return Err(RelayRefusal::PoolFull);
        }
        listed.insert(
            id.to_owned(),
            Listed {
                relay,
                ip,
                allocations: 0,
                relayed: 0,
                reported: now,
            },
        );
        self.listed_total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn report(&self, id: &str, allocations: u64, relayed: u64, now: Instant) {
        let mut listed = crate::turn::lock(&self.listed);
        if let Some(l) = listed.get_mut(id) {
            // A counter only grows; a smaller figure is a restarted count, taken whole.
            let delta = relayed
                .checked_sub(l.relayed)
                .unwrap_or(relayed)
                .min(MAX_BYTES_PER_REPORT);
            self.relayed_bytes.fetch_add(delta, Ordering::Relaxed);
            l.allocations = allocations;
            l.relayed = relayed;
            l.reported = now;
        }
    }

    /// The URLs of relay `id`, listed here.
    fn urls(&self, id: &str) -> Option<Vec<String>> {
        crate::turn::lock(&self.listed)
            .get(id)
            .map(|l| l.relay.urls.clone())
    }

    fn unlist(&self, id: &str) {
        crate::turn::lock(&self.listed).remove(id);
    }

    /// Healthy as of `now`: reported within [`LOAD_STALE_SECS`].
    fn is_fresh(&self, id: &str, now: Instant) -> bool {
        crate::turn::lock(&self.listed)
            .get(id)
            .is_some_and(|l| now.duration_since(l.reported) < Duration::from_secs(LOAD_STALE_SECS))
    }

    /// `/metrics` lines: counts only.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows = [
            (
                "volunteer_relays",
                "gauge",
                "Volunteer relays listed now.",
                self.len() as u64,
            ),
            (
                "volunteer_relays_listed_total",
                "counter",
                "Volunteer relays listed (reachable and admitted).",
                self.listed_total.load(Ordering::Relaxed),
            ),
            (
                "volunteer_relays_refused_total",
                "counter",
                "Volunteer relays refused (token, reachability, pool full).",
                self.refused_total.load(Ordering::Relaxed),
            ),
            (
                "volunteer_relayed_bytes_total",
                "counter",
                "Bytes volunteer relays reported relaying.",
                self.relayed_bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP punchdrop_{name} {help}\n# TYPE punchdrop_{name} {kind}\npunchdrop_{name} {v}"
            );
        }
        out
    }
}

/// `GET /relay`: a volunteer's WebSocket.
pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let client = state
        .admission
        .client_ip(peer.ip(), &headers)
        .to_canonical();
    let slot = match state.admission.admit(client) {
        Ok(slot) => slot,
        Err(why) => {
            state.metrics.refused(why);
            return (axum::http::StatusCode::TOO_MANY_REQUESTS, why.explain()).into_response();
        }
    };
    let tracked = state.connections.token();
    ws.max_message_size(protocol::signal::MAX_SIGNAL_MESSAGE)
        .max_frame_size(protocol::signal::MAX_SIGNAL_MESSAGE)
        .read_buffer_size(4 << 10)
        .write_buffer_size(4 << 10)
        .on_upgrade(move |socket| async move {
            volunteer(socket, client, &state).await;
            drop(slot);
            drop(tracked);
        })
}

/// One volunteer's conversation, from offer to leaving the pool.
async fn volunteer(mut socket: WebSocket, client: IpAddr, state: &AppState) {
    let peer = redact_ip(client);
    let pool = &state.volunteers;
    let welcomed = tokio::select! {
        w = welcome(&mut socket, client, state) => w,
        () = state.shutdown.cancelled() => Err(RelayRefusal::ShuttingDown),
    };
    let id = match welcomed {
        Ok(id) => id,
        Err(code) => {
            pool.refused_total.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, ?code, "volunteer relay refused");
            let _ = send(&mut socket, &PoolMessage::refused(code)).await;
            return;
        }
    };
    let code = serve(&mut socket, &id, state).await;
    pool.unlist(&id);
    if let Some(c) = &state.cluster
        && let Err(e) = c.release_relay(&id).await
    {
        // Its record expires with its reports.
        tracing::debug!(error = %e, "could not release a relay's record");
    }
    tracing::info!(%peer, ?code, "volunteer relay left the pool");
    if let Some(code) = code {
        let _ = send(&mut socket, &PoolMessage::refused(code)).await;
    }
    let _ = socket.close().await;
}

/// Offer → welcome → ready → probe → listed. The relay's id, once listed.
async fn welcome(
    socket: &mut WebSocket,
    client: IpAddr,
    state: &AppState,
) -> Result<String, RelayRefusal> {
    let pool = &state.volunteers;
    if state.draining.is_cancelled() {
        return Err(RelayRefusal::ShuttingDown);
    }
    if !pool.settings.allow_private && !crate::turn::is_public(client) {
        // Peers on the internet could not reach it.
        return Err(RelayRefusal::Unreachable);
    }
    let master = match (pool.settings.admit, &state.ice.secret) {
        (Admit::Off, _) | (_, None) => return Err(RelayRefusal::NotAccepted),
        (_, Some(secret)) => secret,
    };
    let Some(VolunteerMessage::Offer { version, token }) =
        receive(socket, state.first_message_within).await?
    else {
        return Err(RelayRefusal::Malformed);
    };
    if version != RELAY_VERSION {
        return Err(RelayRefusal::UnsupportedVersion);
    }
    if pool.settings.admit == Admit::Token {
        let token = token.ok_or(RelayRefusal::BadToken)?;
        master
            .check_relay_token(&token, SystemTime::now())
            .map_err(|e| match e {
                crate::credentials::RelayTokenError::Bad => RelayRefusal::BadToken,
                crate::credentials::RelayTokenError::Expired => RelayRefusal::ExpiredToken,
            })?;
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let secret = master.for_relay(&id);
    let hello = PoolMessage::Welcome {
        id: id.clone(),
        secret: base64::engine::general_purpose::STANDARD.encode(secret.as_bytes()),
        public_ip: client.to_string(),
    };
    send(socket, &hello)
        .await
        .map_err(|_| RelayRefusal::Malformed)?;
    let Some(VolunteerMessage::Ready { udp_port, tcp_port }) =
        receive(socket, pool.settings.ready_within).await?
    else {
        return Err(RelayRefusal::Malformed);
    };
    // TURN listens on one port for UDP and TCP; another TCP port could aim peers at any
    // service of that address.
    if udp_port == 0 || tcp_port.is_some_and(|p| p != udp_port) {
        return Err(RelayRefusal::Malformed);
    }
    let udp = SocketAddr::new(client, udp_port);
    if !probe(udp).await {
        return Err(RelayRefusal::Unreachable);
    }
    if tcp_port.is_some() && !probe_tcp(udp).await {
        return Err(RelayRefusal::Unreachable);
    }
    let mut urls = vec![format!("turn:{udp}?transport=udp")];
    if let Some(port) = tcp_port {
        urls.push(format!(
            "turn:{}?transport=tcp",
            SocketAddr::new(client, port)
        ));
    }
    let relay = Relay {
        urls,
        secret,
        volunteer: true,
    };
    pool.list(&id, relay, client, Instant::now())?;
    if send(socket, &PoolMessage::Listed).await.is_err() {
        pool.unlist(&id);
        return Err(RelayRefusal::Malformed);
    }
    share(state, &id, 0, 0).await;
    tracing::info!(peer = %redact_ip(client), "volunteer relay listed");
    Ok(id)
}

/// A listed relay's reports, until it leaves: `Some(code)` when the server sends it away.
async fn serve(socket: &mut WebSocket, id: &str, state: &AppState) -> Option<RelayRefusal> {
    let pool = &state.volunteers;
    let mut check = tokio::time::interval(Duration::from_secs(LOAD_EVERY_SECS));
    check.tick().await;
    let mut messages = 0u32;
    loop {
        tokio::select! {
            () = state.draining.cancelled() => return Some(RelayRefusal::ShuttingDown),
            () = state.shutdown.cancelled() => return Some(RelayRefusal::ShuttingDown),
            _ = check.tick() => {
                messages = 0;
                if !pool.is_fresh(id, Instant::now()) {
                    return Some(RelayRefusal::Silent);
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return None;
                }
            }
            msg = socket.next() => match msg {
                _ if messages > MAX_MESSAGES_PER_PERIOD => return Some(RelayRefusal::Malformed),
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(VolunteerMessage::Load { allocations, relayed_bytes }) => {
                        pool.report(id, allocations, relayed_bytes, Instant::now());
                        share(state, id, allocations, relayed_bytes).await;
                    }
                    _ => return Some(RelayRefusal::Malformed),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Binary(_))) => return Some(RelayRefusal::Malformed),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            },
        }
        messages += 1;
    }
}

/// With other nodes: record relay `id`, listed here, with its load for them.
async fn share(state: &AppState, id: &str, allocations: u64, relayed: u64) {
    let Some(c) = &state.cluster else { return };
    let Some(urls) = state.volunteers.urls(id) else {
        return;
    };
    let relay = crate::cluster::SharedRelay {
        id: id.to_owned(),
        node: c.node().to_owned(),
        urls,
        allocations,
        relayed,
    };
    if let Err(e) = c
        .record_relay(&relay, Duration::from_secs(LOAD_STALE_SECS))
        .await
    {
        tracing::debug!(error = %e, "could not record a relay for the other nodes");
    }
}

async fn receive(
    socket: &mut WebSocket,
    within: Duration,
) -> Result<Option<VolunteerMessage>, RelayRefusal> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| RelayRefusal::Silent)?;
        match msg {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .map(Some)
                    .map_err(|_| RelayRefusal::Malformed);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => return Err(RelayRefusal::Malformed),
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Ok(None),
        }
    }
}

async fn send(socket: &mut WebSocket, msg: &PoolMessage) -> Result<(), axum::Error> {
    socket.send(Message::Text(msg.to_json().into())).await
}

/// Whether a STUN binding request to `addr` is answered: the relay is reachable from here,
/// which for a public server means from the internet.
pub async fn probe(addr: SocketAddr) -> bool {
    use stun::agent::TransactionId;
    use stun::message::{BINDING_REQUEST, Message as Stun};
    let unspecified: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(unspecified).await else {
        return false;
    };
    let mut request = Stun::new();
    if request
        .build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 1500];
    for _ in 0..PROBE_TRIES {
        if sock.send_to(&request.raw, addr).await.is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + PROBE_WAIT;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
        {
            let mut answer = Stun::new();
            answer.raw = buf[..n].to_vec();
            if from == addr
                && answer.decode().is_ok()
                && answer.transaction_id == request.transaction_id
            {
                return true;
            }
        }
    }
    false
}

/// Whether something accepts TCP at `addr` (TURN over TCP shares the UDP port).
async fn probe_tcp(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            PROBE_WAIT * PROBE_TRIES,
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(n: u8) -> Relay {
        Relay {
            urls: vec![format!("turn:198.18.0.{n}:3478?transport=udp")],
            secret: TurnSecret::new(vec![n]),
            volunteer: true,
        }
    }

    #[test]
    fn the_least_loaded_fresh_relays_are_picked() {
        let pool = Pool::new(VolunteerSettings::default());
        let t0 = Instant::now();
        for n in 1..=3 {
            let ip = IpAddr::from([198, 18, 0, n]);
            pool.list(&n.to_string(), relay(n), ip, t0).unwrap();
        }
        pool.report("1", 5, 0, t0);
        pool.report("2", 1, 100, t0);
        pool.report("3", 1, 10, t0);
        let urls = |v: Vec<Relay>| v.into_iter().map(|r| r.urls[0].clone()).collect::<Vec<_>>();
        assert_eq!(
            urls(pool.pick(2, t0)),
            [
                "turn:198.18.0.3:3478?transport=udp",
                "turn:198.18.0.2:3478?transport=udp"
            ]
        );
        // Only relay 1 reported lately: the others are stale and not handed out.
        let later = t0 + Duration::from_secs(LOAD_STALE_SECS);
        pool.report("1", 5, 0, later);
        assert_eq!(
            urls(pool.pick(2, later)),
            ["turn:198.18.0.1:3478?transport=udp"]
        );
        pool.unlist("1");
        assert!(pool.pick(2, later).is_empty());
    }

    #[test]
    fn a_full_pool_refuses_and_bytes_are_counted_once() {
        let pool = Pool::new(VolunteerSettings {
            max: 1,
            ..Default::default()
        });
        let t0 = Instant::now();
        let ip = IpAddr::from([198, 18, 0, 1]);
        pool.list("a", relay(1), ip, t0).unwrap();
        assert_eq!(
            pool.list("b", relay(2), ip, t0),
            Err(RelayRefusal::PoolFull)
        );
        pool.report("a", 1, 100, t0);
        pool.report("a", 1, 150, t0);
        // A report cannot make the counter wrap.
        pool.report("a", 1, u64::MAX, t0);
        pool.report("a", 1, 0, t0);
        pool.report("a", 1, 150, t0);
        let text = pool.render();
        let counted: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("punchdrop_volunteer_relayed_bytes_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(counted, 300 + MAX_BYTES_PER_REPORT);
        assert!(text.contains("punchdrop_volunteer_relays 1\n"));
    }

    #[test]
    fn one_address_lists_a_few_relays_at_most() {
        let pool = Pool::new(VolunteerSettings::default());
        let t0 = Instant::now();
        let ip = IpAddr::from([198, 18, 0, 9]);
        for n in 0..PER_ADDRESS {
            pool.list(&n.to_string(), relay(n as u8), ip, t0).unwrap();
        }
        assert_eq!(
            pool.list("more", relay(99), ip, t0),
            Err(RelayRefusal::PoolFull)
        );
        let other = IpAddr::from([198, 18, 0, 10]);
        pool.list("other", relay(100), other, t0).unwrap();
    }

    #[tokio::test]
    async fn the_probe_needs_a_stun_answer() {
        // Nothing listens: no answer.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert!(!probe(silent.local_addr().unwrap()).await);
    }
}
