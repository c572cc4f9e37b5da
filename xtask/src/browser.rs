//! The browser part of the benchmark (issue 4): `cargo xtask bench-browser`, and the last
//! section of `cargo xtask bench` (`--browser true`, the default).
//!
//! In one network namespace with only `lo` (`punchdrop_e2e::browser::in_loopback_netns`, so
//! root only), one signalling server (`punchdrop_e2e::Signalling`), and one file (default
//! 128 MiB), it measures three transfers the way the browser end-to-end tests drive them:
//! 1. browser → native: `native-peer recv` creates the room, Chromium opens its link and picks
//!    the file;
//! 2. native → browser: `native-peer send`, Chromium opens the link, accepts, and the file is
//!    saved through the service-worker download;
//! 3. Chromium ↔ Chromium: one Chromium shares the file, a second opens its link and accepts.
//!
//! Each received file is compared by BLAKE3 hash. Throughput is bytes / the receiver's own
//! `done.seconds` (accept → done, measured by the peer), not a wall clock around the harness.
//! Also reported: both in room → first byte (the receiver's `first_byte` event; where a
//! browser receives, that includes the wait for the harness's click on Accept, shown apart),
//! the path each side took, the ratios browser↔native / Chromium↔Chromium (target ≥ 0.9×)
//! and the web app's `.wasm`, raw and gzipped.

use anyhow::{Context as _, bail};
use punchdrop_e2e::browser::{Chromium, chromium_path, in_loopback_netns};
use punchdrop_e2e::event;
use punchdrop_e2e::{Peer, Signalling, hash_file, is_root, make_file, start_sender};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// File size in MiB for the browser transfers (Chromium moves ~15–25 MB/s here).
    #[arg(long, default_value_t = 128)]
    pub browser_size_mib: u64,
}

/// The web app as `signalling` embeds it (`cargo xtask web` writes it).
const WASM: &str = "web/pkg/wasm_client_bg.wasm";

/// Whether the browser section runs, decided before any other section starts so that a
/// missing prerequisite fails the command at once rather than after the native runs.
#[derive(Debug)]
pub enum Section {
    Off,
    Skip(String),
    Run,
}

impl Section {
    /// `wanted`: `--browser`. A missing Chromium skips (with a note); a missing web app or
    /// running as non-root fails, saying what to do.
    pub fn check(root: &Path, wanted: bool) -> anyhow::Result<Self> {
        if !wanted {
            return Ok(Self::Off);
        }
        let chromium = chromium_path();
        if !chromium.exists() {
            return Ok(Self::Skip(format!(
                "{} not found (Debian's `chromium` package; PUNCHDROP_CHROMIUM names another)",
                chromium.display()
            )));
        }
        if !is_root() {
            bail!(
                "the browser benchmark runs in a network namespace with only loopback, which \
                 needs root: run it as root (or pass --browser false to `cargo xtask bench`)"
            );
        }
        if !root.join(WASM).exists() {
            bail!(
                "{WASM} is missing: run `cargo xtask web` first (the signalling binary embeds \
                 web/ when it is built, which this command does next)"
            );
        }
        Ok(Self::Run)
    }

    /// Run the section (after the binaries are built), or print why it is skipped.
    pub fn run(self, root: &Path, args: &Args) -> anyhow::Result<()> {
        match self {
            Self::Off => Ok(()),
            Self::Skip(why) => {
                println!("\nbrowser section skipped: {why}");
                Ok(())
            }
            Self::Run => run(root, args),
        }
    }
}

/// `cargo xtask bench-browser`: build, then only the browser section.
pub fn bench(root: &Path, args: Args) -> anyhow::Result<()> {
    if let Section::Skip(why) = Section::check(root, true)? {
        bail!("cannot run the browser benchmark: {why}");
    }
    crate::build_binaries(root)?;
    run(root, &args)
}

/// One measured transfer.
#[derive(Debug)]
struct Run {
    name: &'static str,
    /// bytes / the receiver's `done.seconds`.
    mb_s: f64,
    /// bytes / the sender's `done.seconds`.
    sender_mb_s: f64,
    /// Both in room → first byte, from the receiver's `first_byte` event.
    first_byte_ms: Option<f64>,
    /// Of that, `offer` → `accepted` in a receiving page: the harness finding the offer and
    /// clicking Accept.
    accept_wait_ms: Option<f64>,
    /// "sender path / receiver path".
    path: String,
}

fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    use_bins(&root.join("target/release"));
    let wasm = root.join(WASM);
    let raw = std::fs::metadata(&wasm)
        .with_context(|| wasm.display().to_string())?
        .len();
    let gz = gzip_len(&wasm)?;
    let stale = stale_wasm(root, &wasm);
    let size_mib = args.browser_size_mib;
    let load_before = loadavg();
    eprintln!("browser benchmark: {size_mib} MiB, in a network namespace with only lo…");
    let runs = in_loopback_netns(move || -> anyhow::Result<Vec<Run>> {
        let work = tempfile::tempdir()?;
        let file = work.path().join("bench-browser.bin");
        eprintln!("writing a {size_mib} MiB test file…");
        make_file(&file, size_mib << 20, 42);
        let want = hash_file(&file);
        let sig = Signalling::start();
        let ctx = Ctx {
            server: sig.url.clone(),
            work: work.path().to_path_buf(),
            file,
            want,
            // ≥ 1 MB/s, with a minute for everything else.
            timeout: Duration::from_secs(60 + 2 * size_mib),
        };
        let mut runs = Vec::new();
        for f in [browser_to_native, native_to_browser, chromium_to_chromium] {
            let r = f(&ctx)?;
            eprintln!(
                "{}: {:.1} MB/s, first byte {}, {}",
                r.name,
                r.mb_s,
                ms(r.first_byte_ms),
                r.path
            );
            runs.push(r);
        }
        Ok(runs)
    })?;

    let [b2n, n2b, c2c] = runs.as_slice() else {
        unreachable!("three runs");
    };
    println!(
        "\npunchdrop browser benchmark: {size_mib} MiB file, loopback (a network namespace with \
         only lo), {}, one run each",
        chromium_version()
    );
    println!(
        "MB/s = bytes / the receiver's own `done.seconds` (accept → done, as the peer measures \
         it); the received file is checked by BLAKE3 hash\n"
    );
    println!(
        "| transfer | MB/s (receiver) | MB/s (sender's view) | both in room → first byte | path (sender / receiver) |"
    );
    println!("|---|---|---|---|---|");
    for r in &runs {
        let fb = match r.accept_wait_ms {
            Some(w) => format!(
                "{} (of which {w:.0} ms waiting for the click on Accept)",
                ms(r.first_byte_ms)
            ),
            None => ms(r.first_byte_ms),
        };
        println!(
            "| {} | {:.1} | {:.1} | {fb} | {} |",
            r.name, r.mb_s, r.sender_mb_s, r.path
        );
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    for (what, r) in [("browser → native", b2n), ("native → browser", n2b)] {
        let ratio = r.mb_s / c2c.mb_s;
        println!(
            "| ratio {what} / Chromium ↔ Chromium | {ratio:.2}× ({}) |",
            if ratio >= 0.9 {
                "meets the ≥ 0.9× target"
            } else {
                "below the ≥ 0.9× target"
            }
        );
    }
    println!(
        "| web app .wasm ({WASM}) | {:.0} KiB raw, {:.0} KiB gzip -9 |",
        raw as f64 / 1024.0,
        gz as f64 / 1024.0
    );
    println!(
        "\nload average (1, 5, 15 min) before: {load_before}, after: {} ({} CPUs; Chromium is \
         CPU-bound here, so other work on the machine lowers these figures)",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if let Some(note) = stale {
        println!("\nnote: {note}");
    }
    Ok(())
}

/// What every scenario shares.
struct Ctx {
    server: String,
    work: PathBuf,
    file: PathBuf,
    want: String,
    timeout: Duration,
}

impl Ctx {
    fn name(&self) -> String {
        self.file
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned()
    }

    fn check(&self, got: &Path, who: &str) -> anyhow::Result<()> {
        if hash_file(got) != self.want {
            bail!("{who}: {} differs from the file sent", got.display());
        }
        Ok(())
    }
}

/// Scenario 1: `native-peer recv` creates the room; the page opens its link and picks the file.
fn browser_to_native(ctx: &Ctx) -> anyhow::Result<Run> {
    let dst = tempfile::tempdir_in(&ctx.work)?;
    let d = dst.path().display().to_string();
    let args = [
        "--server",
        &ctx.server,
        "--bind",
        "127.0.0.1:0",
        "recv",
        "--dir",
        &d,
    ];
    let mut receiver = Peer::spawn(&args);
    let ready: event::Ready = receiver.wait(Duration::from_secs(10))?;
    let mut c = launch("browser (sends)")?;
    c.goto(&ready.link)?;
    c.wait_state("pick", Duration::from_secs(30))?;
    c.set_files("#file-input", &[&ctx.file])?;
    let (status, events) = receiver.finish(ctx.timeout)?;
    let done = event::find::<event::Done>(&events);
    let (Some(done), true) = (done, status.success()) else {
        bail!("native receiver failed ({status}): {events:?}");
    };
    ctx.check(&dst.path().join(ctx.name()), "native receiver")?;
    let page_done = page_done(&mut c, ctx.timeout)?;
    Ok(Run {
        name: "browser → native",
        mb_s: rate(done),
        sender_mb_s: rate(&page_done),
        first_byte_ms: event::find::<event::FirstByte>(&events).map(|f| f.ms_since_room),
        accept_wait_ms: None,
        path: format!("{} / {}", path(&page_done), path(done)),
    })
}

/// Scenario 2: `native-peer send`; the page opens the link, accepts and downloads.
fn native_to_browser(ctx: &Ctx) -> anyhow::Result<Run> {
    let (sender, link, _code) =
        start_sender(&ctx.server, &["--bind", "127.0.0.1:0"], &[&ctx.file])?;
    let mut c = launch("browser (receives)")?;
    let page_done = receive(&mut c, &link, ctx)?;
    let (status, events) = sender.finish(ctx.timeout)?;
    let done = event::find::<event::Done>(&events);
    let (Some(done), true) = (done, status.success()) else {
        bail!("native sender failed ({status}): {events:?}");
    };
    let (first_byte_ms, accept_wait_ms) = first_byte(&mut c)?;
    Ok(Run {
        name: "native → browser",
        mb_s: rate(&page_done),
        sender_mb_s: rate(done),
        first_byte_ms,
        accept_wait_ms,
        path: format!("{} / {}", path(done), path(&page_done)),
    })
}

/// Scenario 3: one Chromium shares the file on `/`, a second opens the share link.
fn chromium_to_chromium(ctx: &Ctx) -> anyhow::Result<Run> {
    let mut alice = launch("alice (sends)")?;
    let link = share(&mut alice, &ctx.server, &ctx.file)?;
    let mut bob = launch("bob (receives)")?;
    let bob_done = receive(&mut bob, &link, ctx)?;
    let alice_done = page_done(&mut alice, ctx.timeout)?;
    let (first_byte_ms, accept_wait_ms) = first_byte(&mut bob)?;
    Ok(Run {
        name: "Chromium ↔ Chromium",
        mb_s: rate(&bob_done),
        sender_mb_s: rate(&alice_done),
        first_byte_ms,
        accept_wait_ms,
        path: format!("{} / {}", path(&alice_done), path(&bob_done)),
    })
}

/// A receiving page: open the link, accept the offer, wait for `done` and the download, and
/// check its hash. Returns the page's `done` event.
fn receive(c: &mut Chromium, link: &str, ctx: &Ctx) -> anyhow::Result<event::Done> {
    c.goto(link)?;
    c.wait_state("offer", Duration::from_secs(30))?;
    c.click("#accept")?;
    let done = page_done(c, ctx.timeout)?;
    let len = std::fs::metadata(&ctx.file)?.len();
    let got = c.wait_download(&ctx.name(), len, ctx.timeout)?;
    ctx.check(&got, &c.name)?;
    std::fs::remove_file(&got)?;
    Ok(done)
}

/// Chromium with every page event stamped (see [`stamp_events`]), so the harness's own
/// delay before clicking Accept can be told apart from the transfer's setup time.
/// A sharing page: open the app at `server`, pick `file`, and return the share link.
pub(crate) fn share(c: &mut Chromium, server: &str, file: &Path) -> anyhow::Result<String> {
    c.goto(&format!("{server}/"))?;
    c.wait_state("ready", Duration::from_secs(30))?;
    c.set_files("#file-input", &[file])?;
    c.wait_state("waiting", Duration::from_secs(30))?;
    let link = c.eval("document.querySelector('#share-link').href")?;
    Ok(link.as_str().context("no share link")?.to_string())
}

/// The page's `done`, once it says it is done.
pub(crate) fn page_done(c: &mut Chromium, timeout: Duration) -> anyhow::Result<event::Done> {
    c.wait_state("done", timeout)?;
    c.wait(Duration::from_secs(5))
}

fn launch(name: &str) -> anyhow::Result<Chromium> {
    let mut c = Chromium::launch_named(name)?;
    stamp_events(&mut c)?;
    Ok(c)
}

/// Stamp every page event with `performance.now()` as it is recorded (`benchT`). The web
/// app assigns `window.punchdropEvents = []` on load; a setter installed before the page's
/// scripts wraps that array's `push`.
pub(crate) fn stamp_events(c: &mut Chromium) -> anyhow::Result<()> {
    const STAMP: &str = "(() => { let v; Object.defineProperty(window, 'punchdropEvents', { \
        configurable: true, get() { return v; }, set(a) { v = a; const push = a.push; \
        a.push = function (...es) { for (const e of es) if (e && typeof e === 'object') \
        e.benchT = performance.now(); return push.apply(this, es); }; } }); })()";
    c.page_call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": STAMP}),
    )?;
    Ok(())
}

/// A page on a send view (its events stamped) picks `file` and sends it to its end: ms from
/// the pick to its first `progress` with bytes, both stamped in the page. A page that ends
/// in `error` fails with what it says.
pub(crate) fn pick_to_first_byte(
    c: &mut Chromium,
    file: &Path,
    within: Duration,
) -> anyhow::Result<f64> {
    c.eval("window.benchPicked = performance.now()")?;
    c.set_files("#file-input", &[file])?;
    c.wait_state("done", within).map_err(|e| {
        let why = c
            .eval("document.querySelector('#error').textContent")
            .unwrap_or_default();
        e.context(format!("the page said: {why}"))
    })?;
    let ms = c.eval(
        "(window.punchdropEvents.find(e => e.event === 'progress' && e.bytes > 0) || {}).benchT \
         - window.benchPicked",
    )?;
    ms.as_f64().context("no progress event")
}

/// A receiving page's both in room → first byte, and `offer` → `accepted` (the click).
fn first_byte(c: &mut Chromium) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let fb = event::find::<event::FirstByte>(&c.events()?).map(|f| f.ms_since_room);
    // The stamps the page's events got as they were recorded (see `launch`).
    let t = |c: &mut Chromium, name: &str| -> anyhow::Result<Option<f64>> {
        let js = format!(
            "((window.punchdropEvents || []).find(e => e.event === {}) || {{}}).benchT",
            Value::from(name)
        );
        Ok(c.eval(&js)?.as_f64())
    };
    let (accepted, offer) = (t(c, "accepted")?, t(c, "offer")?);
    Ok((fb, accepted.zip(offer).map(|(a, o)| a - o)))
}

fn rate(done: &event::Done) -> f64 {
    done.bytes as f64 / done.seconds / 1e6
}

/// "direct host-host udp", from a native or a page `done` event.
fn path(done: &event::Done) -> String {
    let p = &done.path;
    format!(
        "{} {}-{} {}",
        p.kind.as_str(),
        p.local.as_str(),
        p.remote.as_str(),
        p.protocol.as_str()
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.0} ms"))
}

/// The harness finds `signalling` and `native-peer` through `PUNCHDROP_BIN_DIR` (xtask does
/// not live in `target/<profile>/deps/` as test binaries do).
#[allow(unsafe_code)]
pub(crate) fn use_bins(dir: &Path) {
    // SAFETY: xtask runs its sections one after another; when this one starts, no other thread
    // of the process is running anything that reads the environment.
    unsafe { std::env::set_var("PUNCHDROP_BIN_DIR", dir) };
}

/// Bytes of `gzip -9 -c FILE` (flate2 is not in the lock file; gzip is on every machine).
fn gzip_len(file: &Path) -> anyhow::Result<u64> {
    let out = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(file)
        .output()
        .context("running gzip")?;
    anyhow::ensure!(out.status.success(), "gzip -9 -c {} failed", file.display());
    Ok(out.stdout.len() as u64)
}

/// A note if the client's sources changed after `web/pkg` was built.
fn stale_wasm(root: &Path, wasm: &Path) -> Option<String> {
    fn newest(p: &Path) -> Option<std::time::SystemTime> {
        let m = std::fs::metadata(p).ok()?;
        if !m.is_dir() {
            return m.modified().ok();
        }
        std::fs::read_dir(p)
            .ok()?
            .flatten()
            .filter_map(|e| newest(&e.path()))
            .max()
    }
    let built = std::fs::metadata(wasm).and_then(|m| m.modified()).ok()?;
    let src = ["wasm-client", "protocol"]
        .iter()
        .filter_map(|d| newest(&root.join(d).join("src")))
        .max()?;
    (src > built).then(|| {
        format!(
            "{WASM} is older than wasm-client/ or protocol/ sources: the figures are for the \
             last `cargo xtask web` build"
        )
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn chromium_version() -> String {
    Command::new(chromium_path())
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(version unknown)".into())
}
