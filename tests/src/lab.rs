//! NAT lab: a small internet in network namespaces, built and torn down by each test.
//!
//! ```text
//!   {p}s  signalling + TURN      198.18.0.1 ─┐
//!                                            ├─ br0 in {p}p (the "internet", 198.18.0.0/24)
//!   {p}ra router A  wan 198.18.0.2 ─────────┤
//!   {p}rb router B  wan 198.18.0.3 ─────────┘
//!   {p}ha host A 10.0.1.2 ── lan bridge of A (10.0.1.1)
//!   {p}hb host B 10.0.2.2 ── lan bridge of B (10.0.2.1), or 10.0.1.3 behind A ("same LAN")
//! ```
//!
//! - 198.18.0.0/15 (benchmarking space) stands in for the internet, inside these namespaces
//!   only. The bundled TURN refuses that range as relay peers like any non-public range, so the
//!   server runs with `--turn-allow-private-peers` (the routers' WAN addresses are the peers).
//! - Routers: `cone` is iptables MASQUERADE (endpoint-independent mapping, port-restricted
//!   filtering); `symmetric` adds `--random-fully` (a new port per destination);
//!   `udp-blocked` forwards only TCP outward; `upnp`, `pcp` and `mapping` are symmetric NAT
//!   written in nftables plus `miniupnpd-nftables` speaking UPnP IGD, PCP + NAT-PMP, or all
//!   three, which keeps its mappings in its own nft chains ([`Lab::router_mappings`] counts
//!   them; [`Lab::restart_mapper`] reboots it). Unsolicited inbound packets are dropped in INPUT, never answered with ICMP
//!   (an ICMP error makes a conntrack entry that breaks simultaneous punching); conntrack is
//!   flushed after the rules are set; `ip_forward` is switched on (0 in a new namespace).
//! - Invariants: every namespace has a name unique to this process and lab (`pd` + pid +
//!   counter, so parallel tests never collide; interface names are per namespace and can be
//!   fixed), and [`Lab`]'s drop kills what runs inside and deletes them, even when the test
//!   panicked. Namespaces left by a killed test process are removed by the next lab.
//! - Delay and loss ([`Spec::wan`]) come from [`wire`], a userspace link: this kernel has no
//!   netem.
//! - Diagnostics: `PUNCHDROP_LAB_LOGS=1` prints the peers' stderr; `PUNCHDROP_LAB_SERVER_LOG`
//!   sets the lab server's log filter (default `warn`; `signalling=trace` shows each
//!   message's kind, never its content), which a failing test prints with its diagnostics.
//! - Needs root and the tools `ip`, `iptables`, `nft`, `conntrack`, `miniupnpd`
//!   (the README's test command installs them); without them a lab fails loudly.

mod tcp;
mod wire;

pub use tcp::TcpCopy;
pub use wire::Impair;

use crate::{Event, PathKind, event};
use crate::{Peer, bin, is_root, start_sender_with};
use anyhow::{Context as _, bail};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names of the volunteer relay hosts ([`Spec::volunteers`]), in order.
const VOLUNTEER_HOSTS: [&str; 2] = ["c", "d"];

/// The server's address on the lab's internet.
pub const SERVER_IP: &str = "198.18.0.1";
/// The server's address in IPv6 labs ([`V6`]).
pub const SERVER_IP6: &str = "2001:db8::1";

/// How a router treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// MASQUERADE: endpoint-independent mapping, hole-punchable.
    Cone,
    /// MASQUERADE --random-fully: a new mapping per destination.
    Symmetric,
    /// Cone NAT that forwards no UDP outward (TCP only).
    UdpBlocked,
    /// Cone NAT that lets only the web out: TCP to the server's web port (8080 here, 443 on
    /// the internet) and to TURN over TLS (5349); no UDP, no TCP to TURN's 3478.
    WebOnly,
    /// Symmetric NAT whose router grants port mappings over UPnP IGD only (miniupnpd).
    Upnp,
    /// Symmetric NAT whose router grants port mappings over PCP and NAT-PMP only, UPnP off
    /// (miniupnpd), as Apple's and many pfSense/OPNsense routers do.
    Pcp,
    /// Symmetric NAT whose router speaks all three: UPnP IGD, PCP and NAT-PMP (miniupnpd).
    Mapping,
    /// Symmetric NAT whose router grants port mappings over NAT-PMP only: miniupnpd with UPnP
    /// off, and PCP requests (version 2) dropped before it, as it cannot turn PCP off alone.
    NatPmp,
}

impl Nat {
    /// The router runs miniupnpd (nftables throughout).
    fn maps(self) -> bool {
        matches!(self, Nat::Upnp | Nat::Pcp | Nat::Mapping | Nat::NatPmp)
    }
}

/// Where host B sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B {
    /// Behind its own router.
    Behind(Nat),
    /// On host A's LAN, behind A's router.
    SameLan,
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub a: Nat,
    pub b: B,
    /// Delay and loss on what router A and router B send out of their WAN side (netem-like):
    /// a peer-to-peer round trip is delayed by both, a peer-to-server one by its own.
    pub wan: [Impair; 2],
    /// The server speaks https and wss, and TURN over TLS, with a certificate of a lab CA
    /// the peers are told to trust.
    pub tls: bool,
    /// Hosts that can volunteer as relays (`native-peer relay`, [`Lab::volunteer`]), each
    /// behind a UPnP router of its own (`rc`/`hc` at 198.18.0.4 and 10.0.3.2, then `rd`/`hd`
    /// …); the server then takes volunteers and prefers them to its own TURN.
    pub volunteers: u8,
    /// IPv6 in the lab ([`V6`]).
    pub ipv6: V6,
}

/// IPv6 in the lab. Addresses from 2001:db8::/32 (documentation space), inside these
/// namespaces only: the internet is 2001:db8::/64 (server `::1`, router of subnet n
/// `::(1+n)`), LAN n is 2001:db8:n::/64 (router `::1`, and `fe80::1`, the hosts' next hop,
/// as at home). Routers route, never translate: each
/// is a stateful firewall, as home routers are on IPv6 (outbound and its answers pass,
/// unsolicited inbound is dropped; ICMPv6 to the router itself passes, neighbour discovery
/// needs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum V6 {
    /// IPv4 only (interfaces keep their link-local IPv6 addresses, with no route beyond).
    #[default]
    Off,
    /// Every host, router and the server dual-stack; the peers talk to the server over IPv6.
    DualStack,
    /// As `DualStack`, but host B has no IPv4 at all.
    BOnly,
}

impl Spec {
    pub fn new(a: Nat, b: B) -> Self {
        Self {
            a,
            b,
            wan: [Impair::default(); 2],
            tls: false,
            volunteers: 0,
            ipv6: V6::Off,
        }
    }

    /// The same lab with IPv6 ([`V6`]).
    pub fn with_ipv6(self, ipv6: V6) -> Self {
        Self { ipv6, ..self }
    }

    /// The same lab with `n` volunteer relay hosts ([`Spec::volunteers`]).
    pub fn with_volunteers(self, n: u8) -> Self {
        Self {
            volunteers: n,
            ..self
        }
    }

    /// The same lab with a server on TLS ([`Spec::tls`]).
    pub fn with_tls(self) -> Self {
        Self { tls: true, ..self }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A built lab; dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// Created namespaces, in creation order.
    namespaces: Vec<String>,
    /// miniupnpd on each router that maps ports: (router name, its subnet, what it speaks,
    /// the daemon), restartable ([`Lab::restart_mapper`]).
    mappers: Mutex<Vec<(String, u8, Nat, Child)>>,
    server: Option<Child>,
    /// Impaired WAN links; dropped after the namespaces (fields drop after `Drop::drop`).
    wires: Vec<wire::Wire>,
    server_log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
    /// Where `signalling` and `native-peer` are.
    bins: std::path::PathBuf,
    pub url: String,
    ipv6: V6,
    /// With [`Spec::tls`]: the CA the server's certificate comes from.
    ca: Option<crate::tls::TestCa>,
}

/// Run a command; its stderr becomes the error.
fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command inside namespace `ns`.
/// `iptables -w ARGS` inside namespace `ns` (waiting for the xtables lock).
fn iptables(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut v = vec!["iptables", "-w"];
    v.extend_from_slice(args);
    in_ns(ns, &v)
}

/// An IPv6 address on `dev`, usable at once (no duplicate address detection to wait for).
fn addr6(ns: &str, addr: &str, dev: &str) -> anyhow::Result<()> {
    run(&[
        "ip", "-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad",
    ])?;
    Ok(())
}

/// Router `r`'s IPv6 firewall, for the iptables routers (the nftables ones filter both
/// families in one `inet` table): what the LAN sends out passes, and the answers to it;
/// unsolicited inbound is dropped, as on home routers. ICMPv6 to the router itself passes
/// (neighbour discovery). Routers that block UDP outward do so on IPv6 too.
fn firewall6(r: &str, nat: Nat) -> anyhow::Result<()> {
    if nat.maps() {
        return Ok(());
    }
    let ip6 = |args: &[&str]| {
        let mut v = vec!["ip6tables", "-w"];
        v.extend_from_slice(args);
        in_ns(r, &v)
    };
    let est = [
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ];
    ip6(&[&["-A", "INPUT", "-i", "wan"][..], &est].concat())?;
    ip6(&[
        "-A",
        "INPUT",
        "-i",
        "wan",
        "-p",
        "ipv6-icmp",
        "-j",
        "ACCEPT",
    ])?;
    ip6(&["-A", "INPUT", "-i", "wan", "-j", "DROP"])?;
    ip6(&["-P", "FORWARD", "DROP"])?;
    ip6(&[&["-A", "FORWARD"][..], &est].concat())?;
    if matches!(nat, Nat::UdpBlocked | Nat::WebOnly) {
        ip6(&[
            "-A", "FORWARD", "-i", "lan", "-o", "wan", "-p", "udp", "-j", "DROP",
        ])?;
    }
    ip6(&["-A", "FORWARD", "-i", "lan", "-j", "ACCEPT"])?;
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// Fail clearly when the lab cannot be built here.
fn preflight() {
    assert!(
        is_root(),
        "the NAT lab needs root (network namespaces, iptables); CI runs the tests as root"
    );
    for tool in [
        "ip",
        "iptables",
        "ip6tables",
        "nft",
        "conntrack",
        "miniupnpd",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .chain(["/usr/sbin".into(), "/sbin".into()])
                    .any(|d| d.join(tool).exists())
            })
            .unwrap_or(false);
        assert!(
            found,
            "the NAT lab needs `{tool}`: run ./scripts/test.sh, which installs iproute2, \
             iptables, nftables, conntrack and miniupnpd-nftables"
        );
    }
}

/// Remove lab namespaces whose test process is gone (killed before its labs dropped).
fn sweep_stale() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("pd") else {
            continue;
        };
        let Some((pid_hex, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = u32::from_str_radix(pid_hex, 16) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

impl Lab {
    /// Build the lab and start the signalling server (and any UPnP daemon) in it.
    pub fn new(spec: Spec) -> anyhow::Result<Self> {
        let bins = bin("native-peer")
            .parent()
            .expect("binary folder")
            .to_path_buf();
        Self::with_bins(spec, bins)
    }

    /// [`Lab::new`] with the binaries taken from `bins` (for `cargo xtask bench-lab`).
    pub fn with_bins(spec: Spec, bins: std::path::PathBuf) -> anyhow::Result<Self> {
        preflight();
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // `pd<pid hex>x<n>`: unique per process and lab; the pid lets a later run sweep it.
        let prefix = format!("pd{:x}x{n}", std::process::id());
        let mut lab = Lab {
            prefix,
            namespaces: Vec::new(),
            mappers: Mutex::default(),
            server: None,
            wires: Vec::new(),
            server_log: Arc::default(),
            _dir: tempfile::tempdir()?,
            bins,
            url: format!("http://{SERVER_IP}:8080"),
            ipv6: spec.ipv6,
            ca: spec.tls.then(crate::tls::TestCa::new),
        };
        if lab.ca.is_some() {
            anyhow::ensure!(spec.ipv6 == V6::Off, "the lab's TLS server is IPv4 only");
            lab.url = format!("https://{SERVER_IP}:8080");
        }
        if spec.ipv6 != V6::Off {
            // Every peer, IPv6-only or not, meets over IPv6 (the link carries this URL).
            lab.url = format!("http://[{SERVER_IP6}]:8080");
        }
        lab.build(spec)?;
        Ok(lab)
    }

    /// Namespace name of a lab role: `s` server, `p` internet, `ra`/`rb` routers,
    /// `ha`/`hb` hosts.
    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn add_ns(&mut self, role: &str) -> anyhow::Result<String> {
        let ns = self.ns(role);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair: `a_if` in `a`, `b_if` in `b`, both up.
    fn veth(a: &str, a_if: &str, b: &str, b_if: &str) -> anyhow::Result<()> {
        run(&[
            "ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
        ])?;
        run(&["ip", "-n", a, "link", "set", a_if, "up"])?;
        run(&["ip", "-n", b, "link", "set", b_if, "up"])?;
        Ok(())
    }

    fn build(&mut self, spec: Spec) -> anyhow::Result<()> {
        let internet = self.add_ns("p")?;
        run(&[
            "ip", "-n", &internet, "link", "add", "br0", "type", "bridge",
        ])?;
        run(&["ip", "-n", &internet, "link", "set", "br0", "up"])?;

        let srv = self.add_ns("s")?;
        Self::veth(&srv, "eth0", &internet, "srv")?;
        run(&["ip", "-n", &internet, "link", "set", "srv", "master", "br0"])?;
        run(&[
            "ip",
            "-n",
            &srv,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            "eth0",
        ])?;
        if self.ipv6 != V6::Off {
            addr6(&srv, &format!("{SERVER_IP6}/64"), "eth0")?;
        }
        self.start_server(&srv, spec.volunteers > 0)?;

        let mut routers: Vec<(&str, Nat, u8)> = match spec.b {
            B::Behind(b) => vec![("a", spec.a, 1), ("b", b, 2)],
            B::SameLan => vec![("a", spec.a, 1)],
        };
        for i in 0..spec.volunteers {
            routers.push((VOLUNTEER_HOSTS[usize::from(i)], Nat::Upnp, 3 + i));
        }
        for &(name, nat, subnet) in &routers {
            let r = self.add_ns(&format!("r{name}"))?;
            let impair = spec
                .wan
                .get(usize::from(subnet - 1))
                .copied()
                .unwrap_or_default();
            if impair.is_none() {
                Self::veth(&r, "wan", &internet, &format!("r{name}"))?;
            } else {
                self.wire(&r, &internet, name, impair)?;
            }
            run(&[
                "ip",
                "-n",
                &internet,
                "link",
                "set",
                &format!("r{name}"),
                "master",
                "br0",
            ])?;
            let wan_ip = format!("198.18.0.{}/24", 1 + subnet);
            run(&["ip", "-n", &r, "addr", "add", &wan_ip, "dev", "wan"])?;
            run(&["ip", "-n", &r, "link", "add", "lan", "type", "bridge"])?;
            run(&["ip", "-n", &r, "link", "set", "lan", "up"])?;
            let lan_ip = format!("10.0.{subnet}.1/24");
            run(&["ip", "-n", &r, "addr", "add", &lan_ip, "dev", "lan"])?;
            in_ns(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            self.nat_rules(&r, nat, subnet)?;
            if self.ipv6 != V6::Off {
                addr6(&r, &format!("2001:db8::{}/64", 1 + subnet), "wan")?;
                addr6(&r, &format!("2001:db8:{subnet}::1/64"), "lan")?;
                addr6(&r, "fe80::1/64", "lan")?;
                in_ns(&r, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
                firewall6(&r, nat)?;
            }
        }
        if self.ipv6 != V6::Off {
            // Each LAN through its router, from the server and from every other router.
            for &(name, _, subnet) in &routers {
                let lan = format!("2001:db8:{subnet}::/64");
                let via = format!("2001:db8::{}", 1 + subnet);
                let others = routers.iter().filter(|r| r.0 != name);
                let others: Vec<String> = others.map(|r| self.ns(&format!("r{}", r.0))).collect();
                for ns in others.iter().chain([&srv]) {
                    run(&["ip", "-n", ns, "-6", "route", "add", &lan, "via", &via])?;
                }
            }
        }
        self.add_host("a", "a", 1, 2)?;
        match spec.b {
            B::Behind(_) => self.add_host("b", "b", 2, 2)?,
            B::SameLan => self.add_host("b", "a", 1, 3)?,
        }
        for (i, name) in VOLUNTEER_HOSTS
            .iter()
            .take(spec.volunteers.into())
            .enumerate()
        {
            self.add_host(name, name, 3 + i as u8, 2)?;
        }
        for &(name, nat, subnet) in &routers {
            if nat.maps() {
                // After the server: miniupnpd asks its STUN for the public address at start.
                self.start_miniupnpd(name, subnet, nat)?;
            }
        }
        Ok(())
    }

    /// Router `name`'s WAN link as an impaired [`wire::Wire`]: `wan` in `r`, `r{name}` in
    /// the internet namespace.
    fn wire(&mut self, r: &str, internet: &str, name: &str, impair: Impair) -> anyhow::Result<()> {
        // Created in our namespace under names unique to this lab, then moved and renamed.
        let (wan, port) = (
            format!("{}{name}w", self.prefix),
            format!("{}{name}i", self.prefix),
        );
        let w = wire::Wire::new(&wan, &port, impair).context("create TAP devices")?;
        self.wires.push(w);
        run(&["ip", "link", "set", &wan, "netns", r])?;
        run(&["ip", "-n", r, "link", "set", &wan, "name", "wan"])?;
        run(&["ip", "-n", r, "link", "set", "wan", "up"])?;
        let inside = format!("r{name}");
        run(&["ip", "link", "set", &port, "netns", internet])?;
        run(&["ip", "-n", internet, "link", "set", &port, "name", &inside])?;
        run(&["ip", "-n", internet, "link", "set", &inside, "up"])?;
        Ok(())
    }

    /// Host `name` on router `router`'s LAN at 10.0.`subnet`.`last` (and
    /// 2001:db8:`subnet`::`last` in an IPv6 lab; only that for host B in [`V6::BOnly`]).
    fn add_host(&mut self, name: &str, router: &str, subnet: u8, last: u8) -> anyhow::Result<()> {
        let h = self.add_ns(&format!("h{name}"))?;
        let r = self.ns(&format!("r{router}"));
        let port = format!("h{name}");
        Self::veth(&h, "eth0", &r, &port)?;
        run(&["ip", "-n", &r, "link", "set", &port, "master", "lan"])?;
        if !(self.ipv6 == V6::BOnly && name == "b") {
            let ip = format!("10.0.{subnet}.{last}/24");
            run(&["ip", "-n", &h, "addr", "add", &ip, "dev", "eth0"])?;
            let gw = format!("10.0.{subnet}.1");
            run(&["ip", "-n", &h, "route", "add", "default", "via", &gw])?;
        }
        if self.ipv6 != V6::Off {
            addr6(&h, &format!("2001:db8:{subnet}::{last}/64"), "eth0")?;
            // Through the router's link-local address, as router advertisements set it up
            // at home (the router has a fixed one on its LAN, [`Lab::build`]).
            run(&[
                "ip", "-n", &h, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ])?;
        }
        Ok(())
    }

    fn nat_rules(&self, r: &str, nat: Nat, subnet: u8) -> anyhow::Result<()> {
        let lan = format!("10.0.{subnet}.0/24");
        if nat.maps() {
            // nftables throughout: miniupnpd-nftables adds its forwards to the chains named
            // in its config (`miniupnpd`, `prerouting_miniupnpd`, `postrouting_miniupnpd`).
            // Only LAN traffic is masqueraded, so miniupnpd's own STUN check sees the WAN
            // address unmapped and enables port forwarding.
            // A NAT-PMP-only router: PCP (version 2, the first byte after the UDP header)
            // never reaches miniupnpd.
            let pcp_off = match nat {
                Nat::NatPmp => "iifname \"lan\" udp dport 5351 @th,64,8 2 drop",
                _ => "",
            };
            let rules = format!(
                "table inet filter {{
  chain miniupnpd {{
  }}
  chain prerouting_miniupnpd {{
  }}
  chain postrouting_miniupnpd {{
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname \"wan\" ct state established,related accept
    iifname \"wan\" meta l4proto ipv6-icmp accept
    iifname \"wan\" drop
    {pcp_off}
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname \"lan\" accept
    iifname \"wan\" jump miniupnpd
  }}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    ip saddr {lan} oifname \"wan\" masquerade fully-random
  }}
}}
"
            );
            let file = self._dir.path().join(format!("{r}.nft"));
            std::fs::write(&file, rules)?;
            in_ns(r, &["nft", "-f", &file.display().to_string()])?;
        } else {
            let ipt = |args: &[&str]| iptables(r, args);
            let mut masq = vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                &lan,
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if nat == Nat::Symmetric {
                masq.push("--random-fully");
            }
            ipt(&masq)?;
            let est = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"];
            let mut input_est = vec!["-A", "INPUT", "-i", "wan"];
            input_est.extend_from_slice(&est);
            input_est.extend_from_slice(&["-j", "ACCEPT"]);
            ipt(&input_est)?;
            // Silently: an ICMP answer would create state that breaks punching.
            ipt(&["-A", "INPUT", "-i", "wan", "-j", "DROP"])?;
            ipt(&["-P", "FORWARD", "DROP"])?;
            let mut fwd_est = vec!["-A", "FORWARD"];
            fwd_est.extend_from_slice(&est);
            fwd_est.extend_from_slice(&["-j", "ACCEPT"]);
            ipt(&fwd_est)?;
            if matches!(nat, Nat::UdpBlocked | Nat::WebOnly) {
                ipt(&[
                    "-A", "FORWARD", "-i", "lan", "-o", "wan", "-p", "udp", "-j", "DROP",
                ])?;
            }
            if nat == Nat::WebOnly {
                ipt(&[
                    "-A",
                    "FORWARD",
                    "-i",
                    "lan",
                    "-o",
                    "wan",
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "!",
                    "--dports",
                    "8080,5349",
                    "-j",
                    "DROP",
                ])?;
            }
            ipt(&["-A", "FORWARD", "-i", "lan", "-j", "ACCEPT"])?;
        }
        // State from before the rules (there should be none) must not outlive them.
        let _ = in_ns(r, &["conntrack", "-F"]);
        Ok(())
    }

    fn start_server(&mut self, srv: &str, volunteers: bool) -> anyhow::Result<()> {
        let listen = match self.ipv6 {
            // Both families on one socket.
            V6::DualStack | V6::BOnly => "[::]:8080".to_owned(),
            V6::Off => format!("{SERVER_IP}:8080"),
        };
        let turn = format!("{SERVER_IP}:3478");
        let tls: Vec<String> = match &self.ca {
            Some(ca) => {
                let (cert, key, _) = ca.issue_for("server", &[SERVER_IP]);
                vec![
                    "--tls-cert".into(),
                    cert.display().to_string(),
                    "--tls-key".into(),
                    key.display().to_string(),
                ]
            }
            None => Vec::new(),
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", srv])
            .arg(self.bins.join("signalling"))
            .args(["--listen", &listen, "--turn-listen", &turn])
            .args(match self.ipv6 {
                V6::Off => Vec::new(),
                _ => vec!["--turn-listen6".to_owned(), format!("[{SERVER_IP6}]:3478")],
            })
            .args(&tls)
            // 198.18/15 is refused as a relay peer by default (not public); it is this lab's
            // internet.
            .arg("--turn-allow-private-peers")
            // Inside the server's namespace only ([`Lab::server_metric`]).
            .args(["--admin-listen", "127.0.0.1:8081"])
            .args(if volunteers {
                &["--volunteer-relays", "open", "--prefer-volunteers"][..]
            } else {
                &[]
            })
            .env(
                "PUNCHDROP_LOG",
                std::env::var("PUNCHDROP_LAB_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start signalling in the lab")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("signalling ready line")?;
        let sink = self.server_log.clone();
        let err = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        self.server = Some(child);
        let listening = match self.ipv6 {
            V6::Off => line.contains(&self.url),
            V6::DualStack | V6::BOnly => line.trim_end().ends_with("[::]:8080"),
        };
        if !listening {
            bail!(
                "signalling did not start in the lab: {line:?}\n{}",
                self.server_log()
            );
        }
        Ok(())
    }

    /// miniupnpd on router `name`, speaking what `nat` says; returns once it listens for each.
    fn start_miniupnpd(&self, name: &str, subnet: u8, nat: Nat) -> anyhow::Result<()> {
        let r = self.ns(&format!("r{name}"));
        let dir = self._dir.path();
        let conf = dir.join(format!("{r}-miniupnpd.conf"));
        let (upnp, pmp) = match nat {
            Nat::Upnp => (true, false),
            Nat::Pcp | Nat::NatPmp => (false, true),
            _ => (true, true),
        };
        let yes = |on: bool| if on { "yes" } else { "no" };
        // `system_uptime=no`: the PCP/NAT-PMP epoch counts from the daemon's start, so a
        // restart ([`Lab::restart_mapper`]) looks like a router reboot to the peers.
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan
listening_ip=lan
http_port=0
enable_natpmp={pmp}
enable_upnp={upnp}
secure_mode=yes
system_uptime=no
uuid=3f1a7c1e-0b5d-4b8e-9c1e-00000000000{subnet}
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
lease_file={lease}
ext_perform_stun=yes
ext_stun_host={SERVER_IP}
ext_stun_port=3478
allow 1024-65535 10.0.{subnet}.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
{v6}",
                v6 = match self.ipv6 {
                    V6::Off => "",
                    // IPv6 pinholes (PCP, and UPnP IGDv2) in the same chain.
                    V6::DualStack | V6::BOnly => "ext_ifname6=wan\n",
                },
                pmp = yes(pmp),
                upnp = yes(upnp),
                lease = self.mapper_leases(name).display()
            ),
        )?;
        let pid = dir.join(format!("{r}-miniupnpd.pid"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &r, "miniupnpd", "-d", "-f"])
            .arg(&conf)
            .arg("-P")
            .arg(&pid)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start miniupnpd (package miniupnpd-nftables)")?;
        // Ready once it listens for SOAP and for NAT-PMP/PCP, as configured, which it does
        // after deciding on port forwarding.
        let err = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    // Keep draining so the daemon never blocks on a full pipe.
                    continue;
                }
            }
        });
        self.mappers
            .lock()
            .unwrap()
            .push((name.to_owned(), subnet, nat, child));
        let mut log = String::new();
        let mut enabled = false;
        let (mut http, mut pcp) = (!upnp, !pmp);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(http && pcp) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(l) = rx.recv_timeout(left) else {
                bail!("miniupnpd did not become ready:\n{log}");
            };
            log.push_str(&l);
            log.push('\n');
            enabled |= l.contains("Port forwarding is now enabled");
            http |= l.contains("HTTP listening on port");
            pcp |= l.contains("Listening for NAT-PMP/PCP traffic on port 5351");
        }
        if !enabled {
            bail!("miniupnpd did not enable port forwarding:\n{log}");
        }
        Ok(())
    }

    /// Where router `name`'s miniupnpd keeps its mappings across its own restarts.
    fn mapper_leases(&self, name: &str) -> std::path::PathBuf {
        self._dir.path().join(format!("r{name}.leases"))
    }

    /// How many port mappings router `name` holds: the forwards miniupnpd wrote into its
    /// nftables chain, whichever protocol asked for them.
    pub fn router_mappings(&self, name: &str) -> anyhow::Result<usize> {
        let r = self.ns(&format!("r{name}"));
        let chain = in_ns(
            &r,
            &[
                "nft",
                "list",
                "chain",
                "inet",
                "filter",
                "prerouting_miniupnpd",
            ],
        )?;
        Ok(chain.lines().filter(|l| l.contains("dnat")).count())
    }

    /// Whether a UDP datagram host `from` sends to host `to`'s IPv6 address on a fresh port
    /// arrives when nothing went the other way first: a stateful firewall in between drops it.
    pub fn unsolicited_udp6_arrives(&self, from: &str, to: &str) -> anyhow::Result<bool> {
        let dest = in_ns(
            &self.ns(&format!("h{to}")),
            &["ip", "-6", "-o", "addr", "show", "scope", "global"],
        )?;
        let dest: std::net::Ipv6Addr = dest
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("host {to} has no global IPv6 address: {dest:?}"))?;
        let (to_ns, from_ns) = (self.ns(&format!("h{to}")), self.ns(&format!("h{from}")));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listener = std::thread::spawn(move || -> anyhow::Result<bool> {
            tcp::enter(&to_ns)?;
            let sock = std::net::UdpSocket::bind((dest, 0))?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))?;
            ready_tx.send(sock.local_addr()?)?;
            Ok(sock.recv(&mut [0; 16]).is_ok())
        });
        let Ok(at) = ready_rx.recv() else {
            // The listener failed before binding: its error says why.
            listener.join().expect("listener thread")?;
            bail!("the listener in host {to} ended before binding");
        };
        std::thread::spawn(move || -> anyhow::Result<()> {
            tcp::enter(&from_ns)?;
            let sock = std::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0))?;
            for _ in 0..3 {
                sock.send_to(b"unsolicited", at)?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
        .join()
        .expect("sender thread")?;
        listener.join().expect("listener thread")
    }

    /// The IPv6 pinholes router `name`'s miniupnpd opened: the address and port each lets
    /// the world in to. miniupnpd-nftables writes them as raw matches on the IPv6 header
    /// (`th dport P @nh,192,128 0x<destination address>`).
    pub fn router_pinholes(&self, name: &str) -> anyhow::Result<Vec<std::net::SocketAddrV6>> {
        let r = self.ns(&format!("r{name}"));
        let chain = in_ns(&r, &["nft", "list", "chain", "inet", "filter", "miniupnpd"])?;
        let field = |words: &[&str], key: &str| {
            let i = words.iter().position(|w| *w == key)?;
            words.get(i + 1).map(|w| w.to_string())
        };
        chain
            .lines()
            .filter(|l| l.contains("@nh,192,128"))
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let port = field(&words, "dport").and_then(|p| p.parse().ok());
                let addr = field(&words, "@nh,192,128")
                    .and_then(|a| u128::from_str_radix(a.trim_start_matches("0x"), 16).ok());
                match (addr, port) {
                    (Some(a), Some(p)) => Ok(std::net::SocketAddrV6::new(a.into(), p, 0, 0)),
                    _ => bail!("a pinhole rule this lab does not read: {l}"),
                }
            })
            .collect()
    }

    /// Router `name` reboots, as far as port mapping goes: its miniupnpd stops, every
    /// mapping and connection it knew is forgotten (its chains, its lease file, conntrack),
    /// and a fresh one starts with a new epoch.
    pub fn restart_mapper(&self, name: &str) -> anyhow::Result<()> {
        let r = self.ns(&format!("r{name}"));
        let (subnet, nat) = {
            let mut mappers = self.mappers.lock().unwrap();
            let i = mappers
                .iter()
                .position(|(n, ..)| n == name)
                .with_context(|| format!("router {name} runs no miniupnpd"))?;
            let (_, subnet, nat, mut child) = mappers.remove(i);
            let _ = child.kill();
            let _ = child.wait();
            (subnet, nat)
        };
        for chain in ["miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"] {
            in_ns(&r, &["nft", "flush", "chain", "inet", "filter", chain])?;
        }
        let _ = std::fs::remove_file(self.mapper_leases(name));
        in_ns(&r, &["conntrack", "-F"])?;
        self.start_miniupnpd(name, subnet, nat)
    }

    /// Forward UDP `port` on router `name`'s WAN address to the same port of its host, as a
    /// user does by hand in a router's settings (iptables routers only).
    pub fn forward_port(&self, name: &str, port: u16) -> anyhow::Result<()> {
        self.forward(name, "udp", port)
    }

    /// [`Lab::forward_port`] for `proto` (`udp` or `tcp`).
    fn forward(&self, name: &str, proto: &str, port: u16) -> anyhow::Result<()> {
        let r = self.ns(&format!("r{name}"));
        let subnet = if name == "a" { 1 } else { 2 };
        let host = format!("10.0.{subnet}.2");
        let p = port.to_string();
        let to = format!("{host}:{port}");
        iptables(
            &r,
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "wan",
                "-p",
                proto,
                "--dport",
                &p,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        )?;
        iptables(
            &r,
            &[
                "-I", "FORWARD", "-i", "wan", "-p", proto, "-d", &host, "--dport", &p, "-j",
                "ACCEPT",
            ],
        )?;
        Ok(())
    }

    /// The lab's baseline: `file` copied over plain TCP from host A to host B (router B
    /// forwarding a port to it, so router B must be an iptables one), through the same
    /// routers and wire as a transfer; checked by hash ([`tcp`] says how).
    pub fn tcp_copy(&self, file: &Path) -> anyhow::Result<TcpCopy> {
        self.tcp_copy_with(file, None)
    }

    /// [`Lab::tcp_copy`] with the sender's congestion control `cc` (e.g. `cubic`) instead of
    /// the kernel's default. Once per lab (the port is forwarded here).
    pub fn tcp_copy_with(&self, file: &Path, cc: Option<&str>) -> anyhow::Result<TcpCopy> {
        self.forward("b", "tcp", tcp::PORT)?;
        let dst = tempfile::tempdir()?;
        let saved = dst.path().join("tcp.bin");
        let wan_b = std::net::Ipv4Addr::new(198, 18, 0, 3);
        let copy = tcp::copy(&self.ns("ha"), &self.ns("hb"), wan_b, (file, &saved), cc)?;
        anyhow::ensure!(
            crate::hash_file(&saved) == crate::hash_file(file),
            "the TCP copy arrived altered"
        );
        Ok(copy)
    }

    /// Router `name` (an iptables router: cone, symmetric, udp-blocked) forwards nothing,
    /// either way, until [`Lab::restore_router`]: an outage of that side's internet that keeps
    /// the NAT's mappings, as a modem losing its line does.
    pub fn cut_router(&self, name: &str) -> anyhow::Result<()> {
        let r = self.ns(&format!("r{name}"));
        iptables(
            &r,
            &[
                "-I",
                "FORWARD",
                "1",
                "-m",
                "comment",
                "--comment",
                "pd-outage",
                "-j",
                "DROP",
            ],
        )?;
        Ok(())
    }

    /// Router `name` forwards again after [`Lab::cut_router`].
    pub fn restore_router(&self, name: &str) -> anyhow::Result<()> {
        let r = self.ns(&format!("r{name}"));
        iptables(
            &r,
            &[
                "-D",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "pd-outage",
                "-j",
                "DROP",
            ],
        )?;
        Ok(())
    }

    /// Cut the signalling server (and its TURN) off the internet: its link goes down.
    pub fn cut_server(&self) -> anyhow::Result<()> {
        run(&["ip", "-n", &self.ns("p"), "link", "set", "srv", "down"])?;
        Ok(())
    }

    /// The signalling server is reachable again after [`Lab::cut_server`] (it kept running:
    /// its rooms are still there, its peers' sockets are not).
    pub fn restore_server(&self) -> anyhow::Result<()> {
        run(&["ip", "-n", &self.ns("p"), "link", "set", "srv", "up"])?;
        Ok(())
    }

    /// What the signalling server logged so far.
    pub fn server_log(&self) -> String {
        self.server_log.lock().unwrap().clone()
    }

    /// One value of the server's `/metrics`, read inside its namespace.
    pub fn server_metric(&self, name: &str) -> u64 {
        let body = in_ns(
            &self.ns("s"),
            &[
                "bash",
                "-c",
                "exec 3<>/dev/tcp/127.0.0.1/8081 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
            ],
        )
        .expect("read the lab server's metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} not in the lab server's /metrics:\n{body}"))
            .trim()
            .parse()
            .expect("a number")
    }

    /// Start volunteer relay `i` ([`Spec::volunteers`]) on its host, its router asked to map
    /// its ports by UPnP; returns once the server listed it.
    pub fn volunteer(&self, i: usize) -> anyhow::Result<crate::volunteer::Volunteer> {
        let mut cmd = self.peer_cmd(VOLUNTEER_HOSTS[i]);
        cmd.env("PUNCHDROP_LOG", "info");
        let mut v = crate::volunteer::Volunteer::spawn(
            cmd,
            &[],
            &self.url,
            // The lab's internet is a private range; reports at once to see who carries.
            &["--allow-private-peers", "--report-every-ms", "200"],
        );
        v.wait_listed(Duration::from_secs(30))
            .with_context(|| format!("volunteer {i}\nserver:\n{}", self.server_log()))?;
        Ok(v)
    }

    /// `native-peer` run inside host `name`'s namespace.
    pub fn peer_cmd(&self, name: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(&format!("h{name}"))])
            .arg(self.bins.join("native-peer"));
        if let Some(ca) = &self.ca {
            cmd.env("PUNCHDROP_CA_FILE", ca.ca_file());
        }
        cmd
    }

    /// Start a sender on host A that creates a room; returns it and its link.
    pub fn sender(&self, flags: &[&str], files: &[&Path]) -> anyhow::Result<(Peer, String)> {
        let (p, link, _) = start_sender_with(self.peer_cmd("a"), &self.url, flags, files)?;
        Ok((p, link))
    }

    /// Start a receiver on host B joining `link`, saving into `dir`.
    pub fn receiver(&self, flags: &[&str], dir: &Path, link: &str) -> Peer {
        receiver_with(self.peer_cmd("b"), flags, dir, link)
    }

    /// Send a `size`-byte file from host A to host B and check it arrived intact.
    pub fn transfer(&self, size: u64, a_flags: &[&str], b_flags: &[&str]) -> Outcome {
        self.transfer_within(size, a_flags, b_flags, crate::LONG)
    }

    /// [`Lab::transfer`], each peer given `timeout` to finish (benchmarks of slow paths).
    pub fn transfer_within(
        &self,
        size: u64,
        a_flags: &[&str],
        b_flags: &[&str],
        timeout: Duration,
    ) -> Outcome {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let file = src.path().join("lab.bin");
        crate::make_file(&file, size, size ^ 0x5eed);
        let (sender, link) = self.sender(a_flags, &[&file]).unwrap();
        let receiver = self.receiver(b_flags, dst.path(), &link);
        let (rs, revents, rerr) = receiver
            .finish_all(timeout)
            .unwrap_or_else(|e| panic!("{e:#}\nserver:\n{}", self.server_log()));
        let (ss, sevents, serr) = sender.finish_all(timeout).unwrap();
        if std::env::var_os("PUNCHDROP_LAB_LOGS").is_some() {
            eprintln!("--- sender (A) stderr:\n{serr}\n--- receiver (B) stderr:\n{rerr}");
            eprintln!("--- receiver (B) events:\n{revents:?}");
        }
        if !(rs.success() && ss.success()) {
            // One side's failure is usually the other's doing: show both.
            panic!(
                "a peer failed\n--- sender (A), {ss}: {sevents:?}\n{serr}\n\
                 --- receiver (B), {rs}: {revents:?}\n{rerr}\n--- server:\n{}",
                self.server_log()
            );
        }
        let receiver_done = crate::expect_done(rs, &revents);
        let sender_done = crate::expect_done(ss, &sevents);
        assert_eq!(
            crate::hash_file(&dst.path().join("lab.bin")),
            crate::hash_file(&file),
            "the file arrived altered"
        );
        Outcome::new(sender_done, receiver_done, &sevents, &revents)
    }
}

/// What a transfer through an outage showed ([`Lab::transfer_through_outage`]).
#[derive(Debug, Clone)]
pub struct OutageOutcome {
    /// From connectivity returning to the receiver reporting more bytes.
    pub moving_again: Duration,
    pub size: u64,
    /// File bytes the sender moved in all (more than `size` if any were sent twice).
    pub sender_transferred: u64,
    pub sender_events: Vec<Event>,
    pub receiver_events: Vec<Event>,
    /// The end of each peer's log (ICE and connection states at `info`), for a failure to
    /// say which side waited and on what.
    pub logs: String,
}

/// Start `cmd` (native-peer on host B) receiving `link` into `dir`.
fn receiver_with(cmd: Command, flags: &[&str], dir: &Path, link: &str) -> Peer {
    let d = dir.display().to_string();
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["recv", "--dir", &d, link]);
    Peer::spawn_cmd(cmd, &args)
}

/// The last `n` lines of `log`.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Lab {
    /// Send a `size`-byte file from host A to host B; once a fifth has arrived, router
    /// `cut` forwards nothing for `outage`. Checks the file arrived intact and measures how
    /// soon bytes moved again (up to two minutes; longer reads as two minutes).
    pub fn transfer_through_outage(&self, size: u64, cut: &str, outage: Duration) -> OutageOutcome {
        self.transfer_through(size, |lab| {
            lab.cut_router(cut).unwrap();
            std::thread::sleep(outage);
            lab.restore_router(cut).unwrap();
        })
    }

    /// Host `name` moves from 10.0.`subnet`.`from` to .`to` on its LAN, as a laptop given a
    /// new lease does: the new address comes, the old one goes (sockets bound to it are
    /// dead, connections from it hang), the default route stays.
    pub fn move_host(&self, name: &str, subnet: u8, from: u8, to: u8) -> anyhow::Result<()> {
        let h = self.ns(&format!("h{name}"));
        in_ns(
            &h,
            &["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
        )?;
        let new = format!("10.0.{subnet}.{to}/24");
        let old = format!("10.0.{subnet}.{from}/24");
        run(&["ip", "-n", &h, "addr", "add", &new, "dev", "eth0"])?;
        run(&["ip", "-n", &h, "addr", "del", &old, "dev", "eth0"])?;
        let gw = format!("10.0.{subnet}.1");
        run(&["ip", "-n", &h, "route", "replace", "default", "via", &gw])?;
        Ok(())
    }

    /// Host `name`'s interface goes down for `down` and comes back with the same address;
    /// its default route (which the kernel drops with the link) is put back, as a network
    /// manager does.
    pub fn bounce_host(&self, name: &str, subnet: u8, down: Duration) -> anyhow::Result<()> {
        let h = self.ns(&format!("h{name}"));
        run(&["ip", "-n", &h, "link", "set", "eth0", "down"])?;
        std::thread::sleep(down);
        run(&["ip", "-n", &h, "link", "set", "eth0", "up"])?;
        let gw = format!("10.0.{subnet}.1");
        run(&["ip", "-n", &h, "route", "replace", "default", "via", &gw])?;
        Ok(())
    }

    /// Router `name` (an iptables router) forgets its NAT mappings, as a reboot does, and
    /// maps what comes next to other ports (50000–59999, at random): the other side sees this side's packets come
    /// from a port it never checked, and the server sees segments of no connection it knows.
    pub fn forget_mappings(&self, name: &str) -> anyhow::Result<()> {
        let r = self.ns(&format!("r{name}"));
        for proto in ["udp", "tcp"] {
            iptables(
                &r,
                &[
                    "-t",
                    "nat",
                    "-I",
                    "POSTROUTING",
                    "1",
                    "-o",
                    "wan",
                    "-p",
                    proto,
                    "-j",
                    "MASQUERADE",
                    "--to-ports",
                    "50000-59999",
                    "--random-fully",
                ],
            )?;
        }
        in_ns(&r, &["conntrack", "-F"])?;
        Ok(())
    }

    /// Send a `size`-byte file from host A to host B; once a fifth has arrived, `disrupt`
    /// the lab. Checks the file arrived intact and measures how soon after `disrupt` returned
    /// bytes moved again (up to two minutes).
    pub fn transfer_through(&self, size: u64, disrupt: impl FnOnce(&Lab)) -> OutageOutcome {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let file = src.path().join("lab.bin");
        crate::make_file(&file, size, size ^ 0x0a7a);
        // ICE and connection states in the logs (a few lines per connection), unless the
        // caller asked for more: what a failure needs to tell which side waited.
        let logged = |mut cmd: Command| {
            if std::env::var_os("PUNCHDROP_LOG").is_none() {
                cmd.env("PUNCHDROP_LOG", "info");
            }
            cmd
        };
        let (sender, link, _) =
            start_sender_with(logged(self.peer_cmd("a")), &self.url, &[], &[&file]).unwrap();
        let mut receiver = receiver_with(logged(self.peer_cmd("b")), &[], dst.path(), &link);
        receiver.wait_for_progress(size / 5);
        disrupt(self);
        let before = receiver.progress();
        assert!(before < size, "the transfer ended during the outage");
        let back = Instant::now();
        while receiver.progress() <= before && back.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let moving_again = back.elapsed();
        let (rs, revents, rerr) = receiver.finish_all(crate::LONG).unwrap();
        let (ss, sevents, serr) = sender.finish_all(crate::LONG).unwrap();
        if std::env::var_os("PUNCHDROP_LAB_LOGS").is_some() {
            eprintln!("--- sender (A) stderr:\n{serr}\n--- receiver (B) stderr:\n{rerr}");
            eprintln!("--- server:\n{}", self.server_log());
        }
        crate::expect_done(rs, &revents);
        let done = crate::expect_done(ss, &sevents);
        assert_eq!(
            crate::hash_file(&dst.path().join("lab.bin")),
            crate::hash_file(&file),
            "the file arrived altered"
        );
        OutageOutcome {
            moving_again,
            size,
            sender_transferred: done.transferred,
            sender_events: sevents,
            receiver_events: revents,
            logs: format!(
                "--- sender (A), last lines:\n{}\n--- receiver (B), last lines:\n{}",
                tail(&serr, 40),
                tail(&rerr, 40)
            ),
        }
    }
}

/// What a lab transfer reported, both sides.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sender_done: event::Done,
    pub receiver_done: event::Done,
    pub sender_connected: event::Connected,
    pub receiver_connected: event::Connected,
    /// Receiver's both-in-room → first byte, ms.
    pub first_byte_ms: f64,
}

impl Outcome {
    pub fn new(
        sender_done: event::Done,
        receiver_done: event::Done,
        s: &[Event],
        r: &[Event],
    ) -> Self {
        let connected = |events: &[Event]| {
            event::find::<event::Connected>(events)
                .cloned()
                .unwrap_or_else(|| panic!("no connected event: {events:?}"))
        };
        Self {
            sender_done,
            receiver_done,
            sender_connected: connected(s),
            receiver_connected: connected(r),
            first_byte_ms: event::find::<event::FirstByte>(r)
                .map(|f| f.ms_since_room)
                .unwrap_or(f64::NAN),
        }
    }

    /// The path kind of each side's `connected` event: (sender on A, receiver on B).
    pub fn paths(&self) -> (PathKind, PathKind) {
        (
            self.sender_connected.path.kind,
            self.receiver_connected.path.kind,
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mappers = std::mem::take(&mut *self.mappers.lock().unwrap_or_else(|e| e.into_inner()));
        let mappers = mappers.into_iter().map(|(.., c)| c);
        for mut c in mappers.chain(self.server.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still running inside (a peer a failed test left) dies with its lab.
            if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = run(&["kill", "-9", pid]);
                }
            }
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
