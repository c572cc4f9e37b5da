//! The inbox's state file: its identity (an Ed25519 key and the drops' secret), the devices
//! paired with it and the pairing codes not yet used.
//!
//! Invariants:
//! - Mode 0600, written whole or not at all (a temporary file renamed over it).
//! - Every change is a read-modify-write under an exclusive lock on `FILE.lock`, so the
//!   running inbox (pairing a device) and `inbox pair` / `revoke` / `rotate` beside it never
//!   lose each other's changes.
//! - A pairing code is kept only as its digest, until used once or expired.
//! - The running inbox reads the file at each drop: a revoked device is refused from the
//!   next drop on, a rotated secret is the one the next drop needs.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use protocol::device::PairingCode;
use protocol::inbox::{InboxId, InboxLink};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the state file holds.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Stored {
    /// The Ed25519 secret key's 32 bytes, base64.
    key: String,
    /// The drops' PAKE secret, as links carry it.
    pub secret: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pairing: Vec<Pairing>,
}

/// A device paired with the inbox.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Unique among the inbox's devices: what `inbox devices` lists and `revoke` takes.
    pub name: String,
    /// Its Ed25519 public key for this inbox, base64.
    pub key: String,
    /// When it was paired (Unix seconds).
    pub paired: u64,
}

/// A pairing code not used yet.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Pairing {
    /// [`PairingCode::digest`]: the code itself is never written down.
    digest: String,
    /// Unix seconds after which it pairs nothing.
    expires: u64,
}

impl Stored {
    pub fn generate() -> Self {
        Self {
            key: B64.encode(SigningKey::generate(&mut rand::rngs::OsRng).to_bytes()),
            secret: protocol::invite::generate_secret(),
            devices: Vec::new(),
            pairing: Vec::new(),
        }
    }

    pub fn signing_key(&self) -> SigningKey {
        let raw: [u8; 32] = B64
            .decode(&self.key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .expect("checked when read");
        SigningKey::from_bytes(&raw)
    }

    pub fn id(&self) -> InboxId {
        InboxId::of_key(self.signing_key().verifying_key().as_bytes())
    }

    pub fn link(&self, server: &str) -> InboxLink {
        InboxLink::new(server, self.id(), &self.secret)
    }

    /// The paired device whose key is `key` (32 bytes).
    pub fn device(&self, key: &[u8; 32]) -> Option<&Device> {
        let key = B64.encode(key);
        self.devices.iter().find(|d| d.key == key)
    }

    /// A new pairing code, valid once until `expires` (Unix seconds).
    pub fn new_code(&mut self, now: u64, expires: u64) -> PairingCode {
        self.pairing.retain(|p| p.expires > now);
        let code = PairingCode::generate();
        self.pairing.push(Pairing {
            digest: code.digest(),
            expires,
        });
        code
    }

    /// Pair device `key` under (a unique form of) `name` with `code`, spending the code.
    /// A device paired already keeps its name, and the code is not spent. `None`: the code
    /// is not one of this inbox's, or was used, or expired.
    pub fn pair(
        &mut self,
        code: &PairingCode,
        key: &[u8; 32],
        name: &str,
        now: u64,
    ) -> Option<Device> {
        if let Some(known) = self.device(key) {
            return Some(known.clone());
        }
        self.pairing.retain(|p| p.expires > now);
        let digest = code.digest();
        let at = self.pairing.iter().position(|p| p.digest == digest)?;
        self.pairing.remove(at);
        let device = Device {
            name: self.free_name(name),
            key: B64.encode(key),
            paired: now,
        };
        self.devices.push(device.clone());
        Some(device)
    }

    /// `name`, or `name (2)`, `name (3)`…: the first no paired device has, nor one that
    /// makes the same folder (`--layout by-device`: case and slashes aside), nor
    /// `unpaired` (the folder of the others).
    fn free_name(&self, name: &str) -> String {
        let fold = |n: &str| super::folder_name(n).to_lowercase();
        let taken = |n: &str| {
            fold(n) == "unpaired" || self.devices.iter().any(|d| fold(&d.name) == fold(n))
        };
        (1..)
            .map(|i| match i {
                1 => name.to_string(),
                _ => format!("{name} ({i})"),
            })
            .find(|n| !taken(n))
            .expect("some number is free")
    }

    /// Remove the device named `name`; false if there is none.
    pub fn revoke(&mut self, name: &str) -> bool {
        let before = self.devices.len();
        self.devices.retain(|d| d.name != name);
        self.devices.len() < before
    }

    /// A new secret: links given out before stop working.
    pub fn rotate(&mut self) {
        self.secret = protocol::invite::generate_secret();
    }
}

/// The state file at `path`, if there is one.
pub fn read(path: &Path) -> anyhow::Result<Option<Stored>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let bad = || format!("{} is not an inbox state file", path.display());
    let stored: Stored = serde_json::from_str(&text).with_context(bad)?;
    let key_ok = B64.decode(&stored.key).is_ok_and(|k| k.len() == 32);
    if !key_ok {
        return Err(anyhow::anyhow!("its key is malformed")).with_context(bad);
    }
    Ok(Some(stored))
}

/// The state file at `path`, made (a new identity) if there is none.
pub fn read_or_create(path: &Path) -> anyhow::Result<Stored> {
    match read(path)? {
        Some(s) => Ok(s),
        None => update(path, |s| Ok(s.clone()), true),
    }
}

/// How long a change waits for another one to let go of the lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Change the state file under its lock: `change` sees what it holds now; what it leaves
/// is written (when it returned `Ok`). Without a file, `create` makes a new identity first;
/// else it is an error that says how to make one.
pub fn update<T>(
    path: &Path,
    change: impl FnOnce(&mut Stored) -> anyhow::Result<T>,
    create: bool,
) -> anyhow::Result<T> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    owned_by_me(path)?;
    let lock_path = with_suffix(path, ".lock");
    let lock =
        lock_file(&lock_path).with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock_within(&lock, LOCK_WAIT)
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let mut stored = match (read(path)?, create) {
        (Some(s), _) => s,
        (None, true) => Stored::generate(),
        (None, false) => bail!(
            "no inbox at {} yet: run `native-peer inbox --dir DIR`",
            path.display()
        ),
    };
    let before = serde_json::to_string(&stored)?;
    let result = change(&mut stored)?;
    if serde_json::to_string(&stored)? != before || !path.exists() {
        write(path, &stored)?;
    }
    Ok(result)
}

/// Take `lock`, waiting at most `within` for whoever holds it (an `inbox pair` beside the
/// running inbox holds it for milliseconds): the inbox's one task must not hang on it.
fn lock_within(lock: &std::fs::File, within: Duration) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + within;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!(
                    "another command holds it (for more than {} s)",
                    within.as_secs()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

/// Refuse to change a state file another user owns: rewritten by us (root, say), the
/// inbox's own user could no longer read it.
#[cfg(unix)]
fn owned_by_me(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "{} belongs to another user (uid {}): run this as that user (e.g. `sudo -u punchdrop native-peer inbox …`)",
            path.display(),
            meta.uid()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn owned_by_me(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Write the state file whole: a new temporary file (0600) beside it, renamed over it.
fn write(path: &Path, stored: &Stored) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(stored)?;
    replace_file(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// Put `bytes` at `path` whole or not at all: written to a file of our own beside it
/// (created new, 0600, never a file or link someone left there), synced, renamed over it.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = unique_beside(path);
    let written = (|| {
        let mut f = private_file_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A name beside `path` nobody else uses: `PATH.tmp.PID.RANDOM`.
pub fn unique_beside(path: &Path) -> PathBuf {
    let n: u64 = rand::random();
    with_suffix(path, &format!(".tmp.{}.{n:016x}", std::process::id()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// A new file (never one that exists, nor a link) only its owner reads (0600).
#[cfg(unix)]
pub fn private_file_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
pub fn private_file_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// The lock file beside the state file (0600 when made), opened as it is.
#[cfg(unix)]
fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// The user's state directory for punchdrop: `$XDG_STATE_HOME/punchdrop`, or
/// `~/.local/state/punchdrop`.
pub fn state_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/state"),
            None => bail!("no state directory (neither XDG_STATE_HOME nor HOME is set)"),
        },
    };
    Ok(base.join("punchdrop"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_keeps_the_link_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/inbox.json");
        assert!(read(&path).unwrap().is_none());
        let err = update(&path, |_| Ok(()), false).unwrap_err();
        assert!(format!("{err:#}").contains("no inbox at"), "{err:#}");
        let me = read_or_create(&path).unwrap();
        let again = read_or_create(&path).unwrap();
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
        let err = read(&path).err().unwrap();
        assert!(
            format!("{err:#}").contains("not an inbox state file"),
            "{err:#}"
        );
    }

    #[test]
    fn a_code_pairs_one_device_once_before_it_expires_and_revoke_removes_it() {
        let mut s = Stored::generate();
        let code = s.new_code(100, 200);
        assert!(
            !serde_json::to_string(&s)
                .unwrap()
                .contains(&code.to_string()[..4])
        );
        let (phone, laptop) = ([1; 32], [2; 32]);
        let d = s.pair(&code, &phone, "phone", 150).unwrap();
        assert_eq!(d.name, "phone");
        assert_eq!(s.device(&phone), Some(&d));
        // Spent: another device cannot use it; the paired one is simply known.
        assert!(s.pair(&code, &laptop, "laptop", 150).is_none());
        assert_eq!(s.pair(&code, &phone, "other", 150), Some(d));
        let late = s.new_code(150, 200);
        assert!(s.pair(&late, &laptop, "phone", 200).is_none(), "expired");
        let code = s.new_code(150, 300);
        assert_eq!(
            s.pair(&code, &laptop, "Phone", 160).unwrap().name,
            "Phone (2)",
            "unique, case aside"
        );
        let code = s.new_code(150, 300);
        let other = s.pair(&code, &[3; 32], "unpaired", 160).unwrap();
        assert_eq!(other.name, "unpaired (2)", "the others' folder is taken");
        assert!(s.revoke("phone"));
        assert!(!s.revoke("phone"));
        assert!(s.device(&phone).is_none());
        assert!(s.device(&laptop).is_some());
        assert_eq!(s.devices.len(), 2);
    }

    #[test]
    fn changes_beside_each_other_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.json");
        read_or_create(&path).unwrap();
        std::thread::scope(|scope| {
            for i in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    update(
                        path,
                        |s| {
                            let code = s.new_code(0, u64::MAX);
                            s.pair(&code, &[i; 32], "d", 1);
                            Ok(())
                        },
                        false,
                    )
                    .unwrap()
                });
            }
        });
        assert_eq!(read(&path).unwrap().unwrap().devices.len(), 8);
    }
}
