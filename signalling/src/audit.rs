//! The operator's audit log: one JSON object per line for what the server did for whom —
//! rooms created, joined and ended (with how long they lived), TURN allocations ended (with
//! the bytes they relayed), and refusals by reason.
//!
//! Privacy invariant, as for every log here: no secrets, file names or full addresses. Rooms
//! appear as a hash of their id (the same on every node, so a room can be followed across
//! nodes, and useless for joining it); clients as [`crate::limits::redact_ip`] reduces them.
//!
//! Writing never slows a connection down: lines go through a bounded queue to one writer
//! thread of its own (a stalled disk blocks it, not the runtime); if the disk cannot keep
//! up, lines are dropped and counted (`punchdrop_audit_dropped_total`). SIGHUP reopens the
//! file, for logrotate ([`Audit::reopen`]).
//!
//! Refusals recorded: WebSocket and HTTP connections refused at admission (origin, caps),
//! rooms refused by the room rate limit, by a full server or by a drain. Not each message
//! over the message rate: a flood would become a flood of lines.

use serde::Serialize;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Lines waiting for the writer at most.
const QUEUE: usize = 4096;

/// Why a request was refused, as the audit log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refused {
    ForeignOrigin,
    TooManyFromClient,
    ServerFull,
    RateLimited,
    Draining,
}

/// How a room ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomEnd {
    /// A peer left (closed its connection, or was silent) and the room was not held.
    Left,
    /// A peer aborted it (a wrong secret, a cancel).
    Aborted,
    /// Nobody joined in time.
    Expired,
    /// Joined, and its lifetime is over (or its creator stayed away too long).
    Over,
    /// The server stopped with the room open.
    Shutdown,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RoomCreated {
        room: String,
        client: String,
        code: bool,
        held: bool,
        inbox: bool,
    },
    RoomJoined {
        room: String,
        /// Since the room was created.
        waited_secs: f64,
        rejoin: bool,
    },
    RoomEnded {
        room: String,
        how: RoomEnd,
        joined: bool,
        lived_secs: f64,
    },
    TurnAllocation {
        client: String,
        transport: &'static str,
        bytes: u64,
        lived_secs: f64,
        ended: &'static str,
    },
    Refused {
        reason: Refused,
        client: String,
    },
}

/// The audit log's handle, cheap to clone; [`Audit::off`] records nothing.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    tx: Option<mpsc::Sender<Item>>,
    dropped: Arc<AtomicU64>,
}

/// What the writer is given, in order.
#[derive(Debug)]
enum Item {
    Line(String),
    /// Open the file again under its name (it was moved away).
    Reopen,
    /// Answer once every line before this one is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Audit {
    /// Records nothing.
    pub fn off() -> Self {
        Self::default()
    }

    /// Append lines to `path` (created if missing, mode 0600).
    pub fn to_file(path: PathBuf) -> std::io::Result<Self> {
        let mut file = open(&path)?;
        let (tx, mut rx) = mpsc::channel::<Item>(QUEUE);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Some(item) = rx.blocking_recv() {
                    match item {
                        Item::Line(line) => {
                            if let Err(e) = file.write_all(line.as_bytes()) {
                                tracing::warn!("cannot write the audit log: {e}");
                            }
                        }
                        Item::Reopen => match open(&path) {
                            Ok(f) => file = f,
                            Err(e) => tracing::warn!("cannot reopen the audit log: {e}"),
                        },
                        Item::Flush(done) => {
                            let _ = file.sync_data();
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    /// Open the file again under its name, after the lines recorded so far (SIGHUP, after
    /// logrotate moved it).
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx
            && tx.try_send(Item::Reopen).is_err()
        {
            tracing::warn!("the audit log is behind: it was not reopened");
        }
    }

    /// Wait until every line recorded so far is written (at shutdown).
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, written) = tokio::sync::oneshot::channel();
        if tx.send(Item::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    pub fn record(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut line = serde_json::json!({ "ts": ts });
        if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
            (line.as_object_mut(), serde_json::to_value(&event))
        {
            obj.extend(fields);
        }
        let mut text = line.to_string();
        text.push('\n');
        if tx.try_send(Item::Line(text)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// A room as the audit log names it: the first 64 bits of SHA-256 of its id, in hex.
pub fn room(id: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(id.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A client as the audit log names it.
pub fn client(ip: IpAddr) -> String {
    crate::limits::redact_ip(ip).to_string()
}

/// Seconds, to the millisecond.
pub fn secs(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_lines() {
        let e = Event::RoomEnded {
            room: room("abcdefghijkmnpqr"),
            how: RoomEnd::Left,
            joined: true,
            lived_secs: 12.5,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            format!(
                r#"{{"event":"room_ended","room":"{}","how":"left","joined":true,"lived_secs":12.5}}"#,
                room("abcdefghijkmnpqr")
            )
        );
        assert_eq!(room("abcdefghijkmnpqr").len(), 16);
        let e = Event::Refused {
            reason: Refused::TooManyFromClient,
            client: client("203.0.113.7".parse().unwrap()),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            text.starts_with(r#"{"event":"refused","reason":"too_many_from_client","client":""#),
            "{text}"
        );
        assert!(!text.contains("203.0.113.7"), "{text}");
    }

    #[tokio::test]
    async fn lines_carry_a_timestamp_and_reach_the_file_and_off_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::to_file(path.clone()).unwrap();
        audit.record(Event::Refused {
            reason: Refused::Draining,
            client: "x".into(),
        });
        audit.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "refused");
        assert!(v["ts"].as_str().unwrap().starts_with("20"), "{text}");
        // logrotate moves the file; SIGHUP reopens it under its name.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        audit.reopen();
        audit.record(Event::Refused {
            reason: Refused::RateLimited,
            client: "y".into(),
        });
        audit.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("rate_limited") && !text.contains("draining"),
            "{text}"
        );
        Audit::off().record(Event::Refused {
            reason: Refused::Draining,
            client: "x".into(),
        });
    }
}
