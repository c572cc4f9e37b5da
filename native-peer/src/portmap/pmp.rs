//! PCP (RFC 6887) and its predecessor NAT-PMP (RFC 6886), through `crab_nat`: one UDP
//! request to the default gateway's port 5351 each, PCP first, NAT-PMP when the router says
//! it speaks only that.
//!
//! - Neither protocol has discovery: the router is the default gateway, read from the
//!   kernel's routing table. Whether it speaks either is asked with a NAT-PMP
//!   external-address request, which changes nothing on the router: a PCP-only router
//!   answers it too ("unsupported version"); silence or "port unreachable" means neither.
//! - The router's epoch (seconds since it lost its mappings) comes back with every answer;
//!   one that went back in time means a restart (RFC 6887 §8.5), logged. The renewal that
//!   noticed it has made the mapping anew already.

use super::{LEASE, Mapping, PortmapError, check_external, local_ip_towards};
use crab_nat::{
    InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig, natpmp,
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
    let internal_ip = local_ip_towards(SocketAddr::new(gateway.into(), crab_nat::GATEWAY_PORT))?;
    let internal_port = NonZeroU16::new(port).ok_or(PortmapError::LocalAddress)?;
    match natpmp::external_address(gateway.into(), Some(TIMEOUTS)).await {
        Ok(_)
        | Err(natpmp::Failure::UnsupportedVersion(_) | natpmp::Failure::InvalidResponse(_)) => {}
        Err(e) => {
            tracing::debug!("NAT-PMP/PCP: {e}");
            return Err(PortmapError::NoGateway);
        }
    }
    let mapping = claim
        .map(async {
            PortMapping::new(
                gateway.into(),
                internal_ip,
                InternetProtocol::Udp,
                internal_port,
                PortMappingOptions {
                    external_port: Some(internal_port),
                    lifetime_seconds: Some(LEASE.as_secs() as u32),
                    timeout_config: Some(TIMEOUTS),
                },
            )
            .await
            .map_err(|e| PortmapError::Refused(e.to_string().to_lowercase()))
        })
        .await?;
    let mut lease = Lease {
        epoch: (mapping.gateway_epoch(), Instant::now()),
        ours: Mapping {
            external: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            internal: SocketAddr::new(internal_ip, port),
            by: MapProtocol::Pcp,
        },
        mapping,
    };
    if let Err(e) = lease.read_external().await {
        // Mapped, but useless: not left on the router.
        let _ = lease.release().await;
        return Err(e);
    }
    Ok(lease)
}

/// A mapping held over PCP or NAT-PMP.
pub(super) struct Lease {
    mapping: PortMapping,
    ours: Mapping,
    /// The router's epoch at the last answer, and when that answer came.
    epoch: (u32, Instant),
}

impl Lease {
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
        self.ours.external = SocketAddr::new(ip, self.mapping.external_port().get());
        Ok(())
    }

    /// Ask for the same mapping again (with PCP, under the same nonce: the router's record of
    /// it is ours to refresh).
    pub(super) async fn renew(&mut self) -> Result<(), PortmapError> {
        self.mapping
            .renew()
            .await
            .map_err(|e| PortmapError::Refused(e.to_string().to_lowercase()))?;
        let (before, at) = self.epoch;
        let now = self.mapping.gateway_epoch();
        if restarted(before, now, at.elapsed()) {
            tracing::info!("the router restarted (its epoch went back): the mapping was made anew");
        }
        self.epoch = (now, Instant::now());
        self.read_external().await
    }

    pub(super) async fn release(self) -> Result<(), PortmapError> {
        self.mapping
            .try_drop()
            .await
            .map_err(|(e, _)| PortmapError::Refused(e.to_string().to_lowercase()))
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
/// address a native-endian hex word of network-order bytes). Read by hand: a dozen lines,
/// where an interface-listing crate would bring much more than this.
fn default_gateway_v4(table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u16 = 0x1;
    const RTF_GATEWAY: u16 = 0x2;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, gw, flags, metric) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(6)?);
            let flags = u16::from_str_radix(flags, 16).ok()?;
            let default =
                *dest == "00000000" && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            let gw = u32::from_str_radix(gw, 16).ok()?;
            default.then(|| {
                (
                    metric.parse::<u32>().unwrap_or(u32::MAX),
                    Ipv4Addr::from(gw.to_ne_bytes()),
                )
            })
        })
        .min_by_key(|&(metric, _)| metric)
        .map(|(_, gw)| gw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn the_default_gateway_is_read_from_the_routing_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
";
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
