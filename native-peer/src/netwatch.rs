//! Notice this host's address going away under a live connection.
//!
//! An address change (another Wi-Fi, a new DHCP lease, an interface replaced) breaks the
//! path ICE chose without a word: its local address is gone, and ICE only calls the
//! connection failed after its timeouts of silence (≈ 20 s). The host knows at once. Beside a
//! live link the driver asks every [`EVERY`] whether the nominated pair's local address — a
//! host candidate's own, or the base a reflexive candidate was learnt from — is still on one
//! of this host's interfaces ([`Watch::gone`]); missing on two asks in a row, the connection
//! is given up and recovered through the room.
//!
//! Invariants: only an address that is *gone* counts. A new address beside it, a new default
//! route, a VPN coming up, an IPv6 temporary address rotating (the old one stays, deprecated)
//! leave the path's address in place, and ICE keeps what still works. An interface down
//! with its address kept is no verdict either: ICE rides that out. A relayed pair is not
//! watched (its base is not among the candidate's fields), nor a host candidate published
//! as an mDNS name.

use std::net::IpAddr;
use std::time::Duration;

/// How often the driver asks.
pub const EVERY: Duration = Duration::from_millis(500);

/// Asks in a row the address must be missing on (an address removed and put back by a
/// network manager in one go is not a change).
const MISSING_ASKS: u8 = 2;

/// One local address a connection's path starts from, and whether it is gone.
#[derive(Debug)]
pub struct Watch {
    base: IpAddr,
    missing: u8,
}

impl Watch {
    pub fn new(base: IpAddr) -> Self {
        Self { base, missing: 0 }
    }

    /// Ask again: `true` once the address has been missing from every interface on
    /// [`MISSING_ASKS`] asks in a row. An ask that fails (cannot list interfaces) says
    /// nothing.
    pub fn gone(&mut self) -> bool {
        if let Ok(addresses) = local_addresses() {
            match addresses.contains(&self.base) {
                true => self.missing = 0,
                false => self.missing = self.missing.saturating_add(1),
            }
        }
        self.missing >= MISSING_ASKS
    }
}

/// Every address on this host's interfaces.
fn local_addresses() -> nix::Result<Vec<IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_on_an_interface_is_never_gone() {
        assert!(
            local_addresses()
                .unwrap()
                .contains(&IpAddr::from([127, 0, 0, 1]))
        );
        let mut w = Watch::new(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..5 {
            assert!(!w.gone());
        }
    }

    #[test]
    fn an_address_missing_twice_in_a_row_is_gone() {
        // TEST-NET-1: on no interface of any machine that runs the tests.
        let mut w = Watch::new(IpAddr::from([192, 0, 2, 123]));
        assert!(!w.gone(), "one ask is not enough");
        assert!(w.gone());
    }
}
