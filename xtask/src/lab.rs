//! `cargo xtask bench-lab`: setup time and throughput per NAT scenario, in the namespace lab
//! of the end-to-end tests (`punchdrop_e2e::lab`, which says how it is built).
//!
//! Each router delays what it sends out of its WAN side by `--rtt-ms / 2` (netem-like), so a
//! peer-to-peer round trip takes `--rtt-ms` and a peer-to-server one half that. For
//! each scenario it sends the same file `--reps` times and prints the median of the
//! receiver's both-in-room → first byte and of its throughput, with the path taken. Then
//! drops into an inbox across cone / cone (`native-peer inbox` on host A; `send --to` or a
//! stock page on host B), timed by the dropper. Root only.

use crate::browser::{page_done, share};
use anyhow::Context as _;
use clap::Parser;
use punchdrop_e2e::browser::Chromium;
use punchdrop_e2e::event;
use punchdrop_e2e::lab::{B, Impair, Lab, Nat, Spec};
use std::path::Path;
use std::time::Duration;

#[derive(Parser, Debug)]
pub struct Args {
    /// File size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Repetitions per scenario (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Simulated peer-to-peer round-trip times, in ms; each is a row set (e.g. 20,50,100,200).
    /// The inbox and outage rows use the first.
    #[arg(long, value_delimiter = ',', default_value = "20")]
    rtt_ms: Vec<u32>,
    /// Random loss on each router's way out, in percent (e.g. 0,0.1,1); each is a row set
    /// with every RTT.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    loss: Vec<f64>,
    /// Only scenarios whose name contains this (e.g. "cone / cone"; "outage" for the outage
    /// row alone, "inbox" for the inbox rows alone, "TCP" for the baseline alone); several
    /// separated by `|`, a name ending in `$` whole (e.g. "cone / cone$|symmetric /
    /// symmetric$").
    #[arg(long)]
    only: Option<String>,
    /// Also browser ↔ native and browser ↔ browser across cone / cone (stock Chromium in lab
    /// hosts; needs Debian's `chromium` and the web app built: `cargo xtask web`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    browser: bool,
    /// Seconds of the outage rows' outage (cone / cone; native → native: the receiver's
    /// router drops everything; with `--browser`, each direction with the browser's router
    /// cut);
    /// each repetition adds a share of 3 s so the cut falls at another point of SCTP's
    /// retransmission timer. 0 skips the row.
    #[arg(long, default_value_t = 10)]
    outage_s: u64,
    /// Also plain TCP with CUBIC when the kernel's default is another (slow: at 1 % loss and
    /// 100 ms it moves 0.2 MB/s).
    #[arg(long)]
    cubic: bool,
    /// One JSON object per measurement on stdout instead of the tables.
    #[arg(long)]
    json: bool,
    /// Use the `native-peer` and `signalling` in this folder instead of building the working
    /// tree's (an A/B run: keep a copy of one build's binaries, change, compare).
    #[arg(long)]
    bins: Option<std::path::PathBuf>,
    /// Draw throughput against RTT (punchdrop direct and relayed, plain TCP; a line per loss)
    /// into this SVG file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

impl Args {
    /// Whether the row `name` is asked for (`--only`; a pattern ending in `$` is the whole
    /// name).
    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| {
            o.split('|').any(|o| match o.strip_suffix('$') {
                Some(whole) => name == whole,
                None => name.contains(o),
            })
        })
    }
}

/// One point of the sweep: the peer-to-peer round trip and the loss each way.
#[derive(Debug, Clone, Copy)]
struct Wan {
    rtt_ms: u32,
    loss_pct: f64,
}

impl Wan {
    /// Each router delays and thins what it sends out (a peer-to-peer packet leaves through
    /// one router's WAN side, its answer through the other's).
    fn spec(self, a: Nat, b: B) -> Spec {
        let mut spec = Spec::new(a, b);
        spec.wan = [Impair {
            delay_ms: self.rtt_ms / 2,
            loss: self.loss_pct / 100.0,
        }; 2];
        spec
    }
}

/// One table line (or JSON object) of the sweep.
#[derive(Debug)]
struct Row<'a> {
    scenario: &'a str,
    wan: Wan,
    paths: String,
    /// Median both-in-room → first byte (None for the TCP baseline).
    first_byte_ms: Option<f64>,
    mb_s: f64,
}

/// Prints rows as a table or JSON lines, and keeps them for the plot.
#[derive(Debug)]
struct Report {
    json: bool,
    size_mib: u64,
    reps: usize,
    /// Plain TCP's median per (RTT, loss), once measured.
    tcp: Vec<(u32, f64, f64)>,
    wire_mb_s: Option<f64>,
    congestion_control: String,
    /// (scenario, RTT, loss, MB/s) for the plot.
    points: Vec<(String, u32, f64, f64)>,
}

impl Report {
    fn tcp_at(&self, wan: Wan) -> Option<f64> {
        self.tcp
            .iter()
            .find(|t| t.0 == wan.rtt_ms && t.1 == wan.loss_pct)
            .map(|t| t.2)
    }

    fn header(&self) {
        if !self.json {
            println!(
                "\n| scenario | RTT | loss | path (A / B) | both in room → first byte | throughput | plain TCP | ratio |\n|---|---|---|---|---|---|---|---|"
            );
        }
    }

    fn row(&mut self, r: Row) {
        let tcp = self.tcp_at(r.wan);
        let ratio = tcp.map(|t| r.mb_s / t);
        let rtts = r
            .first_byte_ms
            .map(|ms| ms / f64::from(r.wan.rtt_ms.max(1)));
        self.points
            .push((r.scenario.to_string(), r.wan.rtt_ms, r.wan.loss_pct, r.mb_s));
        if self.json {
            let line = serde_json::json!({
                "scenario": r.scenario,
                "rtt_ms": r.wan.rtt_ms,
                "loss": r.wan.loss_pct / 100.0,
                "size_mib": self.size_mib,
                "reps": self.reps,
                "path": r.paths,
                "mb_per_s": r.mb_s,
                "tcp_mb_per_s": tcp,
                "ratio_to_tcp": ratio,
                "first_byte_ms": r.first_byte_ms,
                "first_byte_rtts": rtts,
                "tcp_congestion_control": self.congestion_control,
                "wire_mb_per_s": self.wire_mb_s,
            });
            println!("{line}");
            return;
        }
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        println!(
            "| {} | {} ms | {} % | {} | {} | {:.1} MB/s | {} | {} |",
            r.scenario,
            r.wan.rtt_ms,
            r.wan.loss_pct,
            r.paths,
            or_dash(
                r.first_byte_ms
                    .zip(rtts)
                    .map(|(ms, n)| format!("{ms:.0} ms ({n:.1} RTT)"))
            ),
            r.mb_s,
            or_dash(tcp.map(|t| format!("{t:.1} MB/s"))),
            or_dash(ratio.map(|x| format!("{x:.2}×"))),
        );
    }
}

/// The scenario the plot calls "punchdrop, direct", and the one it calls "relayed".
const DIRECT: &str = "cone / cone";
const RELAYED: &str = "symmetric / symmetric";
const TCP: &str = "plain TCP";
const TCP_CUBIC: &str = "plain TCP, CUBIC";

/// How long one lab transfer may take.
const TRANSFER_WITHIN: Duration = Duration::from_secs(1800);

/// Name, router A, host B, volunteer relays (behind UPnP routers of their own, preferred by
/// the server to its TURN).
const SCENARIOS: &[(&str, Nat, B, u8)] = &[
    ("same LAN", Nat::Cone, B::SameLan, 0),
    ("cone / cone", Nat::Cone, B::Behind(Nat::Cone), 0),
    ("UPnP / symmetric", Nat::Upnp, B::Behind(Nat::Symmetric), 0),
    ("cone / symmetric", Nat::Cone, B::Behind(Nat::Symmetric), 0),
    (
        "symmetric / symmetric",
        Nat::Symmetric,
        B::Behind(Nat::Symmetric),
        0,
    ),
    (
        "symmetric / symmetric, volunteer relays",
        Nat::Symmetric,
        B::Behind(Nat::Symmetric),
        2,
    ),
    (
        "UDP blocked / cone",
        Nat::UdpBlocked,
        B::Behind(Nat::Cone),
        0,
    ),
];

/// One lab transfer's figures: receiver's first byte, its throughput, the paths.
struct Run {
    first_byte_ms: f64,
    mb_s: f64,
    paths: String,
}

/// "direct srflx-srflx" for one side's `done`.
fn side(d: &event::Done) -> String {
    let p = &d.path;
    format!(
        "{} {}-{}",
        p.kind.as_str(),
        p.local.as_str(),
        p.remote.as_str()
    )
}

/// The page on host A shares the file; `native-peer recv` on host B takes it.
fn browser_to_native(lab: &Lab, file: &Path, timeout: Duration) -> anyhow::Result<Run> {
    let dst = tempfile::tempdir()?;
    let mut c = Chromium::launch_stock_in(&lab.ns("ha"), "browser A", &lab.url)?;
    let link = share(&mut c, &lab.url, file)?;
    let (status, events) = lab.receiver(&[], dst.path(), &link).finish(timeout)?;
    let done = punchdrop_e2e::expect_done(status, &events);
    let first = event::find::<event::FirstByte>(&events).context("no first byte")?;
    let page = page_done(&mut c, timeout)?;
    Ok(two_sided_run(first.ms_since_room, &done, &page, &done))
}

/// A transfer's figures from the receiver's `done`, with the path as host A / host B saw it.
fn two_sided_run(
    first_byte_ms: f64,
    received: &event::Done,
    a: &event::Done,
    b: &event::Done,
) -> Run {
    Run {
        first_byte_ms,
        mb_s: received.bytes as f64 / received.seconds / 1e6,
        paths: format!("{} / {}", side(a), side(b)),
    }
}

/// A page on host B opens `link`, accepts the offer and receives: the page (kept open until
/// the sender is done too), its `done` and its first byte.
fn page_takes(
    lab: &Lab,
    link: &str,
    timeout: Duration,
) -> anyhow::Result<(Chromium, event::Done, event::FirstByte)> {
    let mut c = Chromium::launch_stock_in(&lab.ns("hb"), "browser B", &lab.url)?;
    c.goto(link)?;
    c.wait_state("offer", Duration::from_secs(30))?;
    c.click("#accept")?;
    let done = page_done(&mut c, timeout)?;
    let first: event::FirstByte = c.wait(Duration::from_secs(5))?;
    Ok((c, done, first))
}

/// `native-peer send` on host A; the page on host B receives.
fn native_to_browser(lab: &Lab, file: &Path, timeout: Duration) -> anyhow::Result<Run> {
    let (sender, link) = lab.sender(&[], &[file])?;
    let (_page_b, page, first) = page_takes(lab, &link, timeout)?;
    let (status, events) = sender.finish(timeout)?;
    let done = punchdrop_e2e::expect_done(status, &events);
    Ok(two_sided_run(first.ms_since_room, &page, &done, &page))
}

/// The page on host A shares; a page on host B takes it: Chromium's own SCTP (dcsctp) at
/// both ends on the same wire, the baseline for the two rows above.
fn browser_to_browser(lab: &Lab, file: &Path, timeout: Duration) -> anyhow::Result<Run> {
    let mut a = Chromium::launch_stock_in(&lab.ns("ha"), "browser A", &lab.url)?;
    let link = share(&mut a, &lab.url, file)?;
    let (_page_b, got, first) = page_takes(lab, &link, timeout)?;
    let sent = page_done(&mut a, timeout)?;
    Ok(two_sided_run(first.ms_since_room, &got, &sent, &got))
}

pub fn bench(root: &Path, args: Args) -> anyhow::Result<()> {
    let bins = match &args.bins {
        Some(dir) => dir.clone(),
        None => {
            crate::build_binaries(root)?;
            root.join("target/release")
        }
    };
    let work = tempfile::tempdir()?;
    let file = work.path().join("lab.bin");
    crate::make_file(&file, args.size_mib << 20)?;
    let mut report = Report {
        json: args.json,
        size_mib: args.size_mib,
        reps: args.reps.max(1),
        tcp: Vec::new(),
        wire_mb_s: None,
        congestion_control: String::new(),
        points: Vec::new(),
    };
    if !args.json {
        println!(
            "NAT lab, {} MiB, median of {}; plain TCP is a copy of the same file between the \
             same hosts over the same routers and wire",
            args.size_mib, report.reps
        );
    }
    // The baseline is measured whenever a row it is compared with is.
    let sweep = SCENARIOS.iter().any(|s| args.wants(s.0))
        || (args.browser && BROWSER_ROWS.iter().any(|r| args.wants(r.0)))
        || args
            .only
            .as_deref()
            .is_some_and(|o| o.split('|').any(|o| TCP.contains(o)));
    if sweep {
        wire_capacity(&bins, &file, &mut report)?;
        report.header();
    }
    let wans = args.rtt_ms.iter().flat_map(|&rtt_ms| {
        args.loss
            .iter()
            .map(move |&loss_pct| Wan { rtt_ms, loss_pct })
    });
    for wan in wans.filter(|_| sweep) {
        tcp_row(&bins, &file, wan, args.cubic, &mut report)?;
        scenario_rows(&bins, &args, wan, &mut report)?;
        if args.browser {
            browser_rows(&bins, &args, &file, wan, &mut report)?;
        }
    }
    let first = Wan {
        rtt_ms: args.rtt_ms[0],
        loss_pct: 0.0,
    };
    if args.only.as_deref().is_none_or(|o| o.contains("inbox")) {
        inbox_rows(&bins, &args, &file, first, &mut report)?;
    }
    let outage_wanted = args.only.as_deref().is_none_or(|o| "outage".contains(o));
    if args.outage_s > 0 && outage_wanted && !args.json {
        outage_row(&bins, &args)?;
    }
    if let Some(path) = &args.plot {
        crate::plot::throughput_by_rtt(path, &report.points, &[DIRECT, RELAYED, TCP, TCP_CUBIC])
            .with_context(|| format!("draw {}", path.display()))?;
        eprintln!("plot: {}", path.display());
    }
    Ok(())
}

/// The wire's own capacity, so it is never the limit unknowingly: plain TCP over the same
/// (userspace) wire with 1 ms each way and no loss, the best any transport can do here.
fn wire_capacity(bins: &Path, file: &Path, report: &mut Report) -> anyhow::Result<()> {
    let wan = Wan {
        rtt_ms: 2,
        loss_pct: 0.0,
    };
    let lab = Lab::with_bins(
        wan.spec(Nat::Cone, B::Behind(Nat::Cone)),
        bins.to_path_buf(),
    )
    .context("build the lab for the wire's capacity")?;
    let copy = lab.tcp_copy(file)?;
    report.wire_mb_s = Some(copy.mb_per_s());
    report.congestion_control = copy.congestion_control.clone();
    if report.json {
        let line = serde_json::json!({
            "scenario": "wire capacity",
            "rtt_ms": wan.rtt_ms,
            "loss": 0.0,
            "mb_per_s": copy.mb_per_s(),
            "tcp_congestion_control": copy.congestion_control,
        });
        println!("{line}");
    } else {
        println!(
            "wire capacity (plain TCP, {}, {} ms RTT, no loss): {:.1} MB/s",
            copy.congestion_control,
            wan.rtt_ms,
            copy.mb_per_s()
        );
    }
    Ok(())
}

/// Plain TCP at `wan`, across cone / cone with a forwarded port (NAT type does not matter to
/// a forwarded TCP connection); a fresh lab per repetition. With the kernel's default
/// congestion control (the baseline the ratios use) and, with `--cubic` when that is not
/// CUBIC, with CUBIC too (what most senders on the internet run).
fn tcp_row(
    bins: &Path,
    file: &Path,
    wan: Wan,
    cubic: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut ccs = vec![None];
    if cubic && report.congestion_control != "cubic" {
        ccs.push(Some("cubic"));
    }
    for cc in ccs {
        let mut rate = Vec::new();
        for _ in 0..report.reps {
            let spec = wan.spec(Nat::Cone, B::Behind(Nat::Cone));
            let lab =
                Lab::with_bins(spec, bins.to_path_buf()).context("build the lab for plain TCP")?;
            rate.push(lab.tcp_copy_with(file, cc)?.mb_per_s());
        }
        let mb_s = crate::median(rate);
        let scenario = match cc {
            None => {
                report.tcp.push((wan.rtt_ms, wan.loss_pct, mb_s));
                TCP
            }
            Some(_) => TCP_CUBIC,
        };
        let paths = format!("TCP {}", cc.unwrap_or(&report.congestion_control));
        report.row(Row {
            scenario,
            wan,
            paths,
            first_byte_ms: None,
            mb_s,
        });
    }
    Ok(())
}

/// Each native → native scenario at `wan`, a fresh lab per repetition.
fn scenario_rows(bins: &Path, args: &Args, wan: Wan, report: &mut Report) -> anyhow::Result<()> {
    for &(name, a, b, volunteers) in SCENARIOS {
        if !args.wants(name) {
            continue;
        }
        let spec = wan.spec(a, b).with_volunteers(volunteers);
        let mut setup = Vec::new();
        let mut rate = Vec::new();
        let mut paths = String::new();
        for _ in 0..report.reps {
            // A fresh lab per run: no NAT or conntrack state carried over.
            let lab = Lab::with_bins(spec, bins.to_path_buf())
                .with_context(|| format!("build the lab for {name}"))?;
            let _relays = (0..usize::from(volunteers))
                .map(|i| lab.volunteer(i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Slow paths (1 % loss at 200 ms) take their time; a stuck peer still ends.
            let o = lab.transfer_within(args.size_mib << 20, &[], &[], TRANSFER_WITHIN);
            setup.push(o.first_byte_ms);
            let done = &o.receiver_done;
            rate.push(done.bytes as f64 / done.seconds / 1e6);
            let (a, b) = (&o.sender_connected.path, &o.receiver_connected.path);
            let this = format!(
                "{} {}-{} / {} {}",
                a.kind.as_str(),
                a.local.as_str(),
                a.remote.as_str(),
                b.kind.as_str(),
                b.protocol.as_str(),
            );
            if !paths.contains(&this) {
                if !paths.is_empty() {
                    paths.push_str("; ");
                }
                paths.push_str(&this);
            }
        }
        report.row(Row {
            scenario: name,
            wan,
            paths,
            first_byte_ms: Some(crate::median(setup)),
            mb_s: crate::median(rate),
        });
    }
    Ok(())
}

/// native → native across cone / cone, the receiver's router cut for a while mid-transfer:
/// how soon bytes move again once it forwards again, and what the sender sent twice.
fn outage_row(bins: &Path, args: &Args) -> anyhow::Result<()> {
    let wan = Wan {
        rtt_ms: args.rtt_ms[0],
        loss_pct: 0.0,
    };
    let spec = wan.spec(Nat::Cone, B::Behind(Nat::Cone));
    // Long enough to still be running after the outage at the lab's speed.
    let size = (args.size_mib << 20).max(256 << 20);
    let reps = args.reps.max(1);
    let (mut again, mut resent) = (Vec::new(), Vec::new());
    for i in 0..reps {
        let lab =
            Lab::with_bins(spec, bins.to_path_buf()).context("build the lab for the outage")?;
        let outage = Duration::from_secs(args.outage_s)
            + Duration::from_millis(3000 * i as u64 / reps as u64);
        let o = lab.transfer_through_outage(size, "b", outage);
        again.push(o.moving_again.as_secs_f64() * 1e3);
        resent.push(o.sender_transferred.saturating_sub(o.size) as f64);
    }
    println!(
        "\n| outage ({} s, cone / cone, {} MiB, median of {reps}) | side cut | connectivity back → bytes moving (median, max) | bytes sent twice (median) |\n|---|---|---|---|",
        args.outage_s,
        size >> 20,
    );
    outage_line("native → native", "receiver's", again, resent);
    address_rows(bins, spec, size, reps)?;
    if args.browser {
        for page_receives in [false, true] {
            let (mut again, mut resent) = (Vec::new(), Vec::new());
            for i in 0..reps {
                let lab = Lab::with_bins(spec, bins.to_path_buf())
                    .context("build the lab for the outage")?;
                let outage = Duration::from_secs(args.outage_s)
                    + Duration::from_millis(3000 * i as u64 / reps as u64);
                let (moving, twice) = browser_outage(&lab, size, page_receives, outage)?;
                again.push(moving.as_secs_f64() * 1e3);
                resent.push(twice as f64);
            }
            let name = match page_receives {
                true => "native → browser",
                false => "browser → native",
            };
            outage_line(name, "browser's", again, resent);
        }
    }
    Ok(())
}

/// native → native across cone / cone, one host's address changing mid-transfer (the new
/// one comes, the old one goes): how soon bytes move again, and what was sent twice.
fn address_rows(bins: &Path, spec: Spec, size: u64, reps: usize) -> anyhow::Result<()> {
    println!(
        "\n| address change (cone / cone, {} MiB, median of {reps}) | host moved | address changed → bytes moving (median, max) | bytes sent twice (median) |\n|---|---|---|---|",
        size >> 20,
    );
    for (host, subnet, side) in [("b", 2, "receiver's"), ("a", 1, "sender's")] {
        let (mut again, mut resent) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let lab = Lab::with_bins(spec, bins.to_path_buf())
                .context("build the lab for the address change")?;
            let o = lab.transfer_through(size, |lab| lab.move_host(host, subnet, 2, 102).unwrap());
            again.push(o.moving_again.as_secs_f64() * 1e3);
            resent.push(o.sender_transferred.saturating_sub(o.size) as f64);
        }
        outage_line("native → native", side, again, resent);
    }
    Ok(())
}

fn outage_line(name: &str, cut: &str, again: Vec<f64>, resent: Vec<f64>) {
    let max = again.iter().copied().fold(0.0, f64::max);
    println!(
        "| {name} | {cut} | {:.0} ms, {max:.0} ms | {:.0} |",
        crate::median(again),
        crate::median(resent),
    );
}

/// The page's last `progress`, in bytes.
fn page_progress(c: &mut Chromium) -> u64 {
    let js = "(() => { const e = window.punchdropEvents || []; \
              for (let i = e.length - 1; i >= 0; i--) if (e[i].event === 'progress') return e[i].bytes; \
              return 0; })()";
    c.eval(js).ok().and_then(|v| v.as_u64()).unwrap_or(0)
}

/// Browser ↔ native across cone / cone with the browser's router cut for `outage` once a
/// fifth has arrived: how soon after it forwards again the receiver reports more bytes, and
/// what the sender sent twice.
fn browser_outage(
    lab: &Lab,
    size: u64,
    page_receives: bool,
    outage: Duration,
) -> anyhow::Result<(Duration, u64)> {
    let work = tempfile::tempdir()?;
    let file = work.path().join("lab.bin");
    crate::make_file(&file, size)?;
    let timeout = Duration::from_secs(600);
    let dst = tempfile::tempdir()?;
    let host = if page_receives { "b" } else { "a" };
    let mut c = Chromium::launch_stock_in(&lab.ns(&format!("h{host}")), "browser", &lab.url)?;
    let mut native = if page_receives {
        let (sender, link) = lab.sender(&[], &[&file])?;
        c.goto(&link)?;
        c.wait_state("offer", Duration::from_secs(60))?;
        c.click("#accept")?;
        sender
    } else {
        let link = share(&mut c, &lab.url, &file)?;
        lab.receiver(&[], dst.path(), &link)
    };
    let received = |c: &mut Chromium, native: &mut punchdrop_e2e::Peer| match page_receives {
        true => page_progress(c),
        false => native.progress(),
    };
    let start = std::time::Instant::now();
    while received(&mut c, &mut native) < size / 5 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "no progress to a fifth"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.cut_router(host)?;
    std::thread::sleep(outage);
    let before = received(&mut c, &mut native);
    lab.restore_router(host)?;
    let back = std::time::Instant::now();
    while received(&mut c, &mut native) <= before {
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(120),
            "nothing moved after the outage"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let moving = back.elapsed();
    let page = page_done(&mut c, timeout)?;
    let (status, events) = native.finish(timeout)?;
    let done = punchdrop_e2e::expect_done(status, &events);
    let sent = if page_receives {
        done.transferred
    } else {
        page.transferred
    };
    Ok((moving, sent.saturating_sub(size)))
}

/// Drops into an inbox across cone / cone: `native-peer inbox` on host A, the dropper on
/// host B (`native-peer send --to LINK`, or a stock page on the inbox's link). Setup is the
/// dropper's own: from starting `send --to` (or the page's files being picked, the page
/// already on the link) to its first bytes out; throughput is the dropper's `done`.
/// In the report, "first byte" is the dropper's from its start (`send --to`) or the pick.
fn inbox_rows(
    bins: &Path,
    args: &Args,
    file: &Path,
    wan: Wan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut rows: Vec<(&str, Scenario)> = vec![("native → inbox, cone / cone", native_drop)];
    if args.browser {
        rows.push(("browser → inbox, cone / cone", page_drop));
    }
    cone_cone_rows(bins, args, file, wan, &rows, report)
}

/// A running inbox on host A, its link, and the folders it lives in (kept while it runs).
struct LabInbox {
    peer: punchdrop_e2e::Peer,
    link: String,
    _dirs: [tempfile::TempDir; 2],
}

impl LabInbox {
    fn start(lab: &Lab) -> anyhow::Result<Self> {
        let (state, dst) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (d, st) = (
            dst.path().display().to_string(),
            state.path().join("inbox.json").display().to_string(),
        );
        let mut peer = punchdrop_e2e::Peer::spawn_cmd(
            lab.peer_cmd("a"),
            &["--server", &lab.url, "inbox", "--dir", &d, "--state", &st],
        );
        let ready: event::Ready = peer.wait(Duration::from_secs(10))?;
        Ok(Self {
            peer,
            link: ready.link,
            _dirs: [state, dst],
        })
    }
}

/// `native-peer send --to LINK FILE` on host B: ms from its start to its first bytes out.
fn native_drop(lab: &Lab, file: &Path, timeout: Duration) -> anyhow::Result<Run> {
    let mut inbox = LabInbox::start(lab)?;
    let f = file.display().to_string();
    let start = std::time::Instant::now();
    let mut p = punchdrop_e2e::Peer::spawn_cmd(
        lab.peer_cmd("b"),
        &["--server", &lab.url, "send", "--to", &inbox.link, &f],
    );
    let first: event::Progress = p.wait(timeout)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(first.bytes > 0, "a progress event before any byte");
    let (status, events) = p.finish(timeout)?;
    inbox.peer.kill();
    Ok(dropper_run(
        ms,
        &punchdrop_e2e::expect_done(status, &events),
    ))
}

/// A stock page on host B, on the inbox's link, picks `file`: ms from the pick to its first
/// `progress` (both stamped in the page).
fn page_drop(lab: &Lab, file: &Path, timeout: Duration) -> anyhow::Result<Run> {
    let mut inbox = LabInbox::start(lab)?;
    let mut c = Chromium::launch_stock_in(&lab.ns("hb"), "browser B", &lab.url)?;
    crate::browser::stamp_events(&mut c)?;
    c.goto(&inbox.link)?;
    c.wait_state("ready", Duration::from_secs(30))?;
    let ms = crate::browser::pick_to_first_byte(&mut c, file, timeout)?;
    let done: event::Done = c.wait(Duration::from_secs(5))?;
    inbox.peer.kill();
    Ok(dropper_run(ms, &done))
}

fn dropper_run(first_byte_ms: f64, done: &event::Done) -> Run {
    Run {
        first_byte_ms,
        mb_s: done.bytes as f64 / done.seconds / 1e6,
        paths: side(done),
    }
}

type Scenario = fn(&Lab, &Path, Duration) -> anyhow::Result<Run>;

/// Browser ↔ native and browser ↔ browser across two cone NATs, stock Chromium.
fn browser_rows(
    bins: &Path,
    args: &Args,
    file: &Path,
    wan: Wan,
    report: &mut Report,
) -> anyhow::Result<()> {
    cone_cone_rows(bins, args, file, wan, &BROWSER_ROWS, report)
}

const BROWSER_ROWS: [(&str, Scenario); 3] = [
    ("browser → native, cone / cone", browser_to_native),
    ("native → browser, cone / cone", native_to_browser),
    ("browser → browser, cone / cone", browser_to_browser),
];

/// Each of `rows` across cone / cone at `wan`, a fresh lab per repetition: one report row
/// with the medians.
fn cone_cone_rows(
    bins: &Path,
    args: &Args,
    file: &Path,
    wan: Wan,
    rows: &[(&'static str, Scenario)],
    report: &mut Report,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(600);
    for &(name, run) in rows {
        if !args.wants(name) {
            continue;
        }
        let spec = wan.spec(Nat::Cone, B::Behind(Nat::Cone));
        let (mut setup, mut rate, mut paths) = (Vec::new(), Vec::new(), Vec::<String>::new());
        for _ in 0..report.reps {
            let lab = Lab::with_bins(spec, bins.to_path_buf())
                .with_context(|| format!("build the lab for {name}"))?;
            let r = run(&lab, file, timeout).with_context(|| name.to_string())?;
            setup.push(r.first_byte_ms);
            rate.push(r.mb_s);
            if !paths.contains(&r.paths) {
                paths.push(r.paths);
            }
        }
        report.row(Row {
            scenario: name,
            wan,
            paths: paths.join("; "),
            first_byte_ms: Some(crate::median(setup)),
            mb_s: crate::median(rate),
        });
    }
    Ok(())
}
