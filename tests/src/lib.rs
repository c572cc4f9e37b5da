//! Harness for punchdrop's end-to-end tests: real `signalling` and `native-peer` processes on
//! loopback, real files compared by hash.
//!
//! Binaries are found next to the test executable's `deps/` folder (`target/<profile>/`), or
//! in `PUNCHDROP_BIN_DIR`; the README's test command builds them first.

pub mod browser;
pub mod lab;
pub mod load;
pub mod redis;
pub mod tls;
pub mod volunteer;
pub mod ws;

use anyhow::{Context as _, bail};
pub use protocol::event::{self, Event, Payload};
pub use protocol::path::{
    CandidateType, IpFamily, MapProtocol, PathKind, PortmapState, RelayReason, Transport,
};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PUNCHDROP_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run the README's test command (it builds the binaries first)",
        p.display()
    );
    p
}

/// `native-peer inbox ACTION --state STATE` (`pair`, `devices`, `revoke NAME`…): its
/// standard output, trimmed.
pub fn inbox_manage(state: &Path, action: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin("native-peer"))
        .arg("inbox")
        .args(action)
        .arg("--state")
        .arg(state)
        .output()?;
    anyhow::ensure!(out.status.success(), "{action:?}: {out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Are we root (needed for mount namespaces)?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A running signalling server, killed on drop.
#[derive(Debug)]
pub struct Signalling {
    child: Child,
    pub url: String,
    /// Where `/metrics` is (the admin listener, loopback).
    pub admin: String,
    logs: std::sync::Arc<std::sync::Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Signalling {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Self {
        Self::start_logging("warn", args)
    }

    /// Start with log filter `level`, keeping what the server logs (see [`Signalling::logs`]).
    pub fn start_logging(level: &str, args: &[&str]) -> Self {
        // The bundled TURN server relays between loopback peers, which a real deployment
        // refuses.
        Self::start_configured(level, &[&["--turn-allow-private-peers"], args].concat())
    }

    /// Start as a public deployment would: the bundled TURN refuses private and loopback
    /// peers, so relay permissions between loopback peers are refused (403).
    pub fn start_refusing_private_peers() -> Self {
        Self::start_configured("warn", &[])
    }

    /// Start listening on `listen` (a fixed port, for a server restarted on the same
    /// address).
    pub fn start_at(listen: &str) -> Self {
        Self::start_listening(listen, "warn", &["--turn-allow-private-peers"])
    }

    /// Start on `listen` (a fixed port) with these arguments, logging at info.
    pub fn start_at_with(listen: &str, args: &[&str]) -> Self {
        Self::start_listening(
            listen,
            "info",
            &[&["--turn-allow-private-peers"], args].concat(),
        )
    }

    fn start_configured(level: &str, args: &[&str]) -> Self {
        Self::start_listening("127.0.0.1:0", level, args)
    }

    fn start_listening(listen: &str, level: &str, args: &[&str]) -> Self {
        // The bundled TURN server on ephemeral ports (tests run in parallel).
        let mut child = Command::new(bin("signalling"))
            .args(["--listen", listen, "--turn-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--turn-relay-ports", "0-0"])
            .args(args)
            .env("PUNCHDROP_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start signalling");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready line");
        let url = line.trim().rsplit(' ').next().expect("url").to_string();
        assert!(
            url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"),
            "unexpected ready line {line:?}"
        );
        let mut line = String::new();
        stdout.read_line(&mut line).expect("metrics line");
        let admin = line
            .trim()
            .strip_prefix("metrics on http://")
            .and_then(|s| s.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected metrics line {line:?}"))
            .to_string();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = logs.clone();
        let err = child.stderr.take().expect("stderr");
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self {
            child,
            url,
            admin,
            logs,
            log_reader: Some(log_reader),
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Stop the server and return everything it ever logged.
    pub fn stop_and_logs(&mut self) -> String {
        self.kill();
        if let Some(t) = self.log_reader.take() {
            let _ = t.join();
        }
        self.logs()
    }

    /// The body of `GET /metrics` (from the admin listener).
    pub fn metrics_text(&self) -> String {
        let mut s = std::net::TcpStream::connect(&self.admin).expect("metrics connect");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// `GET /metrics` and the value of one metric.
    pub fn metric(&self, name: &str) -> u64 {
        let body = self.metrics_text();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Send the signal named `name` (`TERM`, `HUP`) to the server.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Wait up to `timeout` for the server to exit by itself; its status, or `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < until {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: the server dies without any goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Signalling {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `native-peer` process with `--json`, its events collected as they come.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    events: mpsc::Receiver<Event>,
    seen: Vec<Event>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_cmd(Command::new(bin("native-peer")), args)
    }

    /// `native-peer` with `input` on its standard input.
    pub fn spawn_with_input(args: &[&str], input: &str) -> Self {
        let mut p = Self::spawn_inner(Command::new(bin("native-peer")), args, Stdio::piped());
        let mut stdin = p.child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("write to the peer's stdin");
        p
    }

    /// Run `native-peer` through a wrapper command (e.g. `unshare … sh -c`), which must exec
    /// it with the arguments given after the wrapper's own.
    pub fn spawn_cmd(cmd: Command, args: &[&str]) -> Self {
        Self::spawn_inner(cmd, args, Stdio::null())
    }

    fn spawn_inner(mut cmd: Command, args: &[&str], stdin: Stdio) -> Self {
        cmd.stdin(stdin)
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Quiet unless the test process or this command asks for more.
        let log_asked = std::env::var_os("PUNCHDROP_LOG").is_some()
            || cmd.get_envs().any(|(k, _)| k == "PUNCHDROP_LOG");
        if !log_asked {
            cmd.env("PUNCHDROP_LOG", "warn");
        }
        // A dropper keeps its device key in its state directory: the tests' own, not `~`'s,
        // unless the test gives one (another device).
        if !cmd.get_envs().any(|(k, _)| k == "XDG_STATE_HOME") {
            cmd.env(
                "XDG_STATE_HOME",
                std::env::temp_dir().join("punchdrop-e2e-state"),
            );
        }
        let mut child = cmd.spawn().expect("start native-peer");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // Every line is an event of the one vocabulary; anything else fails the test.
                let ev = serde_json::from_str::<Event>(&line).unwrap_or_else(|e| {
                    Event::error(format!("harness: not an event ({e}): {line}"))
                });
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            sink.lock().unwrap().push_str(&s);
        });
        Self {
            child,
            events: rx,
            seen: Vec::new(),
            stderr,
            stderr_thread: Some(stderr_thread),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the first event of kind `T` (an `error` event fails the wait).
    pub fn wait<T: Payload + Clone>(&mut self, timeout: Duration) -> anyhow::Result<T> {
        if let Some(v) = event::find::<T>(&self.seen) {
            return Ok(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if let Some(v) = T::of(&e) {
                        return Ok(v.clone());
                    }
                    if let Event::Error(f) = &e {
                        bail!(
                            "peer failed while waiting for {}: {}\nstderr: {}",
                            T::NAME,
                            f.message,
                            self.stderr()
                        );
                    }
                }
                Err(_) => bail!(
                    "no {} event within {timeout:?}; events: {:?}\nstderr: {}",
                    T::NAME,
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// The events seen so far, with those already printed and waiting in the pipe.
    pub fn events_so_far(&mut self) -> &[Event] {
        self.seen.extend(self.events.try_iter());
        &self.seen
    }

    /// The bytes it reported so far (its latest `progress`).
    pub fn progress(&mut self) -> u64 {
        self.events_so_far()
            .iter()
            .filter_map(|e| event::Progress::of(e))
            .map(|p| p.bytes)
            .max()
            .unwrap_or(0)
    }

    /// Wait (a minute at most) until it reported at least `bytes` of progress.
    pub fn wait_for_progress(&mut self, bytes: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let so_far = self.progress();
            if so_far >= bytes {
                return;
            }
            assert!(
                event::find::<event::Done>(self.events_so_far()).is_none(),
                "the transfer ended before {bytes} bytes were seen"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no progress to {bytes} bytes; so far {so_far}; events: {:?}\nstderr: {}",
                self.seen,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait for the process to exit; returns its status and every event it printed.
    pub fn finish(self, timeout: Duration) -> anyhow::Result<(ExitStatus, Vec<Event>)> {
        self.finish_all(timeout).map(|(s, e, _)| (s, e))
    }

    /// Like [`Peer::finish`], with everything the process wrote to stderr.
    pub fn finish_all(
        mut self,
        timeout: Duration,
    ) -> anyhow::Result<(ExitStatus, Vec<Event>, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // What it printed before it died, until its output closes.
                while let Ok(v) = self.events.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push(v);
                }
                bail!(
                    "peer did not exit within {timeout:?}; events: {:?}\nstderr: {}",
                    self.seen,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread drains what is left once the pipe closes.
        while let Ok(v) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(v);
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        Ok((status, std::mem::take(&mut self.seen), self.stderr()))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `done` event of a finished peer, or a readable failure.
pub fn expect_done(status: ExitStatus, events: &[Event]) -> event::Done {
    match event::find::<event::Done>(events) {
        Some(done) if status.success() => done.clone(),
        _ => panic!("peer failed ({status}): {events:?}"),
    }
}

/// The `error` message of a failed peer.
pub fn expect_error(status: ExitStatus, events: &[Event]) -> String {
    assert!(!status.success(), "peer should have failed: {events:?}");
    event::find::<event::Failure>(events)
        .unwrap_or_else(|| panic!("no error event: {events:?}"))
        .message
        .clone()
}

/// `who` said `reconnecting`, then `reconnected` (and `done` after that, if it finished).
pub fn assert_reconnected(who: &str, events: &[Event]) {
    let names: Vec<&str> = events.iter().map(Event::name).collect();
    let at = |n: &str| names.iter().position(|x| *x == n);
    let (lost, back) = (at("reconnecting"), at("reconnected"));
    assert!(
        lost.is_some() && lost < back && at("done").is_none_or(|d| back < Some(d)),
        "{who}: {names:?}"
    );
}

/// `who` kept its connection: it never said `reconnecting` for a connection that had to be
/// replaced (`link_lost`, `peer_left`), and each `reconnecting` `path_down` (the path went
/// down under the connection) was followed by `reconnected`, or by `done` (SCTP's
/// retransmissions can carry the end of a transfer before ICE's next check says the path is
/// back). Returns whether it said `path_down` at all.
pub fn assert_same_connection(who: &str, events: &[Event]) -> bool {
    let names: Vec<&str> = events.iter().map(Event::name).collect();
    let mut down = false;
    let mut said = false;
    for e in events {
        if let Some(r) = event::Reconnecting::of(e) {
            assert_eq!(
                r.reason,
                event::ReconnectReason::PathDown,
                "{who} reconnected through the room: {names:?}"
            );
            down = true;
            said = true;
        }
        if matches!(e.name(), "reconnected" | "done") {
            down = false;
        }
    }
    assert!(!down, "{who} never said reconnected: {names:?}");
    said
}

/// How many events of kind `T` there are.
pub fn count<T: Payload>(events: &[Event]) -> usize {
    events.iter().filter(|e| T::of(e).is_some()).count()
}

/// `link` with its secret changed: the same room, a key exchange that fails.
pub fn wrong_secret(link: &str) -> String {
    let (base, secret) = link.split_once('#').expect("link with a fragment");
    let mut s: Vec<char> = secret.chars().collect();
    s[0] = if s[0] == 'A' { 'B' } else { 'A' };
    format!("{base}#{}", s.into_iter().collect::<String>())
}

/// Write `len` pseudo-random bytes (seeded) to `path`, streaming.
pub fn make_file(path: &Path, len: u64, seed: u64) {
    use rand::{RngCore as _, SeedableRng as _};
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

pub fn hash_file(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    h.finalize().to_hex().to_string()
}

/// Every file (hash) and directory ("dir") below `root`, by relative path.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, hash_file(&p));
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// Start a sender that creates a room; returns it and the link/code it printed.
pub fn start_sender(
    server: &str,
    extra: &[&str],
    paths: &[&Path],
) -> anyhow::Result<(Peer, String, String)> {
    start_sender_with(Command::new(bin("native-peer")), server, extra, paths)
}

/// [`start_sender`] for one file, with extra environment variables.
pub fn start_sender_env(
    server: &str,
    file: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<(Peer, String, String)> {
    let mut cmd = Command::new(bin("native-peer"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    start_sender_with(cmd, server, &[], &[file])
}

/// [`start_sender`] through a wrapper command (see [`Peer::spawn_cmd`]).
pub fn start_sender_with(
    cmd: Command,
    server: &str,
    extra: &[&str],
    paths: &[&Path],
) -> anyhow::Result<(Peer, String, String)> {
    let mut args: Vec<String> = vec!["--server".into(), server.into(), "send".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Peer::spawn_cmd(cmd, &argv);
    let ready: event::Ready = p
        .wait(Duration::from_secs(10))
        .context("sender never became ready")?;
    let code = ready.code.context("the sender showed no code")?;
    Ok((p, ready.link, code))
}

pub const LONG: Duration = Duration::from_secs(120);

/// A free TCP+UDP port on loopback (racy by nature, fine for tests).
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Debian's coturn on loopback with a REST-API shared secret, killed on drop.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Coturn {
    pub fn start(secret: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = tempfile::tempdir()?;
        let relay_min = 20000 + (port % 20000);
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
            ])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay_min}"))
            .arg(format!("--max-port={}", relay_min + 200))
            .args([
                "--use-auth-secret",
                "--realm=punchdrop",
                "--allow-loopback-peers",
                "--simple-log",
            ])
            .arg(format!("--static-auth-secret={secret}"))
            .arg(format!("--userdb={}", dir.path().join("turndb").display()))
            .arg(format!(
                "--pidfile={}",
                dir.path().join("turn.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.path().join("turn.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot start coturn's turnserver (the test command installs Debian's coturn)",
            )?;
        // Ready when it answers on its TCP listener.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("coturn did not start listening on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
