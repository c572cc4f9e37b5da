//! Notice this host's network changing under a live connection.
//!
//! An address change (another Wi-Fi, a new DHCP lease, an interface replaced) breaks the
//! path ICE chose without a word: packets leave from an address the other peer never checked
//! (or through a NAT mapping it never saw), and ICE only calls the connection failed after
//! its timeouts of silence (≈ 20 s). The kernel knows at once: the source address it picks
//! towards the other peer changes. [`Route`] asks it (a connected UDP socket's local address:
//! no packet is sent) and says when the answer differs from the one the connection was made
//! with; the driver then treats the connection as lost and recovers through the room.
//!
//! Invariant: only a *changed* answer counts. No answer (no route for the moment: an
//! interface down, a cable out) is not a verdict — ICE rides that out, and when the network
//! comes back with the same address nothing was lost. The first answer is the reference, not
//! the ICE candidate's address, so a multi-homed host whose chosen path is not the default
//! route is never taken for a moved one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// How often the driver asks.
pub const EVERY: Duration = Duration::from_millis(500);

/// The source address this host uses towards one destination, and whether it changed.
#[derive(Debug)]
pub struct Route {
    towards: SocketAddr,
    was: Option<IpAddr>,
}

impl Route {
    /// Watch the route towards `towards` (the other peer's address on the chosen path).
    pub fn new(towards: SocketAddr) -> Self {
        Self {
            towards,
            was: source_towards(towards),
        }
    }

    /// `true` once the kernel picks another source address towards the other peer than it
    /// did when the watch began (or than its first answer, if it had none then).
    pub fn moved(&mut self) -> bool {
        let now = source_towards(self.towards);
        match (self.was, now) {
            (Some(was), Some(now)) => was != now,
            (None, now) => {
                self.was = now;
                false
            }
            (Some(_), None) => false,
        }
    }
}

/// The local address the kernel would send from towards `to`; `None` without a route.
fn source_towards(to: SocketAddr) -> Option<IpAddr> {
    let any: IpAddr = match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).ok()?;
    socket.connect(to).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_reached_from_loopback_and_never_moves() {
        let mut r = Route::new("127.0.0.1:9".parse().unwrap());
        assert_eq!(r.was, Some(IpAddr::from([127, 0, 0, 1])));
        assert!(!r.moved());
    }

    #[test]
    fn a_changed_answer_is_a_move_and_no_answer_is_not() {
        let mut r = Route::new("127.0.0.1:9".parse().unwrap());
        r.was = Some(IpAddr::from([10, 0, 2, 2]));
        assert!(r.moved(), "the kernel now answers 127.0.0.1");
        // No route at the start: the first answer becomes the reference.
        let mut r = Route {
            towards: "127.0.0.1:9".parse().unwrap(),
            was: None,
        };
        assert!(!r.moved());
        assert_eq!(r.was, Some(IpAddr::from([127, 0, 0, 1])));
    }
}
