//! Who may connect: the client's address (behind proxies the operator trusts), caps on TCP
//! connections and on WebSockets per client and in total, and the `Origin` of browser
//! connections.
//!
//! Invariants:
//! - A client is an IPv4 address or an IPv6 /64 ([`crate::limits::subscriber`]), whatever it
//!   connects through; `X-Forwarded-For`/`Forwarded` are believed only from
//!   [`Admission::trusted`] proxies, so no one else can pick the address limits apply to.
//! - Every admitted connection holds a [`Slot`]; dropping it (the connection ending, however
//!   it ends) gives the place back.
//! - TCP connections speaking HTTP (page loads, requests not yet upgraded) are counted from
//!   accept, before a byte is read, until they end or become a WebSocket (which then holds
//!   its own place), so clients holding half-sent requests (until the header timeout) cannot
//!   take every socket; a trusted proxy's connections are not capped per client (they carry
//!   everyone), its clients' WebSockets are.
//! - A browser sends `Origin`, and a page from another site must not drive a visitor's
//!   browser into our rooms; programs (native-peer) send none and are let in.

use axum::http::{HeaderMap, header};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::limits::subscriber;

/// Settings of [`Admission`].
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Open WebSocket connections at most, from everyone.
    pub max_connections: usize,
    /// Open WebSocket connections at most from one client (IPv4 address or IPv6 /64).
    pub max_connections_per_client: usize,
    /// Connections speaking HTTP at most from one client (a page load opens several); all
    /// clients together at most `max_connections`.
    pub max_tcp_per_client: usize,
    /// Proxies whose `X-Forwarded-For`/`Forwarded` say who the client is.
    pub trusted_proxies: Vec<IpNet>,
    /// The origin pages are served from (`https://drop.example`); browser connections from
    /// any other are refused. Unset: the `Origin` must name the host the request was sent
    /// to (the `Host` header).
    pub public_origin: Option<String>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_connections_per_client: 16,
            max_tcp_per_client: 64,
            trusted_proxies: Vec::new(),
            public_origin: None,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ForeignOrigin,
    TooManyFromClient,
    TooMany,
}

impl Refusal {
    pub fn explain(self) -> &'static str {
        match self {
            Self::ForeignOrigin => "WebSocket connections are taken from this server's own pages",
            Self::TooManyFromClient => "too many connections from this address; close some",
            Self::TooMany => "the server has too many connections; retry later",
        }
    }
}

#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    websockets: Arc<Places>,
    tcp: Arc<Places>,
}

/// Places for connections of one kind, per client and in total.
#[derive(Debug)]
struct Places {
    total: usize,
    per_client: usize,
    taken: Mutex<HashMap<IpAddr, usize>>,
    open: AtomicUsize,
}

/// One admitted connection's place.
#[derive(Debug)]
pub struct Slot {
    places: Arc<Places>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per = self.places.lock();
        if let Some(n) = per.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.client);
            }
        }
        self.places.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Places {
    fn new(total: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_client,
            taken: Mutex::default(),
            open: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Refusal> {
        let client = subscriber(client);
        let mut per = self.lock();
        if self.open.load(Ordering::Relaxed) >= self.total {
            return Err(Refusal::TooMany);
        }
        if per.get(&client).copied().unwrap_or(0) >= self.per_client {
            return Err(Refusal::TooManyFromClient);
        }
        *per.entry(client).or_default() += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            places: self.clone(),
            client,
        })
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        let ws = (config.max_connections, config.max_connections_per_client);
        Arc::new(Self {
            websockets: Places::new(ws.0, ws.1),
            tcp: Places::new(config.max_connections, config.max_tcp_per_client),
            config,
        })
    }

    /// Open WebSocket connections now.
    pub fn open(&self) -> usize {
        self.websockets.open.load(Ordering::Relaxed)
    }

    /// Take a place for an HTTP connection from `peer` as it is accepted, or say why not. A
    /// trusted proxy's connections are counted only in the total.
    pub fn accept_tcp(&self, peer: IpAddr) -> Result<Slot, Refusal> {
        if self.trusted(peer) {
            return self.tcp.take_unlimited(peer);
        }
        self.tcp.take(peer)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the connection's peer, or — when that is a trusted proxy — the
    /// nearest address the proxies name that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        forwarded_for(headers)
            .into_iter()
            .rev()
            .find(|ip| !self.trusted(*ip))
            .unwrap_or(peer)
    }

    /// The origin pages are served from, when the operator said it.
    pub fn public_origin(&self) -> Option<&str> {
        self.config.public_origin.as_deref()
    }

    /// Is this request's `Origin` (if any) one of ours?
    pub fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return true;
        };
        match &self.config.public_origin {
            Some(ours) => origin.trim_end_matches('/') == ours.trim_end_matches('/'),
            None => {
                let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
                let origin_host = origin.split_once("://").map(|(_, h)| h);
                host.is_some() && origin_host == host
            }
        }
    }

    /// Take a place for a WebSocket from `client`, or say why not.
    pub fn admit(&self, client: IpAddr) -> Result<Slot, Refusal> {
        self.websockets.take(client)
    }
}

impl Places {
    /// A place counted in the total only (a trusted proxy's connection).
    fn take_unlimited(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Refusal> {
        if self.open.load(Ordering::Relaxed) >= self.total {
            return Err(Refusal::TooMany);
        }
        let mut per = self.lock();
        *per.entry(client).or_default() += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            places: self.clone(),
            client,
        })
    }
}

/// The addresses `X-Forwarded-For` (or else `Forwarded: for=`) lists, nearest last.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let xff: Vec<IpAddr> = values(header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .filter_map(|s| parse_ip(s))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    values(header::FORWARDED)
        .iter()
        .flat_map(|element| element.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.eq_ignore_ascii_case("for").then(|| parse_ip(v))?
        })
        .collect()
}

/// An address as proxies write them: `203.0.113.5`, `203.0.113.5:4711`, `"[2001:db8::1]:4711"`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let a = Admission::new(AdmissionConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        });
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.5, 10.9.9.9")]);
        assert_eq!(
            a.client_ip(proxy, &h),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            a.client_ip(stranger, &h),
            stranger,
            "not from a trusted proxy"
        );
        // A client cannot hide behind a name it put first: the nearest untrusted one counts.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.5")]);
        assert_eq!(
            a.client_ip(proxy, &h),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("forwarded", "for=\"[2001:db8::7]:4711\";proto=https")]);
        assert_eq!(
            a.client_ip(proxy, &h),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(a.client_ip(proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn origins() {
        let a = Admission::new(AdmissionConfig::default());
        let host = ("host", "drop.example:8080");
        assert!(a.origin_ok(&headers(&[host])), "programs send no Origin");
        assert!(a.origin_ok(&headers(&[host, ("origin", "https://drop.example:8080")])));
        assert!(!a.origin_ok(&headers(&[host, ("origin", "https://evil.example")])));
        let a = Admission::new(AdmissionConfig {
            public_origin: Some("https://drop.example".into()),
            ..Default::default()
        });
        assert!(a.origin_ok(&headers(&[("origin", "https://drop.example")])));
        assert!(!a.origin_ok(&headers(&[("origin", "http://drop.example")])));
    }

    #[test]
    fn caps_per_client_and_in_total_and_places_come_back() {
        let a = Admission::new(AdmissionConfig {
            max_connections: 3,
            max_connections_per_client: 2,
            ..Default::default()
        });
        let one: IpAddr = "203.0.113.1".parse().unwrap();
        // Two addresses of one IPv6 /64 are one client.
        let six_a: IpAddr = "2001:db8:0:1::a".parse().unwrap();
        let six_b: IpAddr = "2001:db8:0:1::b".parse().unwrap();
        let s1 = a.admit(one).unwrap();
        let _s2 = a.admit(one).unwrap();
        assert_eq!(a.admit(one).unwrap_err(), Refusal::TooManyFromClient);
        let _s3 = a.admit(six_a).unwrap();
        assert_eq!(a.admit(six_b).unwrap_err(), Refusal::TooMany);
        drop(s1);
        assert_eq!(a.open(), 2);
        let _s4 = a.admit(one).unwrap();
    }
}
