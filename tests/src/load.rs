//! The signalling server (with its bundled TURN) under many clients and under abuse, on
//! loopback: `cargo xtask load` prints the tables, `tests/load.rs` checks the bounds.
//!
//! Phases, against one release `signalling` started for the run:
//!
//! 1. **Idle peers**: N WebSockets, each from its own `127.1.x.y` address, each creating a
//!    room and then waiting, as a sender does until its receiver comes. Reports rooms per
//!    second and the server's RSS per idle peer (RSS with them, less RSS before, over N).
//! 2. **Live pairs**: M creator/joiner pairs (`127.2.x.y`) meet and bounce sealed messages
//!    through the server; reports the round trip (two relay hops) p50/p99 and the server's
//!    CPU while they run. The idle peers stay connected.
//! 3. **Abuse**: one attacker address per scenario (`127.3.x.1`) floods creates, number sweeps,
//!    connections, half-sent requests, and TURN allocations, each for a few seconds, while
//!    honest clients (`127.4.x.y`) meet, exchange sealed messages and (for TURN) allocate.
//!    Reports what the attacker got and whether every honest client was served.
//!
//! With `redis`, a Redis of the run's own and a second node share rooms: the idle peers'
//! rooms are recorded in Redis as they are made, and phase 2 runs again with each joiner on
//! the second node (`127.5.x.y`), its signalling crossing between the nodes.
//!
//! Bounds: every count is a flag, every wait has a timeout, the whole run has a deadline
//! (`--seconds`), and the server is killed at the end whatever happened. Only loopback is
//! used. An IPv6 /64 is one client to every limit (unit-tested in `signalling`); loopback has
//! one IPv6 address, so the floods here come from one IPv4 address.

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use protocol::signal::{ClientMessage, RoomRef, SIGNAL_VERSION, ServerMessage};
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The TLS client settings of a `tls` run (trusting the run's own CA), for every WebSocket
/// the run opens. Set once per process: a process runs TLS or not.
static CLIENT_TLS: std::sync::OnceLock<Option<Arc<rustls::ClientConfig>>> =
    std::sync::OnceLock::new();

/// Upper bound on any one wait.
const WAIT: Duration = Duration::from_secs(10);
/// How long each abuse scenario floods.
const FLOOD: Duration = Duration::from_secs(5);
/// Honest meetings during each flood.
const HONEST: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct Args {
    /// Idle peers (each a WebSocket that created a room), from as many addresses.
    pub idle: usize,
    /// Pairs relaying sealed messages meanwhile.
    pub pairs: usize,
    /// Sealed round trips per pair.
    pub round_trips: usize,
    /// Run the abuse scenarios.
    pub abuse: bool,
    /// Deadline for the whole run.
    pub deadline: Duration,
    /// The server speaks https and wss (a certificate of a CA of the run's own); every peer
    /// connects over TLS. The abuse scenarios speak plain HTTP, so they need `tls` off.
    pub tls: bool,
    /// Two nodes sharing rooms through a Redis of the run's own (Debian's `redis-server`):
    /// the idle peers' rooms are recorded there, and the pairs are measured on one node and
    /// across the two.
    pub redis: bool,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub idle: usize,
    pub pairs: usize,
    pub rooms_per_sec: f64,
    pub base_rss_kib: u64,
    pub idle_rss_kib: u64,
    /// Sealed round trips (two relay hops), sorted.
    pub round_trips: Vec<Duration>,
    /// With `redis`: the same between a creator on one node and a joiner on the other.
    pub cross_round_trips: Vec<Duration>,
    /// Server CPU while the pairs ran, in cores.
    pub cpu: f64,
    pub abuse: Vec<AbuseRow>,
    /// Every peer came over TLS.
    pub tls: bool,
    /// Two nodes shared rooms through Redis.
    pub redis: bool,
}

/// One abuse scenario's outcome.
#[derive(Debug, Clone)]
pub struct AbuseRow {
    pub scenario: &'static str,
    pub sent: String,
    pub got: String,
    pub honest_ok: usize,
    pub honest_total: usize,
    pub honest_p99_ms: f64,
}

impl Report {
    /// Server RSS per idle peer, KiB.
    pub fn kib_per_idle_peer(&self) -> f64 {
        self.idle_rss_kib.saturating_sub(self.base_rss_kib) as f64 / self.idle.max(1) as f64
    }

    fn round_trip_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.round_trips, p)
    }

    /// The tables, in Markdown.
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Load ({} idle peers, {} live pairs, {}{})\n",
            self.idle,
            self.pairs,
            if self.tls { "wss" } else { "ws" },
            if self.redis {
                ", two nodes sharing rooms through Redis"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "| measure | value |\n|---|---|");
        let _ = writeln!(
            out,
            "| rooms created per second (idle peers arriving, 256 at a time) | {:.0} |",
            self.rooms_per_sec
        );
        let mib = |k: u64| k as f64 / 1024.0;
        let _ = writeln!(
            out,
            "| server RSS before | {:.1} MiB |",
            mib(self.base_rss_kib)
        );
        let _ = writeln!(
            out,
            "| server RSS with {} idle peers | {:.1} MiB |",
            self.idle,
            mib(self.idle_rss_kib)
        );
        let _ = writeln!(
            out,
            "| RSS per idle peer | {:.1} KiB |",
            self.kib_per_idle_peer()
        );
        let _ = writeln!(
            out,
            "| sealed round trip (two relay hops), p50 / p99 over {} | {:.2} / {:.2} ms |",
            self.round_trips.len(),
            self.round_trip_ms(0.5),
            self.round_trip_ms(0.99)
        );
        if !self.cross_round_trips.is_empty() {
            let _ = writeln!(
                out,
                "| the same, creator and joiner on different nodes, p50 / p99 over {} | {:.2} / {:.2} ms |",
                self.cross_round_trips.len(),
                percentile_ms(&self.cross_round_trips, 0.5),
                percentile_ms(&self.cross_round_trips, 0.99)
            );
        }
        let _ = writeln!(
            out,
            "| server CPU while the pairs ran | {:.0}% of a core |",
            self.cpu * 100.0
        );
        if !self.abuse.is_empty() {
            let _ = writeln!(
                out,
                "\n### Abuse (one attacker address each, {} s; honest clients meet meanwhile)\n",
                FLOOD.as_secs()
            );
            let _ = writeln!(
                out,
                "| scenario | attacker sent | attacker got | honest clients served |"
            );
            let _ = writeln!(out, "|---|---|---|---|");
            for r in &self.abuse {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {}/{} (round trip p99 {:.1} ms) |",
                    r.scenario, r.sent, r.got, r.honest_ok, r.honest_total, r.honest_p99_ms
                );
            }
        }
        out
    }
}

/// The `p` quantile of sorted durations, in ms.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let n = sorted.len();
    sorted
        .get(((n.max(1) - 1) as f64 * p) as usize)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// Start the release `signalling` in `bin_dir` and run the phases.
pub fn run(bin_dir: &Path, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.idle <= 12_000,
        "at most 12000 idle peers (descriptor limits)"
    );
    anyhow::ensure!(args.pairs <= 1_000, "at most 1000 pairs");
    let fds = net::raise_fd_limit().unwrap_or(0);
    anyhow::ensure!(
        fds as usize > args.idle + 2 * args.pairs + 2_000,
        "this process may open {fds} descriptors: too few for {} idle peers",
        args.idle
    );
    anyhow::ensure!(
        !(args.tls && args.abuse),
        "the abuse scenarios speak plain HTTP: run them without TLS"
    );
    let ca = crate::tls::TestCa::new();
    let client_tls = args.tls.then(|| ca.client());
    anyhow::ensure!(
        CLIENT_TLS.get_or_init(|| client_tls.clone()).is_some() == args.tls,
        "one process runs either TLS or plain load runs"
    );
    let redis = match args.redis {
        true => Some(crate::redis::Redis::start()?),
        false => None,
    };
    let redis_url = redis.as_ref().map(crate::redis::Redis::url);
    let ca = args.tls.then_some(&ca);
    let mut server = Server::start(bin_dir, args, ca, redis_url.as_deref())?;
    let mut other = match &redis_url {
        Some(url) => Some(Server::start(bin_dir, args, ca, Some(url))?),
        None => None,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        tokio::time::timeout(args.deadline, phases(&server, other.as_ref(), args))
            .await
            .with_context(|| format!("the load run passed its deadline of {:?}", args.deadline))?
    });
    server.stop();
    if let Some(o) = &mut other {
        o.stop();
    }
    result
}

/// The phases against `server`; with `other` (a second node), the pairs across the two too.
async fn phases(server: &Server, other: Option<&Server>, args: &Args) -> anyhow::Result<Report> {
    let base_rss_kib = server.rss_kib()?;
    eprintln!("idle peers: {}…", args.idle);
    let (idle, rooms_per_sec) = idle_peers(server.addr, args.idle).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_kib = server.rss_kib()?;

    eprintln!("live pairs: {}…", args.pairs);
    let cpu0 = server.cpu_secs()?;
    let t0 = Instant::now();
    let mut round_trips =
        live_pairs(server.addr, server.addr, args.pairs, args.round_trips).await?;
    let cpu = (server.cpu_secs()? - cpu0) / t0.elapsed().as_secs_f64();
    round_trips.sort();
    let mut cross_round_trips = match other {
        Some(other) => {
            eprintln!("live pairs across nodes: {}…", args.pairs);
            live_pairs(server.addr, other.addr, args.pairs, args.round_trips).await?
        }
        None => Vec::new(),
    };
    cross_round_trips.sort();

    let mut rows = Vec::new();
    if args.abuse {
        for scenario in Scenario::ALL {
            eprintln!("abuse: {}…", scenario.name());
            rows.push(abuse(server, scenario).await?);
        }
    }
    drop(idle);
    Ok(Report {
        idle: args.idle,
        pairs: args.pairs,
        rooms_per_sec,
        base_rss_kib,
        idle_rss_kib,
        round_trips,
        cross_round_trips,
        cpu,
        abuse: rows,
        tls: args.tls,
        redis: args.redis,
    })
}

/// The release server, started for the run.
struct Server {
    child: Child,
    addr: SocketAddr,
    turn: SocketAddr,
}

impl Server {
    fn start(
        bin: &Path,
        args: &Args,
        ca: Option<&crate::tls::TestCa>,
        redis: Option<&str>,
    ) -> anyhow::Result<Self> {
        let tls: Vec<String> = match ca {
            Some(ca) => {
                let (cert, key, _) = ca.issue("server");
                vec![
                    "--tls-cert".into(),
                    cert.display().to_string(),
                    "--tls-key".into(),
                    key.display().to_string(),
                    "--no-turn-tls".into(),
                ]
            }
            None => Vec::new(),
        };
        let rooms = (args.idle + 2 * args.pairs + 10_000).to_string();
        // TURN on a port the server picks: a port probed here and handed over could be taken
        // in between (the other load test allocates relay ports by the hundred).
        let mut child = Command::new(bin.join("signalling"))
            .args(["--listen", "127.0.0.1:0", "--no-admin"])
            .args(["--turn-listen", "127.0.0.1:0", "--turn-relay-ports", "0-0"])
            // The peers are on loopback: let the relay reach them.
            .arg("--turn-allow-private-peers")
            .args(["--max-rooms", &rooms])
            .args(&tls)
            .args(redis.map(|url| ["--redis", url]).into_iter().flatten())
            .env("PUNCHDROP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start signalling")?;
        let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let Some(addr) = line
            .trim()
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
        else {
            let _ = child.kill();
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
            bail!("unexpected ready line {line:?}; the server said:\n{said}");
        };
        let turn = turn_udp_addr(&mut stderr)?;
        // The rest of the server's log goes where the test's own output goes.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        Ok(Self { child, addr, turn })
    }

    fn proc(&self, file: &str) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(format!(
            "/proc/{}/{file}",
            self.child.id()
        ))?)
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        self.proc("status")?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// User + system CPU seconds so far.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        let stat = self.proc("stat")?;
        // Fields after the command (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(ticks as f64 / 100.0)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server's log up to the line saying where its TURN server listens (passing on
/// what comes before it) and returns the UDP address.
fn turn_udp_addr(stderr: &mut impl std::io::BufRead) -> anyhow::Result<SocketAddr> {
    let mut said = String::new();
    for line in stderr.lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("bundled TURN/STUN on udp ") {
            let udp = rest.split_whitespace().next().unwrap_or_default();
            return udp
                .parse()
                .with_context(|| format!("unexpected TURN line {line:?}"));
        }
        eprintln!("{line}");
        said.push_str(&line);
        said.push('\n');
    }
    bail!("the server never said where TURN listens; it said:\n{said}")
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `127.<net>.x.y` for the `i`th client of a group: each its own address.
fn client_ip(net: u8, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        net,
        (i / 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

async fn tcp_from(ip: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    tokio::time::timeout(WAIT, socket.connect(server))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// A WebSocket from `ip`, with small buffers (the client side of thousands of peers).
async fn ws_from(ip: IpAddr, server: SocketAddr) -> anyhow::Result<Ws> {
    let tcp = tcp_from(ip, server).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);
    let (url, connector) = match CLIENT_TLS.get().cloned().flatten() {
        Some(tls) => (
            format!("wss://localhost:{}/ws", server.port()),
            Connector::Rustls(tls),
        ),
        None => (format!("ws://{server}/ws"), Connector::Plain),
    };
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async_tls_with_config(url, tcp, Some(config), Some(connector)),
    )
    .await
    .context("WebSocket handshake timed out")??;
    Ok(ws)
}

async fn send(ws: &mut Ws, msg: &ClientMessage) -> anyhow::Result<()> {
    Ok(ws.send(Message::text(msg.to_json())).await?)
}

/// The next server message but `ice_servers`.
async fn recv(ws: &mut Ws) -> anyhow::Result<ServerMessage> {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no answer from the server")?
            .context("connection closed")??;
        if let Message::Text(t) = frame {
            let msg: ServerMessage = serde_json::from_str(t.as_str())?;
            if !matches!(msg, ServerMessage::IceServers { .. }) {
                return Ok(msg);
            }
        }
    }
}

fn create(code: bool) -> ClientMessage {
    ClientMessage::Create {
        version: SIGNAL_VERSION,
        code,
        hold: false,
    }
}

fn join(room: RoomRef) -> ClientMessage {
    ClientMessage::Join {
        version: SIGNAL_VERSION,
        room,
        reclaim: None,
    }
}

/// A room's id and number, from a `created`.
async fn created(ws: &mut Ws) -> anyhow::Result<(String, Option<u32>)> {
    match recv(ws).await? {
        ServerMessage::Created { room, number, .. } => Ok((room, number)),
        other => bail!("expected created, got {other:?}"),
    }
}

/// Peers waiting in their rooms, each reading its socket as a real client does (so it answers
/// the server's pings and stays); they go when this is dropped.
struct IdlePeers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for IdlePeers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn idle_peers(server: SocketAddr, n: usize) -> anyhow::Result<(IdlePeers, f64)> {
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let mut ws = ws_from(client_ip(1, i), server).await?;
                send(&mut ws, &create(false)).await?;
                created(&mut ws).await?;
                anyhow::Ok(ws)
            })
        })
        .collect();
    let mut peers = Vec::with_capacity(n);
    for t in tasks {
        let mut ws = t.await?.context("an idle peer could not create its room")?;
        peers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    Ok((IdlePeers(peers), n as f64 / started.elapsed().as_secs_f64()))
}

/// Creator (through `server`) and joiner (through `through`) of one room, both in it.
async fn meet(
    server: SocketAddr,
    through: SocketAddr,
    a: IpAddr,
    b: IpAddr,
) -> anyhow::Result<(Ws, Ws)> {
    let mut creator = ws_from(a, server).await?;
    send(&mut creator, &create(false)).await?;
    let (room, _) = created(&mut creator).await?;
    let mut joiner = ws_from(b, through).await?;
    send(&mut joiner, &join(RoomRef::Id(room))).await?;
    match recv(&mut joiner).await? {
        ServerMessage::Joined { .. } => {}
        other => bail!("expected joined, got {other:?}"),
    }
    match recv(&mut creator).await? {
        ServerMessage::PeerJoined => {}
        other => bail!("expected peer_joined, got {other:?}"),
    }
    Ok((creator, joiner))
}

/// `n` sealed round trips creator → joiner → creator; their times.
async fn bounce(creator: &mut Ws, joiner: &mut Ws, n: usize) -> anyhow::Result<Vec<Duration>> {
    // About the size of a sealed ICE candidate.
    let data = "A".repeat(300);
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        send(creator, &ClientMessage::Sealed { data: data.clone() }).await?;
        let ServerMessage::Sealed { data: got } = recv(joiner).await? else {
            bail!("expected a sealed message");
        };
        send(joiner, &ClientMessage::Sealed { data: got }).await?;
        let ServerMessage::Sealed { .. } = recv(creator).await? else {
            bail!("expected a sealed message back");
        };
        rtts.push(t.elapsed());
    }
    Ok(rtts)
}

/// `pairs` pairs, creators through `server` and joiners through `through`, each bouncing `n`
/// sealed round trips; all their times.
async fn live_pairs(
    server: SocketAddr,
    through: SocketAddr,
    pairs: usize,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    // Pairs of a second run come from other addresses (the room limit is per address).
    let net = if server == through { 2 } else { 5 };
    let tasks: Vec<_> = (0..pairs)
        .map(|i| {
            tokio::spawn(async move {
                let (mut a, mut b) = meet(
                    server,
                    through,
                    client_ip(net, 2 * i),
                    client_ip(net, 2 * i + 1),
                )
                .await?;
                bounce(&mut a, &mut b, n).await
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?.context("a live pair failed")?);
    }
    Ok(all)
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Creates,
    NumberSweep,
    Connections,
    SlowHeaders,
    TurnAllocations,
}

impl Scenario {
    const ALL: [Self; 5] = [
        Self::Creates,
        Self::NumberSweep,
        Self::Connections,
        Self::SlowHeaders,
        Self::TurnAllocations,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Creates => "create flood",
            Self::NumberSweep => "room-number sweep",
            Self::Connections => "connection flood",
            Self::SlowHeaders => "half-sent requests (slowloris)",
            Self::TurnAllocations => "TURN allocation flood",
        }
    }
}

/// The attacker of a scenario: one address per scenario, so no scenario starts with limits
/// an earlier one spent.
fn attacker(scenario: Scenario) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 3, scenario as u8, 1))
}

/// Counts of what the attacker tried and what it got.
#[derive(Default)]
struct Tally {
    tried: AtomicU64,
    won: AtomicU64,
}

impl Tally {
    fn tried(&self) -> u64 {
        self.tried.load(Ordering::Relaxed)
    }
    fn won(&self) -> u64 {
        self.won.load(Ordering::Relaxed)
    }
}

async fn abuse(server: &Server, scenario: Scenario) -> anyhow::Result<AbuseRow> {
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + FLOOD;
    let attack = {
        let (tally, addr, turn) = (tally.clone(), server.addr, server.turn);
        tokio::spawn(async move { attack(scenario, addr, turn, &tally, until).await })
    };
    // Let the flood build up before the honest clients come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ok = 0;
    let mut rtts = Vec::new();
    for i in 0..HONEST {
        let (a, b) = (client_ip(4, 2 * i), client_ip(4, 2 * i + 1));
        match honest(server, scenario, a, b).await {
            Ok(mut r) => {
                ok += 1;
                rtts.append(&mut r);
            }
            Err(e) => eprintln!("  honest client {i} not served: {e:#}"),
        }
        tokio::time::sleep(FLOOD / (2 * HONEST as u32)).await;
    }
    let held = attack.await??;
    rtts.sort();
    let p99 = rtts
        .get(((rtts.len().max(1) - 1) as f64 * 0.99) as usize)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let (tried, won) = (tally.tried(), tally.won());
    let (sent, got) = match scenario {
        Scenario::Creates => (
            format!("{tried} creates"),
            format!("{won} rooms, {} refused", tried - won),
        ),
        Scenario::NumberSweep => (
            format!("{tried} joins by number"),
            format!("{won} answered, {} refused by the rate limit", tried - won),
        ),
        Scenario::Connections => (
            format!("{tried} WebSockets"),
            format!("{won} open, {} refused", tried - won),
        ),
        Scenario::SlowHeaders => (
            format!("{tried} half-sent requests"),
            format!("{won} accepted, {held} still open after the header timeout"),
        ),
        Scenario::TurnAllocations => (
            format!("{tried} allocations"),
            format!("{won} granted, {} refused", tried - won),
        ),
    };
    Ok(AbuseRow {
        scenario: scenario.name(),
        sent,
        got,
        honest_ok: ok,
        honest_total: HONEST,
        honest_p99_ms: p99,
    })
}

/// An honest meeting: two peers meet (by code when the attacker sweeps numbers), exchange
/// ten sealed round trips, and (when the attacker floods TURN) each allocate a relay.
async fn honest(
    server: &Server,
    scenario: Scenario,
    a: IpAddr,
    b: IpAddr,
) -> anyhow::Result<Vec<Duration>> {
    let (mut creator, mut joiner) = match scenario {
        Scenario::NumberSweep => meet_by_code(server.addr, a, b).await?,
        _ => meet(server.addr, server.addr, a, b).await?,
    };
    let rtts = bounce(&mut creator, &mut joiner, 10).await?;
    if let Scenario::TurnAllocations = scenario {
        for ip in [a, b] {
            let creds = credential(server.addr, ip).await?;
            let (client, _relay) = allocate(ip, server.turn, creds).await?;
            client.close().await?;
        }
    }
    Ok(rtts)
}

async fn meet_by_code(server: SocketAddr, a: IpAddr, b: IpAddr) -> anyhow::Result<(Ws, Ws)> {
    let mut creator = ws_from(a, server).await?;
    send(&mut creator, &create(true)).await?;
    let (_, number) = created(&mut creator).await?;
    let number = number.context("no number for a room that shows a code")?;
    let mut joiner = ws_from(b, server).await?;
    send(&mut joiner, &join(RoomRef::Number(number))).await?;
    match recv(&mut joiner).await? {
        ServerMessage::Joined { .. } => {}
        other => bail!("expected joined, got {other:?}"),
    }
    let _ = recv(&mut creator).await?;
    Ok((creator, joiner))
}

/// A TURN credential, got the way peers get one: a room, joined (here by the same client
/// from a second connection).
async fn credential(server: SocketAddr, ip: IpAddr) -> anyhow::Result<(String, String)> {
    let mut creator = ws_from(ip, server).await?;
    send(&mut creator, &create(false)).await?;
    let (room, _) = created(&mut creator).await?;
    let mut joiner = ws_from(ip, server).await?;
    send(&mut joiner, &join(RoomRef::Id(room))).await?;
    loop {
        let frame = tokio::time::timeout(WAIT, joiner.next())
            .await
            .context("no ice_servers")?
            .context("closed")??;
        if let Message::Text(t) = frame
            && let ServerMessage::IceServers { servers, .. } = serde_json::from_str(t.as_str())?
        {
            let turn = servers
                .into_iter()
                .find(|s| s.username.is_some())
                .context("no TURN server offered")?;
            return Ok((
                turn.username.unwrap_or_default(),
                turn.credential.unwrap_or_default(),
            ));
        }
    }
}

async fn allocate(
    ip: IpAddr,
    turn: SocketAddr,
    (username, password): (String, String),
) -> anyhow::Result<(turn::client::Client, impl webrtc_util::Conn)> {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: turn.to_string(),
        turn_serv_addr: turn.to_string(),
        username,
        password,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    })
    .await?;
    client.listen().await?;
    let relay = tokio::time::timeout(WAIT, client.allocate())
        .await
        .context("TURN allocate timed out")??;
    Ok((client, relay))
}

/// How many of these connections the server has not closed (nor answered).
async fn count_open(conns: &mut [TcpStream]) -> u64 {
    let mut open = 0;
    for tcp in conns {
        let mut b = [0u8; 256];
        if tokio::time::timeout(Duration::from_millis(2), tcp.read(&mut b))
            .await
            .is_err()
        {
            open += 1;
        }
    }
    open
}

/// The attacker's flood until `until`; for half-sent requests, how many of its connections
/// were still open after the header timeout.
async fn attack(
    scenario: Scenario,
    server: SocketAddr,
    turn: SocketAddr,
    tally: &Tally,
    until: Instant,
) -> anyhow::Result<u64> {
    let more = || Instant::now() < until;
    let me = attacker(scenario);
    match scenario {
        Scenario::Creates => {
            // One room per connection: connect, create, hang up, again.
            while more() {
                let Ok(mut ws) = ws_from(me, server).await else {
                    continue;
                };
                tally.tried.fetch_add(1, Ordering::Relaxed);
                send(&mut ws, &create(false)).await?;
                if let Ok(ServerMessage::Created { .. }) = recv(&mut ws).await {
                    tally.won.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Scenario::NumberSweep => {
            let mut ws = ws_from(me, server).await?;
            let mut n = 1;
            while more() {
                tally.tried.fetch_add(1, Ordering::Relaxed);
                send(&mut ws, &join(RoomRef::Number(n))).await?;
                match recv(&mut ws).await {
                    Ok(ServerMessage::Error {
                        code: protocol::signal::ErrorCode::RateLimited,
                        ..
                    }) => {}
                    Ok(ServerMessage::Joined { .. }) => {
                        // A hit: that connection is spent; take another.
                        tally.won.fetch_add(1, Ordering::Relaxed);
                        ws = ws_from(me, server).await?;
                    }
                    Ok(_) => {
                        tally.won.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => ws = ws_from(me, server).await?,
                }
                n = n % 9_999 + 1;
            }
        }
        Scenario::Connections => {
            let mut open = Vec::new();
            while more() && tally.tried() < 2_000 {
                tally.tried.fetch_add(1, Ordering::Relaxed);
                if let Ok(ws) = ws_from(me, server).await {
                    tally.won.fetch_add(1, Ordering::Relaxed);
                    open.push(ws);
                }
            }
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        }
        Scenario::SlowHeaders => {
            let mut held = Vec::new();
            while more() && tally.tried() < 1_000 {
                tally.tried.fetch_add(1, Ordering::Relaxed);
                let Ok(mut tcp) = tcp_from(me, server).await else {
                    continue;
                };
                if tcp
                    .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .is_ok()
                {
                    held.push(tcp);
                }
            }
            // What the server kept (the rest it closed at accept), and, once the header
            // timeout (10 s) has passed, what is still open.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let accepted = count_open(&mut held).await;
            tally.won.store(accepted, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(11)).await;
            return Ok(count_open(&mut held).await);
        }
        Scenario::TurnAllocations => {
            let creds = credential(server, me).await?;
            let mut held = Vec::new();
            while more() && tally.tried() < 200 {
                tally.tried.fetch_add(1, Ordering::Relaxed);
                if let Ok(a) = allocate(me, turn, creds.clone()).await {
                    tally.won.fetch_add(1, Ordering::Relaxed);
                    held.push(a);
                }
            }
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
            for (client, _) in held {
                let _ = client.close().await;
            }
        }
    }
    Ok(0)
}
