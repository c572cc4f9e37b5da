//! magic-wormhole as a row of `cargo xtask bench`: the same file, in the same run, between
//! two `wormhole` processes on loopback, with their own mailbox server and transit relay.
//!
//! Where it comes from: PyPI, pinned below, installed once into a virtualenv under
//! `target/bench-tools/` (the first bench run needs `python3` with `venv` and the PyPI
//! registry). Everything runs in a network namespace with only `lo` (root, like the browser
//! section): a wormhole advertises every address of its host as a direct hint, and outside
//! such a namespace it would connect to the machine's own non-loopback address.
//!
//! What is measured: wall time from starting the receiving `wormhole` (once the sender shows
//! its code) to the receiver's exit, the file then checked by hash: the whole process as a
//! person runs it (key exchange, transit negotiation, transfer, interpreter start).
//! punchdrop's row beside it is measured the same way (`whole run`: its receiver starts once
//! the sender is ready). Which path it took (direct or the relay) is read from its output.

use anyhow::{Context as _, bail};
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The versions measured (DESIGN.md § WAN speed records the figures).
const PACKAGES: [&str; 3] = [
    "magic-wormhole==0.24.0",
    "magic-wormhole-mailbox-server==0.8.0",
    "magic-wormhole-transit-relay==0.5.0",
];

/// One transfer: throughput over the receiver's whole run, and the path it took.
pub struct Run {
    pub mb_s: f64,
    pub direct: bool,
}

/// The virtualenv's `bin/`, made and filled on first use. Called before any measurement, so
/// what is missing is said at once.
pub fn tools(root: &Path) -> anyhow::Result<PathBuf> {
    if !punchdrop_e2e::is_root() {
        bail!(
            "the magic-wormhole row runs in a network namespace with only loopback, which needs \
             root: run the bench as root, or pass --wormhole false"
        );
    }
    let venv = root.join("target/bench-tools/wormhole");
    let bin = venv.join("bin");
    let stamp = venv.join(PACKAGES.join(" ").replace(['=', ' '], "_"));
    if stamp.exists() && bin.join("wormhole").exists() {
        return Ok(bin);
    }
    eprintln!("installing magic-wormhole into {} (once)…", venv.display());
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 (Debian: python3 python3-venv)")?
        .success();
    if !ok {
        bail!("python3 -m venv failed (Debian: apt install python3-venv)");
    }
    let ok = Command::new(bin.join("pip"))
        .args(["install", "--quiet"])
        .args(PACKAGES)
        .status()
        .context("running pip")?
        .success();
    if !ok {
        bail!("pip could not install {}", PACKAGES.join(" "));
    }
    std::fs::write(&stamp, b"")?;
    Ok(bin)
}

/// A free port on 127.0.0.1 (in the current namespace).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills its processes when the measurement ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_listening(port: u16, what: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            bail!("the {what} did not listen on 127.0.0.1:{port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `reps` transfers of `file`, each checked against `want` (its BLAKE3, hex). Call inside a
/// network namespace with only `lo`.
pub fn runs(bin: &Path, file: &Path, want: &str, reps: usize) -> anyhow::Result<Vec<Run>> {
    let work = tempfile::tempdir()?;
    let (mailbox, transit) = (free_port()?, free_port()?);
    let twistd = |args: &[String]| {
        Command::new(bin.join("twistd"))
            .args(["-n", "--pidfile="])
            .args(args)
            .current_dir(work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting twistd")
    };
    let _servers = Children(vec![
        twistd(&[
            "wormhole-mailbox".into(),
            format!("--port=tcp:{mailbox}:interface=127.0.0.1"),
        ])?,
        twistd(&[
            "transitrelay".into(),
            format!("--port=tcp:{transit}:interface=127.0.0.1"),
        ])?,
    ]);
    wait_listening(mailbox, "mailbox server")?;
    wait_listening(transit, "transit relay")?;
    let common = [
        "--relay-url".to_string(),
        format!("ws://127.0.0.1:{mailbox}/v1"),
        "--transit-helper".into(),
        format!("tcp:127.0.0.1:{transit}"),
    ];
    let mut out = Vec::new();
    for rep in 0..reps {
        let code = format!("{}-bench-wormhole", rep + 2);
        let mut sender = Children(vec![
            Command::new(bin.join("wormhole"))
                .args(&common)
                .args(["send", "--code", &code])
                .arg(file)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting wormhole send")?,
        ]);
        // The clock starts once the sender is waiting with its code, as punchdrop's does once
        // its sender is ready: neither side's start-up counts against the other.
        let mut lines = BufReader::new(sender.0[0].stderr.take().expect("piped")).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("wormhole receive") => break,
                Some(Ok(_)) => {}
                _ => bail!("wormhole send stopped before it showed its code"),
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        let dst = work.path().join(format!("received-{rep}.bin"));
        let started = Instant::now();
        let mut receiver = Command::new(bin.join("wormhole"))
            .args(&common)
            .args(["receive", "--accept-file", "-o"])
            .arg(&dst)
            .arg(&code)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wormhole receive")?;
        // Its progress bar and messages go to stderr; drain both so neither pipe fills.
        let mut said = String::new();
        let mut stdout = receiver.stdout.take().expect("piped");
        let drain = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        receiver
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut said)?;
        let status = receiver.wait()?;
        let seconds = started.elapsed().as_secs_f64();
        said.push_str(&drain.join().unwrap_or_default());
        let sent = sender.0[0].wait()?;
        if !status.success() || !sent.success() {
            bail!("magic-wormhole transfer failed: {said}");
        }
        if crate::hash(&dst)? != want {
            bail!("magic-wormhole delivered a different file");
        }
        let size = std::fs::metadata(&dst)?.len() as f64;
        std::fs::remove_file(&dst)?;
        out.push(Run {
            mb_s: size / seconds / 1e6,
            direct: said.contains("(->tcp:"),
        });
    }
    Ok(out)
}
