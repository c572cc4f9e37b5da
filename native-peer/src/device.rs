//! This machine's device keys, which it proves to the inboxes it drops files into
//! ([`protocol::device`]).
//!
//! Invariants:
//! - One random seed, made on first use in `device.key` in the state directory (mode 0600);
//!   each inbox gets its own key derived from the seed and its id, so two inboxes cannot
//!   tell they met the same machine.
//! - The first start writes the seed to a new file of its own beside `device.key` and links
//!   it there: two first drops at once end with one seed, the first linked.
//! - No state directory, or one that cannot be written: the drop goes without a proof (a
//!   warning says why), unless it pairs (`--pair`), which then fails saying so.

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use protocol::inbox::InboxId;
use std::io::Write as _;
use std::path::Path;

use crate::inbox::{private_file_new, state_dir, unique_beside};
use crate::transfer::Device;

/// The key this machine proves to inbox `inbox`, with a pairing code and this device's
/// name when it pairs (the name is sent only then: an inbox keeps it at pairing and knows
/// the device by its key after). Without a state directory, or one that cannot be written,
/// no key is proven (an open inbox takes the drop; one taking paired devices only says so),
/// unless pairing was asked for.
pub fn for_inbox(
    inbox: &InboxId,
    name: Option<&str>,
    pair: Option<&str>,
) -> anyhow::Result<Option<Device>> {
    if let Some(code) = pair
        && protocol::device::PairingCode::parse(code).is_none()
    {
        anyhow::bail!(
            "--pair: “{code}” is not a pairing code (8 letters and digits, as `native-peer inbox pair` shows it)"
        );
    }
    let name = match (pair, name) {
        (None, _) => String::new(),
        (Some(_), Some(n)) => {
            protocol::device::clean_name(n).context("--device-name: give a name")?
        }
        (Some(_), None) => host_name().unwrap_or_else(|| "native-peer".into()),
    };
    let seed = state_dir()
        .context("this device's key needs a state directory")
        .and_then(|dir| seed(&dir.join("device.key")));
    let seed = match (seed, pair) {
        (Ok(seed), _) => seed,
        (Err(e), Some(_)) => return Err(e.context("cannot pair this device")),
        (Err(e), None) => {
            tracing::warn!("dropping without a device key: {e:#}");
            return Ok(None);
        }
    };
    let key = blake3::derive_key(
        "punchdrop device key v1",
        &[&seed[..], inbox.as_str().as_bytes()].concat(),
    );
    Ok(Some(Device {
        key: SigningKey::from_bytes(&key),
        name,
        pair: pair.map(str::to_string),
    }))
}

/// This host's name, cleaned as a device or inbox name.
pub fn host_name() -> Option<String> {
    let name = nix::unistd::gethostname().ok()?;
    protocol::device::clean_name(&name.to_string_lossy())
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
    let tmp = unique_beside(path);
    let write = || -> std::io::Result<()> {
        let mut f = private_file_new(&tmp)?;
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
