//! What the user sees: [`protocol::event::Event`]s, as progress bars and plain lines for
//! people or as newline-delimited JSON for programs (`--json`). Bars appear only when stdout
//! is a terminal. The events and their fields are the README's list (checked by a test).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::event::{self, Event};
use protocol::signal::TransferRole;
use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// `progress` lines at most this often with `--json` (the last one always).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct Output {
    shared: Shared,
    tty: bool,
    last_progress: Option<Instant>,
    /// What this side does, for the closing line ("Sent"/"Received").
    pub role: Option<TransferRole>,
    /// What `ready` tells a person to do with the link.
    pub hint: &'static str,
    /// What `ready` says comes next (nothing when empty).
    pub waiting: &'static str,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self {
            shared: Shared {
                json,
                quiet: false,
                bar: Arc::default(),
            },
            tty: std::io::stdout().is_terminal(),
            last_progress: None,
            role: None,
            hint: "Open this link on the other device:",
            waiting: "Waiting for the other peer…",
        }
    }

    /// An output that shows nothing: an inbox's drops, several at once, which the inbox
    /// reports one line each itself.
    pub fn quiet() -> Self {
        let mut out = Self::new(false);
        out.shared.quiet = true;
        out.tty = false;
        out
    }

    pub fn is_json(&self) -> bool {
        self.shared.json
    }

    /// What a task beside the transfer may show while it runs.
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// A human line on stderr (kept off stdout so links stay easy to pipe).
    pub fn note(&self, msg: &str) {
        self.shared.note(msg);
    }

    fn take_bar(&self) -> Option<ProgressBar> {
        self.shared.bar().take()
    }

    /// Show one event.
    pub fn event(&mut self, e: &Event) {
        if self.shared.quiet {
            return;
        }
        if let Event::Progress(p) = e {
            return self.progress(p);
        }
        if self.shared.json {
            self.shared.emit(e);
            return;
        }
        match e {
            Event::Ready(r) => self.ready(r),
            Event::Code(c) => println!("or type the code:  {}\n", c.code),
            Event::Joined => eprintln!("The other peer is here; checking the secret…"),
            Event::Verify(v) => eprintln!(
                "Verification words: {} (the other device shows the same)",
                v.words.join(" ")
            ),
            Event::Connected(c) => eprintln!("Connected: {}", c.path),
            Event::Reconnecting(_) | Event::Reconnected(_) => self.shared.event(e),
            Event::Offer(o) => eprintln!("{} file(s), {}", o.files, indicatif::HumanBytes(o.bytes)),
            Event::Accepted(a) => self.start(a.bytes),
            Event::Resumed(r) => self.note(&format!(
                "File #{}: its first {} were kept from before and match; only the rest is sent",
                r.index,
                indicatif::HumanBytes(r.offset)
            )),
            Event::FileRestarted(r) => self.note(&format!(
                "File #{}: what was kept from before differs from the sender's file; it is sent again from the start",
                r.index
            )),
            Event::Done(d) => self.done(d),
            Event::Error(f) => {
                if let Some(b) = self.take_bar() {
                    b.abandon();
                }
                eprintln!("error: {}", f.message);
            }
            Event::FirstByte(_)
            | Event::FileDone(_)
            | Event::Pick
            | Event::Declined
            | Event::Progress(_) => {}
        }
    }

    /// Report a failure as the `error` event. Its text can quote the other peer (a cancel or
    /// decline reason): it never drives the terminal.
    pub fn error(&mut self, err: &anyhow::Error) {
        self.event(&Event::error(printable(&format!("{err:#}"))));
    }

    fn ready(&self, r: &event::Ready) {
        println!("{}\n\n  {}\n", self.hint, r.link);
        if let Some(code) = &r.code {
            println!("or type the code:  {code}\n");
        }
        if self.tty
            && let Ok(qr) = qrcode::QrCode::new(r.link.as_bytes())
        {
            let art = qr
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            println!("{art}\n");
        }
        if !self.waiting.is_empty() {
            eprintln!("{}", self.waiting);
        }
    }

    fn start(&mut self, total: u64) {
        let target = if self.tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:32.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("static template")
            .progress_chars("█▉▊▋▌▍▎▏ "),
        );
        *self.shared.bar() = Some(bar);
    }

    fn progress(&mut self, p: &event::Progress) {
        if let Some(b) = &*self.shared.bar() {
            b.set_position(p.bytes);
        }
        if self.shared.json {
            let now = Instant::now();
            if self.last_progress.is_none_or(|t| now - t >= PROGRESS_EVERY) || p.bytes == p.total {
                self.last_progress = Some(now);
                self.shared.emit(&Event::Progress(p.clone()));
            }
        }
    }

    fn done(&mut self, d: &event::Done) {
        if let Some(b) = self.take_bar() {
            b.finish_and_clear();
        }
        let rate = if d.seconds > 0.0 {
            d.bytes as f64 / d.seconds
        } else {
            0.0
        };
        let what = match self.role {
            Some(TransferRole::Sender) => "Sent",
            _ => "Received",
        };
        eprintln!(
            "{what} {} file(s), {} in {:.2} s ({}/s) over a {} path",
            d.files,
            indicatif::HumanBytes(d.bytes),
            d.seconds,
            indicatif::HumanBytes(rate as u64),
            d.path.kind.as_str(),
        );
        if let Some(why) = d.path.reason {
            eprintln!("Relayed because: {why}");
        }
    }
}

/// The part of [`Output`] that a task beside the transfer writes to as well: the signalling
/// that goes on after open says `reconnecting` and `reconnected` while the transfer itself
/// may be blocked on the path that went down.
#[derive(Debug, Clone)]
pub struct Shared {
    json: bool,
    /// Show nothing ([`Output::quiet`]).
    quiet: bool,
    /// The progress bar, once the transfer started.
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl Shared {
    /// The bar's slot. A panic while it was held (printing to a closed stderr) leaves it
    /// usable.
    fn bar(&self) -> MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Show `reconnecting` or `reconnected` (what else it is given, as JSON only).
    pub fn event(&self, e: &Event) {
        if self.quiet {
            return;
        }
        if self.json {
            return self.emit(e);
        }
        let bar = self.bar().clone();
        match e {
            Event::Reconnecting(r) => {
                if let Some(b) = &bar {
                    b.set_message("reconnecting…");
                }
                self.note(match r.reason {
                    event::ReconnectReason::LinkLost => {
                        "The connection was lost; waiting for the other peer to come back…"
                    }
                    event::ReconnectReason::PeerLeft => {
                        "The other peer left; waiting for it to come back (the same link or code, run again)…"
                    }
                    event::ReconnectReason::PathDown => {
                        "The connection went quiet; bringing it back…"
                    }
                });
            }
            Event::Reconnected(c) => {
                if let Some(b) = &bar {
                    b.set_message("");
                }
                self.note(&format!("Reconnected: {}", c.path));
            }
            _ => {}
        }
    }

    fn note(&self, msg: &str) {
        if !self.json && !self.quiet {
            // Through the bar when it is drawn, so the line lands above it; a hidden bar (stderr
            // is not a terminal) prints nothing.
            match &*self.bar() {
                Some(b) if !b.is_hidden() => b.println(msg),
                _ => eprintln!("{msg}"),
            }
        }
    }

    fn emit(&self, e: &Event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", e.to_json());
        let _ = out.flush();
    }
}

/// `s` with control and bidirectional-override characters replaced, and capped in length.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(1000)
        .map(|c| {
            let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
            if c.is_control() || bidi { '?' } else { c }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_text_cannot_drive_the_terminal() {
        assert_eq!(super::printable("a\u{1b}[2Jb\u{202e}c\nd"), "a?[2Jb?c?d");
        assert_eq!(super::printable(&"x".repeat(5000)).len(), 1000);
    }
}
