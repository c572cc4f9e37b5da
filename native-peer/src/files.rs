//! The files on disk: what the sender offers, how it reads them, and how the receiver writes
//! them without ever exposing an unverified file under its final name.
//!
//! Receiving invariants:
//! - Bytes go to `NAME.part` next to the final name; only after the protocol verified the
//!   BLAKE3 hash is the file linked to its final name, with a no-replace link so an existing
//!   file is never overwritten, then the `.part` is removed.
//! - Every name comes from [`protocol::names::sanitize`] and is joined below the destination
//!   folder; top-level names that already exist get ` (n)` appended, so nothing the user had
//!   is touched.
//! - On any failure the open `.part` file is deleted.

use anyhow::{Context as _, anyhow, bail};
use bytes::{Bytes, BytesMut};
use protocol::names::{SafePath, numbered};
use protocol::transfer::{DATA_HEADER_LEN, Offer, OfferEntry, ReadRequest};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// One offered entry and where the sender reads it from.
#[derive(Debug, Clone)]
pub struct Source {
    pub entry: OfferEntry,
    pub path: PathBuf,
}

fn utf8_name(p: &Path) -> anyhow::Result<String> {
    let name = p
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", p.display()))?;
    name.to_str().map(str::to_string).ok_or_else(|| {
        anyhow!(
            "{} has a name that is not valid UTF-8; rename it to send it",
            p.display()
        )
    })
}

/// Expand command-line paths into offer entries: files as themselves, directories
/// recursively (empty ones included), in a stable order. Symlinks inside directories are
/// skipped so a link loop cannot recurse forever.
pub fn collect(inputs: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    let mut out = Vec::new();
    let mut tops = std::collections::HashSet::new();
    for input in inputs {
        let meta =
            fs::metadata(input).with_context(|| format!("cannot read {}", input.display()))?;
        let canonical = fs::canonicalize(input)
            .with_context(|| format!("cannot resolve {}", input.display()))?;
        let name = utf8_name(&canonical)?;
        if !tops.insert(name.clone()) {
            bail!("two inputs are both named {name:?}; put them in different folders");
        }
        if meta.is_dir() {
            out.push(Source {
                entry: OfferEntry::dir(&name),
                path: canonical.clone(),
            });
            walk(&canonical, &name, &mut out)?;
        } else if meta.is_file() {
            out.push(Source {
                entry: OfferEntry::file(&name, meta.len()),
                path: canonical,
            });
        } else {
            bail!("{} is neither a file nor a directory", input.display());
        }
    }
    for s in &out {
        protocol::names::sanitize(&s.entry.path)
            .map_err(|e| anyhow!("cannot send {}: {e}", s.path.display()))?;
    }
    Ok(out)
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<Source>) -> anyhow::Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let ft = child.file_type()?;
        if ft.is_symlink() {
            tracing::debug!("skipping a symbolic link inside a folder");
            continue;
        }
        let name = format!("{rel}/{}", utf8_name(&path)?);
        if ft.is_dir() {
            out.push(Source {
                entry: OfferEntry::dir(&name),
                path: path.clone(),
            });
            walk(&path, &name, out)?;
        } else if ft.is_file() {
            let len = child.metadata()?.len();
            out.push(Source {
                entry: OfferEntry::file(&name, len),
                path,
            });
        }
    }
    Ok(())
}

/// Reads the reader thread may have outstanding ahead of the sender (8 × 64 KiB).
pub const READ_AHEAD: usize = 8;

/// A thread reading exactly the byte ranges the sender asks for.
#[derive(Debug)]
pub struct Reader {
    requests: mpsc::Sender<ReadRequest>,
    pub results: mpsc::Receiver<io::Result<BytesMut>>,
    /// Requests sent and not yet answered.
    pub outstanding: usize,
}

impl Reader {
    /// Ask for one more range (at most [`READ_AHEAD`] outstanding). Answers come in order
    /// on `results`: each a buffer with [`DATA_HEADER_LEN`] spare bytes in front of the
    /// payload, which is shorter than asked only where the file ended early on disk.
    pub fn request(&mut self, req: ReadRequest) {
        // Never full (at most READ_AHEAD outstanding); refused only once the thread stopped,
        // which `results` then says by closing.
        let _ = self.requests.try_send(req);
        self.outstanding += 1;
    }

    pub fn has_room(&self) -> bool {
        self.outstanding < READ_AHEAD
    }
}

/// Start the reader thread for the offered `sources` (indexed as in the offer).
pub fn spawn_reader(sources: Vec<Source>) -> Reader {
    let (req_tx, mut req_rx) = mpsc::channel::<ReadRequest>(READ_AHEAD);
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    std::thread::Builder::new()
        .name("punchdrop-reader".into())
        .spawn(move || {
            let mut open: Option<(u32, File)> = None;
            while let Some(req) = req_rx.blocking_recv() {
                let result = read_range(&sources, &mut open, req);
                let failed = result.is_err();
                if tx.blocking_send(result).is_err() || failed {
                    return;
                }
            }
        })
        .expect("spawning a thread");
    Reader {
        requests: req_tx,
        results: rx,
        outstanding: 0,
    }
}

/// The bytes of `req`, read with `pread` from the file it names (kept open between calls).
fn read_range(
    sources: &[Source],
    open: &mut Option<(u32, File)>,
    req: ReadRequest,
) -> io::Result<BytesMut> {
    use std::os::unix::fs::FileExt as _;
    let src = sources
        .get(req.index as usize)
        .ok_or_else(|| io::Error::other("a read outside the offer"))?;
    if open.as_ref().is_none_or(|(i, _)| *i != req.index) {
        let f = File::open(&src.path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", src.path.display()))
        })?;
        *open = Some((req.index, f));
    }
    let (_, file) = open.as_ref().expect("opened above");
    let mut buf = BytesMut::zeroed(DATA_HEADER_LEN + req.len);
    let mut got = 0;
    while got < req.len {
        match file.read_at(&mut buf[DATA_HEADER_LEN + got..], req.offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(DATA_HEADER_LEN + got);
    Ok(buf)
}

/// Where each offered entry lands below the destination folder.
#[derive(Debug)]
pub struct Plan {
    /// Offer index → final path.
    pub targets: HashMap<u32, PathBuf>,
}

/// Pick final paths for an offer: existing top-level names get ` (n)`; create directories.
pub fn plan(dir: &Path, offer: &Offer) -> anyhow::Result<Plan> {
    let mut tops: HashMap<String, String> = HashMap::new();
    let mut targets = HashMap::new();
    for (i, (safe, entry)) in offer.entries.iter().enumerate() {
        let top = safe.top().to_string();
        let mapped = match tops.get(&top) {
            Some(m) => m.clone(),
            None => {
                let m = free_name(dir, &top);
                tops.insert(top.clone(), m.clone());
                m
            }
        };
        let path = join(dir, safe, &mapped);
        if entry.dir {
            fs::create_dir_all(&path).context("cannot create a folder in the destination")?;
        } else if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).context("cannot create a folder in the destination")?;
        }
        targets.insert(i as u32, path);
    }
    Ok(Plan { targets })
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn free_name(dir: &Path, top: &str) -> String {
    let taken = |n: &str| exists(&dir.join(n)) || exists(&dir.join(format!("{n}.part")));
    if !taken(top) {
        return top.to_string();
    }
    (1..)
        .map(|n| numbered(top, n))
        .find(|n| !taken(n))
        .expect("some number is free")
}

fn join(dir: &Path, safe: &SafePath, mapped_top: &str) -> PathBuf {
    let mut p = dir.join(mapped_top);
    for c in safe.components().skip(1) {
        p.push(c);
    }
    p
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .expect("targets have names")
        .to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

/// Commands for the writer thread.
#[derive(Debug)]
pub enum WriteCmd {
    Start {
        target: PathBuf,
    },
    Data(Bytes),
    /// Verified: move into place.
    Finish {
        index: u32,
    },
}

/// What the writer thread reports.
#[derive(Debug)]
pub enum WriteResult {
    Saved { index: u32, path: PathBuf },
    Failed(io::Error),
}

/// A blocking writer thread: file I/O must not stall the network loop.
pub fn spawn_writer() -> (mpsc::Sender<WriteCmd>, mpsc::UnboundedReceiver<WriteResult>) {
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<WriteCmd>(64);
    let (res_tx, res_rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("punchdrop-writer".into())
        .spawn(move || {
            let mut current: Option<(File, PathBuf, PathBuf)> = None;
            let result = (|| -> io::Result<()> {
                while let Some(cmd) = cmd_rx.blocking_recv() {
                    match cmd {
                        WriteCmd::Start { target } => {
                            let part = part_path(&target);
                            let f = fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .open(&part)?;
                            current = Some((f, part, target));
                        }
                        WriteCmd::Data(bytes) => {
                            let (f, _, _) = current
                                .as_mut()
                                .ok_or_else(|| io::Error::other("data before start"))?;
                            f.write_all(&bytes)?;
                        }
                        WriteCmd::Finish { index } => {
                            let (f, part, target) = current
                                .take()
                                .ok_or_else(|| io::Error::other("finish before start"))?;
                            f.sync_all()?;
                            drop(f);
                            let path = place(&part, &target).inspect_err(|_| {
                                let _ = fs::remove_file(&part);
                            })?;
                            if res_tx.send(WriteResult::Saved { index, path }).is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
                Ok(())
            })();
            // Whatever ended the loop (error, or the sender side dropped mid-file), never leave
            // a half-written file behind.
            if let Some((f, part, _)) = current.take() {
                drop(f);
                let _ = fs::remove_file(&part);
            }
            if let Err(e) = result {
                let _ = res_tx.send(WriteResult::Failed(e));
            }
        })
        .expect("spawning a thread");
    (cmd_tx, res_rx)
}

/// Give the verified `.part` its final name without replacing anything: a hard link fails if
/// the name exists. Filesystems without hard links fall back to a checked rename.
fn place(part: &Path, target: &Path) -> io::Result<PathBuf> {
    let mut candidate = target.to_path_buf();
    for n in 1..=1000u32 {
        match fs::hard_link(part, &candidate) {
            Ok(()) => {
                fs::remove_file(part)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let name = target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("file");
                candidate = target.with_file_name(numbered(name, n));
            }
            Err(_) if !exists(&candidate) => {
                fs::rename(part, &candidate)?;
                return Ok(candidate);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free name for a received file",
    ))
}

/// Is this I/O error a full disk?
pub fn is_disk_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::names::sanitize;

    fn offer(entries: Vec<OfferEntry>) -> Offer {
        let total_bytes = entries.iter().map(|e| e.size).sum();
        Offer {
            entries: entries
                .into_iter()
                .map(|e| (sanitize(&e.path).unwrap(), e))
                .collect(),
            total_bytes,
        }
    }

    #[test]
    fn existing_names_are_never_reused() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.txt"), "old").unwrap();
        fs::create_dir(d.path().join("photos")).unwrap();
        let p = plan(
            d.path(),
            &offer(vec![
                OfferEntry::file("a.txt", 1),
                OfferEntry::dir("photos"),
                OfferEntry::file("photos/x", 1),
            ]),
        )
        .unwrap();
        assert_eq!(p.targets[&0], d.path().join("a (1).txt"));
        assert_eq!(p.targets[&2], d.path().join("photos (1)/x"));
        assert!(d.path().join("photos (1)").is_dir());
    }

    #[test]
    fn writer_places_verified_files_and_removes_parts_on_abort() {
        let d = tempfile::tempdir().unwrap();
        let (tx, mut rx) = spawn_writer();
        let target = d.path().join("f.bin");
        fs::write(&target, "someone else's").unwrap();
        tx.blocking_send(WriteCmd::Start {
            target: target.clone(),
        })
        .unwrap();
        tx.blocking_send(WriteCmd::Data(Bytes::from_static(b"hello")))
            .unwrap();
        tx.blocking_send(WriteCmd::Finish { index: 0 }).unwrap();
        match rx.blocking_recv().unwrap() {
            WriteResult::Saved { index: 0, path } => {
                assert_eq!(
                    path,
                    d.path().join("f (1).bin"),
                    "a racing file is not overwritten"
                );
                assert_eq!(fs::read(&path).unwrap(), b"hello");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&target).unwrap(), b"someone else's");
        tx.blocking_send(WriteCmd::Start {
            target: d.path().join("g"),
        })
        .unwrap();
        tx.blocking_send(WriteCmd::Data(Bytes::from_static(b"half")))
            .unwrap();
        drop(tx);
        assert!(rx.blocking_recv().is_none());
        let left: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "only the two complete files remain: {left:?}"
        );
    }

    #[test]
    fn collect_walks_directories_in_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("stuff");
        fs::create_dir_all(root.join("b/empty")).unwrap();
        fs::write(root.join("b/2.txt"), "22").unwrap();
        fs::write(root.join("a.txt"), "1").unwrap();
        let got: Vec<_> = collect(&[root])
            .unwrap()
            .into_iter()
            .map(|s| s.entry)
            .collect();
        assert_eq!(
            got,
            vec![
                OfferEntry::dir("stuff"),
                OfferEntry::file("stuff/a.txt", 1),
                OfferEntry::dir("stuff/b"),
                OfferEntry::file("stuff/b/2.txt", 2),
                OfferEntry::dir("stuff/b/empty"),
            ]
        );
    }
}
