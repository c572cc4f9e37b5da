//! UPnP IGD: SSDP discovery, then SOAP requests to the router's control URL (`igd-next`).

use super::{LEASE, Mapping, PortmapError, check_external, local_ip_towards, timed};
use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{PortMappingProtocol, SearchOptions};
use protocol::path::MapProtocol;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long SSDP discovery may take. A router on the LAN answers in milliseconds, a busy one
/// (or a busy host) later: nothing waits for it.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(2);
const DESCRIPTION: &str = "punchdrop";

/// Find the router, then (unless another protocol mapped first) map UDP `port`: to the same
/// number outside when it is free (easy to reason about), else to any.
pub(super) async fn map(port: u16, claim: &super::Claim) -> Result<Lease, PortmapError> {
    let Found {
        gw,
        internal_ip,
        external_ip,
    } = search().await?;
    let internal = SocketAddr::new(internal_ip, port);
    let ext_port = claim.map(add(&gw, internal, port)).await?;
    Ok(Lease {
        gw,
        mapping: Mapping {
            external: SocketAddr::new(external_ip, ext_port),
            internal,
            by: MapProtocol::Upnp,
        },
    })
}

/// Ask for `wanted` outside, else for any port; the port granted.
async fn add(gw: &Gateway<Tokio>, internal: SocketAddr, wanted: u16) -> Result<u16, PortmapError> {
    let lease = LEASE.as_secs() as u32;
    match timed(gw.add_port(
        PortMappingProtocol::UDP,
        wanted,
        internal,
        lease,
        DESCRIPTION,
    ))
    .await?
    {
        Ok(()) => Ok(wanted),
        Err(e) => {
            tracing::debug!("UPnP: port {wanted} refused ({e}); asking for any port");
            timed(gw.add_any_port(PortMappingProtocol::UDP, internal, lease, DESCRIPTION))
                .await?
                .map_err(|e| PortmapError::Refused(format!("UPnP: {e}").to_lowercase()))
        }
    }
}

/// A mapping held over UPnP IGD.
pub(super) struct Lease {
    gw: Gateway<Tokio>,
    mapping: Mapping,
}

impl Lease {
    pub(super) fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Add the same mapping again (a router that lost it makes it anew) and read the external
    /// address again (it may have changed). A router that does not answer at its control
    /// address any more (restarted on another port) is searched for again.
    pub(super) async fn renew(&mut self) -> Result<(), PortmapError> {
        let port = self.mapping.internal.port();
        let outcome = match local_ip_towards(self.gw.addr) {
            Ok(ip) => self.add_again(SocketAddr::new(ip, port)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::debug!("UPnP renewal: {e}; looking for the router again");
            let found = search().await?;
            self.gw = found.gw;
            self.add_again(SocketAddr::new(found.internal_ip, port))
                .await?;
        }
        Ok(())
    }

    /// [`Lease::renew`] with the current gateway. A mapping that had to move leaves its old
    /// port alone: the port may be another host's now (IGD has no "is it mine" short of
    /// listing entries), and if it was ours its lease ends it.
    async fn add_again(&mut self, internal: SocketAddr) -> Result<(), PortmapError> {
        let port = add(&self.gw, internal, self.mapping.external.port()).await?;
        let ip = timed(self.gw.get_external_ip())
            .await?
            .map_err(|_| PortmapError::NoExternalAddress)?;
        check_external(ip)?;
        self.mapping.internal = internal;
        self.mapping.external = SocketAddr::new(ip, port);
        Ok(())
    }

    pub(super) async fn release(self) -> Result<(), PortmapError> {
        timed(
            self.gw
                .remove_port(PortMappingProtocol::UDP, self.mapping.external.port()),
        )
        .await?
        .map_err(|e| PortmapError::Refused(e.to_string()))
    }
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
