//! `cargo xtask bench-lab`: setup time and throughput per NAT scenario, in the namespace lab
//! of the end-to-end tests (`punchdrop_e2e::lab`, which says how it is built).
//!
//! Each router delays what it sends out of its WAN side by `--rtt-ms / 2` (netem-like), so a
//! peer-to-peer round trip takes `--rtt-ms` and a peer-to-server one half that. For
//! each scenario it sends the same file `--reps` times and prints the median of the
//! receiver's both-in-room → first byte and of its throughput, with the path taken. Then
//! drops into an inbox across cone / cone (`native-peer inbox` on host A; `send --to` or a
//! stock page on host B), timed by the dropper. Root only.

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
    #[arg(long, default_value_t = 16)]
    size_mib: u64,
    /// Repetitions per scenario (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Simulated peer-to-peer round-trip time, in ms.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u32,
    /// Only scenarios whose name contains this (e.g. "cone / cone"; "outage" for the outage
    /// row alone, "inbox" for the inbox rows alone).
    #[arg(long)]
    only: Option<String>,
    /// Also browser ↔ native across cone / cone (stock Chromium in a lab host; needs
    /// Debian's `chromium` and the web app built: `cargo xtask web`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    browser: bool,
    /// Seconds of the outage rows' outage (cone / cone; native → native: the receiver's
    /// router drops everything; with `--browser`, each direction with the browser's router
    /// cut);
    /// each repetition adds a share of 3 s so the cut falls at another point of SCTP's
    /// retransmission timer. 0 skips the row.
    #[arg(long, default_value_t = 10)]
    outage_s: u64,
}

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

/// The page shares `file` from the start page; the link it shows.
fn page_shares(c: &mut Chromium, lab: &Lab, file: &Path) -> anyhow::Result<String> {
    c.goto(&format!("{}/", lab.url))?;
    c.wait_state("ready", Duration::from_secs(30))?;
    c.set_files("#file-input", &[file])?;
    c.wait_state("waiting", Duration::from_secs(30))?;
    let link = c.eval("document.querySelector('#share-link').href")?;
    Ok(link.as_str().context("no share link")?.to_string())
}

/// The page on host A shares the file; `native-peer recv` on host B takes it.
fn browser_to_native(lab: &Lab, file: &Path, timeout: Duration) -> anyhow::Result<Run> {
    let dst = tempfile::tempdir()?;
    let mut c = Chromium::launch_stock_in(&lab.ns("ha"), "browser A", &lab.url)?;
    let link = page_shares(&mut c, lab, file)?;
    let (status, events) = lab.receiver(&[], dst.path(), &link).finish(timeout)?;
    let done = punchdrop_e2e::expect_done(status, &events);
    let first = event::find::<event::FirstByte>(&events).context("no first byte")?;
    c.wait_state("done", timeout)?;
    let page: event::Done = c.wait(Duration::from_secs(5))?;
    Ok(Run {
        first_byte_ms: first.ms_since_room,
        mb_s: done.bytes as f64 / done.seconds / 1e6,
        paths: format!("{} / {}", side(&page), side(&done)),
    })
}

/// `native-peer send` on host A; the page on host B receives.
fn native_to_browser(lab: &Lab, file: &Path, timeout: Duration) -> anyhow::Result<Run> {
    let (sender, link) = lab.sender(&[], &[file])?;
    let mut c = Chromium::launch_stock_in(&lab.ns("hb"), "browser B", &lab.url)?;
    c.goto(&link)?;
    c.wait_state("offer", Duration::from_secs(30))?;
    c.click("#accept")?;
    c.wait_state("done", timeout)?;
    let page: event::Done = c.wait(Duration::from_secs(5))?;
    let first: event::FirstByte = c.wait(Duration::from_secs(5))?;
    let (status, events) = sender.finish(timeout)?;
    let done = punchdrop_e2e::expect_done(status, &events);
    Ok(Run {
        first_byte_ms: first.ms_since_room,
        mb_s: page.bytes as f64 / page.seconds / 1e6,
        paths: format!("{} / {}", side(&done), side(&page)),
    })
}

pub fn bench(root: &Path, args: Args) -> anyhow::Result<()> {
    crate::build_binaries(root)?;
    let bins = root.join("target/release");
    println!(
        "NAT lab, {} MiB, {} ms peer RTT, median of {}\n",
        args.size_mib, args.rtt_ms, args.reps
    );
    println!(
        "| scenario | path (A / B) | both in room → first byte | throughput |\n|---|---|---|---|"
    );
    for &(name, a, b, volunteers) in SCENARIOS {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let mut spec = Spec::new(a, b).with_volunteers(volunteers);
        // A peer-to-peer round trip leaves through both routers' WAN sides.
        let link = Impair {
            delay_ms: args.rtt_ms / 2,
            loss: 0.0,
        };
        spec.wan = [link; 2];
        let mut setup = Vec::new();
        let mut rate = Vec::new();
        let mut paths = String::new();
        for _ in 0..args.reps.max(1) {
            // A fresh lab per run: no NAT or conntrack state carried over.
            let lab = Lab::with_bins(spec, bins.clone())
                .with_context(|| format!("build the lab for {name}"))?;
            let _relays = (0..usize::from(volunteers))
                .map(|i| lab.volunteer(i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let o = lab.transfer(args.size_mib << 20, &[], &[]);
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
        println!(
            "| {name} | {paths} | {:.0} ms | {:.1} MB/s |",
            crate::median(setup),
            crate::median(rate)
        );
    }
    if args.browser {
        browser_rows(&bins, &args)?;
    }
    if args.only.as_deref().is_none_or(|o| o.contains("inbox")) {
        inbox_rows(&bins, &args)?;
    }
    let outage_wanted = args.only.as_deref().is_none_or(|o| "outage".contains(o));
    if args.outage_s > 0 && outage_wanted {
        outage_row(&bins, &args)?;
    }
    Ok(())
}

/// native → native across cone / cone, the receiver's router cut for a while mid-transfer:
/// how soon bytes move again once it forwards again, and what the sender sent twice.
fn outage_row(bins: &Path, args: &Args) -> anyhow::Result<()> {
    let mut spec = Spec::new(Nat::Cone, B::Behind(Nat::Cone));
    let link = Impair {
        delay_ms: args.rtt_ms / 2,
        loss: 0.0,
    };
    spec.wan = [link; 2];
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
        let link = page_shares(&mut c, lab, &file)?;
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
    c.wait_state("done", timeout)?;
    let page: event::Done = c.wait(Duration::from_secs(5))?;
    let (status, events) = native.finish(timeout)?;
    let done = punchdrop_e2e::expect_done(status, &events);
    let sent = if page_receives {
        done.transferred
    } else {
        page.transferred
    };
    Ok((moving, sent.saturating_sub(size)))
}

/// Browser ↔ native across two cone NATs, stock Chromium on one side.
/// Drops into an inbox across cone / cone: `native-peer inbox` on host A, the dropper on
/// host B (`native-peer send --to LINK`, or a stock page on the inbox's link). Setup is the
/// dropper's own: from starting `send --to` (or the page's files being picked, the page
/// already on the link) to its first bytes out; throughput is the dropper's `done`.
fn inbox_rows(bins: &Path, args: &Args) -> anyhow::Result<()> {
    let mut rows: Vec<(&str, Scenario)> = vec![("native → inbox, cone / cone", native_drop)];
    if args.browser {
        rows.push(("browser → inbox, cone / cone", page_drop));
    }
    println!("\n| drop | path (dropper) | drop → first byte out | throughput |\n|---|---|---|---|");
    cone_cone_rows(bins, args, &rows)
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

fn browser_rows(bins: &Path, args: &Args) -> anyhow::Result<()> {
    let rows: [(&str, Scenario); 2] = [
        ("browser → native, cone / cone", browser_to_native),
        ("native → browser, cone / cone", native_to_browser),
    ];
    cone_cone_rows(bins, args, &rows)
}

/// Each of `rows` across cone / cone at `--rtt-ms`, a fresh lab per repetition: one table
/// line with the medians.
fn cone_cone_rows(bins: &Path, args: &Args, rows: &[(&str, Scenario)]) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let file = work.path().join("lab.bin");
    crate::make_file(&file, args.size_mib << 20)?;
    let timeout = Duration::from_secs(600);
    for &(name, run) in rows {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let mut spec = Spec::new(Nat::Cone, B::Behind(Nat::Cone));
        let link = Impair {
            delay_ms: args.rtt_ms / 2,
            loss: 0.0,
        };
        spec.wan = [link; 2];
        let (mut setup, mut rate, mut paths) = (Vec::new(), Vec::new(), Vec::<String>::new());
        for _ in 0..args.reps.max(1) {
            let lab = Lab::with_bins(spec, bins.to_path_buf())
                .with_context(|| format!("build the lab for {name}"))?;
            let r = run(&lab, &file, timeout).with_context(|| name.to_string())?;
            setup.push(r.first_byte_ms);
            rate.push(r.mb_s);
            if !paths.contains(&r.paths) {
                paths.push(r.paths);
            }
        }
        println!(
            "| {name} | {} | {:.0} ms | {:.1} MB/s |",
            paths.join("; "),
            crate::median(setup),
            crate::median(rate)
        );
    }
    Ok(())
}
