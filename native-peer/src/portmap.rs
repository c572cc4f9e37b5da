//! Port mapping (ladder step 2): ask the router to forward a public UDP port to the socket
//! ICE binds, so a peer behind a NAT that cannot be punched (symmetric) still reaches us
//! directly.
//!
//! - Three protocols, asked at once by [`start`]: UPnP IGD ([`upnp`]), and PCP with NAT-PMP
//!   as its fallback ([`pmp`]). Each first finds its router without changing anything (SSDP;
//!   a NAT-PMP external-address request to the default gateway), then maps under one
//!   [`Claim`]: the first to get there maps, the other finds the claim taken and maps
//!   nothing. A router speaking all three holds one mapping of ours.
//! - Bounded by the protocols' own timeouts (a few seconds at worst); connection setup never
//!   waits for it. The outcome is published on a `watch` channel; [`crate::rendezvous`]
//!   advertises the mapped address whenever it comes (in the first description or trickled),
//!   and again when it changes.
//! - Invariant: a mapping we created carries a lease, so a crashed peer's expires by itself;
//!   it is renewed at half of what the router granted and removed by [`PortMapper::release`]
//!   (called on every exit path of `run`; it waits a few seconds for a mapping still being
//!   asked for, and one granted after it is removed by the mapping task itself).
//! - A renewal asks for the same mapping again, which re-creates one the router lost (a
//!   restart: UPnP finds the router again if its control address moved; PCP and NAT-PMP ask
//!   from the address the host has now) and tells a new external address or port, published
//!   as a new [`State::Mapped`]. [`PortMapper::refresh`] renews at once: the driver calls it
//!   when the path to the other peer goes down or the other side restarts ICE, which is what
//!   a router restart looks like from here.
//! - With an IPv6 bind, a PCP pinhole in the router's IPv6 firewall for the same port on
//!   that address, kept the same way ([`pmp::pinhole`]); nothing to advertise (the host
//!   candidate is the address).
//! - Rare and bounded by the lease: a request the router granted but whose answer was lost
//!   could leave a second mapping (PCP and NAT-PMP take theirs back on a timeout; UPnP
//!   cannot tell its own from another host's).
//! - The volunteer relay's fixed ports ([`SamePorts`]) are mapped over UPnP IGD only.

mod pmp;
mod upnp;

pub use upnp::{SamePorts, map_same_ports};

use protocol::path::MapProtocol;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify, watch};

/// Bound on each request to the router (UPnP: discovery, then each SOAP call).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// Lease asked for. Renewed at half of what the router grants; expires on its own if we die
/// without releasing.
pub const LEASE: Duration = Duration::from_secs(1200);
/// A renewal that failed is tried again this much later (sooner for a short lease).
const RENEW_RETRY: Duration = Duration::from_secs(30);
/// Renewals never come closer together than this.
const MIN_RENEW: Duration = Duration::from_secs(5);
/// How long [`PortMapper::release`] waits for a mapping still being asked for, so one the
/// router grants as the program exits is removed too.
const SETTLE: Duration = Duration::from_secs(4);

/// Why no mapping could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PortmapError {
    #[error("no router answered UPnP IGD, NAT-PMP or PCP")]
    NoGateway,
    #[error("the router did not tell its external address")]
    NoExternalAddress,
    #[error("the router's external address is not usable ({0})")]
    UnusableExternalAddress(&'static str),
    #[error("the router refused the mapping: {0}")]
    Refused(String),
    #[error("the router did not answer in time")]
    Timeout,
    #[error("cannot find our address towards the router")]
    LocalAddress,
    /// Another protocol mapped the port first (never shown: the first mapping is the outcome).
    #[error("the port is mapped already")]
    AlreadyMapped,
}

impl PortmapError {
    /// Of two protocols' failures, the one that says more to the person: a router that
    /// answered and refused over one that was not there.
    fn most_telling(a: Self, b: Self) -> Self {
        let weight = |e: &Self| match e {
            Self::NoGateway | Self::AlreadyMapped => 0,
            Self::Timeout | Self::LocalAddress => 1,
            _ => 2,
        };
        if weight(&b) > weight(&a) { b } else { a }
    }
}

/// A granted mapping: `external` on the router forwards to `internal` here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub external: SocketAddr,
    pub internal: SocketAddr,
    /// The protocol the router granted it with.
    pub by: MapProtocol,
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

    /// The protocol of the mapping, once there is one.
    pub fn mapped_by(&self) -> Option<MapProtocol> {
        match self {
            State::Mapped(m) => Some(m.by),
            _ => None,
        }
    }
}

/// A mapping we hold, by the protocol that made it.
enum Lease {
    Upnp(upnp::Lease),
    Pmp(pmp::Lease),
}

impl Lease {
    fn mapping(&self) -> &Mapping {
        match self {
            Lease::Upnp(l) => l.mapping(),
            Lease::Pmp(l) => l.mapping(),
        }
    }

    /// What the router granted (UPnP routers do not say: what we asked for).
    fn granted(&self) -> Duration {
        match self {
            Lease::Upnp(_) => LEASE,
            Lease::Pmp(l) => l.granted(),
        }
    }

    /// When to renew: half of what the router granted (a few seconds at least, however
    /// little that was).
    fn renew_in(&self) -> Duration {
        (self.granted() / 2).max(MIN_RENEW)
    }

    /// When to try again after a renewal failed: well within what is left.
    fn retry_in(&self) -> Duration {
        RENEW_RETRY.min(self.granted() / 4).max(MIN_RENEW)
    }

    async fn renew(&mut self) -> Result<(), PortmapError> {
        match self {
            Lease::Upnp(l) => l.renew().await,
            Lease::Pmp(l) => l.renew().await,
        }
    }

    /// Remove the mapping. Bounded: the program may be exiting (the lease ends it anyway).
    async fn release(self, what: &str) {
        let outcome = match self {
            Lease::Upnp(l) => l.release().await,
            Lease::Pmp(l) => l.release().await,
        };
        match outcome {
            Ok(()) => tracing::debug!("{what} released"),
            Err(e) => tracing::info!("cannot release the {what} (its lease ends it): {e}"),
        }
    }
}

/// The mapping we hold, and whether [`PortMapper::release`] was called (a mapping granted
/// after that is removed at once).
#[derive(Default)]
struct Slot {
    lease: Option<Lease>,
    closed: bool,
}

type Held = Arc<Mutex<Slot>>;

/// One mapping among the protocols tried at once: whoever asks first maps; the others,
/// finding it taken, map nothing. Requests run one at a time, so two never cross.
#[derive(Default)]
struct Claim(Mutex<bool>);

impl Claim {
    async fn map<T>(
        &self,
        add: impl std::future::Future<Output = Result<T, PortmapError>>,
    ) -> Result<T, PortmapError> {
        let mut taken = self.0.lock().await;
        if *taken {
            return Err(PortmapError::AlreadyMapped);
        }
        let outcome = add.await;
        *taken = outcome.is_ok();
        outcome
    }
}

/// One mapping kept by a background task: where it stands, the lease once granted, and
/// what makes the task renew at once.
#[derive(Clone)]
struct Kept {
    state: watch::Receiver<State>,
    held: Held,
    refresh: Arc<Notify>,
    /// What it is, for the log.
    what: &'static str,
}

impl Kept {
    fn off() -> Self {
        let (_tx, state) = watch::channel(State::Off);
        Self {
            state,
            held: Arc::default(),
            refresh: Arc::default(),
            what: "port mapping",
        }
    }

    /// Ask with `first` in the background, then keep what it granted (`what` names it in
    /// the log).
    fn spawn(
        first: impl std::future::Future<Output = Result<Lease, PortmapError>> + Send + 'static,
        what: &'static str,
    ) -> Self {
        let (tx, state) = watch::channel(State::Pending);
        let kept = Self {
            state,
            held: Arc::default(),
            refresh: Arc::default(),
            what,
        };
        let (held, refresh) = (kept.held.clone(), kept.refresh.clone());
        tokio::spawn(async move {
            let lease = match first.await {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::info!("no {what}: {e}");
                    let _ = tx.send(State::Failed(e));
                    return;
                }
            };
            let mapping = lease.mapping().clone();
            {
                let mut slot = held.lock().await;
                if slot.closed {
                    drop(slot);
                    lease.release(what).await;
                    return;
                }
                slot.lease = Some(lease);
            }
            tracing::info!(
                external_port = mapping.external.port(),
                protocol = mapping.by.as_str(),
                "{what} made by the router"
            );
            let _ = tx.send(State::Mapped(mapping));
            keep_mapped(&held, &tx, &refresh, what).await;
        });
        kept
    }

    fn refresh(&self) {
        if matches!(*self.state.borrow(), State::Mapped(_)) {
            self.refresh.notify_one();
        }
    }

    async fn release(&self) {
        let mut state = self.state.clone();
        let settled = state.wait_for(|s| !matches!(s, State::Pending));
        let _ = tokio::time::timeout(SETTLE, settled).await;
        let lease = {
            let mut slot = self.held.lock().await;
            slot.closed = true;
            slot.lease.take()
        };
        if let Some(lease) = lease {
            lease.release(self.what).await;
        }
    }
}

/// Handle on the background mapping tasks: the IPv4 port mapping, and the IPv6 pinhole.
#[derive(Clone)]
pub struct PortMapper {
    mapping: Kept,
    /// A PCP pinhole in the router's IPv6 firewall for the same port (no address to
    /// advertise: the host candidate is the address; the pinhole lets the other side in
    /// first).
    pinhole: Option<Kept>,
}

impl std::fmt::Debug for PortMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortMapper")
            .field("state", &*self.mapping.state.borrow())
            .finish_non_exhaustive()
    }
}

impl PortMapper {
    /// No port mapping (`--no-portmap`, loopback runs).
    pub fn off() -> Self {
        Self {
            mapping: Kept::off(),
            pinhole: None,
        }
    }

    pub fn watch(&self) -> watch::Receiver<State> {
        self.mapping.state.clone()
    }

    /// Where the mapping stands now.
    pub fn state(&self) -> State {
        self.mapping.state.borrow().clone()
    }

    /// Renew now (the path went down: the router may have restarted).
    pub fn refresh(&self) {
        self.mapping.refresh();
        if let Some(p) = &self.pinhole {
            p.refresh();
        }
    }

    /// Remove the mapping and the pinhole, if made (waiting a little for one still being
    /// asked for: the runtime ends with the program, and the task with it), and any granted
    /// later.
    pub async fn release(&self) {
        let pinhole = async {
            if let Some(p) = &self.pinhole {
                p.release().await;
            }
        };
        tokio::join!(self.mapping.release(), pinhole);
    }
}

/// Start mapping UDP `port` (the port ICE binds on every interface) in the background; with
/// `ipv6` (the IPv6 address ICE binds too), also ask for a pinhole for it in the IPv6
/// firewall.
pub fn start(port: u16, ipv6: Option<std::net::Ipv6Addr>) -> PortMapper {
    PortMapper {
        mapping: Kept::spawn(first_mapping(port), "port mapping"),
        pinhole: ipv6.map(|ip| {
            Kept::spawn(
                async move { pmp::pinhole(port, ip).await.map(Lease::Pmp) },
                "IPv6 pinhole",
            )
        }),
    }
}

/// Every protocol at once; the first mapping granted, or the most telling failure.
async fn first_mapping(port: u16) -> Result<Lease, PortmapError> {
    let claim = Claim::default();
    let mut upnp = std::pin::pin!(async { upnp::map(port, &claim).await.map(Lease::Upnp) });
    let mut pmp = std::pin::pin!(async { pmp::map(port, &claim).await.map(Lease::Pmp) });
    enum First {
        Upnp(Result<Lease, PortmapError>),
        Pmp(Result<Lease, PortmapError>),
    }
    let first = tokio::select! {
        r = &mut upnp => First::Upnp(r),
        r = &mut pmp => First::Pmp(r),
    };
    let (failed, other) = match first {
        First::Upnp(Ok(lease)) | First::Pmp(Ok(lease)) => return Ok(lease),
        First::Upnp(Err(e)) => (e, pmp.await),
        First::Pmp(Err(e)) => (e, upnp.await),
    };
    other.map_err(|e| PortmapError::most_telling(failed, e))
}

/// Renew at half-life (or at once when asked), publishing the mapping again when the router
/// moved it; ends once released.
async fn keep_mapped(held: &Held, tx: &watch::Sender<State>, refresh: &Notify, what: &str) {
    let mut wait = match &held.lock().await.lease {
        Some(lease) => lease.renew_in(),
        None => return,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = refresh.notified() => tracing::debug!("renewing the {what} now"),
        }
        let mut slot = held.lock().await;
        let Some(lease) = slot.lease.as_mut() else {
            return; // released
        };
        let before = lease.mapping().clone();
        match lease.renew().await {
            Ok(()) => {
                wait = lease.renew_in();
                let now = lease.mapping().clone();
                if now == before {
                    tracing::debug!("{what} renewed");
                } else {
                    tracing::info!(
                        external_port = now.external.port(),
                        "the router's mapping moved: advertising the new address"
                    );
                    let _ = tx.send(State::Mapped(now));
                }
            }
            Err(e) => {
                tracing::info!("cannot renew the {what}: {e}");
                wait = lease.retry_in();
            }
        }
    }
}

async fn timed<T>(fut: impl std::future::Future<Output = T>) -> Result<T, PortmapError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| PortmapError::Timeout)
}

/// The local address the kernel would use to reach `gateway`: the one the router forwards to.
/// (A UDP `connect` picks a route and a source address and sends nothing.)
pub fn local_ip_towards(gateway: SocketAddr) -> Result<IpAddr, PortmapError> {
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
    fn a_refusal_says_more_than_silence() {
        use PortmapError::*;
        let refused = Refused("pcp: not authorized".into());
        assert_eq!(
            PortmapError::most_telling(NoGateway, refused.clone()),
            refused
        );
        assert_eq!(
            PortmapError::most_telling(refused.clone(), Timeout),
            refused
        );
        assert_eq!(PortmapError::most_telling(NoGateway, Timeout), Timeout);
        assert_eq!(PortmapError::most_telling(NoGateway, NoGateway), NoGateway);
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
