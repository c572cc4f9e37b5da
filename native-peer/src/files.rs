//! The files on disk: what the sender offers, how it reads them, and how the receiver writes
//! them without ever exposing an unverified file under its final name.
//!
//! Receiving invariants:
//! - Bytes go to `NAME.part` next to the final name; only after the protocol verified the
//!   BLAKE3 hash is the file linked to its final name, with a no-replace link (or, where the
//!   filesystem has no hard links, a no-replace rename) so an existing file is never
//!   overwritten, then the `.part` is removed.
//! - Every name comes from [`protocol::names::sanitize`] and is resolved inside the
//!   destination folder only ([`cap_std::fs::Dir`]: a symbolic link someone planted there
//!   cannot lead a write outside it); top-level names that already exist get ` (n)`, so
//!   nothing the user had is touched.
//! - Nothing is created before the offer is accepted ([`plan`] only names the targets).
//! - When the connection goes away mid-file, the `.part` stays: receiving the same files into
//!   the same folder again continues it (the sender compares the beginnings' BLAKE3 first, so
//!   the part's name is only a hint; a part that is not the same file's beginning starts
//!   over). Any other failure (a cancel, a failed check, a write error) deletes it
//!   ([`WriteCmd::Discard`]).

use anyhow::{Context as _, anyhow, bail};
use bytes::{Bytes, BytesMut};
use cap_std::fs::Dir;
use protocol::names::{SafePath, numbered};
use protocol::transfer::{DATA_HEADER_LEN, Offer, OfferEntry, ReadRequest};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// The top-level names that transfers into one folder at the same time (an inbox's drops)
/// have taken: a name one of them writes is never another's to write or to continue (its
/// `.part` is not "held" by the other, nor hashed for it). Shared by their [`Destination`]s.
#[derive(Debug, Default, Clone)]
pub struct Claims(Arc<Mutex<HashSet<String>>>);

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One transfer's claims, given back when its last [`Destination`] handle goes.
#[derive(Debug)]
struct Claimed {
    all: Claims,
    mine: Mutex<HashSet<String>>,
}

impl Claimed {
    fn mine(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.mine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let mine = std::mem::take(&mut *self.mine());
        self.all.lock().retain(|n| !mine.contains(n));
    }
}

/// The destination folder, as a handle every write is resolved under.
#[derive(Debug)]
pub struct Destination {
    dir: Dir,
    /// The folder as the user named it, for messages.
    pub path: PathBuf,
    /// Free space an accepted offer must leave on the disk (an inbox's `--keep-free`).
    pub keep_free: u64,
    claimed: Arc<Claimed>,
}

impl Destination {
    /// Open (creating it if missing) the folder received files go to.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_sharing(path, Claims::default())
    }

    /// [`Destination::open`] for one of several transfers into the folder at once, which
    /// share `claims`.
    pub fn open_sharing(path: &Path, claims: Claims) -> anyhow::Result<Self> {
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create {} to receive into", path.display()))?;
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())
            .with_context(|| format!("cannot use {} as the destination", path.display()))?;
        Ok(Self {
            dir,
            path: path.to_path_buf(),
            keep_free: 0,
            claimed: Arc::new(Claimed {
                all: claims,
                mine: Mutex::default(),
            }),
        })
    }

    /// Another transfer into this folder has taken top-level name `top`.
    fn claimed_by_another(&self, top: &str) -> bool {
        self.claimed.all.lock().contains(top) && !self.claimed.mine().contains(top)
    }

    /// Take top-level name `top` for this transfer.
    fn claim(&self, top: &str) {
        self.claimed.mine().insert(top.to_string());
        self.claimed.all.lock().insert(top.to_string());
    }

    fn exists(&self, rel: &Path) -> bool {
        self.dir.symlink_metadata(rel).is_ok()
    }

    /// `NAME.part` is a regular file and `NAME` itself is free: a part to continue.
    fn held_part(&self, name: &Path) -> bool {
        !self.exists(name) && self.part_len(name).is_some()
    }

    /// `rel` is a folder (not a link to one).
    fn is_dir(&self, rel: &Path) -> bool {
        self.dir.symlink_metadata(rel).is_ok_and(|m| m.is_dir())
    }

    /// The length of the regular file `rel`.
    fn file_len(&self, rel: &Path) -> Option<u64> {
        let meta = self.dir.symlink_metadata(rel).ok()?;
        meta.is_file().then_some(meta.len())
    }

    /// The first `len` bytes of the `.part` of `target` (a path relative to the
    /// destination) hashed; fewer if it cannot be read so far.
    pub fn hash_part(&self, target: &Path, len: u64) -> blake3::Hasher {
        hash_first(self.dir.open(part_path(target)).map(|f| f.into_std()), len)
    }

    /// The BLAKE3 state of the first `len` bytes of the saved file `target`.
    pub fn hash_saved(&self, target: &Path, len: u64) -> blake3::Hasher {
        hash_first(self.dir.open(target).map(|f| f.into_std()), len)
    }

    /// The length of `target`'s `.part`, if there is one.
    pub fn part_len(&self, target: &Path) -> Option<u64> {
        let meta = self.dir.symlink_metadata(part_path(target)).ok()?;
        meta.is_file().then_some(meta.len())
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            dir: self.dir.try_clone()?,
            path: self.path.clone(),
            keep_free: self.keep_free,
            claimed: self.claimed.clone(),
        })
    }

    /// `top`, or `top (n)`: the first name free in folder `under`.
    fn free_name(&self, under: &Path, top: &str) -> String {
        let taken = |n: &str| {
            let at = under.join(n);
            self.exists(&at)
                || self.exists(&part_path(&at))
                || self.claimed_by_another(&at.to_string_lossy())
        };
        if !taken(top) {
            return top.to_string();
        }
        (1..)
            .map(|n| numbered(top, n))
            .find(|n| !taken(n))
            .expect("some number is free")
    }
}

/// Where each offered entry lands, relative to the destination folder.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Offer index → final path, relative to the destination.
    pub targets: HashMap<u32, PathBuf>,
    /// Files of a folder continued in place whose final name is there already at the offered
    /// size: saved by the interrupted run, to claim whole (the sender's BLAKE3 decides).
    pub found: HashSet<u32>,
    /// Folders to create once the offer is accepted (offered ones and files' parents).
    dirs: Vec<PathBuf>,
}

/// Name the final paths of an offer: existing top-level names get ` (n)`. What an
/// interrupted run left keeps its name, to be continued: a top-level file whose `.part` is
/// there (and not its final name), and a top-level folder holding the `.part` of one of the
/// offered files in it (its files saved already are then [`Plan::found`]). Creates nothing.
/// All of this in the folder `under` inside the destination (an inbox's `--layout`; empty:
/// the destination itself): names are free, held and claimed there.
pub fn plan_under(dest: &Destination, offer: &Offer, under: &Path) -> Plan {
    let at = |p: &Path| under.join(p);
    let claim_key = |top: &str| at(Path::new(top)).to_string_lossy().into_owned();
    let interrupted: HashSet<&str> = offer
        .entries
        .iter()
        .filter(|(safe, e)| !e.dir && safe.components().count() > 1)
        .filter(|(safe, _)| {
            let top = safe.top();
            !dest.claimed_by_another(&claim_key(top))
                && dest.is_dir(&at(Path::new(top)))
                && dest.held_part(&at(&join(safe, top)))
        })
        .map(|(safe, _)| safe.top())
        .collect();
    let mut tops: HashMap<String, String> = HashMap::new();
    let mut targets = HashMap::new();
    let mut found = HashSet::new();
    let mut dirs = Vec::new();
    for (i, (safe, entry)) in offer.entries.iter().enumerate() {
        let top = safe.top().to_string();
        let single_file = !entry.dir && safe.components().count() == 1;
        let continued = interrupted.contains(top.as_str());
        let held = single_file
            && !dest.claimed_by_another(&claim_key(&top))
            && dest.held_part(&at(Path::new(&top)));
        if !tops.contains_key(&top) && (continued || held) {
            tops.insert(top.clone(), top.clone());
        }
        let mapped = tops
            .entry(top.clone())
            .or_insert_with(|| dest.free_name(under, &top))
            .clone();
        dest.claim(&claim_key(&mapped));
        let path = at(&join(safe, &mapped));
        if continued && !entry.dir && dest.file_len(&path) == Some(entry.size) {
            found.insert(i as u32);
        }
        if entry.dir {
            dirs.push(path.clone());
        } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            dirs.push(parent.to_path_buf());
        }
        targets.insert(i as u32, path);
    }
    dirs.sort();
    dirs.dedup();
    Plan {
        targets,
        found,
        dirs,
    }
}

impl Plan {
    /// Create the offer's folders (after it was accepted), inside the destination only.
    pub fn create_dirs(&self, dest: &Destination) -> anyhow::Result<()> {
        for d in &self.dirs {
            dest.dir
                .create_dir_all(d)
                .context("cannot create a folder in the destination")?;
        }
        Ok(())
    }
}

fn join(safe: &SafePath, mapped_top: &str) -> PathBuf {
    let mut p = PathBuf::from(mapped_top);
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

/// The first `len` bytes of the file at `path` hashed, for a receiver's claim to hold them.
/// Fewer if the file is shorter now or cannot be read: the beginnings then differ and the
/// file is sent again.
pub fn hash_prefix(path: &Path, len: u64) -> blake3::Hasher {
    hash_first(File::open(path), len)
}

/// The first `len` bytes of an opened file hashed; as far as it could be read.
fn hash_first(file: io::Result<File>, len: u64) -> blake3::Hasher {
    use std::io::Read as _;
    let mut hasher = blake3::Hasher::new();
    if let Ok(f) = file {
        let _ = hasher.update_reader(f.take(len));
    }
    hasher
}

/// Commands for the writer thread.
#[derive(Debug)]
pub enum WriteCmd {
    /// Bytes of a file follow: into a new `TARGET.part` (`keep: None`), or into the one held
    /// from an interrupted transfer, cut to its first `keep` bytes (0: it starts over).
    Start {
        target: PathBuf,
        keep: Option<u64>,
    },
    Data(Bytes),
    /// Verified: move into place.
    Finish {
        index: u32,
    },
    /// The transfer failed for good: delete the open `.part` (without this, a part the
    /// connection left half-written stays to be continued).
    Discard,
}

/// What the writer thread reports.
#[derive(Debug)]
pub enum WriteResult {
    Saved { index: u32, path: PathBuf },
    Failed(io::Error),
}

/// A blocking writer thread: file I/O must not stall the network loop. Paths are relative to
/// `dest`; what it reports saved is the full path.
pub fn spawn_writer(
    dest: &Destination,
) -> io::Result<(mpsc::Sender<WriteCmd>, mpsc::UnboundedReceiver<WriteResult>)> {
    let dir = dest.dir.try_clone()?;
    let root = dest.path.clone();
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<WriteCmd>(64);
    let (res_tx, res_rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("punchdrop-writer".into())
        .spawn(move || {
            let mut current: Option<(cap_std::fs::File, PathBuf, PathBuf)> = None;
            let result = (|| -> io::Result<()> {
                while let Some(cmd) = cmd_rx.blocking_recv() {
                    match cmd {
                        WriteCmd::Start { target, keep } => {
                            let part = part_path(&target);
                            let f = open_part(&dir, &part, keep)?;
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
                            let placed = place(&dir, &part, &target).inspect_err(|_| {
                                let _ = dir.remove_file(&part);
                            })?;
                            let path = root.join(placed);
                            if res_tx.send(WriteResult::Saved { index, path }).is_err() {
                                return Ok(());
                            }
                        }
                        WriteCmd::Discard => {
                            if let Some((f, part, _)) = current.take() {
                                drop(f);
                                dir.remove_file(&part)?;
                            }
                        }
                    }
                }
                Ok(())
            })();
            // A write that failed leaves nothing behind; a connection that went away mid-file
            // leaves the part to be continued (the commands just stopped).
            if let Err(e) = result {
                if let Some((f, part, _)) = current.take() {
                    drop(f);
                    let _ = dir.remove_file(&part);
                }
                let _ = res_tx.send(WriteResult::Failed(e));
            }
        })
        .expect("spawning a thread");
    Ok((cmd_tx, res_rx))
}

/// The `.part` to write: a new one, or the one held, cut to `keep` bytes and written after
/// them.
fn open_part(dir: &Dir, part: &Path, keep: Option<u64>) -> io::Result<cap_std::fs::File> {
    use std::io::{Seek as _, SeekFrom};
    let mut options = cap_std::fs::OpenOptions::new();
    let Some(keep) = keep else {
        options.write(true).create_new(true);
        return dir.open_with(part, &options);
    };
    options.write(true);
    let mut f = dir.open_with(part, &options)?;
    if f.metadata()?.len() < keep {
        return Err(io::Error::other(
            "the part kept from before is shorter than said",
        ));
    }
    f.set_len(keep)?;
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

/// Give the verified `.part` its final name without replacing anything: a hard link fails if
/// the name exists; where the filesystem has none (FAT, exFAT on a NAS), a rename that refuses
/// to replace (`renameat2(RENAME_NOREPLACE)`). A taken name gets ` (n)`.
fn place(dir: &Dir, part: &Path, target: &Path) -> io::Result<PathBuf> {
    let mut candidate = target.to_path_buf();
    for n in 1..=1000u32 {
        let linked = match dir.hard_link(part, dir, &candidate) {
            Ok(()) => dir.remove_file(part).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(_) => rename_noreplace(dir, part, &candidate),
        };
        if linked? {
            return Ok(candidate);
        }
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file");
        candidate = target.with_file_name(numbered(name, n));
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free name for a received file",
    ))
}

/// `Ok(false)` if `to` exists (nothing happened).
fn rename_noreplace(dir: &Dir, from: &Path, to: &Path) -> io::Result<bool> {
    use rustix::fs::{RenameFlags, renameat_with};
    match renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
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

    fn plan(dest: &Destination, offer: &Offer) -> Plan {
        plan_under(dest, offer, Path::new(""))
    }

    /// An inbox's layout: names are free and claimed in the drop's folder, not beside it.
    #[test]
    fn a_plan_under_a_folder_names_files_there() {
        let d = tempfile::tempdir().unwrap();
        let claims = Claims::default();
        fs::write(d.path().join("x.bin"), "taken at the top").unwrap();
        let o = offer(vec![
            OfferEntry::file("x.bin", 10),
            OfferEntry::file("f/y", 1),
        ]);
        let first = Destination::open_sharing(d.path(), claims.clone()).unwrap();
        let p = plan_under(&first, &o, Path::new("2026-12-06"));
        assert_eq!(p.targets[&0], Path::new("2026-12-06/x.bin"));
        assert_eq!(p.targets[&1], Path::new("2026-12-06/f/y"));
        p.create_dirs(&first).unwrap();
        assert!(d.path().join("2026-12-06/f").is_dir());
        // Another drop into the same folder at once gets its own names; one elsewhere not.
        let second = Destination::open_sharing(d.path(), claims.clone()).unwrap();
        let p = plan_under(&second, &o, Path::new("2026-12-06"));
        assert_eq!(p.targets[&0], Path::new("2026-12-06/x (1).bin"));
        let third = Destination::open_sharing(d.path(), claims).unwrap();
        let p = plan_under(&third, &o, Path::new("phone"));
        assert_eq!(p.targets[&0], Path::new("phone/x.bin"));
    }

    /// Two drops into an inbox at once offering the same name: the second never takes (nor
    /// continues, nor hashes) the first one's part, and gets a name of its own; once the
    /// first is over, its names are free to be continued again.
    #[test]
    fn transfers_at_once_into_one_folder_never_share_a_name() {
        let d = tempfile::tempdir().unwrap();
        let claims = Claims::default();
        let o = offer(vec![OfferEntry::file("x.bin", 10)]);
        let first = Destination::open_sharing(d.path(), claims.clone()).unwrap();
        assert_eq!(plan(&first, &o).targets[&0], Path::new("x.bin"));
        fs::write(d.path().join("x.bin.part"), "12345").unwrap();
        let second = Destination::open_sharing(d.path(), claims.clone()).unwrap();
        assert_eq!(plan(&second, &o).targets[&0], Path::new("x (1).bin"));
        // The first planning again (a reconnection) keeps its own name and part.
        assert_eq!(plan(&first, &o).targets[&0], Path::new("x.bin"));
        drop(first);
        drop(second);
        let later = Destination::open_sharing(d.path(), claims).unwrap();
        assert_eq!(
            plan(&later, &o).targets[&0],
            Path::new("x.bin"),
            "a part to continue"
        );
    }

    #[test]
    fn existing_names_are_never_reused_and_nothing_is_created_before_accept() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.txt"), "old").unwrap();
        fs::create_dir(d.path().join("photos")).unwrap();
        let dest = Destination::open(d.path()).unwrap();
        let p = plan(
            &dest,
            &offer(vec![
                OfferEntry::file("a.txt", 1),
                OfferEntry::dir("photos"),
                OfferEntry::file("photos/x", 1),
                OfferEntry::file("new/deep/y", 1),
            ]),
        );
        assert_eq!(p.targets[&0], Path::new("a (1).txt"));
        assert_eq!(p.targets[&2], Path::new("photos (1)/x"));
        assert!(
            !d.path().join("photos (1)").exists(),
            "planned, not created"
        );
        assert!(!d.path().join("new").exists());
        p.create_dirs(&dest).unwrap();
        assert!(d.path().join("photos (1)").is_dir());
        assert!(d.path().join("new/deep").is_dir());
    }

    #[test]
    fn a_planted_symlink_cannot_lead_writes_outside() {
        let outside = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        // Someone with access to the destination plants a link to elsewhere under the name
        // an offer will use below a fresh top-level folder's numbered twin... or right there.
        std::os::unix::fs::symlink(outside.path(), d.path().join("evil")).unwrap();
        let dest = Destination::open(d.path()).unwrap();
        // The planted name is taken, so the offer's `evil/` becomes `evil (1)/`.
        let p = plan(&dest, &offer(vec![OfferEntry::file("evil/x", 1)]));
        assert_eq!(p.targets[&0], Path::new("evil (1)/x"));
        // And a write that would pass through the link itself is refused.
        let (tx, mut rx) = spawn_writer(&dest).unwrap();
        tx.blocking_send(WriteCmd::Start {
            keep: None,
            target: PathBuf::from("evil/x"),
        })
        .unwrap();
        assert!(matches!(rx.blocking_recv(), Some(WriteResult::Failed(_))));
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(dest.dir.create_dir_all("evil/sub").is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_resumed_file_keeps_exactly_the_held_bytes_then_appends() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        // Held from before: 6 good bytes and 3 the receiver never verified past.
        fs::write(d.path().join("r.bin.part"), b"hello,???").unwrap();
        let (tx, mut rx) = spawn_writer(&dest).unwrap();
        tx.blocking_send(WriteCmd::Start {
            keep: Some(6),
            target: PathBuf::from("r.bin"),
        })
        .unwrap();
        tx.blocking_send(WriteCmd::Data(Bytes::from_static(b" world")))
            .unwrap();
        tx.blocking_send(WriteCmd::Finish { index: 0 }).unwrap();
        match rx.blocking_recv().unwrap() {
            WriteResult::Saved { index: 0, path } => {
                assert_eq!(fs::read(&path).unwrap(), b"hello, world");
            }
            other => panic!("{other:?}"),
        }
        assert!(!d.path().join("r.bin.part").exists());
        // A part shorter than what the receiver said it holds is an error, not a gap.
        fs::write(d.path().join("s.bin.part"), b"ab").unwrap();
        tx.blocking_send(WriteCmd::Start {
            keep: Some(5),
            target: PathBuf::from("s.bin"),
        })
        .unwrap();
        assert!(matches!(rx.blocking_recv(), Some(WriteResult::Failed(_))));
    }

    #[test]
    fn hash_prefix_hashes_at_most_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, b"0123456789").unwrap();
        let h = hash_prefix(&p, 4);
        assert_eq!((h.count(), h.finalize()), (4, blake3::hash(b"0123")));
        assert_eq!(hash_prefix(&p, 50).count(), 10);
        assert_eq!(hash_prefix(&d.path().join("none"), 5).count(), 0);
    }

    #[test]
    fn writer_places_verified_files_and_removes_parts_on_abort() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        let (tx, mut rx) = spawn_writer(&dest).unwrap();
        let target = PathBuf::from("f.bin");
        fs::write(d.path().join(&target), "someone else's").unwrap();
        tx.blocking_send(WriteCmd::Start {
            keep: None,
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
        assert_eq!(fs::read(d.path().join(&target)).unwrap(), b"someone else's");
        tx.blocking_send(WriteCmd::Start {
            keep: None,
            target: PathBuf::from("g"),
        })
        .unwrap();
        tx.blocking_send(WriteCmd::Data(Bytes::from_static(b"half")))
            .unwrap();
        tx.blocking_send(WriteCmd::Discard).unwrap();
        // After a discard, a connection going away leaves a new part to be continued.
        tx.blocking_send(WriteCmd::Start {
            keep: None,
            target: PathBuf::from("h"),
        })
        .unwrap();
        tx.blocking_send(WriteCmd::Data(Bytes::from_static(b"hal")))
            .unwrap();
        drop(tx);
        assert!(rx.blocking_recv().is_none());
        let mut left: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["f (1).bin", "f.bin", "h.part"],
            "the complete files, and only the part not discarded"
        );
        assert_eq!(fs::read(d.path().join("h.part")).unwrap(), b"hal");
    }

    #[test]
    fn a_part_left_from_before_keeps_its_name_in_the_plan() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        fs::write(d.path().join("big.bin.part"), [7u8; 10]).unwrap();
        fs::write(d.path().join("done.txt"), "x").unwrap();
        fs::write(d.path().join("done.txt.part"), "y").unwrap();
        fs::create_dir(d.path().join("dir.part")).unwrap();
        let o = offer(vec![
            OfferEntry::file("big.bin", 100),
            OfferEntry::file("done.txt", 1),
            OfferEntry::file("dir", 1),
            OfferEntry::file("new", 1),
        ]);
        let p = plan(&dest, &o);
        assert_eq!(p.targets[&0], PathBuf::from("big.bin"));
        // A final name that exists is never reused, whatever part sits next to it.
        assert_eq!(p.targets[&1], PathBuf::from("done (1).txt"));
        assert_eq!(p.targets[&2], PathBuf::from("dir (1)"));
        // What is held of it, for `hash_held` to offer.
        assert_eq!(dest.part_len(&p.targets[&0]), Some(10));
        let h = dest.hash_part(Path::new("big.bin"), 4);
        assert_eq!(h.finalize(), blake3::hash(&[7u8; 4]));
    }

    #[test]
    fn a_folder_holding_a_part_of_the_offer_is_continued_in_place() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        for dir in ["album", "other"] {
            fs::create_dir(d.path().join(dir)).unwrap();
        }
        fs::write(d.path().join("album/a.jpg"), [1u8; 5]).unwrap();
        fs::write(d.path().join("album/b.jpg"), [2u8; 3]).unwrap();
        fs::write(d.path().join("album/c.mov.part"), [3u8; 4]).unwrap();
        // Same names, no part of the offer in it: a folder that merely shares a name.
        fs::write(d.path().join("other/x"), [4u8; 2]).unwrap();
        let o = offer(vec![
            OfferEntry::dir("album"),
            OfferEntry::file("album/a.jpg", 5),
            OfferEntry::file("album/b.jpg", 9),
            OfferEntry::file("album/c.mov", 10),
            OfferEntry::dir("other"),
            OfferEntry::file("other/x", 2),
        ]);
        let p = plan(&dest, &o);
        assert_eq!(p.targets[&1], PathBuf::from("album/a.jpg"));
        assert_eq!(p.targets[&3], PathBuf::from("album/c.mov"));
        assert_eq!(p.targets[&5], PathBuf::from("other (1)/x"));
        // Only a file there at the offered size is a candidate to claim whole; b.jpg, of
        // another size, is received beside it (the writer never replaces).
        assert_eq!(p.found, HashSet::from([1]));
    }

    #[test]
    fn without_hard_links_a_rename_still_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        fs::write(d.path().join("a.part"), "new").unwrap();
        fs::write(d.path().join("a"), "old").unwrap();
        assert!(!rename_noreplace(&dest.dir, Path::new("a.part"), Path::new("a")).unwrap());
        assert_eq!(fs::read(d.path().join("a")).unwrap(), b"old");
        assert!(rename_noreplace(&dest.dir, Path::new("a.part"), Path::new("a (1)")).unwrap());
        assert_eq!(fs::read(d.path().join("a (1)")).unwrap(), b"new");
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
