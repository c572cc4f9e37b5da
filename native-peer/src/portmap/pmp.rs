//! PCP (RFC 6887) and its predecessor NAT-PMP (RFC 6886), through `crab_nat`'s requests:
//! one UDP request to the default gateway's port 5351 each, PCP first.
//!
//! - Neither protocol has discovery: the router is the default gateway, read from the
//!   kernel's routing table (Linux). Whether it speaks either is asked with a NAT-PMP
//!   external-address request, which changes nothing on the router: an answer, or a PCP-only
//!   router's "unsupported version", means someone is there; anything else means neither.
//! - PCP first; NAT-PMP when the router says it speaks only that, or when PCP got no answer
//!   from a router that did answer NAT-PMP. Our own PCP nonce, so a request that timed out
//!   (the router may still have mapped) can be taken back.
//! - Renewals ask for [`LEASE`] again (not what was last granted, which would only shrink)
//!   under the same nonce, from the address the host has now. The router's epoch comes back
//!   with every answer; one that went back in time means a restart (RFC 6887 §8.5), logged:
//!   the renewal that noticed it has made the mapping anew already.

use super::{LEASE, Mapping, PortmapError, check_external, local_ip_towards};
use crab_nat::{
    GatewayAddress, InternetProtocol, PortMapping, PortMappingOptions, PortMappingType,
    TimeoutConfig, VersionCode, natpmp, pcp,
};
use protocol::path::MapProtocol;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

/// Each request: 250 ms, then twice more at 500 ms (1.25 s at most). A router on the LAN
/// answers in milliseconds.
const TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_millis(500)),
};

/// Find the router, then (unless another protocol mapped first) map UDP `port`, asking for
/// the same number outside.
pub(super) async fn map(port: u16, claim: &super::Claim) -> Result<Lease, PortmapError> {
    let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let gateway = default_gateway_v4(&table).ok_or(PortmapError::NoGateway)?;
    let gateway = GatewayAddress::IpV4(gateway);
    let port = NonZeroU16::new(port).ok_or(PortmapError::LocalAddress)?;
    let client = client_towards(gateway)?;
    let speaks_natpmp = match natpmp::external_address(gateway, Some(TIMEOUTS)).await {
        Ok(_) => true,
        Err(natpmp::Failure::UnsupportedVersion(_)) => false,
        Err(e) => {
            tracing::debug!("NAT-PMP/PCP: {e}");
            return Err(PortmapError::NoGateway);
        }
    };
    let req = Request {
        gateway,
        client,
        port,
    };
    claim
        .map(async {
            let mapping = first_request(&req, speaks_natpmp).await?;
            Lease::granted_as(mapping, client).await
        })
        .await
}

/// Ask the router (the IPv6 default gateway, usually a link-local next hop) to open its
/// firewall to UDP `port` on `client`, the IPv6 address ICE bound: a PCP MAP with no
/// translation, the address and port outside being ours. The request leaves from `client`
/// (the vendored crab_nat's change), so the router sees who the pinhole is for.
pub(super) async fn pinhole(port: u16, client: std::net::Ipv6Addr) -> Result<Lease, PortmapError> {
    let table = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let (gateway, dev) = default_gateway_v6(&table).ok_or(PortmapError::NoGateway)?;
    let scope = match gateway.is_unicast_link_local() {
        true => Some(interface_index(&dev).ok_or(PortmapError::LocalAddress)?),
        false => None,
    };
    let gateway = GatewayAddress::IpV6(gateway, scope);
    let port = NonZeroU16::new(port).ok_or(PortmapError::LocalAddress)?;
    let client = IpAddr::V6(client);
    let req = Request {
        gateway,
        client,
        port,
    };
    let nonce: pcp::Nonce = rand::random();
    let mapping = match req.pcp(nonce, Some((client, port))).await {
        Ok(m) => m,
        Err(pcp::Failure::Timeout) => {
            req.drop_pcp(nonce).await;
            return Err(PortmapError::Timeout);
        }
        Err(e) => return Err(pcp_error(e)),
    };
    let mut lease = Lease::granted_as(mapping, client).await?;
    // The pinhole is for the address ICE bound; a newer temporary address is not it.
    lease.follow_client = false;
    Ok(lease)
}

/// Who asks the router for which port.
struct Request {
    gateway: GatewayAddress,
    client: IpAddr,
    port: NonZeroU16,
}

impl Request {
    fn options(&self, external_port: NonZeroU16) -> PortMappingOptions {
        PortMappingOptions {
            external_port: Some(external_port),
            lifetime_seconds: Some(LEASE.as_secs() as u32),
            timeout_config: Some(TIMEOUTS),
        }
    }

    async fn pcp(
        &self,
        nonce: pcp::Nonce,
        external: Option<(IpAddr, NonZeroU16)>,
    ) -> Result<PortMapping, pcp::Failure> {
        let base =
            pcp::BaseMapRequest::new(self.gateway, self.client, InternetProtocol::Udp, self.port);
        let (ip, port) = external.unzip();
        pcp::port_mapping(
            base,
            Some(nonce),
            ip,
            self.options(port.unwrap_or(self.port)),
        )
        .await
    }

    async fn natpmp(&self, external_port: NonZeroU16) -> Result<PortMapping, PortmapError> {
        let options = self.options(external_port);
        match natpmp::port_mapping(self.gateway, InternetProtocol::Udp, self.port, options).await {
            Ok(m) => Ok(m),
            Err(e) => {
                if matches!(e, natpmp::Failure::Timeout) {
                    // The router may have mapped and its answer been lost: take it back.
                    let _ = natpmp::try_drop_mapping(
                        self.gateway,
                        InternetProtocol::Udp,
                        Some(self.port),
                        Some(TIMEOUTS),
                    )
                    .await;
                }
                Err(natpmp_error(e))
            }
        }
    }

    /// Take back a PCP mapping under `nonce`, if the router made one.
    async fn drop_pcp(&self, nonce: pcp::Nonce) {
        let range = pcp::DropMappingRange::Single {
            protocol: InternetProtocol::Udp,
            internal_port: self.port,
        };
        let _ =
            pcp::try_drop_mapping(self.gateway, self.client, nonce, range, Some(TIMEOUTS)).await;
    }
}

/// PCP, else NAT-PMP (the router said it speaks only that, or PCP went unanswered by a router
/// that answered NAT-PMP).
async fn first_request(req: &Request, speaks_natpmp: bool) -> Result<PortMapping, PortmapError> {
    let nonce: pcp::Nonce = rand::random();
    match req.pcp(nonce, None).await {
        Ok(m) => Ok(m),
        Err(pcp::Failure::UnsupportedVersion(VersionCode::NatPmp)) => req.natpmp(req.port).await,
        Err(pcp::Failure::Timeout) => {
            req.drop_pcp(nonce).await;
            match speaks_natpmp {
                true => req.natpmp(req.port).await,
                false => Err(PortmapError::Timeout),
            }
        }
        Err(e) => Err(pcp_error(e)),
    }
}

fn pcp_error(e: pcp::Failure) -> PortmapError {
    match e {
        pcp::Failure::Timeout => PortmapError::Timeout,
        pcp::Failure::Socket(_) => PortmapError::NoGateway,
        e => PortmapError::Refused(format!("PCP: {e}").to_lowercase()),
    }
}

fn natpmp_error(e: natpmp::Failure) -> PortmapError {
    match e {
        natpmp::Failure::Timeout => PortmapError::Timeout,
        natpmp::Failure::Socket(_) => PortmapError::NoGateway,
        e => PortmapError::Refused(format!("NAT-PMP: {e}").to_lowercase()),
    }
}

/// Our address towards the router (the one it forwards to).
fn client_towards(gateway: GatewayAddress) -> Result<IpAddr, PortmapError> {
    local_ip_towards(SocketAddr::new(gateway.into(), crab_nat::GATEWAY_PORT))
}

/// A mapping held over PCP or NAT-PMP.
pub(super) struct Lease {
    mapping: PortMapping,
    ours: Mapping,
    /// The address the mapping forwards to.
    client: IpAddr,
    /// Renewals ask from the address the host has now (a mapping: the router translates to
    /// whatever the host has), or keep the first (a pinhole: ICE's socket is bound to it).
    follow_client: bool,
    /// The router's epoch at the last answer, and when that answer came.
    epoch: (u32, Instant),
}

impl Lease {
    /// The lease of what the router granted `client`, its external address read and checked;
    /// a mapping that is useless (an external address nobody can reach) is not left on the
    /// router, nor counted as the mapping.
    async fn granted_as(mapping: PortMapping, client: IpAddr) -> Result<Self, PortmapError> {
        let port = mapping.internal_port().get();
        let mut lease = Lease {
            epoch: (mapping.gateway_epoch(), Instant::now()),
            ours: Mapping {
                external: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                internal: SocketAddr::new(client, port),
                by: MapProtocol::Pcp,
            },
            client,
            follow_client: true,
            mapping,
        };
        if let Err(e) = lease.read_external().await {
            let _ = lease.release().await;
            return Err(e);
        }
        Ok(lease)
    }

    pub(super) fn mapping(&self) -> &Mapping {
        &self.ours
    }

    /// The lifetime the router granted (it may cut what we asked for).
    pub(super) fn granted(&self) -> Duration {
        Duration::from_secs(self.mapping.lifetime().into())
    }

    /// Our mapping as the router last described it; its external address checked.
    async fn read_external(&mut self) -> Result<(), PortmapError> {
        let (by, ip) = match self.mapping.mapping_type() {
            PortMappingType::Pcp { external_ip, .. } => (MapProtocol::Pcp, external_ip),
            PortMappingType::NatPmp => {
                let ip = natpmp::external_address(self.mapping.gateway(), Some(TIMEOUTS))
                    .await
                    .map_err(|_| PortmapError::NoExternalAddress)?;
                (MapProtocol::NatPmp, IpAddr::V4(ip))
            }
        };
        check_external(ip)?;
        self.ours.by = by;
        self.ours.internal = SocketAddr::new(self.client, self.ours.internal.port());
        self.ours.external = SocketAddr::new(ip, self.mapping.external_port().get());
        Ok(())
    }

    /// Ask for the same mapping again, for a whole [`LEASE`], from the address this host has
    /// now (a host that moved on the LAN takes its old mapping back first).
    pub(super) async fn renew(&mut self) -> Result<(), PortmapError> {
        let gateway = self.mapping.gateway();
        let client = match self.follow_client {
            true => client_towards(gateway)?,
            false => self.client,
        };
        if client != self.client {
            tracing::info!("this host's address on the LAN changed: mapping the port anew");
            let _ = self.mapping.clone().try_drop().await;
            self.client = client;
        }
        let req = Request {
            gateway,
            client,
            port: self.mapping.internal_port(),
        };
        let external_port = self.mapping.external_port();
        let renewed = match self.mapping.mapping_type() {
            PortMappingType::Pcp {
                nonce, external_ip, ..
            } => req
                .pcp(nonce, Some((external_ip, external_port)))
                .await
                .map_err(pcp_error)?,
            PortMappingType::NatPmp => req.natpmp(external_port).await?,
        };
        if renewed.lifetime() == 0 {
            return Err(PortmapError::Refused(
                "the router granted no lifetime".into(),
            ));
        }
        let (before, at) = self.epoch;
        let now = renewed.gateway_epoch();
        if restarted(before, now, at.elapsed()) {
            tracing::info!("the router restarted (its epoch went back): the mapping was made anew");
        }
        self.epoch = (now, Instant::now());
        self.mapping = renewed;
        self.read_external().await
    }

    pub(super) async fn release(self) -> Result<(), PortmapError> {
        self.mapping.try_drop().await.map_err(|(e, _)| match e {
            crab_nat::MappingFailure::Pcp(e) => pcp_error(e),
            crab_nat::MappingFailure::NatPmp(e) => natpmp_error(e),
        })
    }
}

/// RFC 6887 §8.5: the router lost its state if its epoch went back, or moved on much less
/// (or much more) than our clock did since its last answer (a 1/16 drift and 2 s allowed).
fn restarted(before: u32, now: u32, ours: Duration) -> bool {
    if now.saturating_add(1) < before {
        return true;
    }
    let (server, client) = (u64::from(now.saturating_sub(before)), ours.as_secs());
    client + 2 < server - server / 16 || server + 2 < client - client / 16
}

/// The IPv4 default gateway with the lowest metric in `/proc/net/route`'s format (each
/// address a native-endian hex word of network-order bytes). Only a route to 0.0.0.0/0
/// counts (a VPN's two /1 routes also have destination 0). Read by hand: a dozen lines,
/// where an interface-listing crate would bring much more than this.
fn default_gateway_v4(table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u16 = 0x1;
    const RTF_GATEWAY: u16 = 0x2;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, gw, flags) = (*f.get(1)?, *f.get(2)?, *f.get(3)?);
            let (metric, mask) = (*f.get(6)?, *f.get(7)?);
            let flags = u16::from_str_radix(flags, 16).ok()?;
            let up = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            let default = dest == "00000000" && mask == "00000000" && up;
            let gw = u32::from_str_radix(gw, 16).ok()?;
            let metric = metric.parse::<u32>().unwrap_or(u32::MAX);
            default.then(|| (metric, Ipv4Addr::from(gw.to_ne_bytes())))
        })
        .min_by_key(|&(metric, _)| metric)
        .map(|(_, gw)| gw)
}

/// The kernel's index of interface `dev` (a link-local address's scope).
fn interface_index(dev: &str) -> Option<u32> {
    let path = format!("/sys/class/net/{dev}/ifindex");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The IPv6 default route's next hop with the lowest metric, and the interface it is on, in
/// `/proc/net/ipv6_route`'s format (addresses as 32 hex digits, metric and flags in hex).
fn default_gateway_v6(table: &str) -> Option<(std::net::Ipv6Addr, String)> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let zero = "0".repeat(32);
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, plen, hop, dev) = (*f.first()?, *f.get(1)?, *f.get(4)?, *f.get(9)?);
            let metric = u32::from_str_radix(f.get(5)?, 16).ok()?;
            let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
            let up = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            let default = dest == zero && plen == "00" && hop != zero && up;
            let hop = u128::from_str_radix(hop, 16).ok()?;
            default.then(|| (metric, std::net::Ipv6Addr::from(hop), dev.to_owned()))
        })
        .min_by_key(|(metric, ..)| *metric)
        .map(|(_, hop, dev)| (hop, dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_default_gateway_is_read_from_the_routing_table() {
        let table = "\
20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000003 00000000 00000003    wlan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000100000000000000000001 00000100 00000003 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        let gw = default_gateway_v6(table).unwrap();
        assert_eq!(gw, ("2001:db8:1::1".parse().unwrap(), "eth0".to_owned()));
        assert_eq!(default_gateway_v6(""), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn the_default_gateway_is_read_from_the_routing_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
tun0\t00000000\t0108080A\t0003\t0\t0\t0\t00000080\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
";
        // The lowest metric of the real default routes; a VPN's 0.0.0.0/1 is not one.
        assert_eq!(default_gateway_v4(table), Some(Ipv4Addr::new(10, 0, 1, 1)));
        let no_default = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask
eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF
";
        assert_eq!(default_gateway_v4(no_default), None);
        assert_eq!(default_gateway_v4(""), None);
    }

    #[test]
    fn an_epoch_that_went_back_or_lagged_means_a_restart() {
        let s = Duration::from_secs;
        // Moving on with our clock: the same router.
        assert!(!restarted(1000, 1600, s(600)));
        assert!(!restarted(1000, 1001, s(0)));
        // Back in time: restarted.
        assert!(restarted(1000, 5, s(600)));
        // Restarted 100 s ago, asked 600 s after the last answer.
        assert!(restarted(1000, 1100, s(600)));
    }
}
