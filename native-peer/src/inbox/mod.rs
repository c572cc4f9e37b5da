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
use protocol::device::{DeviceProof, PairingCode};
use protocol::event::{self, Event};
use protocol::inbox::{InboxId, InboxLink};
use protocol::invite::Invitation;
use protocol::rendezvous::{Rendezvous, Want};
use protocol::signal::{ClientMessage, ErrorCode, SIGNAL_VERSION, ServerMessage};
use rand::Rng as _;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

mod state;

pub use state::{private_file_new, state_dir, unique_beside};

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
    /// Take at most this many bytes a day (UTC) in all, counting what every drop brought
    /// (finished or not) and what drops in progress may still bring; a drop beyond what is
    /// left today is declined. Counted from this run's start.
    #[arg(long, value_name = "BYTES")]
    max_bytes_per_day: Option<u64>,
    /// Decline a drop that would leave less than this many bytes free on the disk (beside
    /// what drops in progress may still write).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    keep_free: u64,
    /// Append one JSON line per drop to this file (time, outcome, files, bytes, path kind,
    /// the device if paired; never file names, addresses or error texts).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The inbox's name, shown to whoever opens its link ("Send files to NAME") [default:
    /// this host's name]. The server keeps it sealed with the link's secret.
    #[arg(long)]
    name: Option<String>,
    /// Where in the folder a drop lands.
    #[arg(long, value_enum, default_value_t = Layout::Flat)]
    layout: Layout,
    /// Take drops only from paired devices (`native-peer inbox pair` makes a code).
    #[arg(long)]
    paired_only: bool,
    /// Also lend this machine to the inbox's server as a volunteer relay, as `native-peer
    /// relay` does (TURN on --relay-listen, relayed sockets on --relay-ports, mapped by
    /// UPnP). Its events go to the log; a refusal stops the relay, not the inbox.
    #[arg(long)]
    relay: bool,
    /// The relay token the server's operator gave, for --relay.
    #[arg(
        long,
        env = "PUNCHDROP_RELAY_TOKEN",
        hide_env_values = true,
        requires = "relay"
    )]
    relay_token: Option<String>,
    /// Where the relay's TURN listens, UDP and TCP, for --relay.
    #[arg(long, env = "PUNCHDROP_RELAY_LISTEN", default_value = "0.0.0.0:3478")]
    relay_listen: std::net::SocketAddr,
    /// The relay's ports for relayed sockets, LOW-HIGH, for --relay.
    #[arg(long, env = "PUNCHDROP_RELAY_PORTS", default_value = "50000-50015", value_parser = crate::relay::parse_range)]
    relay_ports: std::ops::RangeInclusive<u16>,
}

#[derive(Subcommand, Debug)]
enum InboxAction {
    /// Print the inbox's link.
    Link,
    /// Give the inbox a new secret: links given out before stop working (a running inbox
    /// takes the new one from its next drop on).
    Rotate,
    /// Make a one-time pairing code: a device that sends its first drop with it is paired
    /// (for `--paired-only`).
    Pair {
        /// Minutes the code stays valid.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_080))]
        valid_for: u64,
    },
    /// List the paired devices.
    Devices,
    /// Unpair a device: its drops are refused from the next one on (with --paired-only).
    Revoke {
        /// The device's name, as `inbox devices` lists it.
        name: String,
    },
}

/// Where in `--dir` a drop's files land.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// In the folder itself.
    Flat,
    /// In a folder per day (UTC) the drop began: `YYYY-MM-DD/`.
    ByDate,
    /// In a folder per paired device (`unpaired/` for the others).
    ByDevice,
}

pub async fn run(
    c: &Common,
    args: &InboxArgs,
    out: &mut Output,
    interrupt: transfer::Interrupt,
) -> anyhow::Result<()> {
    let path = match &args.state {
        Some(p) => p.clone(),
        None => state::state_dir()
            .context("give --state")?
            .join("inbox.json"),
    };
    out.hint = "Drop files into this inbox with the link:";
    out.waiting = match args.action {
        Some(_) => "",
        None => "Waiting for drops…",
    };
    if let Some(action) = &args.action {
        return manage(c, action, &path, out);
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
    let me = state::read_or_create(&path)?;
    let name = match &args.name {
        Some(n) => {
            Some(protocol::device::clean_name(n).context("--name: give the inbox a name to show")?)
        }
        None => crate::device::host_name(),
    };
    let inbox = Inbox {
        c,
        args,
        dir,
        key: me.signing_key(),
        name,
        claims: files::Claims::default(),
        today: Cell::new((0, 0)),
        promised: Cell::new(0),
        state: &path,
    };
    if !args.relay {
        return inbox.serve(out, interrupt).await;
    }
    // The relay stops when the inbox does, whatever stopped it.
    let (stop_relay, relay_stop) = tokio::sync::watch::channel(false);
    let relay_args = crate::relay::RelayArgs::for_server(
        c.server(),
        args.relay_token.clone(),
        args.relay_listen,
        args.relay_ports.clone(),
    );
    let lend = async {
        if let Err(e) = crate::relay::run(c, &relay_args, crate::relay::Show::Log, relay_stop).await
        {
            tracing::warn!("the volunteer relay stopped: {e:#}");
        }
    };
    let serve = async {
        let served = inbox.serve(out, interrupt).await;
        let _ = stop_relay.send(true);
        served
    };
    tokio::join!(serve, lend).0
}

/// The state file at `path`, which must be there.
fn existing(path: &Path) -> anyhow::Result<state::Stored> {
    state::read(path)?.with_context(|| {
        format!(
            "no inbox at {} yet: run `native-peer inbox --dir DIR`",
            path.display()
        )
    })
}

/// `inbox link|rotate|pair|devices|revoke`: the state file, read, or changed under its
/// lock.
fn manage(c: &Common, action: &InboxAction, path: &Path, out: &mut Output) -> anyhow::Result<()> {
    match action {
        InboxAction::Link => {
            let me = existing(path)?;
            out.event(&ready(&me.link(c.server())));
        }
        InboxAction::Rotate => {
            let me = state::update(
                path,
                |s| {
                    s.rotate();
                    Ok(s.clone())
                },
                false,
            )?;
            out.note("The inbox has a new secret: links given out before no longer work.");
            out.event(&ready(&me.link(c.server())));
        }
        InboxAction::Pair { valid_for } => {
            let now = unix_time();
            let code = state::update(path, |s| Ok(s.new_code(now, now + valid_for * 60)), false)?;
            out.note(&format!(
                "A pairing code, valid once for {valid_for} minute(s). Give it with the device's first drop: on the inbox's page, or `native-peer send --to LINK --pair CODE FILES…`."
            ));
            println!("{code}");
        }
        InboxAction::Devices => {
            let me = existing(path)?;
            if me.devices.is_empty() {
                out.note(
                    "No device is paired with this inbox (`native-peer inbox pair` makes a code).",
                );
            }
            for d in &me.devices {
                println!("{}\tpaired {}", d.name, utc_day(d.paired));
            }
        }
        InboxAction::Revoke { name } => {
            let gone = state::update(path, |s| Ok(s.revoke(name)), false)?;
            if !gone {
                bail!(
                    "no device named “{name}” is paired (`native-peer inbox devices` lists them)"
                );
            }
            out.note(&format!(
                "“{name}” is no longer paired: its drops are refused with --paired-only."
            ));
        }
    }
    Ok(())
}

fn ready(link: &InboxLink) -> Event {
    event::Ready {
        link: link.to_string(),
        code: None,
    }
    .into()
}

use crate::wss::Ws;
type Registering<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Ws>> + 'a>>;

/// One drop's decision on its offer ([`transfer::Gate`]): the device, pairing, the folder.
struct Admission<'a> {
    inbox: &'a Inbox<'a>,
    /// The UTC day the drop began (`--layout by-date`).
    day: String,
    /// The paired device the drop came from, once known.
    device: RefCell<Option<String>>,
    /// Bytes its offer may still bring, counted in [`Inbox::promised`] until it ends.
    promised: Cell<u64>,
    /// Bytes its connections received, finished or not.
    received: Cell<u64>,
}

impl transfer::Gate for Admission<'_> {
    fn received(&self, bytes: u64) {
        self.received.set(self.received.get() + bytes);
    }

    fn reserve(&self, bytes: u64) -> Result<(), String> {
        self.room_for(bytes)
    }

    fn admit(&self, device: Option<&DeviceProof>, binding: &[u8; 32]) -> Result<PathBuf, String> {
        let args = self.inbox.args;
        let key = match device.map(|d| d.verify(binding)) {
            Some(Ok(key)) => Some(key),
            Some(Err(e)) => return Err(format!("the inbox cannot accept this drop: {e}")),
            None => None,
        };
        let paired = match (key, device) {
            (Some(key), Some(proof)) => self.paired(&key, proof)?,
            _ => None,
        };
        if args.paired_only && paired.is_none() {
            return Err(NOT_PAIRED.to_string());
        }
        *self.device.borrow_mut() = paired.clone();
        Ok(match args.layout {
            Layout::Flat => PathBuf::new(),
            Layout::ByDate => PathBuf::from(&self.day),
            Layout::ByDevice => PathBuf::from(match paired.as_deref() {
                Some(name) => folder_name(name),
                None => "unpaired".into(),
            }),
        })
    }
}

/// What a device that is not paired reads from an inbox taking paired devices only.
const NOT_PAIRED: &str = "this inbox takes files only from paired devices: ask its owner for a pairing code (`native-peer inbox pair`) and send with it";

impl Admission<'_> {
    /// Promise `bytes` (what the offer still brings) to this drop if what is left today
    /// (`--max-bytes-per-day`) and on the disk (`--keep-free`) holds them beside what drops
    /// in progress were promised. (What this drop's earlier connections brought counts
    /// against the day, not yet in its total; on the disk it is there already.)
    fn room_for(&self, bytes: u64) -> Result<(), String> {
        let inbox = self.inbox;
        let others = inbox.promised.get() - self.promised.get();
        if let Some(max) = inbox.args.max_bytes_per_day {
            let spent = inbox.received_today(0) + others + self.received.get();
            let left = max.saturating_sub(spent);
            if bytes > left {
                return Err(format!(
                    "the files are {bytes} bytes; this inbox takes at most {left} more today (its limit is {max} a day)"
                ));
            }
        }
        transfer::check_free(inbox.dir, bytes, inbox.args.keep_free, others)?;
        inbox.promised.set(others + bytes);
        self.promised.set(bytes);
        Ok(())
    }

    /// The paired device whose key is `key`, pairing it now if `proof` brings a valid code.
    fn paired(&self, key: &[u8; 32], proof: &DeviceProof) -> Result<Option<String>, String> {
        let unreadable = |e: anyhow::Error| {
            tracing::warn!("cannot read the inbox's state: {e:#}");
            "the inbox cannot read its list of paired devices".to_string()
        };
        let Some(typed) = &proof.pair else {
            let me = state::read(self.inbox.state).map_err(unreadable)?;
            return Ok(me.and_then(|me| me.device(key).map(|d| d.name.clone())));
        };
        let code = PairingCode::parse(typed).ok_or_else(|| BAD_CODE.to_string())?;
        let name = protocol::device::clean_name(&proof.name).unwrap_or_else(|| "device".into());
        let now = unix_time();
        let paired = state::update(
            self.inbox.state,
            |s| Ok(s.pair(&code, key, &name, now)),
            false,
        )
        .map_err(unreadable)?
        .ok_or_else(|| BAD_CODE.to_string())?;
        Ok(Some(paired.name))
    }
}

const BAD_CODE: &str = "that pairing code is not valid (mistyped, used, or expired): ask the inbox's owner for a new one";

/// A paired device's folder (`--layout by-device`): its name as one folder's name, or,
/// for a name that cannot be one (`Anna: laptop`), `device ` and the start of its hash.
pub(crate) fn folder_name(name: &str) -> String {
    let safe = protocol::names::sanitize(&name.replace(['/', '\\'], "-")).ok();
    match safe.filter(|s| s.components().count() == 1) {
        Some(s) => s.top().to_string(),
        None => format!("device {}", &blake3::hash(name.as_bytes()).to_hex()[..8]),
    }
}

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
    /// The server is restarting or shutting down (it drains): come back, not at once.
    Restarting,
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
    /// The inbox's key (its id); the secret is read from the state file when needed.
    key: SigningKey,
    /// Its name (`--name`, or the host's), for the page.
    name: Option<String>,
    /// The names drops in flight write (no two drops share one).
    claims: files::Claims,
    /// Bytes received on UTC day `.0` (for `--max-bytes-per-day`).
    today: Cell<(u64, u64)>,
    /// Bytes drops in progress may still bring (their offers), for the day's quota and the
    /// free-space reserve: drops at once never together pass either.
    promised: Cell<u64>,
    /// The state file: the secret, paired devices and pairing codes are read from it at
    /// each drop.
    state: &'a Path,
}

/// How one drop ended, and the paired device it came from.
struct Dropped {
    result: anyhow::Result<transfer::Summary>,
    device: Option<String>,
    /// Bytes it brought, whether it finished or not (for `--max-bytes-per-day`).
    received: u64,
}

impl<'a> Inbox<'a> {
    async fn serve(
        &self,
        out: &mut Output,
        mut interrupt: transfer::Interrupt,
    ) -> anyhow::Result<()> {
        let mut server = Server::Registering(Box::pin(self.register()));
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
                    Heard::Restarting => {
                        // Every inbox of a draining server hears this at once: they come
                        // back spread over seconds, not in one storm of handshakes.
                        attempts = attempts.max(RESTART_ATTEMPTS);
                        server = wait_again(&mut attempts, out, "The server is restarting");
                    }
                    Heard::Retry => {
                        server = Server::Registering(Box::pin(self.register()));
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

    /// Register with the server: the key, and the name sealed with the secret as the state
    /// file has it now.
    fn register(&self) -> Registering<'static> {
        let sealed = state::read(self.state).map(|s| {
            let secret = s.map(|s| s.secret)?;
            let name = self.name.as_ref()?;
            Some(protocol::inbox::seal_name(&secret, name))
        });
        let (server, key) = (self.c.server().to_owned(), self.key.clone());
        Box::pin(async move { register(&server, &key, sealed?).await })
    }

    /// The inbox's link with the secret the state file holds now.
    fn link(&self) -> anyhow::Result<InboxLink> {
        let me = state::read(self.state)?
            .with_context(|| format!("{} is gone", self.state.display()))?;
        Ok(me.link(self.c.server()))
    }

    /// Say the inbox's link (`ready`): on a terminal or to a program. Standard output that
    /// is neither is a log (a service manager's journal): the id only, no secret in it.
    fn announce(&self, out: &mut Output) {
        match self.link() {
            Ok(link) if out.is_json() || std::io::stdout().is_terminal() => {
                out.event(&ready(&link));
            }
            _ => println!(
                "inbox {} is online (its link: `native-peer inbox link --state {}`)",
                InboxId::of_key(self.key.verifying_key().as_bytes()),
                self.state.display()
            ),
        }
    }

    /// One drop: join its room with the inbox's secret and receive into the folder.
    async fn receive(&self, room: String, interrupt: transfer::Interrupt) -> Dropped {
        let admission = Admission {
            inbox: self,
            day: utc_day(unix_time()),
            device: RefCell::new(None),
            promised: Cell::new(0),
            received: Cell::new(0),
        };
        let result = self.receive_with(room, interrupt, &admission).await;
        self.promised
            .set(self.promised.get() - admission.promised.get());
        Dropped {
            result,
            device: admission.device.into_inner(),
            received: admission.received.get(),
        }
    }

    async fn receive_with(
        &self,
        room: String,
        mut interrupt: transfer::Interrupt,
        admission: &Admission<'_>,
    ) -> anyhow::Result<transfer::Summary> {
        let inv = Invitation::Link(self.link()?.room_link(&room));
        let clock = Clock::start();
        let config = session_config(self.c);
        let rv = Rendezvous::join(&inv, self.c.server(), Want::Receive, config, clock.now());
        let mut dest = files::Destination::open_sharing(self.dir, self.claims.clone())?;
        dest.keep_free = self.args.keep_free;
        let job = Job::Receive {
            dest,
            limits: protocol::transfer::Limits {
                max_bytes: self.args.max_bytes_per_drop,
                ..Default::default()
            },
            gate: Some(admission),
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
    fn report(&self, out: &mut Output, dropped: Dropped) {
        let Dropped {
            result,
            device,
            received,
        } = dropped;
        self.received_today(received);
        let mut line = match &result {
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
        if let Some(d) = &device {
            line["device"] = d.as_str().into();
        }
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
                    Ok(ServerMessage::Error {
                        code: ErrorCode::ShuttingDown,
                        ..
                    }) => return Heard::Restarting,
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
async fn register(server: &str, key: &SigningKey, name: Option<String>) -> anyhow::Result<Ws> {
    let url = protocol::invite::websocket_url(server)?;
    let steps = async {
        let mut ws = crate::wss::connect(url.as_str())
            .await
            .context("cannot reach the server")?;
        let id = InboxId::of_key(key.verifying_key().as_bytes());
        send(
            &mut ws,
            ClientMessage::Register {
                version: SIGNAL_VERSION,
                inbox: id.to_string(),
                key: protocol::inbox::encode(key.verifying_key().as_bytes()),
                name,
            },
        )
        .await?;
        let nonce = match answer(&mut ws).await? {
            ServerMessage::Challenge { nonce } => B64
                .decode(nonce)
                .context("the server's challenge is malformed")?,
            other => bail!("unexpected answer to a registration: {other:?}"),
        };
        let sig = key.sign(&protocol::inbox::proof_message(&id, &nonce));
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

/// After a server said it is restarting, registration starts again as attempt this + 1
/// (4–8 s away).
const RESTART_ATTEMPTS: u32 = 3;

/// The pause before registration attempt `n` (from 1): 0.5 s doubling up to
/// [`BACKOFF_MAX`], each between half and all of that, so inboxes that lost one server
/// do not all come back at the same instant.
fn backoff(n: u32) -> Duration {
    let full = Duration::from_millis(500)
        .saturating_mul(1 << n.saturating_sub(1).min(6))
        .min(BACKOFF_MAX);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// The UTC date of Unix time `secs`, `YYYY-MM-DD`.
fn utc_day(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map(|t| t.date().to_string())
        .unwrap_or_default()
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
    fn a_device_name_makes_one_folder() {
        assert_eq!(folder_name("Anna's phone"), "Anna's phone");
        assert_eq!(folder_name("a/b"), "a-b");
        assert_eq!(folder_name(".."), folder_name(".."));
        assert!(folder_name("..").starts_with("device "));
        assert!(folder_name("Anna: laptop").starts_with("device "));
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(1_796_515_200), "2026-12-06");
    }
}
