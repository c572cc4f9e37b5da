//! What the user sees: progress bars and plain lines for people, or newline-delimited JSON
//! events (`--json`) for programs. Bars appear only when stdout is a terminal.
//!
//! JSON events: `ready {link, code}`,
//! `connected {path, local, remote, protocol, reason, portmap, ms_since_room}`,
//! `offer {files, bytes}`, `first_byte {ms_since_room}`, `progress {bytes, total}`,
//! `done {files, bytes, seconds, path, candidates, protocol, reason}`, `error {message}`.
//! `path` is `direct`, `mapped`, `forwarded` or `relay`; `reason` says why a relay was needed.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use crate::rtc::PathInfo;

#[derive(Debug)]
pub struct Output {
    json: bool,
    tty: bool,
    bar: Option<ProgressBar>,
    last_progress: Option<Instant>,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            tty: std::io::stdout().is_terminal(),
            bar: None,
            last_progress: None,
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    fn emit(&self, v: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// A human line on stderr (kept off stdout so links stay easy to pipe).
    pub fn note(&self, msg: &str) {
        if !self.json {
            match &self.bar {
                Some(b) => b.println(msg),
                None => eprintln!("{msg}"),
            }
        }
    }

    pub fn ready(&self, link: &str, code: &str, role_hint: &str) {
        if self.json {
            self.emit(json!({"event": "ready", "link": link, "code": code}));
            return;
        }
        println!("{role_hint}\n\n  {link}\n\nor type the code:  {code}\n");
        if self.tty
            && let Ok(qr) = qrcode::QrCode::new(link.as_bytes())
        {
            let art = qr
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            println!("{art}\n");
        }
        eprintln!("Waiting for the other peer…");
    }

    pub fn connected(&self, path: &PathInfo, since_room: Duration) {
        if self.json {
            self.emit(json!({
                "event": "connected", "path": path.kind, "local": path.local, "remote": path.remote,
                "protocol": path.protocol, "reason": path.reason, "portmap": path.portmap,
                "ms_since_room": since_room.as_secs_f64() * 1e3,
            }));
        } else {
            eprintln!("Connected: {path}");
        }
    }

    pub fn offer(&self, files: usize, bytes: u64) {
        if self.json {
            self.emit(json!({"event": "offer", "files": files, "bytes": bytes}));
        } else {
            eprintln!("{files} file(s), {}", indicatif::HumanBytes(bytes));
        }
    }

    pub fn first_byte(&self, since_room: Duration) {
        if self.json {
            self.emit(
                json!({"event": "first_byte", "ms_since_room": since_room.as_secs_f64() * 1e3}),
            );
        }
    }

    pub fn start(&mut self, total: u64) {
        if self.json {
            return;
        }
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
        self.bar = Some(bar);
    }

    pub fn progress(&mut self, bytes: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_position(bytes);
        }
        if self.json {
            let now = Instant::now();
            if self
                .last_progress
                .is_none_or(|t| now - t >= Duration::from_millis(250))
                || bytes == total
            {
                self.last_progress = Some(now);
                self.emit(json!({"event": "progress", "bytes": bytes, "total": total}));
            }
        }
    }

    pub fn done(&mut self, files: usize, bytes: u64, seconds: f64, path: &PathInfo, what: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.json {
            self.emit(json!({
                "event": "done", "files": files, "bytes": bytes, "seconds": seconds, "path": path.kind,
                "candidates": format!("{}-{}", path.local, path.remote), "protocol": path.protocol,
                "reason": path.reason,
            }));
        } else {
            let rate = if seconds > 0.0 {
                bytes as f64 / seconds
            } else {
                0.0
            };
            eprintln!(
                "{what} {files} file(s), {} in {seconds:.2} s ({}/s) over a {} path",
                indicatif::HumanBytes(bytes),
                indicatif::HumanBytes(rate as u64),
                path.kind
            );
            if let Some(why) = &path.reason {
                eprintln!("Relayed because: {why}");
            }
        }
    }

    pub fn error(&mut self, err: &anyhow::Error) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
        // Error text can quote the other peer (a cancel or decline reason): never let it
        // drive the terminal.
        let message = printable(&format!("{err:#}"));
        if self.json {
            self.emit(json!({"event": "error", "message": message}));
        } else {
            eprintln!("error: {message}");
        }
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
