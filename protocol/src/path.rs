//! How two peers ended up connected, described once for both clients.
//!
//! Each client reads the selected candidate pair off its own ICE stack (webrtc-rs's stats
//! and ICE transport, or the browser's `getStats()`), turns it into a [`SelectedPair`] and a
//! [`PathContext`], and [`describe`] decides the rest: the kind of path, and why a relay was
//! needed. The result, [`PathReport`], is what the `connected` and `done` events carry and
//! what people read.
//!
//! Invariant: the kind is `relay` whenever either end of the pair is a relay candidate, so a
//! relayed path is never reported as direct on one side only because that side's end is not
//! the relay.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The rung of the ladder a connection stands on.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Straight between the peers: same network, or a hole punched through the NATs.
    Direct,
    /// Through the port this side's router mapped for it (UPnP IGD).
    Mapped,
    /// Through a port the user forwarded by hand (`--port` with `--public-addr`).
    Forwarded,
    /// Through a TURN relay.
    Relay,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Mapped => "mapped",
            Self::Forwarded => "forwarded",
            Self::Relay => "relay",
        }
    }
}

/// An ICE candidate type (RFC 8445 §5.1.1).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
    /// The ICE stack did not say.
    #[default]
    Unknown,
}

impl CandidateType {
    /// From the names ICE stacks use: `host`, `srflx`, `prflx`, `relay`, and the long forms
    /// of the stats specification (`serverreflexive`, …).
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "host" => Self::Host,
            "srflx" | "serverreflexive" => Self::Srflx,
            "prflx" | "peerreflexive" => Self::Prflx,
            "relay" | "relayed" => Self::Relay,
            _ => Self::Unknown,
        }
    }

    /// Not a relay: a candidate a direct pair can be made of.
    pub fn is_direct(self) -> bool {
        self != Self::Relay
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Srflx => "srflx",
            Self::Prflx => "prflx",
            Self::Relay => "relay",
            Self::Unknown => "unknown",
        }
    }
}

/// How this side's packets travel: for a relayed local candidate, how it reaches the relay.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// From `udp`, `tcp`, `tls` in any case; anything else is UDP, what ICE speaks by default.
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "tls" => Self::Tls,
            _ => Self::Udp,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// Where this side's router port mapping stands (native peers only; browsers cannot map).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PortmapState {
    /// Not asked for (`--no-portmap`, a fixed `--port`, relay only, loopback).
    Off,
    /// Asked for, no answer yet.
    Pending,
    /// The router mapped a port; its address was offered to the other peer.
    Mapped,
    /// The router refused or did not answer.
    Failed,
}

/// The IP version a path runs over (this side's candidate of the pair).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
}

impl IpFamily {
    /// The family of the first of `addresses` that is an IP address (a candidate's address
    /// may be an mDNS name, or hidden).
    pub fn of_first<'a>(addresses: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        addresses.into_iter().find_map(|a| {
            let ip: core::net::IpAddr = a.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
            Some(ip.into())
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        }
    }
}

impl From<core::net::IpAddr> for IpFamily {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(_) => Self::Ipv4,
            core::net::IpAddr::V6(_) => Self::Ipv6,
        }
    }
}

/// Which protocol the router granted this side's port mapping with.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MapProtocol {
    /// UPnP IGD (SSDP discovery, then SOAP over HTTP).
    Upnp,
    /// NAT-PMP (RFC 6886).
    NatPmp,
    /// PCP (RFC 6887), NAT-PMP's successor.
    Pcp,
}

impl MapProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upnp => "UPnP IGD",
            Self::NatPmp => "NAT-PMP",
            Self::Pcp => "PCP",
        }
    }
}

/// Why a relay carries the connection.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RelayReason {
    /// This side asked for relays only (`--relay-only`).
    Forced,
    /// This side got no STUN answer over UDP, while TURN over TCP (or TLS) worked.
    UdpBlocked,
    /// The other peer offered relay candidates only.
    PeerOfferedNoDirect,
    /// The other peer had no server-reflexive candidate: its STUN got no answer.
    PeerGotNoStun,
    /// Both sides had direct candidates and no pair of them worked (symmetric NAT, firewall).
    NoDirectPair,
    /// This side sends direct, but the other side's ICE agent sends through a relay.
    PeerRelays,
}

impl RelayReason {
    /// What a person reads.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Forced => "relay forced (--relay-only)",
            Self::UdpBlocked => "UDP blocked: relayed over TCP (or TLS)",
            Self::PeerOfferedNoDirect => "the other peer offered no direct candidates",
            Self::PeerGotNoStun => {
                "no direct candidate pair succeeded; the other peer got no STUN answer (UDP blocked on its side?)"
            }
            Self::NoDirectPair => {
                "no direct candidate pair succeeded (symmetric NAT on either side?)"
            }
            Self::PeerRelays => "the other side sends through a relay",
        }
    }
}

impl fmt::Display for RelayReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.explain())
    }
}

/// The pair one side sends on: what each side tells the other over the data channel.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairView {
    #[serde(rename = "path")]
    pub kind: PathKind,
    pub local: CandidateType,
    pub remote: CandidateType,
    pub protocol: Transport,
}

impl fmt::Display for PairView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ↔ {}, {}",
            self.kind.as_str(),
            self.local.as_str(),
            self.remote.as_str(),
            self.protocol.as_str()
        )
    }
}

/// The path a connection takes, as both clients report it at `connected` and `done`.
///
/// Each ICE agent sends on the pair it selected, and the two can differ (a controlling agent
/// moves to a better pair before the other side follows). So a report holds this side's pair
/// and, once the other side said it, that side's; `kind` is `relay` if either direction is.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PathReport {
    /// This side's kind, or `relay` if the other side's direction is relayed.
    #[serde(rename = "path")]
    pub kind: PathKind,
    /// This side's candidate of the selected pair.
    pub local: CandidateType,
    /// The other side's candidate of the selected pair, as this side knows it (a candidate
    /// learnt from a check rather than signalled is `prflx`).
    pub remote: CandidateType,
    pub protocol: Transport,
    /// The IP version of this side's pair, when its stack tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<IpFamily>,
    /// Why a relay was needed (relayed paths only).
    pub reason: Option<RelayReason>,
    /// This side's port mapping (native peers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portmap: Option<PortmapState>,
    /// The protocol the router mapped the port with (mapped only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_by: Option<MapProtocol>,
    /// The pair the other side sends on, as it said (absent until it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PairView>,
}

impl PathReport {
    /// A path the ICE stack would not describe (its statistics were unavailable).
    pub fn unknown() -> Self {
        describe(
            SelectedPair {
                local: CandidateType::Unknown,
                remote: CandidateType::Unknown,
                protocol: Transport::Udp,
                local_port: None,
                family: None,
            },
            &PathContext::default(),
        )
    }

    /// This side's own pair.
    pub fn view(&self) -> PairView {
        PairView {
            kind: if self.local == CandidateType::Relay || self.remote == CandidateType::Relay {
                PathKind::Relay
            } else if self.kind == PathKind::Relay {
                // Only the other direction made it relay: this side's own is direct.
                PathKind::Direct
            } else {
                self.kind
            },
            local: self.local,
            remote: self.remote,
            protocol: self.protocol,
        }
    }

    /// This report with the other side's pair: relayed if either direction is.
    pub fn with_peer(mut self, peer: Option<PairView>) -> Self {
        self.peer = peer;
        if peer.is_some_and(|p| p.kind == PathKind::Relay) && self.kind != PathKind::Relay {
            self.kind = PathKind::Relay;
            self.reason = Some(RelayReason::PeerRelays);
        }
        self
    }
}

impl fmt::Display for PathReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match (self.kind, self.local, self.remote) {
            (PathKind::Relay, ..) => "relayed".to_owned(),
            (PathKind::Mapped, ..) => match self.mapped_by {
                Some(by) => format!("through the router's port mapping ({})", by.as_str()),
                None => "through the router's port mapping".to_owned(),
            },
            (PathKind::Forwarded, ..) => "through the forwarded port".to_owned(),
            // IPv6 has no NAT: host to host may well cross the internet.
            (_, CandidateType::Host, CandidateType::Host)
                if self.family == Some(IpFamily::Ipv6) =>
            {
                "host to host".to_owned()
            }
            (_, CandidateType::Host, CandidateType::Host) => "on the local network".to_owned(),
            _ => "hole punched".to_owned(),
        };
        write!(
            f,
            "{} path, {how} ({} ↔ {}, {}",
            self.kind.as_str(),
            self.local.as_str(),
            self.remote.as_str(),
            self.protocol.as_str()
        )?;
        // IPv4 is what people expect; only the other one is worth saying.
        let v6 = if self.family == Some(IpFamily::Ipv6) {
            ", IPv6"
        } else {
            ""
        };
        write!(f, "{v6})")?;
        if let Some(r) = self.reason {
            write!(f, ": {r}")?;
        }
        if let Some(p) = self.peer {
            write!(f, "; the other side sends {p}")?;
        }
        Ok(())
    }
}

/// Both directions of a connection while a transfer runs, for one side: its own pair and what
/// the other side says of its own (`protocol::transfer`'s hellos and `path` frames). Each side
/// says its pair at open (in its hello) and once more as its part ends — the sender after its
/// last data frame, the receiver before it says the transfer is complete — so both `done`
/// events describe the path as it was at the end even when ICE moved meanwhile. It says
/// `connected` once, as soon as both pairs are known.
#[derive(Debug, Clone)]
pub struct PathTrack {
    own: PathReport,
    /// A connection before this one was lost: the event is `reconnected`.
    again: bool,
    announced: bool,
    end_told: bool,
}

impl PathTrack {
    /// Start with this side's path at open.
    pub fn new(own: PathReport) -> Self {
        Self {
            own,
            again: false,
            announced: false,
            end_told: false,
        }
    }

    /// This side's pair, to tell the other side.
    pub fn view(&self) -> PairView {
        self.own.view()
    }

    /// `true` once: when this side's part is about to end, its pair should be read again and
    /// told ([`PathTrack::update`]).
    pub fn end_due(&mut self) -> bool {
        !std::mem::replace(&mut self.end_told, true)
    }

    /// This side's path, read again; returns the pair to tell the other side (the transfer
    /// machine sends it only if it changed).
    pub fn update(&mut self, own: PathReport) -> PairView {
        self.own = own;
        self.own.view()
    }

    /// This connection replaces one that was lost: [`PathTrack::announce`] says
    /// `reconnected`.
    pub fn again(mut self, again: bool) -> Self {
        self.again = again;
        self
    }

    /// The `connected` (or, [`PathTrack::again`], `reconnected`) event, the first time.
    pub fn announce(
        &mut self,
        peer: Option<PairView>,
        ms_since_room: f64,
    ) -> Option<crate::event::Event> {
        let c = self.connected(peer, ms_since_room)?;
        Some(match self.again {
            true => crate::event::Reconnected::from(c).into(),
            false => c.into(),
        })
    }

    /// The `connected` event, the first time: with the other side's pair once it is known;
    /// without when the transfer moves on before it came (an offer, an accept).
    pub fn connected(
        &mut self,
        peer: Option<PairView>,
        ms_since_room: f64,
    ) -> Option<crate::event::Connected> {
        if std::mem::replace(&mut self.announced, true) {
            return None;
        }
        Some(crate::event::Connected {
            path: self.report(peer),
            ms_since_room,
        })
    }

    /// The path both ways now.
    pub fn report(&self, peer: Option<PairView>) -> PathReport {
        self.own.clone().with_peer(peer)
    }
}

/// The selected candidate pair, as a client reads it off its ICE stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectedPair {
    pub local: CandidateType,
    pub remote: CandidateType,
    /// How this side's packets leave (for a relay: how it reaches the relay).
    pub protocol: Transport,
    /// The local candidate's port (to recognise the socket behind an advertised address).
    pub local_port: Option<u16>,
    pub family: Option<IpFamily>,
}

/// What [`describe`] needs beyond the pair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathContext {
    /// This side used relay candidates only.
    pub relay_only: bool,
    /// This side restricted TURN to one transport (diagnostics).
    pub relay_transport: Option<Transport>,
    /// The local port behind an address this side advertised, and what it makes of a path
    /// through it ([`PathKind::Mapped`] or [`PathKind::Forwarded`]).
    pub advertised: Option<(u16, PathKind)>,
    /// The family of the advertised address: a pair of the other family on the same port
    /// (the host binds that port for both) is not through it.
    pub advertised_family: Option<IpFamily>,
    pub portmap: Option<PortmapState>,
    pub mapped_by: Option<MapProtocol>,
    /// Types of every local and remote candidate ICE had (for the relay reason).
    pub local_candidates: Vec<CandidateType>,
    pub remote_candidates: Vec<CandidateType>,
}

/// Decide the path's kind and, for a relay, why.
pub fn describe(pair: SelectedPair, ctx: &PathContext) -> PathReport {
    let relayed = pair.local == CandidateType::Relay || pair.remote == CandidateType::Relay;
    // Our host socket behind an advertised address, talking to a peer that is not on our
    // network: the router let it in through that port. (A cone NAT could also have let it
    // in by hole punching on the same socket; the path is the same.)
    let advertised = ctx.advertised.and_then(|(port, kind)| {
        let family_fits = match (pair.family, ctx.advertised_family) {
            (Some(pair), Some(advertised)) => pair == advertised,
            _ => true,
        };
        (pair.local == CandidateType::Host
            && pair.local_port == Some(port)
            && pair.remote != CandidateType::Host
            && family_fits)
            .then_some(kind)
    });
    let kind = if relayed {
        PathKind::Relay
    } else {
        advertised.unwrap_or(PathKind::Direct)
    };
    PathReport {
        kind,
        local: pair.local,
        remote: pair.remote,
        protocol: pair.protocol,
        family: pair.family,
        reason: relayed.then(|| relay_reason(pair.protocol, ctx)),
        portmap: ctx.portmap,
        mapped_by: ctx.mapped_by,
        peer: None,
    }
}

/// Why a relay carries the connection, from the candidates each side had.
fn relay_reason(protocol: Transport, ctx: &PathContext) -> RelayReason {
    let direct = |v: &[CandidateType]| v.iter().filter(|t| t.is_direct()).count();
    let has_srflx = |v: &[CandidateType]| v.contains(&CandidateType::Srflx);
    if ctx.relay_only {
        RelayReason::Forced
    } else if protocol != Transport::Udp
        && !has_srflx(&ctx.local_candidates)
        && ctx.relay_transport.is_none()
    {
        RelayReason::UdpBlocked
    } else if direct(&ctx.remote_candidates) == 0 {
        RelayReason::PeerOfferedNoDirect
    } else if !has_srflx(&ctx.remote_candidates) {
        RelayReason::PeerGotNoStun
    } else {
        RelayReason::NoDirectPair
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CandidateType::*;

    fn pair(local: CandidateType, remote: CandidateType) -> SelectedPair {
        SelectedPair {
            local,
            remote,
            protocol: Transport::Udp,
            local_port: Some(4000),
            family: None,
        }
    }

    #[test]
    fn the_family_is_read_from_the_first_address_that_is_one() {
        assert_eq!(
            IpFamily::of_first(["x.local", "2001:db8::1"]),
            Some(IpFamily::Ipv6)
        );
        assert_eq!(IpFamily::of_first(["[2001:db8::2]"]), Some(IpFamily::Ipv6));
        assert_eq!(
            IpFamily::of_first(["198.18.0.2", "2001:db8::1"]),
            Some(IpFamily::Ipv4)
        );
        assert_eq!(IpFamily::of_first(["", "abc.local"]), None);
        let ctx = PathContext::default();
        let mut p = pair(CandidateType::Host, CandidateType::Host);
        p.family = Some(IpFamily::Ipv6);
        let shown = describe(p, &ctx).to_string();
        assert!(
            shown.contains("host to host (host ↔ host, udp, IPv6)"),
            "{shown}"
        );
    }

    #[test]
    fn either_relay_end_makes_a_relayed_path() {
        let ctx = PathContext {
            local_candidates: vec![Host, Srflx, Relay],
            remote_candidates: vec![Host, Srflx, Relay],
            ..Default::default()
        };
        for (l, r) in [(Relay, Srflx), (Host, Relay), (Relay, Relay)] {
            let p = describe(pair(l, r), &ctx);
            assert_eq!(p.kind, PathKind::Relay);
            assert_eq!(p.reason, Some(RelayReason::NoDirectPair));
        }
        let p = describe(pair(Srflx, Prflx), &ctx);
        assert_eq!((p.kind, p.reason), (PathKind::Direct, None));
    }

    #[test]
    fn advertised_port_makes_mapped_or_forwarded_unless_the_peer_is_local() {
        let mut ctx = PathContext {
            advertised: Some((4000, PathKind::Mapped)),
            portmap: Some(PortmapState::Mapped),
            ..Default::default()
        };
        assert_eq!(describe(pair(Host, Prflx), &ctx).kind, PathKind::Mapped);
        assert_eq!(describe(pair(Host, Host), &ctx).kind, PathKind::Direct);
        ctx.advertised = Some((4001, PathKind::Forwarded));
        assert_eq!(describe(pair(Host, Srflx), &ctx).kind, PathKind::Direct);
        ctx.advertised = Some((4000, PathKind::Forwarded));
        assert_eq!(describe(pair(Host, Srflx), &ctx).kind, PathKind::Forwarded);
        // The same port bound for IPv6 too: an IPv6 pair is not through an IPv4 mapping.
        ctx.advertised = Some((4000, PathKind::Mapped));
        ctx.advertised_family = Some(IpFamily::Ipv4);
        let mut v6 = pair(Host, Prflx);
        v6.family = Some(IpFamily::Ipv6);
        assert_eq!(describe(v6, &ctx).kind, PathKind::Direct);
        v6.family = Some(IpFamily::Ipv4);
        assert_eq!(describe(v6, &ctx).kind, PathKind::Mapped);
    }

    #[test]
    fn relay_reasons() {
        let with = |local: Vec<CandidateType>, remote: Vec<CandidateType>, protocol| {
            let ctx = PathContext {
                local_candidates: local,
                remote_candidates: remote,
                ..Default::default()
            };
            let mut p = pair(Relay, Relay);
            p.protocol = protocol;
            describe(p, &ctx).reason.unwrap()
        };
        use RelayReason::*;
        assert_eq!(
            with(vec![Host, Relay], vec![Host], Transport::Tcp),
            UdpBlocked
        );
        assert_eq!(
            with(vec![Host, Srflx], vec![Relay], Transport::Udp),
            PeerOfferedNoDirect
        );
        assert_eq!(
            with(vec![Host, Srflx], vec![Host, Relay], Transport::Udp),
            PeerGotNoStun
        );
        assert_eq!(
            with(vec![Host, Srflx], vec![Srflx, Relay], Transport::Udp),
            NoDirectPair
        );
        let forced = PathContext {
            relay_only: true,
            ..Default::default()
        };
        assert_eq!(describe(pair(Relay, Relay), &forced).reason, Some(Forced));
    }

    #[test]
    fn candidate_names_from_either_stack() {
        assert_eq!(CandidateType::parse("srflx"), Srflx);
        assert_eq!(CandidateType::parse("serverreflexive"), Srflx);
        assert_eq!(CandidateType::parse("peer-reflexive"), Prflx);
        assert_eq!(CandidateType::parse("Relay"), Relay);
        assert_eq!(CandidateType::parse("?"), Unknown);
        assert_eq!(Transport::parse("TCP"), Transport::Tcp);
    }

    #[test]
    fn a_relayed_direction_on_either_side_makes_the_path_relayed() {
        let direct = describe(pair(Srflx, Srflx), &PathContext::default());
        let relayed = describe(pair(Relay, Srflx), &PathContext::default());
        // Both direct: stays as it was.
        let both = direct.clone().with_peer(Some(direct.view()));
        assert_eq!((both.kind, both.reason), (PathKind::Direct, None));
        // Only the other side relays: relayed, and said why.
        let one = direct.clone().with_peer(Some(relayed.view()));
        assert_eq!(one.kind, PathKind::Relay);
        assert_eq!(one.reason, Some(RelayReason::PeerRelays));
        assert_eq!(
            one.view().kind,
            PathKind::Direct,
            "our own direction stays direct"
        );
        // This side relays: its own reason stays.
        let mine = relayed.clone().with_peer(Some(direct.view()));
        assert_eq!(mine.reason, relayed.reason);
        assert!(
            mine.to_string()
                .ends_with("; the other side sends direct srflx ↔ srflx, udp")
        );
    }

    #[test]
    fn one_line_for_people() {
        let p = describe(pair(Relay, Srflx), &PathContext::default());
        assert_eq!(
            p.to_string(),
            "relay path, relayed (relay ↔ srflx, udp): the other peer offered no direct candidates"
        );
    }

    #[test]
    fn a_path_is_announced_once_as_connected_or_after_a_loss_as_reconnected() {
        let own = PathReport::unknown();
        let mut first = PathTrack::new(own.clone());
        assert_eq!(
            first.announce(None, 1.0).map(|e| e.name()),
            Some("connected")
        );
        assert!(first.announce(None, 2.0).is_none());
        let mut again = PathTrack::new(own).again(true);
        assert_eq!(
            again.announce(None, 1.0).map(|e| e.name()),
            Some("reconnected")
        );
        assert!(again.announce(None, 2.0).is_none());
    }
}
