//! `native-peer`: send and receive files with punchdrop from the command line.
//!
//! `send FILES…` creates a room and prints a link, a code and a QR code (or joins a receiver's
//! room with `--to`); `recv [LINK|CODE]` joins one, or creates a room for a sender when given
//! none (the NAS case); `inbox` keeps a link valid for drops at any time. Progress goes to a
//! terminal as bars, or to programs as JSON lines with `--json`.

mod device;
mod files;
mod inbox;
mod netwatch;
mod output;
mod portmap;
mod relay;
mod rendezvous;
mod rtc;
mod transfer;
mod tune;
mod turn_tcp;
mod wss;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use protocol::invite::Invitation;
use protocol::rendezvous::{self as rv, Rendezvous, Want};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::Duration;

use output::Output;
use rendezvous::Clock;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "punchdrop: send files straight to another device, through NATs"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Where rooms are made when neither a link nor `--server` says.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

impl Common {
    /// The signalling server rooms are made on (and inboxes register with).
    fn server(&self) -> &str {
        self.server_url.as_deref().unwrap_or(DEFAULT_SERVER)
    }
}

#[derive(Args, Debug)]
struct Common {
    /// Signalling server [default: http://127.0.0.1:8080]. A link carries its own; given,
    /// this wins over it (another node of the same deployment, a proxy, a test).
    #[arg(
        long = "server",
        global = true,
        env = "PUNCHDROP_SERVER",
        value_name = "URL"
    )]
    server_url: Option<String>,
    /// PEM file of extra CA certificates to trust for a `https://` server (one a private CA
    /// signed); Mozilla's roots are always trusted.
    #[arg(long, global = true, env = "PUNCHDROP_CA_FILE", value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Print newline-delimited JSON events on stdout instead of progress bars.
    #[arg(long, global = true)]
    json: bool,
    /// Local address(es) to gather candidates on [default: all interfaces, or loopback when
    /// the server is on loopback].
    #[arg(long, global = true, env = "PUNCHDROP_BIND", value_delimiter = ',')]
    bind: Vec<SocketAddr>,
    /// Bind ICE to this UDP port (on every interface): for a port forwarded by hand on the
    /// router, together with --public-addr.
    #[arg(long, global = true, env = "PUNCHDROP_PORT")]
    port: Option<u16>,
    /// The router's public IP: advertise PUBLIC_ADDR:PORT as a candidate (needs --port).
    #[arg(long, global = true, env = "PUNCHDROP_PUBLIC_ADDR", requires = "port")]
    public_addr: Option<IpAddr>,
    /// Do not ask the router for a port mapping (UPnP IGD).
    #[arg(long, global = true, env = "PUNCHDROP_NO_PORTMAP")]
    no_portmap: bool,
    /// Share a link only, without a code: a room with no code has no number anyone could
    /// guess to take it (the link alone joins it).
    #[arg(long, global = true)]
    no_code: bool,
    /// Use only relayed (TURN) candidates: for diagnostics and tests.
    #[arg(long, global = true)]
    relay_only: bool,
    /// Use only TURN servers reached over this transport.
    #[arg(long, global = true, value_enum)]
    relay_transport: Option<rtc::RelayTransport>,
    /// Seconds to wait for a direct or relayed connection once both peers are in the room.
    #[arg(long, global = true, default_value_t = 30)]
    connect_timeout: u64,
    /// Seconds to get the other peer back when the connection is lost mid-transfer: the side
    /// that made the room waits in it (for the other's program to come back, restarted with
    /// the same link or code), the side that joined joins again, retrying while the server
    /// or the other peer cannot be reached. 0: give up at once.
    #[arg(
        long,
        global = true,
        env = "PUNCHDROP_RECONNECT_TIMEOUT",
        default_value_t = 300
    )]
    reconnect_timeout: u64,
    /// Payload bytes per data-channel message.
    #[arg(long, global = true, hide = true, env = "PUNCHDROP_CHUNK", default_value_t = protocol::transfer::DEFAULT_CHUNK)]
    chunk: usize,
    /// SCTP receive window in bytes.
    #[arg(long, global = true, hide = true, env = "PUNCHDROP_SCTP_WINDOW", default_value_t = 4 * 1024 * 1024)]
    sctp_window: u32,
    /// UDP socket buffer size in bytes.
    #[arg(long, global = true, hide = true, env = "PUNCHDROP_UDP_BUFFER", default_value_t = net::UDP_BUFFER)]
    udp_buffer: usize,
    /// Milliseconds between ICE connectivity checks.
    #[arg(
        long,
        global = true,
        hide = true,
        env = "PUNCHDROP_ICE_CHECK_MS",
        default_value_t = 50
    )]
    ice_check_ms: u64,
    /// Milliseconds this side's relay candidates are held back after its description, so
    /// direct pairs are tried first.
    #[arg(long, global = true, hide = true, env = "PUNCHDROP_RELAY_WAIT_MS")]
    relay_wait_ms: Option<u64>,
    /// Data-channel send buffer limit in bytes (back-pressure).
    #[arg(long, global = true, hide = true, env = "PUNCHDROP_SEND_BUFFER", default_value_t = 4 * 1024 * 1024)]
    send_buffer: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send files and folders.
    Send {
        /// Join a room a receiver created instead of creating one.
        #[arg(long, value_name = "LINK|CODE")]
        to: Option<String>,
        /// Files and folders to send.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Pair this device with the inbox (`--to INBOX_LINK`) with the code its owner gave
        /// (`native-peer inbox pair`).
        #[arg(long, value_name = "CODE")]
        pair: Option<String>,
        /// The name an inbox knows this device by, given with --pair [default: this host's
        /// name].
        #[arg(long, value_name = "NAME")]
        device_name: Option<String>,
        /// Offer the first file under this exact name, unchecked: tests use it to see that
        /// receivers refuse hostile names. Only in builds with the `test-hooks` feature.
        #[cfg(feature = "test-hooks")]
        #[arg(long, hide = true)]
        offer_name_unchecked: Option<String>,
    },
    /// Receive files into a folder.
    Recv {
        /// Folder to save into (created if missing).
        #[arg(long, short, default_value = ".")]
        dir: PathBuf,
        /// Decline offers larger than this many bytes.
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
        /// The link or code from the sender (`-` reads it from standard input, keeping it out
        /// of the shell's history); without one, create a room for a sender to join.
        invitation: Option<String>,
    },
    /// Run an inbox: an always-on receiver with a link that stays valid, which browsers
    /// and `native-peer send --to LINK` drop files into at any time.
    Inbox(inbox::InboxArgs),
    /// Volunteer this machine as a relay for a server's rooms: runs TURN on a reachable port
    /// (forwarded on the router, or mapped by UPnP) and registers it with the server.
    Relay(relay::RelayArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // webrtc-rs warns about routine events (early checks, DTLS server name); users
            // only need its errors unless they ask.
            tracing_subscriber::EnvFilter::try_from_env("PUNCHDROP_LOG").unwrap_or_else(|_| {
                "warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut out = Output::new(cli.common.json);
    if let Err(e) = wss::trust(cli.common.ca_file.as_deref()) {
        out.error(&e);
        return std::process::ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        // Ctrl-C (or SIGTERM, as a service manager stops an inbox) asks the current step to
        // stop: a transfer then tells the other side and cleans up its `.part`. A second
        // one exits at once.
        let (stop, interrupt) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if stop_asked().await {
                let _ = stop.send(true);
                if stop_asked().await {
                    std::process::exit(130);
                }
            }
        });
        run(cli, &mut out, interrupt).await
    });
    // webrtc tasks may linger; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            std::process::ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM arrived (false: signals cannot be watched).
async fn stop_asked() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return tokio::signal::ctrl_c().await.is_ok();
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            r = term.recv() => r.is_some(),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

/// Where ICE binds, and the fixed port (if any) a mapping or forwarded port points at.
fn ice_bind(c: &Common, server: &str) -> anyhow::Result<(Vec<SocketAddr>, Option<u16>)> {
    let mut bind = if c.bind.is_empty() {
        default_bind(server)
    } else {
        c.bind.clone()
    };
    if let Some(port) = c.port {
        if bind.iter().any(|a| a.port() != 0) {
            bail!("--port and a --bind with a port cannot be combined");
        }
        for a in &mut bind {
            a.set_port(port);
        }
        return Ok((bind, Some(port)));
    }
    if c.no_portmap || c.relay_only || bind.iter().all(|a| a.ip().is_loopback()) {
        return Ok((bind, None));
    }
    // A mapping must name the port ICE will bind before ICE exists (it runs alongside
    // signalling): take one free on every address now. Another program could take it in
    // between; ICE then fails to bind that address and says so.
    let port = free_port_on(&bind).context("cannot find a free UDP port for ICE")?;
    for a in &mut bind {
        a.set_port(port);
    }
    Ok((bind, Some(port)))
}

/// A UDP port free on each of `addrs` (the first's, tried on the others; a few tries).
fn free_port_on(addrs: &[SocketAddr]) -> std::io::Result<u16> {
    let mut last = None;
    for _ in 0..8 {
        let probe = std::net::UdpSocket::bind((addrs[0].ip(), 0))?;
        let port = probe.local_addr()?.port();
        let rest: Result<Vec<_>, _> = addrs[1..]
            .iter()
            .map(|a| std::net::UdpSocket::bind((a.ip(), port)))
            .collect();
        match rest {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried"))
}

fn net_options(
    c: &Common,
    bind: Vec<SocketAddr>,
    port: Option<u16>,
    portmap: &portmap::PortMapper,
) -> rtc::NetOptions {
    rtc::NetOptions {
        advertise: rtc::Advertise {
            forwarded: c
                .public_addr
                .zip(port)
                .map(|(ip, port)| SocketAddr::new(ip, port)),
            port,
            portmap: portmap.clone(),
        },
        bind,
        udp_buffer: c.udp_buffer,
        sctp_window: c.sctp_window,
        send_buffer: c.send_buffer,
        relay_only: c.relay_only,
        relay_transport: c.relay_transport,
        ice_check_interval: Duration::from_millis(c.ice_check_ms.max(1)),
    }
}

/// Peers that meet on a loopback server are on this machine: loopback host candidates are
/// what connects them (and all webrtc-rs gathers on a wildcard bind skips loopback).
/// Otherwise every interface of IPv4, and the IPv6 address this host sends from beyond its
/// link, if any: behind a home router IPv6 usually has no NAT, only a stateful firewall that
/// a simultaneous open passes, so that host candidate is often the best direct path there
/// is. One address, not all: a host keeps several (temporary ones rotate in, old ones stay
/// a while) and each would gather its own candidates and TURN allocation.
fn default_bind(server: &str) -> Vec<SocketAddr> {
    let loopback = url::Url::parse(server)
        .ok()
        .and_then(|u| {
            let host = u
                .host_str()?
                .trim_matches(|c| c == '[' || c == ']')
                .to_string();
            let port = u.port_or_known_default()?;
            (host.as_str(), port).to_socket_addrs().ok()?.next()
        })
        .is_some_and(|a| a.ip().is_loopback());
    if loopback {
        return vec![SocketAddr::from((IpAddr::from([127, 0, 0, 1]), 0))];
    }
    let mut bind = vec![SocketAddr::from((IpAddr::from([0, 0, 0, 0]), 0))];
    if let Some(ip) = ipv6_source() {
        bind.push(SocketAddr::from((ip, 0)));
    }
    bind
}

/// The IPv6 address (global, or unique-local behind a NAT66) this host sends from beyond its
/// link, if it has a route there. Asked of the kernel by connecting a UDP socket, which
/// picks a route and a source address and sends nothing. A concrete address, never `[::]`:
/// webrtc-rs binds a wildcard it cannot expand as it is, a dual-stack socket that would
/// take the IPv4 port of a mapped port too.
fn ipv6_source() -> Option<std::net::Ipv6Addr> {
    // Any global unicast address (2000::/3) will do: only the route is looked up.
    let beyond = SocketAddr::from((std::net::Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 1), 9));
    match portmap::local_ip_towards(beyond).ok()? {
        IpAddr::V6(ip) if !ip.is_loopback() && !ip.is_unicast_link_local() => Some(ip),
        _ => None,
    }
}

async fn run(cli: Cli, out: &mut Output, mut interrupt: transfer::Interrupt) -> anyhow::Result<()> {
    let c = &cli.common;
    if c.chunk == 0 || c.chunk > protocol::transfer::MAX_FRAME - protocol::transfer::DATA_HEADER_LEN
    {
        bail!(
            "--chunk must be between 1 and {}",
            protocol::transfer::MAX_FRAME - protocol::transfer::DATA_HEADER_LEN
        );
    }
    let (target, want) = match &cli.command {
        Command::Send { to, .. } => (to.clone(), Want::Send),
        Command::Recv { invitation, .. } => (invitation.clone(), Want::Receive),
        Command::Inbox(args) => return inbox::run(c, args, out, interrupt).await,
        Command::Relay(args) => {
            let show = relay::Show::Stdout { json: c.json };
            return relay::run(c, args, show, interrupt).await;
        }
    };
    let target = target
        .map(|text| read_invitation(&text))
        .transpose()?
        .map(|text| Target::parse(&text, want))
        .transpose()?
        .map(|target| target.through(c.server_url.as_deref()));
    // The work before anyone waits: files to send must exist, a folder to receive into too.
    let job = match &cli.command {
        Command::Send {
            paths,
            pair,
            device_name,
            ..
        } => Job::Send {
            sources: sources(&cli.command, paths)?,
            device: match &target {
                Some(Target::Inbox(inbox)) => {
                    device::for_inbox(&inbox.id, device_name.as_deref(), pair.as_deref())?
                }
                _ if pair.is_some() => bail!("--pair goes with an inbox's link (`--to LINK`)"),
                _ => None,
            },
        },
        Command::Recv { dir, max_bytes, .. } => Job::Receive {
            dest: files::Destination::open(dir)?,
            limits: protocol::transfer::Limits {
                max_bytes: *max_bytes,
                ..Default::default()
            },
            gate: None,
        },
        Command::Inbox(_) | Command::Relay(_) => unreachable!("they returned above"),
    };
    let clock = Clock::start();
    let config = session_config(c);
    let rendezvous = match &target {
        Some(Target::Join(inv)) => Rendezvous::join(inv, c.server(), want, config, clock.now()),
        Some(Target::Inbox(inbox)) => Rendezvous::knock(inbox, want, config, clock.now()),
        None => {
            let mut rv = Rendezvous::create(c.server(), want, config, clock.now());
            if !c.no_code {
                rv.show_code(clock.now());
            }
            rv
        }
    };
    out.hint = match want {
        Want::Receive => "Send files to this device with the link:",
        _ => "Open this link on the receiving device:",
    };
    let rejoin = match &target {
        Some(Target::Join(inv)) => Some(inv),
        _ => None,
    };
    let s = Session {
        common: c,
        config,
        clock,
        rejoin,
    };
    s.run(rendezvous, &job, out, &mut interrupt).await?;
    Ok(())
}

/// Where `send --to` or `recv` meets the other peer.
enum Target {
    /// A room a link or code names.
    Join(Invitation),
    /// An inbox to drop files into (`send --to INBOX_LINK`).
    Inbox(protocol::inbox::InboxLink),
}

impl Target {
    /// The same room or inbox, reached through `server` when one was given.
    fn through(self, server: Option<&str>) -> Self {
        let Some(server) = server.map(|s| s.trim_end_matches('/').to_owned()) else {
            return self;
        };
        match self {
            Self::Join(Invitation::Link(mut l)) => {
                l.server = server;
                Self::Join(Invitation::Link(l))
            }
            Self::Inbox(mut l) => {
                l.server = server;
                Self::Inbox(l)
            }
            code => code,
        }
    }

    fn parse(text: &str, want: Want) -> anyhow::Result<Self> {
        if protocol::inbox::InboxLink::looks_like(text) {
            if want == Want::Receive {
                bail!(
                    "that is an inbox's link: send files to it with `native-peer send --to LINK FILES…`"
                );
            }
            return protocol::inbox::InboxLink::parse(text)
                .map(Self::Inbox)
                .context("cannot use that inbox link");
        }
        Invitation::parse(text)
            .map(Self::Join)
            .context("cannot use that link or code")
    }
}

/// What a session does once connected.
enum Job<'a> {
    Send {
        sources: Vec<files::Source>,
        /// Proven to an inbox ([`protocol::device`]).
        device: Option<transfer::Device>,
    },
    Receive {
        dest: files::Destination,
        limits: protocol::transfer::Limits,
        /// An inbox's decision on the offer.
        gate: Option<&'a dyn transfer::Gate>,
    },
}

impl Job<'_> {
    fn want(&self) -> Want {
        match self {
            Self::Send { .. } => Want::Send,
            Self::Receive { .. } => Want::Receive,
        }
    }
}

/// The rendezvous settings the command line makes.
fn session_config(c: &Common) -> rv::Config {
    rv::Config {
        connect_timeout: Duration::from_secs(c.connect_timeout),
        // Relay candidates are all a relay-only peer has: none is held back.
        relay_wait: match (c.relay_only, c.relay_wait_ms) {
            (true, _) => Duration::ZERO,
            (false, Some(ms)) => Duration::from_millis(ms),
            (false, None) => rv::Config::default().relay_wait,
        },
        rejoin_wait: (c.reconnect_timeout > 0).then(|| Duration::from_secs(c.reconnect_timeout)),
        ..rv::Config::default()
    }
}

/// One transfer from meeting to `done`: what `send` and `recv` run once, and an inbox once
/// per drop.
struct Session<'a> {
    common: &'a Common,
    config: rv::Config,
    clock: Clock,
    /// A joiner's invitation, to join again after a lost connection.
    rejoin: Option<&'a Invitation>,
}

impl Session<'_> {
    /// Meet through `rendezvous`, connect, do `job`; a connection lost midway is got back
    /// (within `--reconnect-timeout`) and the transfer continues from what arrived. Says
    /// `done` (and where files were saved) as soon as it is, before a port mapping is
    /// released.
    async fn run(
        &self,
        rendezvous: Rendezvous,
        job: &Job<'_>,
        out: &mut Output,
        interrupt: &mut transfer::Interrupt,
    ) -> anyhow::Result<(transfer::Summary, Vec<PathBuf>)> {
        let (c, clock, want) = (self.common, self.clock, job.want());
        let (bind, port) = ice_bind(c, rendezvous.server())?;
        // Port mapping runs alongside signalling; connection setup never waits for it.
        let portmap = match port {
            Some(p) if !c.no_portmap && !c.relay_only && c.public_addr.is_none() => {
                let ipv6 = bind.iter().find_map(|a| match a.ip() {
                    IpAddr::V6(ip) if !ip.is_unspecified() => Some(ip),
                    _ => None,
                });
                portmap::start(p, ipv6)
            }
            _ => portmap::PortMapper::off(),
        };
        let net = net_options(c, bind, port, &portmap);
        let result = async {
            let mut signalling = rendezvous::Signalling::start(rendezvous, &net, clock);
            // File bytes every connection of this run sent; what a receiver keeps between them.
            let mut moved = 0;
            let mut carry = transfer::Carry::default();
            // The loss being recovered from: if getting the other peer back fails, that is
            // what the person needs to hear first (and that what arrived is kept).
            let mut lost: Option<anyhow::Error> = None;
            loop {
                let connected =
                    rendezvous::connect(signalling, clock, &net, out, interrupt, lost.is_some())
                        .await;
                let mut link = match (connected, lost.take()) {
                    (Ok(link), _) => link,
                    (Err(e), None) => return Err(e),
                    (Err(e), Some(loss)) => {
                        return Err(
                            loss.context(format!("could not get the other peer back ({e:#})"))
                        );
                    }
                };
                out.role = Some(link.role);
                if let (protocol::path::PathKind::Relay, portmap::State::Failed(e)) =
                    (link.path.kind, net.advertise.portmap.state())
                {
                    out.note(&format!("(no port mapping: {e})"));
                }
                let result = match job {
                    Job::Receive { dest, limits, gate } => {
                        transfer::receive(&link, dest, *limits, *gate, out, interrupt, &mut carry)
                            .await
                    }
                    Job::Send { sources, device } => {
                        let (sources, device) = (sources.clone(), device.as_ref());
                        transfer::send(&link, sources, device, c.chunk, out, interrupt, &mut moved)
                            .await
                            .map(|summary| (summary, Vec::new()))
                    }
                };
                let waiting = match &result {
                    Err(e) if transfer::LinkLost::is(e) => {
                        let rejoin = self.rejoin.filter(|_| self.config.rejoin_wait.is_some());
                        get_back(
                            &mut link,
                            rejoin,
                            want,
                            self.config,
                            c.server(),
                            &net,
                            clock,
                        )
                        .await
                    }
                    _ => None,
                };
                link.close().await;
                match (waiting, result) {
                    (Some(s), Err(e)) => {
                        tracing::info!("getting the other peer back: {e:#}");
                        signalling = s;
                        lost = Some(e);
                    }
                    (_, result) => break result,
                }
            }
        }
        .await;
        if let Ok((summary, saved)) = &result {
            out.event(&summary.clone().done());
            if !out.is_json() {
                for p in saved {
                    out.note(&format!("  {}", p.display()));
                }
            }
        }
        portmap.release().await;
        result
    }
}

/// The connection under an unfinished transfer is lost: the room's creator waits in it for
/// the other peer to come back, a joiner (`rejoin`: its invitation) joins it again; each
/// machine says `reconnecting`, and the transfer then continues on a new connection from
/// what the receiver holds. `None`: nothing will bring the other peer back.
async fn get_back(
    link: &mut rtc::Link,
    rejoin: Option<&Invitation>,
    want: Want,
    config: rv::Config,
    server: &str,
    net: &rtc::NetOptions,
    clock: Clock,
) -> Option<rendezvous::Signalling> {
    let mut old = link.take_signalling().await;
    let Some(inv) = rejoin else {
        return old.and_then(|mut s| s.link_lost(clock).then_some(s));
    };
    let place = old.as_ref().and_then(rendezvous::Signalling::place);
    if let Some(old) = old.take() {
        old.close().await;
    }
    let rv = Rendezvous::rejoin(inv, place.as_ref(), server, want, config, clock.now());
    Some(rendezvous::Signalling::start(rv, net, clock))
}

/// The link or code as given, or read from standard input for `-` (so it stays out of the
/// shell's history and the process list).
fn read_invitation(text: &str) -> anyhow::Result<String> {
    if text != "-" {
        return Ok(text.to_string());
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the link or code from standard input")?;
    if line.trim().is_empty() {
        bail!("no link or code on standard input");
    }
    Ok(line.trim().to_string())
}

/// What `send` offers: the paths given, expanded.
fn sources(command: &Command, paths: &[PathBuf]) -> anyhow::Result<Vec<files::Source>> {
    let sources = files::collect(paths)?;
    #[cfg(feature = "test-hooks")]
    let sources = {
        let mut sources = sources;
        if let Command::Send {
            offer_name_unchecked: Some(name),
            ..
        } = command
            && let Some(first) = sources.first_mut()
        {
            first.entry.path = name.clone();
        }
        sources
    };
    let _ = command;
    Ok(sources)
}
