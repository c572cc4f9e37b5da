//! `native-peer relay --register URL`: volunteer this machine as a relay in a signalling
//! server's relay pool ([`protocol::relay`]).
//!
//! It runs the server's own TURN code (`signalling::turn`) with the secret the server derives
//! for it, asks the router (UPnP IGD) to forward the TURN port and the relay ports under
//! their own numbers, and reports its load. Peers' traffic through it is DTLS: the relay sees
//! ciphertext only.
//!
//! Invariants:
//! - The relay never reaches loopback, private or link-local addresses (this machine's LAN)
//!   for a peer; only test builds can allow it.
//! - What it advertises is the address the server saw it connect from, the one the server
//!   checked by reaching it; mappings are released on exit (their lease ends any left).
//! - A lost connection to the server takes the relay off the pool; it registers again and
//!   gets a new id and secret. TURN keeps running through it with the old secrets beside the
//!   new one (credentials minted for a volunteer name their secret), so a server that
//!   restarts or dies does not cut what the relay carries. A refusal that registering again
//!   cannot mend (a bad
//!   token, an unreachable port) ends the program with the server's reason; a server
//!   restarting or a full pool is tried again 30 s later.

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use igd_next::PortMappingProtocol;
use protocol::relay::{
    LOAD_EVERY_SECS, LOAD_STALE_SECS, PoolMessage, RELAY_VERSION, RelayEvent, RelayRefusal,
    VolunteerMessage,
};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use crate::Common;
use crate::transfer::{Interrupt, interrupted};

#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// The signalling server whose relay pool to join, e.g. https://drop.example.
    #[arg(long, value_name = "URL")]
    register: String,
    /// The relay token the server's operator gave (`signalling --issue-relay-token`).
    #[arg(long, env = "PUNCHDROP_RELAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// TURN listens here, on UDP and TCP.
    #[arg(long, env = "PUNCHDROP_RELAY_LISTEN", default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// Ports for relayed sockets, LOW-HIGH: each is forwarded on the router, so keep the
    /// range small (every relayed peer takes one).
    #[arg(long, env = "PUNCHDROP_RELAY_PORTS", default_value = "50000-50015", value_parser = parse_range)]
    relay_ports: RangeInclusive<u16>,
    /// Bytes one allocation may relay before it is ended.
    #[arg(long, default_value_t = 16 << 30)]
    max_bytes: u64,
    /// Allocations at most (each relayed peer takes one or two): the uplink is yours.
    #[arg(long, default_value_t = 64)]
    max_allocations: usize,
    /// Bytes per second one allocation may relay (both ways); more is dropped [default: no
    /// cap].
    #[arg(long)]
    max_rate: Option<u64>,
    /// Relay to private and loopback peers too: the NAT lab's "internet" is a private
    /// range. Only in builds with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    allow_private_peers: bool,
    /// Milliseconds between load reports, so a test sees at once which relay carries a
    /// transfer. Only in builds with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    report_every_ms: Option<u64>,
}

impl RelayArgs {
    /// The defaults, registering with `server` (what `inbox --relay` runs).
    pub fn for_server(
        server: &str,
        token: Option<String>,
        listen: SocketAddr,
        relay_ports: RangeInclusive<u16>,
    ) -> Self {
        Self {
            register: server.to_owned(),
            token,
            listen,
            relay_ports,
            max_bytes: 16 << 30,
            max_allocations: 64,
            max_rate: None,
            #[cfg(feature = "test-hooks")]
            allow_private_peers: false,
            #[cfg(feature = "test-hooks")]
            report_every_ms: None,
        }
    }

    fn report_every(&self) -> Duration {
        #[cfg(feature = "test-hooks")]
        if let Some(ms) = self.report_every_ms {
            return Duration::from_millis(ms.max(10));
        }
        Duration::from_secs(LOAD_EVERY_SECS)
    }
}

/// Relay ports at most: each is mapped on the router, one request each, renewed.
const MAX_RELAY_PORTS: u32 = 256;

pub fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected LOW-HIGH, e.g. 50000-50015")?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|e| format!("{a}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b}: {e}"))?,
    );
    if a == 0 || a > b {
        return Err("expected 1 <= LOW <= HIGH".into());
    }
    if u32::from(b - a) + 1 > MAX_RELAY_PORTS {
        return Err(format!("at most {MAX_RELAY_PORTS} ports"));
    }
    Ok(a..=b)
}

/// Why one registration ended.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// The server refused or sent the relay away: the end.
    Refused(RelayRefusal),
    /// The connection failed: register again.
    Lost(anyhow::Error),
    /// Something here failed that trying again would not mend.
    Failed(anyhow::Error),
}

/// Where the relay's events go.
#[derive(Debug, Clone, Copy)]
pub enum Show {
    /// Standard output: JSON lines or lines for a person (`native-peer relay`).
    Stdout { json: bool },
    /// The log only (beside an inbox, whose standard output is its own events).
    Log,
}

/// Register, relay, and register again after a lost connection, until stopped or refused.
/// TURN and the router's mappings outlive a lost connection: a server that restarts or dies
/// does not cut what the relay carries.
pub async fn run(
    c: &Common,
    args: &RelayArgs,
    show: Show,
    mut interrupt: Interrupt,
) -> anyhow::Result<()> {
    let url = protocol::invite::relay_url(&args.register).context("--register")?;
    let mut running = None;
    let outcome = serve(c, args, show, &url, &mut running, &mut interrupt).await;
    if let Some(r) = running {
        r.stop().await;
    }
    outcome
}

/// The registrations, one after another.
async fn serve(
    c: &Common,
    args: &RelayArgs,
    show: Show,
    url: &str,
    running: &mut Option<Running>,
    interrupt: &mut Interrupt,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_secs(1);
    let mut listed_once = false;
    loop {
        let began = tokio::time::Instant::now();
        let ended = tokio::select! {
            ended = register_and_relay(c, args, show, url, running, &mut listed_once) => ended,
            () = interrupted(interrupt) => return Ok(()),
        };
        let wait = match ended {
            Ended::Stopped => return Ok(()),
            // Once listed, an unanswered probe is more likely a moment's trouble than a
            // port nobody forwards.
            Ended::Refused(code)
                if code.is_final() && !(listed_once && code == RelayRefusal::Unreachable) =>
            {
                bail!("the server refused the relay: {}", code.explain())
            }
            Ended::Failed(e) => return Err(e),
            Ended::Refused(code) => {
                emit(
                    show,
                    &RelayEvent::Reconnecting {
                        reason: code.explain().into(),
                    },
                );
                Duration::from_secs(30)
            }
            Ended::Lost(e) => {
                emit(
                    show,
                    &RelayEvent::Reconnecting {
                        reason: format!("{e:#}"),
                    },
                );
                // A registration that lasted starts the backoff over.
                if began.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = interrupted(interrupt) => return Ok(()),
        }
    }
}

/// TURN with the router's mappings, kept across registrations.
struct Running {
    turn: signalling::turn::TurnHandle,
    metrics: Arc<signalling::turn::TurnMetrics>,
    public_ip: IpAddr,
    mapped: Option<crate::portmap::SamePorts>,
}

impl Running {
    async fn start(
        c: &Common,
        args: &RelayArgs,
        secret: signalling::credentials::TurnSecret,
        public_ip: IpAddr,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(signalling::turn::TurnMetrics::default());
        let turn = signalling::turn::spawn(turn_config(args, secret, public_ip), metrics.clone())
            .await
            .context("cannot start the relay's TURN server")?;
        let mapped = if c.no_portmap {
            None
        } else {
            map_ports(args, &turn, public_ip).await
        };
        Ok(Self {
            turn,
            metrics,
            public_ip,
            mapped,
        })
    }

    async fn stop(self) {
        if let Some(m) = &self.mapped {
            m.release().await;
        }
        self.turn.shutdown().await;
    }
}

/// The TURN port (UDP and TCP) and every relay port, mapped on the router under their own
/// numbers, if it maps them to the address the server sees.
async fn map_ports(
    args: &RelayArgs,
    turn: &signalling::turn::TurnHandle,
    public_ip: IpAddr,
) -> Option<crate::portmap::SamePorts> {
    let mut ports = vec![
        (PortMappingProtocol::UDP, turn.udp_addr().port()),
        (PortMappingProtocol::TCP, turn.tcp_addr().port()),
    ];
    ports.extend(
        args.relay_ports
            .clone()
            .map(|p| (PortMappingProtocol::UDP, p)),
    );
    match map_with_retries(&ports).await {
        Ok(m) if m.external_ip == public_ip => Some(m),
        Ok(m) => {
            // Another NAT beyond the router: its mapping reaches nobody.
            tracing::info!("the router's address is not the one the server sees");
            m.release().await;
            None
        }
        Err(e) => {
            tracing::info!("no port mapping for the relay ({e}); ports must be forwarded by hand");
            None
        }
    }
}

/// One registration: offer, welcome (TURN started, or given the new secret), ready, listed,
/// then load reports until it ends.
async fn register_and_relay(
    c: &Common,
    args: &RelayArgs,
    show: Show,
    url: &str,
    running: &mut Option<Running>,
    listed_once: &mut bool,
) -> Ended {
    let mut ws = match crate::wss::connect(url).await {
        Ok(ws) => ws,
        Err(e) => return Ended::Lost(e.context("cannot reach the server")),
    };
    let offer = VolunteerMessage::Offer {
        version: RELAY_VERSION,
        token: args.token.clone(),
    };
    if let Err(e) = ws.send(Message::text(offer.to_json())).await {
        return Ended::Lost(e.into());
    }
    let (secret, public_ip) = match next(&mut ws).await {
        Ok(PoolMessage::Welcome {
            secret, public_ip, ..
        }) => match decode_welcome(&secret, &public_ip) {
            Ok(w) => w,
            Err(e) => return Ended::Lost(e),
        },
        Ok(PoolMessage::Refused { code, .. }) => return Ended::Refused(code),
        Ok(PoolMessage::Listed) => return Ended::Refused(RelayRefusal::Malformed),
        Err(e) => return Ended::Lost(e),
    };
    match running.take() {
        // The same address: the new secret for new rooms, the old ones for allocations
        // made under them.
        Some(r) if r.public_ip == public_ip => {
            r.turn.add_secret(secret);
            *running = Some(r);
        }
        other => {
            if let Some(old) = other {
                // Our address changed: what TURN advertises is wrong now.
                old.stop().await;
            }
            match Running::start(c, args, secret, public_ip).await {
                Ok(r) => *running = Some(r),
                // Our own port is taken or not ours to bind: retrying would not help.
                Err(e) => return Ended::Failed(e),
            }
        }
    }
    let r = running.as_ref().expect("started above");
    let (udp, tcp) = (r.turn.udp_addr().port(), r.turn.tcp_addr().port());
    emit(
        show,
        &RelayEvent::Listening {
            public: SocketAddr::new(public_ip, udp).to_string(),
            mapped: r.mapped.is_some(),
        },
    );
    let ready = VolunteerMessage::Ready {
        udp_port: udp,
        tcp_port: Some(tcp),
    };
    if let Err(e) = ws.send(Message::text(ready.to_json())).await {
        return Ended::Lost(e.into());
    }
    match next(&mut ws).await {
        Ok(PoolMessage::Listed) => {
            *listed_once = true;
            emit(show, &RelayEvent::Listed);
        }
        Ok(PoolMessage::Refused { code, .. }) => return Ended::Refused(code),
        Ok(PoolMessage::Welcome { .. }) => return Ended::Refused(RelayRefusal::Malformed),
        Err(e) => return Ended::Lost(e),
    }
    let renew = async {
        match &r.mapped {
            Some(m) => m.renew_every().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        ended = report(show, &mut ws, &r.metrics, args.report_every()) => ended,
        () = renew => Ended::Stopped,
    }
}

/// Ask the router for the mappings, a few times: a relay runs for long, and a router busy
/// at that moment (or slow to answer SSDP) should not leave it unreachable.
async fn map_with_retries(
    ports: &[(PortMappingProtocol, u16)],
) -> Result<crate::portmap::SamePorts, crate::portmap::PortmapError> {
    let mut tries = 0;
    loop {
        match crate::portmap::map_same_ports(ports).await {
            Err(e) if tries < MAP_TRIES && e != crate::portmap::PortmapError::LocalAddress => {
                tracing::debug!("port mapping: {e}; trying again");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Extra tries of the port mapping.
const MAP_TRIES: u32 = 3;

/// Report the load every [`LOAD_EVERY_SECS`] and read the server's word, until either ends.
async fn report(
    show: Show,
    ws: &mut crate::wss::Ws,
    metrics: &signalling::turn::TurnMetrics,
    every: Duration,
) -> Ended {
    let mut every = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = every.tick() => {
                let allocations = metrics.allocations_active.load(Ordering::Relaxed);
                let relayed_bytes = metrics.relayed_bytes_total.load(Ordering::Relaxed);
                let load = VolunteerMessage::Load { allocations, relayed_bytes };
                if let Err(e) = ws.send(Message::text(load.to_json())).await {
                    return Ended::Lost(e.into());
                }
                emit(show, &RelayEvent::Load { allocations, relayed_bytes });
            }
            msg = next(ws) => match msg {
                Ok(PoolMessage::Refused { code, .. }) => return Ended::Refused(code),
                Ok(_) => return Ended::Refused(RelayRefusal::Malformed),
                Err(e) => return Ended::Lost(e),
            },
        }
    }
}

fn turn_config(
    args: &RelayArgs,
    secret: signalling::credentials::TurnSecret,
    public_ip: IpAddr,
) -> signalling::turn::TurnConfig {
    #[cfg(feature = "test-hooks")]
    let allow_private_peers = args.allow_private_peers;
    #[cfg(not(feature = "test-hooks"))]
    let allow_private_peers = false;
    // Listen in the family the server reaches us in (an unspecified IPv4 default becomes
    // IPv6's when the server sees an IPv6 address).
    let listen = match (args.listen.ip(), public_ip) {
        (IpAddr::V4(v4), IpAddr::V6(_)) if v4.is_unspecified() => SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            args.listen.port(),
        ),
        _ => args.listen,
    };
    signalling::turn::TurnConfig {
        listen,
        also_listen: None,
        relay_ip: public_ip,
        relay_bind_ip: Some(match public_ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }),
        relay_ports: args.relay_ports.clone(),
        realm: "punchdrop".into(),
        secret,
        allow_private_peers,
        max_bytes_per_allocation: args.max_bytes,
        max_allocation_lifetime: Duration::from_secs(2 * 3600),
        // Someone's home uplink: far fewer than a server's.
        caps: signalling::turn::TurnCaps {
            allocations: args.max_allocations,
            allocations_per_client: 8,
            tcp_connections: args.max_allocations,
            bytes_per_sec_per_allocation: args.max_rate,
            ..signalling::turn::TurnCaps::default()
        },
        own_addresses: Vec::new(),
        audit: signalling::audit::Audit::off(),
        tls: None,
    }
}

fn decode_welcome(
    secret: &str,
    public_ip: &str,
) -> anyhow::Result<(signalling::credentials::TurnSecret, IpAddr)> {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .context("the server's relay secret is not base64")?;
    let ip = public_ip
        .parse()
        .context("the server's idea of our address is not an IP")?;
    Ok((signalling::credentials::TurnSecret::new(secret), ip))
}

/// The server's next message (pings are answered by tungstenite as it reads). The server
/// pings every report period: silence for [`LOAD_STALE_SECS`] is a server gone.
async fn next(ws: &mut crate::wss::Ws) -> anyhow::Result<PoolMessage> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(LOAD_STALE_SECS), ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("the server went silent"))?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .context("the server sent a message this version cannot read");
            }
            Some(Ok(Message::Close(_))) | None => bail!("the server closed the connection"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(anyhow::Error::new(e).context("connection to the server")),
        }
    }
}

/// Show an event: a JSON line, a line for a person, or a log line.
fn emit(show: Show, e: &RelayEvent) {
    let json = match show {
        Show::Stdout { json } => json,
        // Logs carry no full address, not even our own.
        Show::Log => {
            match e {
                RelayEvent::Listening { mapped, .. } => {
                    tracing::info!(mapped, "volunteer relay listening")
                }
                RelayEvent::Listed => tracing::info!("the server lists this volunteer relay"),
                RelayEvent::Load {
                    allocations,
                    relayed_bytes,
                } => tracing::debug!(allocations, relayed_bytes, "volunteer relay load"),
                RelayEvent::Reconnecting { reason } => {
                    tracing::info!(reason, "volunteer relay registering again")
                }
            }
            return;
        }
    };
    let line = if json {
        serde_json::to_string(e).expect("events serialise")
    } else {
        match e {
            RelayEvent::Listening { public, mapped } => format!(
                "relay listening, reached at {public}{}",
                if *mapped {
                    " (mapped by the router)"
                } else {
                    ""
                }
            ),
            RelayEvent::Listed => "the server lists this relay: rooms may use it".into(),
            RelayEvent::Load { .. } => return,
            RelayEvent::Reconnecting { reason } => {
                format!("lost the server ({reason}); registering again")
            }
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
