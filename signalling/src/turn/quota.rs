//! How many allocations the TURN server holds, per credential, per client and in total.
//!
//! A credential is an open relay for its lifetime, and every allocation is a socket and a
//! port: without caps one client (or one leaked credential) could take every relay port and
//! file descriptor the server has, which the signalling server shares.
//!
//! Invariants: every allocation holds a [`Lease`] from its relay socket's creation until the
//! socket is dropped, however the allocation ends, and the counts are exactly the leases
//! alive. A client is an IPv4 address or an IPv6 /64 ([`crate::limits::subscriber`]).
//! Caps are checked twice: by the gate, which answers an Allocate beyond them with 486
//! (Allocation Quota Reached, RFC 5766 §6.2), and where the relay socket is made (the turn
//! crate then answers 508), which also holds for requests the two listeners race in.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::limits::subscriber;

/// Caps on what the TURN server holds at once.
#[derive(Debug, Clone)]
pub struct TurnCaps {
    /// Allocations from everyone.
    pub allocations: usize,
    /// Allocations from one client (IPv4 address or IPv6 /64): many people share one
    /// address behind a carrier's NAT.
    pub allocations_per_client: usize,
    /// Allocations under one credential: a room's two peers, each over a few transports.
    pub allocations_per_credential: usize,
    /// TURN-over-TCP connections from everyone.
    pub tcp_connections: usize,
    /// TURN-over-TCP connections from one client.
    pub tcp_connections_per_client: usize,
    /// Bytes per second one allocation may relay (both directions together); more is
    /// dropped, as a congested link would. `None`: no cap.
    pub bytes_per_sec_per_allocation: Option<u64>,
}

impl Default for TurnCaps {
    fn default() -> Self {
        Self {
            allocations: 4096,
            allocations_per_client: 32,
            allocations_per_credential: 8,
            tcp_connections: 1024,
            tcp_connections_per_client: 8,
            bytes_per_sec_per_allocation: None,
        }
    }
}

/// Which cap an allocation would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverCap {
    Total,
    Client,
    Credential,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
    by_credential: HashMap<String, usize>,
    /// Transport and client address of each allocation (a retransmitted Allocate for one of
    /// these is not a new allocation).
    five_tuples: HashSet<(&'static str, SocketAddr)>,
}

#[derive(Debug)]
pub(crate) struct Quotas {
    caps: TurnCaps,
    counts: Mutex<Counts>,
}

/// One allocation's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Lease {
    quotas: Arc<Quotas>,
    transport: &'static str,
    client: SocketAddr,
    credential: String,
}

impl Quotas {
    pub fn new(caps: TurnCaps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            counts: Mutex::default(),
        })
    }

    pub fn caps(&self) -> &TurnCaps {
        &self.caps
    }

    fn over(&self, c: &Counts, client: IpAddr, credential: &str) -> Option<OverCap> {
        let n = |m: Option<&usize>| m.copied().unwrap_or(0);
        if c.total >= self.caps.allocations {
            Some(OverCap::Total)
        } else if n(c.by_client.get(&subscriber(client))) >= self.caps.allocations_per_client {
            Some(OverCap::Client)
        } else if n(c.by_credential.get(credential)) >= self.caps.allocations_per_credential {
            Some(OverCap::Credential)
        } else {
            None
        }
    }

    /// Would a new allocation for `client` under `credential` pass a cap? `None` for a
    /// client that already has its allocation on `transport` (a retransmission).
    pub fn check(
        &self,
        transport: &'static str,
        client: SocketAddr,
        credential: &str,
    ) -> Option<OverCap> {
        let c = super::lock(&self.counts);
        if c.five_tuples.contains(&(transport, client)) {
            return None;
        }
        self.over(&c, client.ip(), credential)
    }

    /// Take a place for an allocation, or say which cap it would pass.
    pub fn take(
        self: &Arc<Self>,
        transport: &'static str,
        client: SocketAddr,
        credential: &str,
    ) -> Result<Lease, OverCap> {
        let mut c = super::lock(&self.counts);
        if let Some(over) = self.over(&c, client.ip(), credential) {
            return Err(over);
        }
        c.total += 1;
        *c.by_client.entry(subscriber(client.ip())).or_default() += 1;
        *c.by_credential.entry(credential.to_owned()).or_default() += 1;
        c.five_tuples.insert((transport, client));
        Ok(Lease {
            quotas: self.clone(),
            transport,
            client,
            credential: credential.to_owned(),
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut c = super::lock(&self.quotas.counts);
        c.total -= 1;
        let down = |n: &mut usize| {
            *n -= 1;
            *n > 0
        };
        let key = subscriber(self.client.ip());
        if let Some(n) = c.by_client.get_mut(&key)
            && !down(n)
        {
            c.by_client.remove(&key);
        }
        if let Some(n) = c.by_credential.get_mut(&self.credential)
            && !down(n)
        {
            c.by_credential.remove(&self.credential);
        }
        c.five_tuples.remove(&(self.transport, self.client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_hold_per_credential_client_and_total_and_places_come_back() {
        let q = Quotas::new(TurnCaps {
            allocations: 4,
            allocations_per_client: 3,
            allocations_per_credential: 2,
            ..Default::default()
        });
        let a1 = q.take("udp", addr("203.0.113.1:1000"), "u1").unwrap();
        let _a2 = q.take("udp", addr("203.0.113.1:1001"), "u1").unwrap();
        assert_eq!(
            q.take("udp", addr("203.0.113.1:1002"), "u1").unwrap_err(),
            OverCap::Credential
        );
        let _a3 = q.take("tcp", addr("203.0.113.1:1002"), "u2").unwrap();
        assert_eq!(
            q.take("udp", addr("203.0.113.1:1003"), "u3").unwrap_err(),
            OverCap::Client
        );
        // An IPv6 /64 is one client, whatever its addresses.
        let _b = q.take("udp", addr("[2001:db8:0:1::a]:1"), "u4").unwrap();
        assert_eq!(
            q.take("udp", addr("[2001:db8:0:2::a]:1"), "u5")
                .unwrap_err(),
            OverCap::Total
        );
        // A retransmitted Allocate of a live allocation is not a new one.
        assert_eq!(q.check("udp", addr("203.0.113.1:1000"), "u1"), None);
        assert_eq!(
            q.check("udp", addr("203.0.113.1:1009"), "u1"),
            Some(OverCap::Total)
        );
        drop(a1);
        assert_eq!(q.check("udp", addr("198.51.100.1:1"), "u9"), None);
        let _c = q.take("udp", addr("203.0.113.1:1004"), "u1").unwrap();
    }
}
