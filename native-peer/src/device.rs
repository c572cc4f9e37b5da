//! This machine's device keys, which it proves to the inboxes it drops files into
//! ([`protocol::device`]).
//!
//! Invariants:
//! - One random seed, made on first use in `device.key` in the state directory (mode 0600,
//!   written to a temporary file and renamed); each inbox gets its own key derived from the
//!   seed and its id, so two inboxes cannot tell they met the same machine.
//! - No state directory (neither `XDG_STATE_HOME` nor `HOME`): an error saying so, since an
//!   inbox taking paired devices only would otherwise refuse without a clear reason.

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use protocol::inbox::InboxId;
use std::io::Write as _;
use std::path::Path;

use crate::inbox::{private_file, state_dir};
use crate::transfer::Device;

/// The key, name and pairing code this machine proves to inbox `inbox`.
pub fn for_inbox(
    inbox: &InboxId,
    name: Option<&str>,
    pair: Option<&str>,
) -> anyhow::Result<Device> {
    if let Some(code) = pair
        && protocol::device::PairingCode::parse(code).is_none()
    {
        anyhow::bail!(
            "--pair: “{code}” is not a pairing code (8 letters and digits, as `native-peer inbox pair` shows it)"
        );
    }
    let name = match name {
        Some(n) => protocol::device::clean_name(n).context("--device-name: give a name")?,
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| protocol::device::clean_name(&h.to_string_lossy()))
            .unwrap_or_else(|| "native-peer".into()),
    };
    let path = state_dir()
        .context("this device's key needs a state directory")?
        .join("device.key");
    let seed = seed(&path)?;
    let key = blake3::derive_key(
        "punchdrop device key v1",
        &[&seed[..], inbox.as_str().as_bytes()].concat(),
    );
    Ok(Device {
        key: SigningKey::from_bytes(&key),
        name,
        pair: pair.map(str::to_string),
    })
}

/// The seed at `path`, made if missing.
fn seed(path: &Path) -> anyhow::Result<[u8; 32]> {
    if let Some(seed) = read_seed(path)? {
        return Ok(seed);
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let dir = path.parent().expect("a file in the state directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("key.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = private_file(&tmp, true)?;
        f.write_all(&seed)?;
        f.sync_all()?;
        // Another process may have made one meanwhile: the first one stays.
        let linked = std::fs::hard_link(&tmp, path).or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        });
        let _ = std::fs::remove_file(&tmp);
        linked
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    read_seed(path)?.with_context(|| format!("{} vanished", path.display()))
}

fn read_seed(path: &Path) -> anyhow::Result<Option<[u8; 32]>> {
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{} is not a device key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
