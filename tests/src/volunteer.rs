//! A volunteer relay (`native-peer relay --register URL`) run by a test, its JSON events read
//! as they come; killed on drop.

use crate::bin;
use anyhow::bail;
use protocol::relay::RelayEvent;
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Volunteer {
    child: Child,
    events: Arc<Mutex<Vec<RelayEvent>>>,
    stderr: Arc<Mutex<String>>,
}

impl Volunteer {
    /// `native-peer --json GLOBAL… relay --register SERVER ARGS…` through `cmd` (the binary
    /// itself, or `ip netns exec NS …/native-peer`).
    pub fn spawn(mut cmd: Command, global: &[&str], server: &str, args: &[&str]) -> Self {
        cmd.arg("--json")
            .args(global)
            .args(["relay", "--register", server])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("PUNCHDROP_LOG").is_none() {
            cmd.env("PUNCHDROP_LOG", "info");
        }
        let mut child = cmd.spawn().expect("start native-peer relay");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, text) = (events.clone(), stderr.clone());
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<RelayEvent>(&line) {
                    Ok(e) => sink.lock().unwrap().push(e),
                    // Errors are the peers' JSON error event: kept with the text it printed.
                    Err(_) => {
                        let mut t = text.lock().unwrap();
                        t.push_str(&line);
                        t.push('\n');
                    }
                }
            }
        });
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            events,
            stderr,
        }
    }

    /// A volunteer on loopback: no port mapping, relaying to loopback peers (test builds
    /// only), relay ports from a range of its own.
    pub fn on_loopback(server: &str, args: &[&str]) -> Self {
        let ports = loopback_ports();
        let mut all = vec![
            "--listen",
            "127.0.0.1:0",
            "--allow-private-peers",
            "--relay-ports",
            &ports,
        ];
        all.extend_from_slice(args);
        Self::spawn(
            Command::new(bin("native-peer")),
            &["--no-portmap"],
            server,
            &all,
        )
    }

    /// Where it said it is reached (`IP:PORT`), once listening.
    pub fn public(&self) -> Option<String> {
        self.events().iter().find_map(|e| match e {
            RelayEvent::Listening { public, .. } => Some(public.clone()),
            _ => None,
        })
    }

    /// Whether `urls` (one relay's, as handed to a room) are this volunteer's.
    pub fn is_in(&self, urls: &[String]) -> bool {
        self.public()
            .is_some_and(|p| urls.iter().any(|u| u.starts_with(&format!("turn:{p}?"))))
    }

    pub fn events(&self) -> Vec<RelayEvent> {
        self.events.lock().unwrap().clone()
    }

    /// What it printed besides its events: standard error and any other stdout line.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until the server lists the relay; the error holds what it printed.
    pub fn wait_listed(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.events().contains(&RelayEvent::Listed) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the relay exited ({status}) before it was listed: {:?}\n{}",
                    self.events(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the relay was not listed within {within:?}: {:?}\n{}",
                    self.events(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bytes relayed, as of the latest load report.
    pub fn relayed(&self) -> u64 {
        self.events()
            .iter()
            .rev()
            .find_map(|e| match e {
                RelayEvent::Load { relayed_bytes, .. } => Some(*relayed_bytes),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The exit status and standard error of a volunteer that stops by itself.
    pub fn finish(
        mut self,
        within: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return Ok((status, self.stderr()));
            }
            if Instant::now() > deadline {
                bail!(
                    "the relay did not stop within {within:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a volunteer that dies without a word.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A range of 16 relay ports for a relay on loopback, below the kernel's ephemeral ports
/// (32768 and up) where nothing else binds, picked at random so parallel tests rarely meet.
pub fn loopback_ports() -> String {
    let base = 10_000 + (rand::random::<u16>() % 1200) * 16;
    format!("{base}-{}", base + 15)
}

impl Drop for Volunteer {
    fn drop(&mut self) {
        self.kill();
    }
}
