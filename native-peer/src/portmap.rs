//! Port mapping (ladder step 2): ask the router, over UPnP IGD, to forward a public UDP port
//! to the socket ICE binds, so a peer behind a NAT that cannot be punched (symmetric) still
//! reaches us directly.
//!
//! - [`start`] runs in the background from program start, concurrently with signalling, and is
//!   bounded by [`SEARCH_TIMEOUT`] + [`REQUEST_TIMEOUT`]: connection setup never waits for it.
//!   Its outcome is published on a `watch` channel; [`crate::rtc`] advertises the mapped
//!   address as a candidate whenever it arrives (in the first description or trickled).
//! - Invariant: a mapping we created is removed by [`PortMapper::release`] (called on every
//!   exit path of `run`), and carries a lease so a crashed peer's mapping expires by itself;
//!   a background task renews it at half-life while the program runs.
//! - UPnP IGD is the protocol home routers most often speak; NAT-PMP/PCP are not implemented
//!   (see DESIGN.md § Port mapping).

use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};

/// How long SSDP discovery may take. A router on the LAN answers in milliseconds.
pub const SEARCH_TIMEOUT: Duration = Duration::from_millis(1000);
/// Bound on each SOAP request (external address, add, remove).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// Lease asked for. Renewed at half-life; expires on its own if we die without releasing.
pub const LEASE: Duration = Duration::from_secs(1200);
const DESCRIPTION: &str = "punchdrop";

/// Why no mapping could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PortmapError {
    #[error("no UPnP gateway answered")]
    NoGateway,
    #[error("the gateway did not tell its external address")]
    NoExternalAddress,
    #[error("the gateway's external address is not usable ({0})")]
    UnusableExternalAddress(&'static str),
    #[error("the gateway refused the mapping: {0}")]
    Refused(String),
    #[error("the gateway did not answer in time")]
    Timeout,
    #[error("cannot find our address towards the gateway")]
    LocalAddress,
}

/// A granted mapping: `external` on the router forwards to `internal` here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub external: SocketAddr,
    pub internal: SocketAddr,
}

/// What port mapping has come to so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Off,
    Pending,
    Mapped(Mapping),
    Failed(PortmapError),
}

impl State {
    /// Where the mapping stands, for the path report.
    pub fn report(&self) -> protocol::path::PortmapState {
        use protocol::path::PortmapState;
        match self {
            State::Off => PortmapState::Off,
            State::Pending => PortmapState::Pending,
            State::Mapped(_) => PortmapState::Mapped,
            State::Failed(_) => PortmapState::Failed,
        }
    }
}

/// The gateway and external port of our mapping, while we hold one.
type Held = Arc<Mutex<Option<(Gateway<Tokio>, u16)>>>;

/// Handle on the background mapping task.
#[derive(Debug, Clone)]
pub struct PortMapper {
    state: watch::Receiver<State>,
    /// The gateway and external port to release, once mapped.
    held: Held,
}

impl PortMapper {
    /// No port mapping (`--no-portmap`, loopback runs).
    pub fn off() -> Self {
        let (_tx, state) = watch::channel(State::Off);
        Self {
            state,
            held: Arc::default(),
        }
    }

    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Remove the mapping, if one was made. Bounded: the program is exiting.
    pub async fn release(&self) {
        let Some((gw, port)) = self.held.lock().await.take() else {
            return;
        };
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            gw.remove_port(PortMappingProtocol::UDP, port),
        )
        .await
        {
            Ok(Ok(())) => tracing::debug!("port mapping released"),
            Ok(Err(e)) => {
                tracing::info!("cannot release the port mapping (its lease ends it): {e}")
            }
            Err(_) => tracing::info!("releasing the port mapping timed out (its lease ends it)"),
        }
    }
}

/// Start mapping UDP `port` (the port ICE binds on every interface) in the background.
pub fn start(port: u16) -> PortMapper {
    let (tx, state) = watch::channel(State::Pending);
    let held: Held = Arc::default();
    let keep = held.clone();
    tokio::spawn(async move {
        let outcome = map(port, &keep).await;
        match &outcome {
            Ok(m) => tracing::info!(
                external_port = m.external.port(),
                "port mapped by the router (UPnP IGD)"
            ),
            Err(e) => tracing::info!("no port mapping: {e}"),
        }
        let mapped = outcome.is_ok();
        let _ = tx.send(match outcome {
            Ok(m) => State::Mapped(m),
            Err(e) => State::Failed(e),
        });
        if mapped {
            renew(port, keep).await;
        }
    });
    PortMapper { state, held }
}

/// A gateway found on the LAN: our address towards it and its public address.
struct Found {
    gw: Gateway<Tokio>,
    internal_ip: IpAddr,
    external_ip: IpAddr,
}

async fn search() -> Result<Found, PortmapError> {
    let mut opts = SearchOptions::default();
    opts.timeout = Some(SEARCH_TIMEOUT);
    opts.single_search_timeout = Some(SEARCH_TIMEOUT);
    let gw = tokio::time::timeout(SEARCH_TIMEOUT, igd_next::aio::tokio::search_gateway(opts))
        .await
        .map_err(|_| PortmapError::NoGateway)?
        .map_err(|e| {
            tracing::debug!("UPnP search: {e}");
            PortmapError::NoGateway
        })?;
    let internal_ip = local_ip_towards(gw.addr)?;
    let external_ip = timed(gw.get_external_ip())
        .await?
        .map_err(|_| PortmapError::NoExternalAddress)?;
    check_external(external_ip)?;
    Ok(Found {
        gw,
        internal_ip,
        external_ip,
    })
}

async fn map(port: u16, held: &Held) -> Result<Mapping, PortmapError> {
    let Found {
        gw,
        internal_ip,
        external_ip: ext_ip,
    } = search().await?;
    let internal = SocketAddr::new(internal_ip, port);
    let lease = LEASE.as_secs() as u32;
    // The same port outside as inside when it is free (easy to reason about), else any.
    let ext_port =
        match timed(gw.add_port(PortMappingProtocol::UDP, port, internal, lease, DESCRIPTION))
            .await?
        {
            Ok(()) => port,
            Err(e) => {
                tracing::debug!("same-port mapping refused ({e}); asking for any port");
                timed(gw.add_any_port(PortMappingProtocol::UDP, internal, lease, DESCRIPTION))
                    .await?
                    .map_err(|e| PortmapError::Refused(e.to_string().to_lowercase()))?
            }
        };
    *held.lock().await = Some((gw, ext_port));
    Ok(Mapping {
        external: SocketAddr::new(ext_ip, ext_port),
        internal,
    })
}

/// Re-add the mapping at half its lease, for as long as the program runs.
async fn renew(port: u16, held: Held) {
    loop {
        tokio::time::sleep(LEASE / 2).await;
        let guard = held.lock().await;
        let Some((gw, ext)) = guard.as_ref() else {
            return; // released
        };
        let Ok(internal) = local_ip_towards(gw.addr).map(|ip| SocketAddr::new(ip, port)) else {
            continue;
        };
        let lease = LEASE.as_secs() as u32;
        match timed(gw.add_port(PortMappingProtocol::UDP, *ext, internal, lease, DESCRIPTION)).await
        {
            Ok(Ok(())) => tracing::debug!("port mapping renewed"),
            Ok(Err(e)) => tracing::info!("cannot renew the port mapping: {e}"),
            Err(e) => tracing::info!("cannot renew the port mapping: {e}"),
        }
    }
}

async fn timed<T>(fut: impl std::future::Future<Output = T>) -> Result<T, PortmapError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| PortmapError::Timeout)
}

/// The local address the kernel would use to reach `gateway`: the one the router forwards to.
fn local_ip_towards(gateway: SocketAddr) -> Result<IpAddr, PortmapError> {
    let unspecified: SocketAddr = if gateway.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(unspecified).map_err(|_| PortmapError::LocalAddress)?;
    s.connect(gateway).map_err(|_| PortmapError::LocalAddress)?;
    Ok(s.local_addr().map_err(|_| PortmapError::LocalAddress)?.ip())
}

/// A router behind another NAT (double NAT, CGNAT) maps a port on an address nobody outside
/// can reach; advertising it only adds a useless candidate. Private ranges are refused here;
/// 198.18/15 (benchmarking) is allowed: it is the NAT lab's "internet".
fn check_external(ip: IpAddr) -> Result<(), PortmapError> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_unspecified() {
                return Err(PortmapError::UnusableExternalAddress("unspecified"));
            }
            if v4.is_private() || v4.is_loopback() || v4.is_link_local() {
                return Err(PortmapError::UnusableExternalAddress("private"));
            }
            if o[0] == 100 && (o[1] & 0xc0) == 64 {
                return Err(PortmapError::UnusableExternalAddress("carrier-grade NAT"));
            }
            Ok(())
        }
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_loopback() => {
            Err(PortmapError::UnusableExternalAddress("unspecified"))
        }
        IpAddr::V6(_) => Ok(()),
    }
}

/// Ports mapped to the same numbers outside, for a volunteer relay (its TURN port and relay
/// ports, which it advertises at the router's address under their own numbers). Renewed at
/// half-life by [`SamePorts::renew_every`]; removed by [`SamePorts::release`].
#[derive(Debug)]
pub struct SamePorts {
    gw: Gateway<Tokio>,
    internal_ip: IpAddr,
    ports: Vec<(PortMappingProtocol, u16)>,
    pub external_ip: IpAddr,
}

/// Map every one of `ports` to the same number on the router, or none (those made are
/// removed again when one is refused).
pub async fn map_same_ports(
    ports: &[(PortMappingProtocol, u16)],
) -> Result<SamePorts, PortmapError> {
    let Found {
        gw,
        internal_ip,
        external_ip,
    } = search().await?;
    let mut mapped = SamePorts {
        gw,
        internal_ip,
        ports: Vec::new(),
        external_ip,
    };
    for &(protocol, port) in ports {
        if let Err(e) = mapped.add(protocol, port).await {
            mapped.release().await;
            return Err(e);
        }
        mapped.ports.push((protocol, port));
    }
    Ok(mapped)
}

impl SamePorts {
    async fn add(&self, protocol: PortMappingProtocol, port: u16) -> Result<(), PortmapError> {
        let internal = SocketAddr::new(self.internal_ip, port);
        let lease = LEASE.as_secs() as u32;
        timed(
            self.gw
                .add_port(protocol, port, internal, lease, DESCRIPTION),
        )
        .await?
        .map_err(|e| PortmapError::Refused(format!("port {port}: {e}").to_lowercase()))
    }

    /// Re-add the mappings at half their lease, for as long as this runs.
    pub async fn renew_every(&self) {
        loop {
            tokio::time::sleep(LEASE / 2).await;
            for &(protocol, port) in &self.ports {
                if let Err(e) = self.add(protocol, port).await {
                    tracing::info!("cannot renew a port mapping: {e}");
                }
            }
        }
    }

    /// Remove the mappings. Bounded: the program is exiting (the leases end any left).
    pub async fn release(&self) {
        for &(protocol, port) in &self.ports {
            let _ = timed(self.gw.remove_port(protocol, port)).await;
        }
    }
}

/// An ICE candidate line (as webrtc-rs's `to_json` writes them) advertising `external`: a
/// server-reflexive candidate in all but origin. The related address is withheld (0.0.0.0:0),
/// as browsers do. `tag` keeps foundations of several advertised addresses apart.
pub fn candidate_line(external: SocketAddr, tag: u32) -> String {
    // RFC 8445 §5.1.2.1: type preference 100 (srflx), local preference 65535, component 1.
    let priority: u32 = (100 << 24) | (65535 << 8) | (256 - 1);
    format!(
        "candidate:{} 1 udp {priority} {} {} typ srflx raddr 0.0.0.0 rport 0",
        4_000_000_000u32 + tag,
        external.ip(),
        external.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_addresses_behind_another_nat_are_refused() {
        for bad in [
            "10.0.0.1",
            "192.168.1.1",
            "100.64.3.4",
            "0.0.0.0",
            "127.0.0.1",
        ] {
            assert!(check_external(bad.parse().unwrap()).is_err(), "{bad}");
        }
        for ok in ["198.18.0.2", "203.0.113.7", "2001:db8::1"] {
            assert!(check_external(ok.parse().unwrap()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn candidate_line_is_a_parsable_srflx_candidate() {
        let line = candidate_line("198.18.0.2:40000".parse().unwrap(), 1);
        assert!(line.starts_with("candidate:4000000001 1 udp "), "{line}");
        assert!(line.ends_with(" 198.18.0.2 40000 typ srflx raddr 0.0.0.0 rport 0"));
        // What the other peer's webrtc-rs makes of it.
        let raw = line.strip_prefix("candidate:").unwrap();
        let c = rtc::ice::candidate::unmarshal_candidate(raw).expect("parses");
        assert_eq!(c.address(), "198.18.0.2");
        assert_eq!(c.port(), 40000);
        assert_eq!(
            c.candidate_type(),
            rtc::ice::candidate::CandidateType::ServerReflexive
        );
    }
}
