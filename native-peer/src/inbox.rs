//! `native-peer inbox`: an always-on receiver (a NAS) with a link that stays valid, which
//! browsers and `native-peer send --to LINK` drop files into at any time
//! ([`protocol::inbox`] has the protocol).
//!
//! Invariants:
//! - The identity (an Ed25519 key and the drops' secret) lives in one state file, mode 0600,
//!   written whole or not at all (a temporary file renamed over it). The link stays the same
//!   for as long as that file does; `inbox rotate` changes the secret, and old links stop
//!   working.
//! - The inbox keeps one connection to the server, registered by signing the server's
//!   challenge; it says `ready` (its link) once first registered, when drops can come. When it drops (the server restarted, the network went away) the inbox
//!   registers again after a jittered backoff (0.5 s doubling to 30 s): the same link works
//!   again as soon as it is back.
//! - Each drop is a share of its own: its own room, the PAKE with the inbox's secret, the
//!   transfer into the folder as `recv` does it (`.part` files verified before their final
//!   name), reconnection within `--reconnect-timeout`. A failed drop is reported and the
//!   inbox goes on. At most `--max-concurrent` run at once; more wait their turn in order.
//! - Ctrl-C / SIGTERM: no new drops; drops in flight are cancelled the way `recv` cancels
//!   them (the sender is told, and their parts are removed); a second one exits at once.
//! - A drop never writes a name another drop in flight writes ([`files::Claims`]).
//! - The connection to the server is pinged when quiet; one silent for 45 s is dead and the
//!   inbox registers again. A registration refused for good (another protocol version) or
//!   taken over by another copy of the inbox (`replaced`) stops it with that reason.
//! - What the inbox prints per drop holds counts, sizes and the path kind; never names.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use ed25519_dalek::{Signer as _, SigningKey};
use futures::stream::FuturesUnordered;
use futures::{SinkExt as _, StreamExt as _};
use protocol::event::{self, Event};
use protocol::inbox::{InboxId, InboxLink};
use protocol::invite::Invitation;
use protocol::rendezvous::{Rendezvous, Want};
use protocol::signal::{ClientMessage, ErrorCode, SIGNAL_VERSION, ServerMessage};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::output::Output;
use crate::rendezvous::Clock;
use crate::{Common, Job, Session, files, session_config, transfer};

/// The longest pause between two registrations.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a registration may take before it counts as failed.
const REGISTER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct InboxArgs {
    #[command(subcommand)]
    action: Option<InboxAction>,
    /// Folder drops are saved into (created if missing).
    #[arg(long, short)]
    dir: Option<PathBuf>,
    /// The inbox's state file (its key and secret) [default: $XDG_STATE_HOME/punchdrop/inbox.json,
    /// or ~/.local/state/punchdrop/inbox.json].
    #[arg(long, global = true, env = "PUNCHDROP_INBOX_STATE")]
    state: Option<PathBuf>,
    /// Drops received at once; more wait their turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent: u16,
    /// Decline a drop larger than this many bytes (the sender is told why; nothing is
    /// written).
    #[arg(long, value_name = "BYTES")]
    max_bytes_per_drop: Option<u64>,
    /// Take at most this many bytes a day (UTC) in all; a drop beyond what is left today is
    /// declined. Counted from this run's start.
    #[arg(long, value_name = "BYTES")]
    max_bytes_per_day: Option<u64>,
    /// Decline a drop that would leave less than this many bytes free on the disk.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    keep_free: u64,
    /// Append one JSON line per drop to this file (time, outcome, files, bytes, path kind;
    /// never names, addresses or error texts).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum InboxAction {
    /// Print the inbox's link.
    Link,
    /// Give the inbox a new secret: links given out before stop working.
    Rotate,
}

/// What the state file holds.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The Ed25519 secret key's 32 bytes, base64.
    key: String,
    /// The drops' PAKE secret, as links carry it.
    secret: String,
}

/// The inbox's identity.
struct Identity {
    key: SigningKey,
    secret: String,
}

impl Identity {
    fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
            secret: protocol::invite::generate_secret(),
        }
    }

    fn id(&self) -> InboxId {
        InboxId::of_key(self.key.verifying_key().as_bytes())
    }

    fn link(&self, server: &str) -> InboxLink {
        InboxLink::new(server, self.id(), &self.secret)
    }

    fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let bad = || format!("{} is not an inbox state file", path.display());
        let stored: Stored = serde_json::from_str(&text).with_context(bad)?;
        let key: [u8; 32] = B64
            .decode(&stored.key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .with_context(bad)?;
        Ok(Some(Self {
            key: SigningKey::from_bytes(&key),
            secret: stored.secret,
        }))
    }

    /// Write the state file whole: a temporary file (0600) beside it, renamed over it.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let stored = Stored {
            key: B64.encode(self.key.to_bytes()),
            secret: self.secret.clone(),
        };
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = private_file(&tmp)?;
            f.write_all(serde_json::to_string_pretty(&stored)?.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

/// `--state`, or the default under the user's state directory.
fn state_path(args: &InboxArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.state {
        return Ok(p.clone());
    }
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/state"),
            None => bail!("no state directory (neither XDG_STATE_HOME nor HOME): give --state"),
        },
    };
    Ok(base.join("punchdrop").join("inbox.json"))
}

pub async fn run(
    c: &Common,
    args: &InboxArgs,
    out: &mut Output,
    interrupt: transfer::Interrupt,
) -> anyhow::Result<()> {
    let path = state_path(args)?;
    out.hint = "Drop files into this inbox with the link:";
    out.waiting = match args.action {
        Some(_) => "",
        None => "Waiting for drops…",
    };
    match args.action {
        Some(InboxAction::Link) => {
            let me = Identity::load(&path)?.with_context(|| {
                format!(
                    "no inbox at {} yet: run `native-peer inbox --dir DIR`",
                    path.display()
                )
            })?;
            out.event(&ready(&me.link(&c.server)));
            return Ok(());
        }
        Some(InboxAction::Rotate) => {
            let mut me = Identity::load(&path)?
                .with_context(|| format!("no inbox at {} to rotate", path.display()))?;
            me.secret = protocol::invite::generate_secret();
            me.save(&path)?;
            out.note("The inbox has a new secret: links given out before no longer work.");
            out.event(&ready(&me.link(&c.server)));
            return Ok(());
        }
        None => {}
    }
    let dir = args
        .dir
        .as_ref()
        .context("--dir is needed: the folder drops are saved into")?;
    if c.port.is_some() && args.max_concurrent > 1 {
        bail!(
            "--port binds ICE to one port, which one drop at a time can use: add --max-concurrent 1"
        );
    }
    // Fail now, not at the first drop, on a folder that cannot be written.
    files::Destination::open(dir)?;
    let me = match Identity::load(&path)? {
        Some(me) => me,
        None => {
            let me = Identity::generate();
            me.save(&path)?;
            me
        }
    };
    let link = me.link(&c.server);
    Inbox {
        c,
        args,
        dir,
        me: &me,
        link: &link,
        claims: files::Claims::default(),
        today: Cell::new((0, 0)),
        state: &path,
    }
    .serve(out, interrupt)
    .await
}

fn ready(link: &InboxLink) -> Event {
    event::Ready {
        link: link.to_string(),
        code: None,
    }
    .into()
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Registering<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Ws>> + 'a>>;

/// The inbox's connection to the server.
enum Server<'a> {
    Registering(Registering<'a>),
    Online {
        ws: Box<Ws>,
        /// When the server was last heard (any frame), and when the inbox last pinged it.
        heard: Instant,
        pinged: Instant,
    },
    /// Between two attempts.
    Waiting(Pin<Box<tokio::time::Sleep>>),
}

/// What the connection to the server did.
enum Heard {
    Online,
    Failed(anyhow::Error),
    Drop(String),
    Closed,
    Retry,
    /// Another process registered this inbox (the same state file runs twice).
    Replaced,
}

/// A quiet connection to the server is pinged after this; one quiet for [`SILENT_FOR`] is
/// dead (the inbox's address changed, its router forgot the connection): it registers
/// again rather than stay deaf to drops.
const PING_EVERY: Duration = Duration::from_secs(15);
const SILENT_FOR: Duration = Duration::from_secs(45);

/// The server refused a registration: `code` says why.
#[derive(Debug, thiserror::Error)]
#[error("the server refused: {message}")]
struct Refused {
    code: ErrorCode,
    message: String,
}

impl Refused {
    /// Trying again cannot help (this build or this key is not welcome there).
    fn is_final(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::UnsupportedVersion | ErrorCode::NotYours
        )
    }
}

struct Inbox<'a> {
    c: &'a Common,
    args: &'a InboxArgs,
    dir: &'a Path,
    me: &'a Identity,
    link: &'a InboxLink,
    /// The names drops in flight write (no two drops share one).
    claims: files::Claims,
    /// Bytes received on UTC day `.0` (for `--max-bytes-per-day`).
    today: Cell<(u64, u64)>,
    /// The state file, for messages.
    state: &'a Path,
}

impl<'a> Inbox<'a> {
    async fn serve(
        &self,
        out: &mut Output,
        mut interrupt: transfer::Interrupt,
    ) -> anyhow::Result<()> {
        let mut server = Server::Registering(Box::pin(register(&self.c.server, self.me)));
        let mut attempts: u32 = 0;
        let mut waiting: VecDeque<String> = VecDeque::new();
        let mut announced = false;
        // Why the inbox stops by itself (it cannot stay registered), once its drops ended.
        let mut stopped: Option<anyhow::Error> = None;
        let mut drops = FuturesUnordered::new();
        let max = usize::from(self.args.max_concurrent);
        loop {
            tokio::select! {
                heard = next(&mut server) => match heard {
                    Heard::Online => {
                        attempts = 0;
                        // `ready` once drops can come: when first registered.
                        if !std::mem::replace(&mut announced, true) {
                            self.announce(out);
                        }
                        out.note("The inbox is online: drops are welcome.");
                    }
                    Heard::Drop(room) => {
                        tracing::debug!("a drop is waiting");
                        waiting.push_back(room);
                    }
                    Heard::Failed(e) if e.downcast_ref::<Refused>().is_some_and(Refused::is_final) => {
                        stopped = Some(e.context("the inbox cannot register with this server"));
                        break;
                    }
                    Heard::Replaced => {
                        stopped = Some(anyhow::anyhow!("another copy of this inbox (the same state file) registered with the server: only one may run"));
                        break;
                    }
                    Heard::Failed(e) => {
                        server = wait_again(&mut attempts, out, &format!("The inbox is offline ({e:#})"));
                    }
                    Heard::Closed => {
                        server = wait_again(&mut attempts, out, "The inbox lost the server");
                    }
                    Heard::Retry => {
                        server = Server::Registering(Box::pin(register(&self.c.server, self.me)));
                    }
                },
                Some(result) = drops.next(), if !drops.is_empty() => self.report(out, result),
                _ = interrupt.changed() => break,
            }
            while drops.len() < max
                && let Some(room) = waiting.pop_front()
            {
                drops.push(self.receive(room, interrupt.clone()));
            }
        }
        // Stopping: no new drops. Those in flight saw the interrupt and are cancelling, or
        // (the inbox cannot stay registered) finish: they need the server no more.
        drop(server);
        while let Some(result) = drops.next().await {
            self.report(out, result);
        }
        stopped.map_or(Ok(()), Err)
    }

    /// Say the inbox's link (`ready`): on a terminal or to a program. Standard output that
    /// is neither is a log (a service manager's journal): the id only, no secret in it.
    fn announce(&self, out: &mut Output) {
        if out.is_json() || std::io::stdout().is_terminal() {
            out.event(&ready(self.link));
        } else {
            println!(
                "inbox {} is online (its link: `native-peer inbox link --state {}`)",
                self.link.id,
                self.state.display()
            );
        }
    }

    /// One drop: join its room with the inbox's secret and receive into the folder.
    async fn receive(
        &self,
        room: String,
        mut interrupt: transfer::Interrupt,
    ) -> anyhow::Result<transfer::Summary> {
        let inv = Invitation::Link(self.link.room_link(&room));
        let clock = Clock::start();
        let config = session_config(self.c);
        let rv = Rendezvous::join(&inv, &self.c.server, Want::Receive, config, clock.now());
        let mut dest = files::Destination::open_sharing(self.dir, self.claims.clone())?;
        dest.keep_free = self.args.keep_free;
        let job = Job::Receive {
            dest,
            limits: protocol::transfer::Limits {
                max_bytes: self.allowance(),
                ..Default::default()
            },
        };
        let session = Session {
            common: self.c,
            config,
            clock,
            rejoin: Some(&inv),
        };
        let mut quiet = Output::quiet();
        let (summary, _) = session.run(rv, &job, &mut quiet, &mut interrupt).await?;
        Ok(summary)
    }

    /// The most a drop starting now may bring: `--max-bytes-per-drop`, and what is left of
    /// `--max-bytes-per-day`. (Drops at once each see what was left as they started.)
    fn allowance(&self) -> Option<u64> {
        let left_today = self
            .args
            .max_bytes_per_day
            .map(|max| max.saturating_sub(self.received_today(0)));
        match (self.args.max_bytes_per_drop, left_today) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes received today (UTC), after adding `more`.
    fn received_today(&self, more: u64) -> u64 {
        let day = unix_time() / 86_400;
        let (d, bytes) = self.today.get();
        let bytes = if d == day { bytes + more } else { more };
        self.today.set((day, bytes));
        bytes
    }

    /// Say how a drop ended: a line for people, its `done` or `error` event with `--json`,
    /// and a line in `--log`.
    fn report(&self, out: &mut Output, result: anyhow::Result<transfer::Summary>) {
        if let Ok(s) = &result {
            self.received_today(s.transferred);
        }
        let line = match &result {
            Ok(s) => serde_json::json!({
                "time": unix_time(),
                "outcome": "received",
                "files": s.files,
                "bytes": s.bytes,
                "transferred": s.transferred,
                "seconds": s.seconds,
                "path": s.path.kind.as_str(),
            }),
            // Not the error's text: it may name a file, or quote the dropper.
            Err(_) => serde_json::json!({
                "time": unix_time(),
                "outcome": "failed",
            }),
        };
        if let Some(log) = &self.args.log
            && let Err(e) = append_line(log, &line.to_string())
        {
            tracing::warn!("cannot write the drop log {}: {e}", log.display());
        }
        match result {
            Ok(s) if out.is_json() => out.event(&s.done()),
            Ok(s) => out.note(&format!(
                "Drop received: {} file(s), {} over a {} path",
                s.files,
                indicatif::HumanBytes(s.bytes),
                s.path.kind.as_str()
            )),
            Err(e) if out.is_json() => out.error(&e),
            Err(e) => out.note(&format!(
                "A drop failed: {}",
                crate::output::printable(&format!("{e:#}"))
            )),
        }
    }
}

/// Pause before registering again (attempt `attempts`, counted here), saying `why`.
fn wait_again<'a>(attempts: &mut u32, out: &Output, why: &str) -> Server<'a> {
    *attempts += 1;
    let pause = backoff(*attempts);
    out.note(&format!(
        "{why}; registering again in {:.1} s",
        pause.as_secs_f64()
    ));
    Server::Waiting(Box::pin(tokio::time::sleep(pause)))
}

/// The next thing the connection to the server does.
async fn next(server: &mut Server<'_>) -> Heard {
    match server {
        Server::Registering(fut) => match fut.await {
            Ok(ws) => {
                let now = Instant::now();
                *server = Server::Online {
                    ws: Box::new(ws),
                    heard: now,
                    pinged: now,
                };
                Heard::Online
            }
            Err(e) => Heard::Failed(e),
        },
        Server::Online { ws, heard, pinged } => loop {
            let now = Instant::now();
            if now - *heard >= SILENT_FOR {
                return Heard::Closed;
            }
            let quiet_since = (*heard).max(*pinged);
            if now - quiet_since >= PING_EVERY {
                *pinged = now;
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return Heard::Closed;
                }
                continue;
            }
            let frame = tokio::time::timeout_at((quiet_since + PING_EVERY).into(), ws.next()).await;
            let Ok(frame) = frame else { continue };
            *heard = Instant::now();
            match frame {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMessage>(&t) {
                    Ok(ServerMessage::Drop { room }) => return Heard::Drop(room),
                    Ok(ServerMessage::Error {
                        code: ErrorCode::Replaced,
                        ..
                    }) => return Heard::Replaced,
                    Ok(ServerMessage::Error { code, message }) => {
                        tracing::info!(?code, "the server said: {message}");
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Heard::Closed,
                Some(Ok(_)) => {}
            }
        },
        Server::Waiting(sleep) => {
            sleep.await;
            Heard::Retry
        }
    }
}

/// Open a socket to the server and register the inbox on it (within [`REGISTER_WITHIN`]).
async fn register(server: &str, me: &Identity) -> anyhow::Result<Ws> {
    let url = protocol::invite::websocket_url(server)?;
    let steps = async {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .context("cannot reach the server")?;
        let id = me.id();
        send(
            &mut ws,
            ClientMessage::Register {
                version: SIGNAL_VERSION,
                inbox: id.to_string(),
                key: protocol::inbox::encode(me.key.verifying_key().as_bytes()),
            },
        )
        .await?;
        let nonce = match answer(&mut ws).await? {
            ServerMessage::Challenge { nonce } => B64
                .decode(nonce)
                .context("the server's challenge is malformed")?,
            other => bail!("unexpected answer to a registration: {other:?}"),
        };
        let sig = me.key.sign(&protocol::inbox::proof_message(&id, &nonce));
        send(
            &mut ws,
            ClientMessage::Prove {
                sig: protocol::inbox::encode(&sig.to_bytes()),
            },
        )
        .await?;
        match answer(&mut ws).await? {
            ServerMessage::Registered { .. } => Ok(ws),
            other => bail!("unexpected answer to a registration: {other:?}"),
        }
    };
    tokio::time::timeout(REGISTER_WITHIN, steps)
        .await
        .context("the server did not answer the registration")?
}

async fn send(ws: &mut Ws, msg: ClientMessage) -> anyhow::Result<()> {
    ws.send(Message::text(msg.to_json()))
        .await
        .context("the connection to the server closed")
}

/// The server's next message; its `error` as an error.
async fn answer(ws: &mut Ws) -> anyhow::Result<ServerMessage> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let msg: ServerMessage =
                    serde_json::from_str(&t).context("the server sent something unreadable")?;
                if let ServerMessage::Error { code, message } = msg {
                    return Err(Refused { code, message }.into());
                }
                return Ok(msg);
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                bail!("the connection to the server closed")
            }
            Some(Ok(_)) => {}
        }
    }
}

/// The pause before registration attempt `n` (from 1): 0.5 s doubling up to
/// [`BACKOFF_MAX`], each between half and all of that, so inboxes that lost one server
/// do not all come back at the same instant.
fn backoff(n: u32) -> Duration {
    let full = Duration::from_millis(500)
        .saturating_mul(1 << n.saturating_sub(1).min(6))
        .min(BACKOFF_MAX);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for n in 1..20 {
            let full = Duration::from_millis(500 << (n - 1).min(6)).min(BACKOFF_MAX);
            let b = backoff(n);
            assert!(b >= full / 2 && b <= full, "{n}: {b:?}");
        }
    }

    #[test]
    fn the_state_file_keeps_the_link_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/inbox.json");
        assert!(Identity::load(&path).unwrap().is_none());
        let me = Identity::generate();
        me.save(&path).unwrap();
        let again = Identity::load(&path).unwrap().unwrap();
        assert_eq!(
            again.link("http://s").to_string(),
            me.link("http://s").to_string()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "{}").unwrap();
        let err = Identity::load(&path).err().unwrap();
        assert!(
            format!("{err:#}").contains("not an inbox state file"),
            "{err:#}"
        );
    }
}
