//! `cargo xtask bench`: punchdrop's benchmark.
//!
//! In one run on loopback it sends the same file (default 256 MiB) native → native through a
//! real signalling server, and by a plain TCP copy (read → socket → write + fsync, as the
//! receiver does), and prints a table: MB/s of both and their ratio, both-in-room → first
//! byte, and CPU seconds and peak RSS of each peer. Each is repeated and the median reported.

use anyhow::{Context as _, bail};
use clap::Parser;
use punchdrop_e2e::{Event, event};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod browser;
mod inbox;
mod lab;
mod load;
mod plot;
mod web;
mod wormhole;

#[derive(Parser, Debug)]
#[command(about = "punchdrop project tasks")]
enum Task {
    /// Measure native↔native throughput and setup against a plain TCP copy.
    Bench(BenchArgs),
    /// Setup time and throughput per NAT scenario in the namespace lab (root only).
    BenchLab(lab::Args),
    /// Browser → native, native → browser and Chromium ↔ Chromium throughput (root only).
    BenchBrowser(browser::Args),
    /// Both in room → first byte on loopback over many small transfers; with `--against`,
    /// interleaved with another build of native-peer (A/B).
    BenchSetup(SetupArgs),
    /// Drops into an inbox: latency and throughput from native-peer and a page, and an idle
    /// inbox's CPU and memory.
    BenchInbox(inbox::Args),
    /// The signalling server under many idle peers, live pairs and abuse (loopback).
    Load(load::Args),
    /// Build the browser app (wasm-client → web/pkg).
    Web,
}

#[derive(Parser, Debug)]
struct BenchArgs {
    /// File size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also measure relayed transfers (bundled TURN, and coturn when installed).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    relay: bool,
    /// Repetitions of each relayed measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    relay_reps: usize,
    /// Extra environment for both peers, e.g. PUNCHDROP_CHUNK=131072 (repeatable).
    #[arg(long = "peer-env", value_name = "K=V")]
    peer_env: Vec<String>,
    /// Also magic-wormhole (PyPI, installed under target/bench-tools on first use; root).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wormhole: bool,
    /// Then the browser section (see bench-browser; skipped if Chromium is missing).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    browser: bool,
    #[command(flatten)]
    browser_args: browser::Args,
}

#[derive(Parser, Debug)]
struct SetupArgs {
    /// Transfers per build.
    #[arg(long, default_value_t = 40)]
    reps: usize,
    /// File size in KiB.
    #[arg(long, default_value_t = 1024)]
    size_kib: u64,
    /// A folder holding another build's `native-peer` to compare with, run by turns.
    #[arg(long, value_name = "DIR")]
    against: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Task::parse() {
        Task::Bench(args) => bench(args),
        Task::BenchSetup(args) => bench_setup(args),
        Task::BenchLab(args) => lab::bench(&root(), args),
        Task::BenchBrowser(args) => browser::bench(&root(), args),
        Task::BenchInbox(args) => inbox::bench(&root(), args),
        Task::Load(args) => load::run(&root(), args),
        Task::Web => web::build(&root()),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// CPU seconds and peak RSS of a finished child, from `wait4`.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    max_rss_mib: f64,
    ok: bool,
}

#[allow(unsafe_code)]
fn wait_usage(child: &mut Child) -> Usage {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_mib: ru.ru_maxrss as f64 / 1024.0,
        ok: r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
}

fn make_file(path: &Path, len: u64) -> anyhow::Result<()> {
    use rand::{RngCore as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn hash(path: &Path) -> anyhow::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

#[derive(Debug, Clone, Copy)]
struct PeerRun {
    mb_s: f64,
    /// Over the receiver's whole run (start to exit), as magic-wormhole's row is measured.
    whole_mb_s: f64,
    first_byte_ms: f64,
    sender: Usage,
    receiver: Usage,
}

fn read_events(child: &mut Child) -> std::sync::mpsc::Receiver<Event> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let ev = serde_json::from_str::<Event>(&line)
                .unwrap_or_else(|e| Event::error(format!("not an event ({e}): {line}")));
            let _ = tx.send(ev);
        }
    });
    rx
}

fn start_signalling(bin: &Path, extra: &[&str]) -> anyhow::Result<(Child, String)> {
    let mut sig = Command::new(bin.join("signalling"))
        .args(["--listen", "127.0.0.1:0", "--no-admin"])
        .args(extra)
        .env("PUNCHDROP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(sig.stdout.take().expect("piped")).read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((sig, url))
}

/// Build the binaries every benchmark runs (release, as the tests use them).
fn build_binaries(root: &Path) -> anyhow::Result<()> {
    eprintln!("building release binaries…");
    let st = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "signalling",
            "-p",
            "native-peer",
            // The end-to-end tests' build, so a benchmark leaves them binaries they can use
            // and the lab's volunteer relays may relay on its private "internet". The hooks
            // are hidden flags and a variable nobody sets here: nothing measured changes.
            "--features",
            "native-peer/test-hooks",
        ])
        .status()?;
    anyhow::ensure!(st.success(), "build failed");
    Ok(())
}

fn native_run(
    bin: &Path,
    server: &str,
    file: &Path,
    dst: &Path,
    env: &[(String, String)],
    extra: &[&str],
) -> anyhow::Result<PeerRun> {
    let peer = |args: &[&str]| -> anyhow::Result<Child> {
        let mut c = Command::new(bin.join("native-peer"));
        c.args(["--json", "--server", server])
            .args(extra)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        Ok(c.spawn()?)
    };
    let mut sender = peer(&["send", &file.display().to_string()])?;
    let sender_events = read_events(&mut sender);
    let link = loop {
        let e = sender_events
            .recv_timeout(Duration::from_secs(10))
            .context("sender not ready")?;
        if let Event::Ready(r) = e {
            break r.link;
        }
    };
    let started = Instant::now();
    let mut receiver = peer(&["recv", "--dir", &dst.display().to_string(), &link])?;
    let receiver_events = read_events(&mut receiver);
    let r_usage = wait_usage(&mut receiver);
    let whole_s = started.elapsed().as_secs_f64();
    let s_usage = wait_usage(&mut sender);
    let events: Vec<Event> = receiver_events.try_iter().collect();
    let done = event::find::<event::Done>(&events);
    let first = event::find::<event::FirstByte>(&events);
    let (Some(done), Some(first), true, true) = (done, first, r_usage.ok, s_usage.ok) else {
        bail!("native transfer failed: {events:?}");
    };
    Ok(PeerRun {
        mb_s: done.bytes as f64 / done.seconds / 1e6,
        whole_mb_s: std::fs::metadata(file)?.len() as f64 / whole_s / 1e6,
        first_byte_ms: first.ms_since_room,
        sender: s_usage,
        receiver: r_usage,
    })
}

/// The baseline: one TCP connection on loopback, 256 KiB reads and writes, fsync at the end.
fn tcp_run(file: &Path, dst: &Path) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let out = dst.join("tcp-copy.bin");
    let started = Instant::now();
    let rx = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut f = std::fs::File::create(&out)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
            total += n as u64;
        }
        f.sync_all()?;
        Ok(total)
    });
    let mut s = TcpStream::connect(addr)?;
    let mut f = std::fs::File::open(file)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
    }
    drop(s);
    let total = rx.join().expect("receiver thread")?;
    Ok(total as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// One small transfer between two peers of the build in `bin`; both in room → first byte.
/// Reads only `ready` and `first_byte` (the same in every build so far) and checks the file,
/// so older builds can be measured too.
fn setup_run(bin: &Path, server: &str, file: &Path, dst: &Path) -> anyhow::Result<f64> {
    let peer = |args: &[&str]| {
        Command::new(bin.join("native-peer"))
            .args(["--json", "--server", server])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    };
    let field = |line: &str, event: &str, key: &str| -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["event"] == event).then(|| v[key].clone())
    };
    let mut sender = peer(&["send", &file.display().to_string()])?;
    let mut lines = BufReader::new(sender.stdout.take().expect("piped")).lines();
    let link = lines
        .find_map(|l| field(&l.ok()?, "ready", "link"))
        .and_then(|v| v.as_str().map(str::to_string))
        .context("the sender printed no link")?;
    let receiver = peer(&["recv", "--dir", &dst.display().to_string(), &link])?;
    let out = receiver.wait_with_output()?;
    let st = sender.wait()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .lines()
        .find_map(|l| field(l, "first_byte", "ms_since_room"))
        .and_then(|v| v.as_f64());
    let name = file.file_name().context("file name")?;
    match first {
        Some(ms)
            if out.status.success() && st.success() && hash(&dst.join(name))? == hash(file)? =>
        {
            Ok(ms)
        }
        _ => bail!("transfer failed: {text}"),
    }
}

fn bench_setup(args: SetupArgs) -> anyhow::Result<()> {
    let root = root();
    build_binaries(&root)?;
    let mut builds = vec![("this build", root.join("target/release"))];
    if let Some(dir) = args.against {
        anyhow::ensure!(
            dir.join("native-peer").is_file(),
            "{} holds no native-peer",
            dir.display()
        );
        builds.push(("--against", dir));
    }
    let work = tempfile::tempdir()?;
    let file = work.path().join("setup.bin");
    make_file(&file, args.size_kib << 10)?;
    // Many rooms from one address in a short time: lift the limits a public server sets.
    let lifted = ["--room-rate", "1000000", "--msg-rate", "1000000"];
    let (mut sig, server) = start_signalling(
        &builds[0].1,
        &[&lifted[..], &["--msg-burst", "1000000"]].concat(),
    )?;
    let mut times = vec![Vec::new(); builds.len()];
    for rep in 0..args.reps {
        // By turns, first one then the other, so drift in the machine's load hits both.
        for i in 0..builds.len() {
            let i = (i + rep) % builds.len();
            let dst = tempfile::tempdir_in(work.path())?;
            times[i].push(setup_run(&builds[i].1, &server, &file, dst.path())?);
        }
    }
    let _ = sig.kill();
    let _ = sig.wait();
    println!(
        "\nboth in room → first byte, {} KiB, loopback, {} transfers each\n",
        args.size_kib, args.reps
    );
    println!("| build | median | 10th–90th percentile |");
    println!("|---|---|---|");
    for ((name, dir), mut t) in builds.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        let pct = |p: usize| t[(t.len() - 1) * p / 100];
        println!(
            "| {name} ({}) | {:.1} ms | {:.1}–{:.1} ms |",
            dir.display(),
            pct(50),
            pct(10),
            pct(90)
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let root = root();
    let browser = browser::Section::check(&root, args.browser)?;
    let wormhole_tools = match args.wormhole {
        true => Some(wormhole::tools(&root)?),
        false => None,
    };
    build_binaries(&root)?;
    let bin = root.join("target/release");
    let env: Vec<(String, String)> = args
        .peer_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .context("--peer-env wants K=V")
        })
        .collect::<anyhow::Result<_>>()?;

    let work = tempfile::tempdir()?;
    let file = work.path().join("bench.bin");
    let size = args.size_mib << 20;
    eprintln!("writing a {} MiB test file…", args.size_mib);
    make_file(&file, size)?;
    let want = hash(&file)?;

    // Direct runs meet on a server without TURN; relayed runs use the bundled one (relaying
    // between loopback peers, which a deployment refuses) or coturn.
    let (mut sig, server) = start_signalling(&bin, &["--no-turn"])?;
    let mut native = Vec::new();
    let mut tcp = Vec::new();
    for rep in 0..args.reps {
        let dst = tempfile::tempdir_in(work.path())?;
        tcp.push(tcp_run(&file, dst.path())?);
        let dst = tempfile::tempdir_in(work.path())?;
        let r = native_run(&bin, &server, &file, dst.path(), &env, &[])?;
        if hash(&dst.path().join("bench.bin"))? != want {
            bail!("received file differs from the original");
        }
        eprintln!(
            "rep {}: native {:.0} MB/s, tcp {:.0} MB/s, first byte {:.1} ms",
            rep + 1,
            r.mb_s,
            tcp[rep],
            r.first_byte_ms
        );
        native.push(r);
    }
    let _ = sig.kill();
    let _ = sig.wait();

    // Relayed: both peers --relay-only over UDP, through the bundled TURN and through coturn.
    let relay_flags = ["--relay-only", "--relay-transport", "udp"];
    let mut relayed: Vec<(&str, f64, f64)> = Vec::new();
    // One series of relayed runs through a signalling server started with `sig_args`:
    // (median MB/s, median first byte ms).
    let relay_series = |name: &str, sig_args: &[&str]| -> anyhow::Result<(f64, f64)> {
        let (mut sig, server) = start_signalling(&bin, sig_args)?;
        let mut runs = Vec::new();
        for _ in 0..args.relay_reps {
            let dst = tempfile::tempdir_in(work.path())?;
            let r = native_run(&bin, &server, &file, dst.path(), &env, &relay_flags)?;
            eprintln!("relayed ({name}): {:.1} MB/s", r.mb_s);
            runs.push(r);
        }
        let _ = sig.kill();
        let _ = sig.wait();
        Ok((
            median(runs.iter().map(|r| r.mb_s).collect()),
            median(runs.iter().map(|r| r.first_byte_ms).collect()),
        ))
    };
    if args.relay {
        let bundled = ["--turn-listen", "127.0.0.1:0", "--turn-relay-ports", "0-0"];
        let (mb, fb) = relay_series(
            "bundled TURN",
            &[&bundled[..], &["--turn-allow-private-peers"]].concat(),
        )?;
        relayed.push(("bundled TURN", mb, fb));
        let secret = "bench-secret";
        // The same coturn setup the relay tests prove interoperability with.
        match punchdrop_e2e::Coturn::start(secret) {
            Ok(coturn) => {
                let url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
                let (mb, fb) = relay_series(
                    "coturn",
                    &["--no-turn", "--turn", &url, "--turn-secret", secret],
                )?;
                relayed.push(("coturn 4.6", mb, fb));
            }
            Err(e) => eprintln!("skipping the coturn comparison: {e:#}"),
        }
    }

    // magic-wormhole on the same file (its own mailbox and transit relay, loopback only).
    let wormhole = match wormhole_tools {
        None => None,
        Some(tools) => {
            let (file, want, reps) = (file.clone(), want.clone(), args.reps);
            let runs = punchdrop_e2e::browser::in_loopback_netns(move || {
                wormhole::runs(&tools, &file, &want, reps)
            })?;
            for r in &runs {
                eprintln!("magic-wormhole: {:.0} MB/s (direct: {})", r.mb_s, r.direct);
            }
            Some(runs)
        }
    };

    let n_mb = median(native.iter().map(|r| r.mb_s).collect());
    let t_mb = median(tcp.clone());
    let fb = median(native.iter().map(|r| r.first_byte_ms).collect());
    let med = |f: &dyn Fn(&PeerRun) -> f64| median(native.iter().map(f).collect());
    println!(
        "\npunchdrop benchmark: {} MiB file, loopback, median of {} runs\n",
        args.size_mib, args.reps
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| native → native | {n_mb:.0} MB/s |");
    println!("| plain TCP copy (same file, fsync) | {t_mb:.0} MB/s |");
    println!("| ratio native / TCP | {:.2}× |", n_mb / t_mb);
    println!("| both in room → first byte | {fb:.1} ms |");
    let whole = med(&|r| r.whole_mb_s);
    println!("| native → native, whole run (receiver start → exit) | {whole:.0} MB/s |");
    if let Some(runs) = &wormhole {
        let wh = median(runs.iter().map(|r| r.mb_s).collect());
        let path = match runs.iter().all(|r| r.direct) {
            true => "direct TCP",
            false => "via its transit relay in some runs",
        };
        println!("| magic-wormhole 0.24, whole run ({path}) | {wh:.0} MB/s |");
        println!(
            "| ratio native / magic-wormhole (whole runs) | {:.2}× |",
            whole / wh
        );
    }
    println!("| sender CPU | {:.2} s |", med(&|r| r.sender.cpu_s));
    println!("| receiver CPU | {:.2} s |", med(&|r| r.receiver.cpu_s));
    println!(
        "| sender peak RSS | {:.1} MiB |",
        med(&|r| r.sender.max_rss_mib)
    );
    println!(
        "| receiver peak RSS | {:.1} MiB |",
        med(&|r| r.receiver.max_rss_mib)
    );
    for (name, mb, fb) in &relayed {
        println!("| relayed via {name} (UDP) | {mb:.1} MB/s, first byte {fb:.0} ms |");
        println!("| ratio relayed ({name}) / direct | {:.2}× |", mb / n_mb);
    }
    if let [(_, bundled, _), (_, coturn, _)] = relayed.as_slice() {
        println!("| ratio bundled TURN / coturn | {:.2}× |", bundled / coturn);
    }
    if !env.is_empty() {
        println!("\npeer environment: {:?}", args.peer_env);
    }
    browser.run(&root, &args.browser_args)
}
