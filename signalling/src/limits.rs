//! Per-address rate limits and address redaction for logs.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// Refusals of one client the audit log records per minute at most.
const AUDITED_REFUSALS_PER_MIN: u32 = 10;

#[derive(Debug)]
pub(crate) struct Limits {
    messages: DefaultKeyedRateLimiter<IpAddr>,
    rooms: DefaultKeyedRateLimiter<IpAddr>,
    /// Refusals the audit log records per client: a client refused in a loop must not fill
    /// the operator's disk.
    refusals: DefaultKeyedRateLimiter<IpAddr>,
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v.max(1)).expect("max(1) is non-zero")
}

impl Limits {
    pub fn new(c: &crate::Config) -> Self {
        Self {
            messages: RateLimiter::keyed(
                Quota::per_second(nz(c.messages_per_sec)).allow_burst(nz(c.messages_burst)),
            ),
            rooms: RateLimiter::keyed(Quota::per_minute(nz(c.rooms_per_min))),
            refusals: RateLimiter::keyed(Quota::per_minute(nz(AUDITED_REFUSALS_PER_MIN))),
        }
    }

    pub fn message(&self, ip: IpAddr) -> bool {
        self.messages.check_key(&subscriber(ip)).is_ok()
    }

    /// Creating or joining a room (joining by number would otherwise let one client sweep the
    /// number space and sit in every waiting room; by id, probe for live rooms).
    pub fn room(&self, ip: IpAddr) -> bool {
        self.rooms.check_key(&subscriber(ip)).is_ok()
    }

    /// Whether a refusal of this client goes to the audit log.
    pub fn audit_refusal(&self, ip: IpAddr) -> bool {
        self.refusals.check_key(&subscriber(ip)).is_ok()
    }

    pub fn forget_idle(&self) {
        self.messages.retain_recent();
        self.rooms.retain_recent();
        self.refusals.retain_recent();
    }
}

/// The unit limits apply to: one IPv4 address, or one IPv6 /64 (what one subscriber gets, so
/// rotating through it does not multiply the allowance).
pub(crate) fn subscriber(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked above")),
        v4 => v4,
    }
}

/// An address fit for logs: IPv4 keeps its /24, IPv6 its /48, the rest is masked.
pub fn redact_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.x", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return redact_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::x", s[0], s[1], s[2])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_per_ipv6_64() {
        let a: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(subscriber(a), subscriber(b));
        assert_ne!(
            subscriber(a),
            subscriber("2001:db8:1:3::5".parse().unwrap())
        );
        assert_eq!(
            subscriber("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn redaction_hides_the_host_part() {
        assert_eq!(redact_ip("198.51.100.77".parse().unwrap()), "198.51.100.x");
        assert_eq!(
            redact_ip("2001:db8:1:2::5".parse().unwrap()),
            "2001:db8:1::x"
        );
        assert_eq!(redact_ip("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.x");
    }
}
