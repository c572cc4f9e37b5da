//! `cargo xtask bench-inbox`: what a person dropping into an inbox waits for, and what an
//! inbox costs while it waits (issue 15).
//!
//! On loopback, through a real signalling server, one running `native-peer inbox`:
//! 1. native → inbox: `--drops` drops of 1 MiB, each timed from starting `native-peer send
//!    --to LINK` to its first `progress` event (its first bytes out: knock, the inbox's join,
//!    PAKE, ICE, DTLS, SCTP and the offer all happened), and one `--size-mib` drop's MB/s
//!    (bytes / the sender's `done.seconds`) against `send` → `recv` of the same file in the
//!    same run;
//! 2. browser → inbox (root and Chromium only, in a namespace with only `lo`): the page
//!    already on the inbox's link, timed from the files being picked to the page's first
//!    `progress` event (stamped in the page with `performance.now()`), and one
//!    `--browser-size-mib` drop's MB/s;
//! 3. an idle inbox: CPU seconds and RSS over `--idle-secs` (its keepalive pings included),
//!    CPU scaled to an hour.
//!
//! Each received file is compared by BLAKE3 hash.

use crate::browser::pick_to_first_byte;
use anyhow::{Context as _, bail};
use punchdrop_e2e::browser::{Chromium, chromium_path, in_loopback_netns};
use punchdrop_e2e::{Peer, Signalling, event, hash_file, is_root, make_file};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Small drops timed for latency, per client.
    #[arg(long, default_value_t = 20)]
    drops: usize,
    /// Size in MiB of the native drop measured for throughput.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Size in MiB of the browser drop measured for throughput.
    #[arg(long, default_value_t = 64)]
    browser_size_mib: u64,
    /// Seconds the idle inbox is watched.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// Also the browser section (root and Chromium needed).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    browser: bool,
}

pub fn bench(root: &Path, args: Args) -> anyhow::Result<()> {
    let browser = args.browser && chromium_path().exists();
    if browser && !is_root() {
        bail!(
            "the browser section runs in a network namespace, which needs root (or pass --browser false)"
        );
    }
    crate::build_binaries(root)?;
    crate::browser::use_bins(&root.join("target/release"));
    let args2 = args.clone();
    let report = in_loopback_or_here(browser, move || measure(&args2, browser))?;
    println!("\ninbox, loopback, one signalling server\n");
    println!(
        "| client | drop → first byte out (median, 10th–90th pct, {} drops of 1 MiB) | MB/s of one large drop | same file send → recv |",
        args.drops
    );
    println!("|---|---|---|---|");
    for r in &report.rows {
        println!(
            "| {} | {:.0} ms ({:.0}–{:.0}) | {:.1} ({} MiB) | {} |",
            r.client, r.p50, r.p10, r.p90, r.mb_s, r.size_mib, r.baseline
        );
    }
    // /proc counts CPU in ticks of 10 ms: less than one is "under 10 ms".
    let per_hour = report.idle_cpu_s * 3600.0 / args.idle_secs as f64;
    let cpu = match report.idle_cpu_s {
        0.0 => format!(
            "under 0.01 CPU-s (under {:.2} CPU-s per hour)",
            0.01 * 3600.0 / args.idle_secs as f64
        ),
        s => format!("{s:.2} CPU-s ({per_hour:.2} CPU-s per hour)"),
    };
    println!(
        "\nidle inbox over {} s: {cpu}, RSS {:.1} MiB",
        args.idle_secs, report.idle_rss_mib
    );
    if !browser {
        println!("(browser section not run: needs root and Chromium)");
    }
    Ok(())
}

/// In a loopback-only namespace when the browser section runs (as the browser tests do).
fn in_loopback_or_here<T: Send + 'static>(
    netns: bool,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    if netns { in_loopback_netns(f) } else { f() }
}

struct Row {
    client: &'static str,
    p50: f64,
    p10: f64,
    p90: f64,
    mb_s: f64,
    size_mib: u64,
    baseline: String,
}

struct Report {
    rows: Vec<Row>,
    idle_cpu_s: f64,
    idle_rss_mib: f64,
}

fn measure(args: &Args, browser: bool) -> anyhow::Result<Report> {
    // Many rooms from one address in a short time: lift the limits a public server sets.
    let sig = Signalling::start_with(&[
        "--room-rate",
        "1000000",
        "--msg-rate",
        "1000000",
        "--msg-burst",
        "1000000",
    ]);
    let work = tempfile::tempdir()?;
    let small = work.path().join("small.bin");
    make_file(&small, 1 << 20, 1);
    let big = work.path().join("big.bin");
    eprintln!("writing a {} MiB test file…", args.size_mib);
    make_file(&big, args.size_mib << 20, 2);
    let (mut inbox, link, dst) = start_inbox(&sig.url, work.path())?;
    let mut rows = Vec::new();
    eprintln!("native → inbox…");
    let mut times = Vec::new();
    for _ in 0..args.drops {
        times.push(native_drop(&sig.url, &link, &small)?.0);
    }
    let (_, mb_s) = native_drop(&sig.url, &link, &big)?;
    check(&dst.join("big.bin"), &big)?;
    let baseline = send_recv(&sig.url, &big, work.path())?;
    rows.push(row(
        "native-peer",
        times,
        mb_s,
        args.size_mib,
        format!("{baseline:.1} MB/s"),
    ));
    if browser {
        eprintln!("browser → inbox…");
        let file = work.path().join("page.bin");
        make_file(&file, args.browser_size_mib << 20, 3);
        let (times, mb_s) = browser_drops(&link, &small, &file, args.drops)?;
        rows.push(row(
            "Chromium page",
            times,
            mb_s,
            args.browser_size_mib,
            "see bench-browser".into(),
        ));
    }
    // Idle: a fresh inbox that nobody drops into.
    inbox.kill();
    let (idle, _, _) = start_inbox(&sig.url, work.path())?;
    let pid = idle.pid();
    let cpu0 = cpu_seconds(pid)?;
    eprintln!("watching an idle inbox for {} s…", args.idle_secs);
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let idle_cpu_s = cpu_seconds(pid)? - cpu0;
    let idle_rss_mib = rss_kib(pid)? as f64 / 1024.0;
    Ok(Report {
        rows,
        idle_cpu_s,
        idle_rss_mib,
    })
}

fn row(client: &'static str, mut t: Vec<f64>, mb_s: f64, size_mib: u64, baseline: String) -> Row {
    t.sort_by(f64::total_cmp);
    let pct = |p: usize| t[(t.len() - 1) * p / 100];
    Row {
        client,
        p50: pct(50),
        p10: pct(10),
        p90: pct(90),
        mb_s,
        size_mib,
        baseline,
    }
}

/// A running inbox (its own state and folder under `work`), its link and folder.
fn start_inbox(server: &str, work: &Path) -> anyhow::Result<(Peer, String, PathBuf)> {
    let dir = tempfile::tempdir_in(work)?.keep();
    let state = dir.join("state.json");
    let files = dir.join("files");
    let (f, s) = (files.display().to_string(), state.display().to_string());
    let mut p = Peer::spawn(&[
        "--server",
        server,
        "--bind",
        "127.0.0.1:0",
        "inbox",
        "--dir",
        &f,
        "--state",
        &s,
    ]);
    let ready: event::Ready = p.wait(Duration::from_secs(10))?;
    Ok((p, ready.link, files))
}

/// `send --to LINK file`: milliseconds from its start to its first bytes out, and MB/s.
fn native_drop(server: &str, link: &str, file: &Path) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let mut child = Command::new(punchdrop_e2e::bin("native-peer"))
        .args([
            "--json",
            "--server",
            server,
            "--bind",
            "127.0.0.1:0",
            "send",
            "--to",
            link,
        ])
        .arg(file)
        .env("PUNCHDROP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut first = None;
    let mut done = None;
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        match v["event"].as_str() {
            Some("progress") if first.is_none() && v["bytes"].as_u64() > Some(0) => {
                first = Some(start.elapsed().as_secs_f64() * 1e3);
            }
            Some("done") => done = Some(v),
            _ => {}
        }
    }
    let status = child.wait()?;
    let (Some(first), Some(done), true) = (first, done, status.success()) else {
        bail!("a drop failed ({status})");
    };
    let mb_s =
        done["bytes"].as_f64().unwrap_or(0.0) / done["seconds"].as_f64().unwrap_or(f64::NAN) / 1e6;
    Ok((first, mb_s))
}

/// `send` → `recv` of `file`: the receiver's MB/s, the baseline for a drop.
fn send_recv(server: &str, file: &Path, work: &Path) -> anyhow::Result<f64> {
    let dst = tempfile::tempdir_in(work)?;
    let (sender, link, _) =
        punchdrop_e2e::start_sender(server, &["--bind", "127.0.0.1:0"], &[file])?;
    let d = dst.path().display().to_string();
    let (status, events) = Peer::spawn(&[
        "--server",
        server,
        "--bind",
        "127.0.0.1:0",
        "recv",
        "--dir",
        &d,
        &link,
    ])
    .finish(Duration::from_secs(600))?;
    sender.finish(Duration::from_secs(60))?;
    let done = event::find::<event::Done>(&events)
        .filter(|_| status.success())
        .context("send → recv failed")?;
    check(&dst.path().join(file.file_name().context("name")?), file)?;
    Ok(done.bytes as f64 / done.seconds / 1e6)
}

/// `drops` small drops from a page on the inbox's link, timed from picking the file to the
/// page's first `progress`; then one drop of `big` for MB/s.
fn browser_drops(
    link: &str,
    small: &Path,
    big: &Path,
    drops: usize,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let mut c = Chromium::launch_named("dropper")?;
    crate::browser::stamp_events(&mut c)?;
    let origin = link.split("/i/").next().unwrap_or_default().to_string();
    let open = |c: &mut Chromium| -> anyhow::Result<()> {
        c.goto(&format!("{origin}/"))?;
        c.goto(link)?;
        c.wait_state("ready", Duration::from_secs(30))
    };
    let mut times = Vec::new();
    for _ in 0..drops {
        open(&mut c)?;
        times.push(pick_to_first_byte(&mut c, small, Duration::from_secs(60))?);
    }
    open(&mut c)?;
    pick_to_first_byte(&mut c, big, Duration::from_secs(600))?;
    let done: event::Done = c.wait(Duration::from_secs(5))?;
    Ok((times, done.bytes as f64 / done.seconds / 1e6))
}

fn check(got: &Path, sent: &Path) -> anyhow::Result<()> {
    if hash_file(got) != hash_file(sent) {
        bail!("{} differs from the file sent", got.display());
    }
    Ok(())
}

/// User + system CPU seconds of process `pid`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}
