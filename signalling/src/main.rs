//! `signalling`: run the punchdrop rendezvous server.

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use signalling::turn::TurnCaps;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Parser, Debug)]
#[command(
    version,
    about = "punchdrop signalling server: rooms where two peers meet",
    after_help = "Every setting can also come from a TOML file (--config) whose keys are the long \
                  flags' names, e.g. `max-rooms = 500`, and from the PUNCHDROP_* variable shown \
                  with it. A flag wins over a variable, a variable over the file, the file over \
                  the default. --print-config shows the result."
)]
struct Args {
    /// TOML file of settings: keys are the long flags' names (see above).
    #[arg(long, env = "PUNCHDROP_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in effect (secrets masked), each with where it came from, and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on.
    #[arg(long, env = "PUNCHDROP_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// PEM certificate chain: serve https and wss on --listen (read again on SIGHUP).
    #[arg(long, env = "PUNCHDROP_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PUNCHDROP_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Get the certificate for this name from an ACME CA (Let's Encrypt), by TLS-ALPN-01 on
    /// --listen (which must be reachable on port 443 under this name); repeatable. Instead of
    /// --tls-cert. Renewed by itself.
    #[arg(
        long = "acme-domain",
        env = "PUNCHDROP_ACME_DOMAIN",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    acme_domains: Vec<String>,
    /// Folder for the ACME account and certificates (kept across restarts: CAs limit how
    /// often a name may be ordered).
    #[arg(long, env = "PUNCHDROP_ACME_CACHE", value_name = "DIR")]
    acme_cache: Option<PathBuf>,
    /// Contact for the ACME CA, e.g. mailto:ops@drop.example (repeatable).
    #[arg(
        long = "acme-contact",
        env = "PUNCHDROP_ACME_CONTACT",
        value_delimiter = ','
    )]
    acme_contacts: Vec<String>,
    /// The ACME CA's directory URL.
    #[arg(long, env = "PUNCHDROP_ACME_DIRECTORY", default_value = signalling::tls::LETS_ENCRYPT)]
    acme_directory: String,
    /// PEM file of roots to trust for the ACME directory (a private ACME CA), besides
    /// Mozilla's.
    #[arg(long, env = "PUNCHDROP_ACME_CA_FILE", value_name = "PEM")]
    acme_ca_file: Option<PathBuf>,
    /// With TLS: also listen here for plain http and redirect it to https (e.g. 0.0.0.0:80).
    #[arg(long, env = "PUNCHDROP_REDIRECT_LISTEN")]
    redirect_listen: Option<SocketAddr>,
    /// Append the audit log here: JSON lines of rooms, TURN allocations and refusals
    /// (reopened on SIGHUP, for logrotate).
    #[arg(long, env = "PUNCHDROP_AUDIT_LOG", value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Seconds SIGTERM waits for rooms and relays in progress (no new ones are taken) before
    /// the server stops; a second SIGTERM or Ctrl-C stops it at once.
    #[arg(long, env = "PUNCHDROP_DRAIN_TIMEOUT", default_value_t = 300)]
    drain_timeout: u64,
    /// Address `/metrics` is served on: the operator's, not the clients' (keep it private).
    #[arg(long, env = "PUNCHDROP_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Do not serve `/metrics` at all.
    #[arg(long, env = "PUNCHDROP_NO_ADMIN")]
    no_admin: bool,
    /// Seconds a room waits for its second peer.
    #[arg(long, env = "PUNCHDROP_ROOM_TTL", default_value_t = 1800)]
    room_ttl: u64,
    /// Most rooms open at once.
    #[arg(long, env = "PUNCHDROP_MAX_ROOMS", default_value_t = 10_000)]
    max_rooms: usize,
    /// Sustained signalling messages per second per client address.
    #[arg(long, env = "PUNCHDROP_MSG_RATE", default_value_t = 50)]
    msg_rate: u32,
    /// Message burst per client address.
    #[arg(long, env = "PUNCHDROP_MSG_BURST", default_value_t = 200)]
    msg_burst: u32,
    /// Rooms one client (IPv4 address or IPv6 /64) may create or join per minute.
    #[arg(long, env = "PUNCHDROP_ROOM_RATE", default_value_t = 60)]
    room_rate: u32,
    /// Seconds a joined room lives (and its TURN credentials at most): the peers need it only
    /// to meet.
    #[arg(long, env = "PUNCHDROP_ROOM_LIFETIME", default_value_t = 7200)]
    room_lifetime: u64,
    /// Seconds a new connection has to create or join a room before it is closed.
    #[arg(long, env = "PUNCHDROP_IDLE_TIMEOUT", default_value_t = 10)]
    idle_timeout: u64,
    /// Seconds between pings to a peer in a room; one silent for three is dropped and its
    /// place freed (a peer whose network changed comes back in the same room).
    #[arg(long, env = "PUNCHDROP_PING_INTERVAL", default_value_t = 10)]
    ping_interval: u64,
    /// Seconds an HTTP request's headers may take to arrive (slow clients are cut off).
    #[arg(long, env = "PUNCHDROP_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout: u64,
    /// Open WebSocket connections at most.
    #[arg(long, env = "PUNCHDROP_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Open WebSocket connections at most per client (IPv4 address or IPv6 /64).
    #[arg(
        long,
        env = "PUNCHDROP_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 16
    )]
    max_connections_per_client: usize,
    /// Open TCP connections at most per client (page loads, WebSockets, half-sent requests).
    #[arg(long, env = "PUNCHDROP_MAX_TCP_PER_CLIENT", default_value_t = 64)]
    max_tcp_per_client: usize,
    /// A proxy in front of this server (CIDR, repeatable): its X-Forwarded-For/Forwarded say
    /// who the client is. Nobody else's are believed.
    #[arg(
        long = "trusted-proxy",
        env = "PUNCHDROP_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The origin the pages are served from, e.g. https://drop.example: browser connections
    /// from other origins are refused [default: the origin must match the Host header].
    #[arg(long, env = "PUNCHDROP_PUBLIC_ORIGIN")]
    public_origin: Option<String>,
    /// Extra STUN server URL handed to peers (repeatable), e.g. stun:stun.example.org:3478.
    #[arg(long = "stun", env = "PUNCHDROP_STUN", value_delimiter = ',')]
    stun: Vec<String>,
    /// External TURN server URL handed to peers with minted credentials (repeatable), e.g.
    /// turn:turn.example.org:3478?transport=udp. Needs --turn-secret.
    #[arg(long = "turn", env = "PUNCHDROP_TURN", value_delimiter = ',')]
    turn: Vec<String>,
    /// Secret shared with the TURN servers (coturn: static-auth-secret). Random if unset,
    /// which only the bundled server can use.
    #[arg(long, env = "PUNCHDROP_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Share rooms, room numbers and rate limits with the other nodes of a deployment
    /// through this Redis: redis://[:PASSWORD@]HOST[:PORT][/DB]. Unset: this node alone, all
    /// in memory.
    #[arg(long, env = "PUNCHDROP_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// Lifetime of TURN credentials, in seconds (at most the room lifetime).
    #[arg(long, env = "PUNCHDROP_TURN_TTL", default_value_t = 7200)]
    turn_ttl: u64,
    /// Do not run the bundled TURN/STUN server.
    #[arg(long, env = "PUNCHDROP_NO_TURN")]
    no_turn: bool,
    /// Address of the bundled TURN server, UDP and TCP [default: the --listen IP, port 3478].
    #[arg(long, env = "PUNCHDROP_TURN_LISTEN")]
    turn_listen: Option<SocketAddr>,
    /// A second address of the bundled TURN/STUN server, of the other IP family (an IPv6
    /// address beside an IPv4 --turn-listen): IPv6-only peers reach TURN there, and browsers
    /// learn their IPv6 address as server-reflexive (they hide host addresses), which an
    /// IPv6 path through two firewalls needs. Relays are still made on the relay IP.
    #[arg(long, env = "PUNCHDROP_TURN_LISTEN6")]
    turn_listen6: Option<SocketAddr>,
    /// Address of TURN over TLS (`turns:`, for networks that let only TLS out), with the
    /// server's certificate [default with TLS: the TURN listen IP, port 5349].
    #[arg(long, env = "PUNCHDROP_TURN_TLS_LISTEN")]
    turn_tls_listen: Option<SocketAddr>,
    /// Do not run TURN over TLS even with a certificate.
    #[arg(long, env = "PUNCHDROP_NO_TURN_TLS")]
    no_turn_tls: bool,
    /// Address relayed sockets bind to [default: the TURN listen IP].
    #[arg(long, env = "PUNCHDROP_TURN_RELAY_IP")]
    turn_relay_ip: Option<IpAddr>,
    /// Host name or IP put in the TURN URLs peers get [default: the relay IP].
    #[arg(long, env = "PUNCHDROP_TURN_PUBLIC_HOST")]
    turn_public_host: Option<String>,
    /// Port range for relayed sockets, LOW-HIGH (0-0: any ephemeral port).
    #[arg(long, env = "PUNCHDROP_TURN_RELAY_PORTS", default_value = "49152-65535", value_parser = parse_range)]
    turn_relay_ports: RangeInclusive<u16>,
    /// Relay to loopback, private and link-local peers too (tests, LAN-only setups).
    #[arg(long, env = "PUNCHDROP_TURN_ALLOW_PRIVATE_PEERS")]
    turn_allow_private_peers: bool,
    /// Bytes one allocation may relay before it is ended.
    #[arg(long, env = "PUNCHDROP_TURN_MAX_BYTES", default_value_t = 16 << 30)]
    turn_max_bytes: u64,
    /// Seconds one allocation may live, however often refreshed.
    #[arg(long, env = "PUNCHDROP_TURN_MAX_LIFETIME", default_value_t = 7200)]
    turn_max_lifetime: u64,
    /// TURN allocations at most, from everyone.
    #[arg(long, env = "PUNCHDROP_TURN_MAX_ALLOCATIONS", default_value_t = TurnCaps::default().allocations)]
    turn_max_allocations: usize,
    /// TURN allocations at most from one client (IPv4 address or IPv6 /64).
    #[arg(long, env = "PUNCHDROP_TURN_MAX_ALLOCATIONS_PER_CLIENT", default_value_t = TurnCaps::default().allocations_per_client)]
    turn_max_allocations_per_client: usize,
    /// TURN allocations at most under one credential (one room's).
    #[arg(long, env = "PUNCHDROP_TURN_MAX_ALLOCATIONS_PER_CREDENTIAL", default_value_t = TurnCaps::default().allocations_per_credential)]
    turn_max_allocations_per_credential: usize,
    /// TURN-over-TCP connections at most from one client.
    #[arg(long, env = "PUNCHDROP_TURN_MAX_TCP_PER_CLIENT", default_value_t = TurnCaps::default().tcp_connections_per_client)]
    turn_max_tcp_per_client: usize,
    /// Bytes per second one allocation may relay (both ways); more is dropped [default: no cap].
    #[arg(long, env = "PUNCHDROP_TURN_MAX_RATE")]
    turn_max_rate: Option<u64>,
    /// Who may add a relay to the pool (`native-peer relay --register URL`): nobody, those
    /// with a relay token (--issue-relay-token), or anyone. Tokens and relays' own secrets
    /// derive from --turn-secret, so set it for them to outlive a restart.
    #[arg(
        long,
        env = "PUNCHDROP_VOLUNTEER_RELAYS",
        value_enum,
        default_value = "off"
    )]
    volunteer_relays: signalling::volunteers::Admit,
    /// Hand rooms volunteer relays before this server's own TURN (used then only by rooms
    /// that get fewer than two volunteers).
    #[arg(long, env = "PUNCHDROP_PREFER_VOLUNTEERS")]
    prefer_volunteers: bool,
    /// Volunteer relays listed at most.
    #[arg(long, env = "PUNCHDROP_MAX_VOLUNTEERS", default_value_t = 256)]
    max_volunteers: usize,
    /// Print a relay token valid for this many days (needs --turn-secret) and exit.
    #[arg(long, value_name = "DAYS")]
    issue_relay_token: Option<u64>,
}

/// `drop.example` of `https://drop.example:443/`.
fn origin_host(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    url.host_str().map(str::to_owned)
}

/// Settings never shown.
/// Settings never printed: the TURN secret, and the Redis URL (it may hold a password).
const SECRETS: &[&str] = &["turn-secret", "redis"];

/// Settings that need or exclude others, checked here rather than by clap, which would not
/// count values from the config file.
fn check_combinations(args: &Args, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    use clap::parser::ValueSource;
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        anyhow::bail!("tls-cert and tls-key go together: give both, or neither");
    }
    let acme = !args.acme_domains.is_empty();
    if acme && args.tls_cert.is_some() {
        anyhow::bail!("acme-domain and tls-cert are two ways to get a certificate: pick one");
    }
    if acme && args.acme_cache.is_none() {
        anyhow::bail!(
            "acme-domain needs acme-cache, a folder kept across restarts (without it every \
             start orders a new certificate, and the CA's weekly limit runs out)"
        );
    }
    let tls = acme || args.tls_cert.is_some();
    if args.redirect_listen.is_some() && !tls {
        anyhow::bail!(
            "redirect-listen redirects to https: it needs tls-cert and tls-key, or acme-domain"
        );
    }
    if (args.turn_tls_listen.is_some() || args.no_turn_tls) && !tls {
        anyhow::bail!("turn-tls-listen needs tls-cert and tls-key, or acme-domain");
    }
    let explicit = |id: &str| {
        matches
            .value_source(id)
            .is_some_and(|s| s != ValueSource::DefaultValue)
    };
    if args.no_admin && explicit("admin_listen") {
        anyhow::bail!("no-admin and admin-listen contradict each other: drop one");
    }
    Ok(())
}

fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected LOW-HIGH, e.g. 49152-65535")?;
    let a: u16 = a.trim().parse().map_err(|_| "bad low port")?;
    let b: u16 = b.trim().parse().map_err(|_| "bad high port")?;
    if a > b {
        return Err("low port above high port".into());
    }
    Ok(a..=b)
}

fn bundled_turn(
    args: &Args,
    certificates: Option<&std::sync::Arc<signalling::tls::Certificates>>,
) -> anyhow::Result<Option<signalling::BundledTurn>> {
    if args.no_turn {
        return Ok(None);
    }
    let listen = args
        .turn_listen
        .unwrap_or_else(|| SocketAddr::new(args.listen.ip(), 3478));
    if let Some(also) = args.turn_listen6
        && also.ip().is_unspecified()
    {
        anyhow::bail!(
            "--turn-listen6 is handed to peers in the TURN URLs: give the address they reach \
             this machine by, not {also}"
        );
    }
    let relay_ip = match args.turn_relay_ip {
        Some(ip) => ip,
        None if listen.ip().is_unspecified() => anyhow::bail!(
            "TURN listens on all interfaces: set --turn-relay-ip to the address peers reach \
             this machine by (or --no-turn)"
        ),
        None => listen.ip(),
    };
    Ok(Some(signalling::BundledTurn {
        config: signalling::turn::TurnConfig {
            listen,
            also_listen: args.turn_listen6,
            relay_ip,
            relay_bind_ip: None,
            relay_ports: args.turn_relay_ports.clone(),
            realm: "punchdrop".into(),
            // Replaced by the server with the credentials secret.
            secret: signalling::credentials::TurnSecret::random(),
            allow_private_peers: args.turn_allow_private_peers,
            max_bytes_per_allocation: args.turn_max_bytes,
            max_allocation_lifetime: Duration::from_secs(args.turn_max_lifetime),
            caps: TurnCaps {
                allocations: args.turn_max_allocations,
                allocations_per_client: args.turn_max_allocations_per_client,
                allocations_per_credential: args.turn_max_allocations_per_credential,
                tcp_connections_per_client: args.turn_max_tcp_per_client,
                bytes_per_sec_per_allocation: args.turn_max_rate,
                ..TurnCaps::default()
            },
            // The server adds its own listen address.
            own_addresses: Vec::new(),
            // The server's own.
            audit: signalling::audit::Audit::off(),
            tls: certificates
                .filter(|_| !args.no_turn_tls)
                .map(|certificates| signalling::turn::TurnTls {
                    listen: args.turn_tls_listen.unwrap_or_else(|| {
                        // Tests and side-by-side servers take any port (port 0) for all of TURN.
                        let port = if listen.port() == 0 { 0 } else { 5349 };
                        SocketAddr::new(listen.ip(), port)
                    }),
                    certificates: certificates.clone(),
                }),
        },
        advertise_host: args
            .turn_public_host
            .clone()
            .unwrap_or_else(|| relay_ip.to_string()),
        // A certificate names the host, not its address: the ACME name or the pages' host.
        tls_host: args
            .turn_public_host
            .clone()
            .or_else(|| args.acme_domains.first().cloned())
            .or_else(|| args.public_origin.as_deref().and_then(origin_host)),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PUNCHDROP_LOG")
                .unwrap_or_else(|_| "info".into())
                // The turn crate logs full peer addresses; our TURN module logs redacted ones.
                .add_directive("turn=off".parse().expect("static directive")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Watched from the start: SIGHUP's default action (a certificate renewal hook firing
    // while the server starts) would end the process.
    let signals = Signals::watch()?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = signalling::settings::switchable(Args::command());
    let mut from_file = signalling::settings::FromFile::default();
    if let Some(path) = signalling::settings::config_path(&argv, "PUNCHDROP_CONFIG") {
        (command, from_file) = signalling::settings::with_file(command, &path, SECRETS)?;
    }
    let matches = command.clone().get_matches_from(argv);
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if args.print_config {
        print!(
            "{}",
            signalling::settings::render(&command, &matches, &from_file, SECRETS)
        );
        return Ok(());
    }
    check_combinations(&args, &matches)?;
    if let Some(days) = args.issue_relay_token {
        let secret = args
            .turn_secret
            .as_ref()
            .context("--issue-relay-token needs --turn-secret: the token is checked with it")?;
        let valid = days
            .checked_mul(86_400)
            .filter(|&s| s <= 10 * 365 * 86_400)
            .context("--issue-relay-token: at most 3650 days")?;
        let expiry = std::time::SystemTime::now() + Duration::from_secs(valid);
        let secret = signalling::credentials::TurnSecret::new(secret.as_bytes().to_vec());
        println!("{}", secret.relay_token(expiry));
        return Ok(());
    }
    // A socket per connection and per relay: the usual soft limit would refuse them first.
    let fds = net::raise_fd_limit();
    tracing::debug!(?fds, "descriptor limit");
    let certificates = match (&args.tls_cert, &args.tls_key, &args.acme_cache) {
        (Some(cert), Some(key), _) => Some(signalling::tls::Certificates::load(
            signalling::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            },
        )?),
        (_, _, Some(cache)) if !args.acme_domains.is_empty() => Some(
            signalling::tls::Certificates::acme(signalling::tls::AcmeSettings {
                domains: args.acme_domains.clone(),
                cache: cache.clone(),
                directory: args.acme_directory.clone(),
                contact: args.acme_contacts.clone(),
                ca_file: args.acme_ca_file.clone(),
            })?,
        ),
        _ => None,
    };
    let config = signalling::Config {
        listen: args.listen,
        room_ttl: Duration::from_secs(args.room_ttl),
        max_rooms: args.max_rooms,
        messages_per_sec: args.msg_rate,
        messages_burst: args.msg_burst,
        rooms_per_min: args.room_rate,
        room_max_lifetime: Duration::from_secs(args.room_lifetime),
        first_message_within: Duration::from_secs(args.idle_timeout),
        ping_every: Duration::from_secs(args.ping_interval.max(1)),
        header_read_timeout: Duration::from_secs(args.header_timeout),
        admin_listen: (!args.no_admin).then_some(args.admin_listen),
        admission: signalling::admission::AdmissionConfig {
            max_connections: args.max_connections,
            max_connections_per_client: args.max_connections_per_client,
            max_tcp_per_client: args.max_tcp_per_client,
            trusted_proxies: args.trusted_proxies.clone(),
            public_origin: args.public_origin.clone(),
        },
        ice: signalling::IceSettings {
            stun_urls: args.stun.clone(),
            turn_urls: args.turn.clone(),
            secret: Some(match &args.turn_secret {
                Some(s) => signalling::credentials::TurnSecret::new(s.as_bytes().to_vec()),
                None => signalling::credentials::TurnSecret::random(),
            }),
            credential_ttl: Duration::from_secs(args.turn_ttl),
        },
        turn: bundled_turn(&args, certificates.as_ref())?,
        redis: args.redis.clone(),
        volunteers: signalling::volunteers::VolunteerSettings {
            admit: args.volunteer_relays,
            prefer: args.prefer_volunteers,
            max: args.max_volunteers,
            allow_private: args.turn_allow_private_peers,
            ..Default::default()
        },
        tls: certificates,
        redirect_listen: args.redirect_listen,
        audit: match &args.audit_log {
            Some(path) => signalling::audit::Audit::to_file(path.clone())
                .with_context(|| format!("cannot open the audit log {}", path.display()))?,
            None => signalling::audit::Audit::off(),
        },
    };
    if args.redis.is_some()
        && args.volunteer_relays != signalling::volunteers::Admit::Off
        && args.turn_secret.is_none()
    {
        anyhow::bail!(
            "--volunteer-relays with --redis needs --turn-secret, the same on every node: a \
             volunteer's secret derives from it, and any node may hand the volunteer to a room"
        );
    }
    if !args.turn.is_empty() && args.turn_secret.is_none() {
        anyhow::bail!("--turn needs --turn-secret (the secret the TURN servers share)");
    }
    let audit = config.audit.clone();
    let server = signalling::Server::spawn(config).await?;
    // The first stdout line is the ready signal; the second says where the operator's
    // counters are. Written without `println!`: a reader that stops reading after the first
    // line must not bring the server down (a closed pipe makes `println!` panic).
    let metrics = match server.admin_addr() {
        Some(addr) => format!("metrics on http://{addr}/metrics"),
        None => "metrics off".to_owned(),
    };
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "punchdrop signalling listening on {}", server.url());
        let _ = writeln!(out, "{metrics}");
        let _ = out.flush();
    }
    if let Some((udp, tcp)) = server.turn_addrs() {
        eprintln!("bundled TURN/STUN on udp {udp} and tcp {tcp}");
    }
    if let Some((udp, tcp)) = server.turn_also_addrs() {
        eprintln!("bundled TURN/STUN also on udp {udp} and tcp {tcp}");
    }
    if let Some(tls) = server.turn_tls_addr() {
        eprintln!("TURN over TLS on {tls}");
    }
    if let Some(addr) = server.redirect_addr() {
        eprintln!("http on {addr} redirects to https");
    }
    signals.handle(
        &server,
        Duration::from_secs(args.drain_timeout),
        audit.clone(),
    );
    server.wait().await;
    audit.flush().await;
    Ok(())
}

/// SIGTERM (a service manager stopping the server) drains it; Ctrl-C, or a second SIGTERM,
/// stops it at once; SIGHUP reads the TLS certificate again and reopens the audit log.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    fn handle(
        mut self,
        server: &signalling::ServerHandle,
        drain_within: Duration,
        audit: signalling::audit::Audit,
    ) {
        let token = server.shutdown_token();
        let drain = server.drainer();
        let reload = server.tls_reloader();
        let tls = server.url().starts_with("https:");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = self.int.recv() => break,
                    _ = self.term.recv() => {
                        if drain.is_draining() {
                            break;
                        }
                        drain.start(drain_within);
                    }
                    _ = self.hup.recv() => {
                        audit.reopen();
                        match reload() {
                            Ok(()) if tls => tracing::info!("TLS certificate read again"),
                            Ok(()) => {}
                            Err(e) => tracing::warn!("TLS certificate not reloaded, the old one stays: {e}"),
                        }
                    }
                }
            }
            tracing::info!("shutting down");
            token.cancel();
        });
    }
}
