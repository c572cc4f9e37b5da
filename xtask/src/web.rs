//! `cargo xtask web`: build the browser app's WASM and its JS glue into `web/pkg/`.
//!
//! The crate is compiled for wasm32 by `scripts/lib.sh`'s `wasm_build` (the rustup target
//! when it can be had, else Debian's rustc-web with `-Zbuild-std`), then the glue is generated
//! by `wasm-bindgen-cli-support` linked into this binary: the same pinned version as the
//! `wasm-bindgen` the client uses (one `=` pin in the workspace, one entry in Cargo.lock), so
//! no separately installed `wasm-bindgen` CLI can drift from it.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the generated app goes; the signalling server embeds `web/` in release builds.
pub fn pkg_dir(root: &Path) -> PathBuf {
    root.join("web/pkg")
}

pub fn build(root: &Path) -> anyhow::Result<()> {
    let status = Command::new("bash")
        .current_dir(root)
        .args([
            "-c",
            r#"source scripts/lib.sh && wasm_build --profile wasm-release -p wasm-client"#,
        ])
        .status()
        .context("cannot run bash to build the WASM")?;
    if !status.success() {
        bail!("building wasm-client for wasm32 failed");
    }
    let wasm = newest_artifact(root)?;
    let out = pkg_dir(root);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)?
        .typescript(false)
        .generate(&out)
        .with_context(|| format!("wasm-bindgen failed on {}", wasm.display()))?;
    let size = std::fs::metadata(out.join("wasm_client_bg.wasm"))?.len();
    eprintln!(
        "web app built into {} (wasm {:.0} KiB)",
        out.display(),
        size as f64 / 1024.0
    );
    Ok(())
}

/// The client built by whichever toolchain `wasm_build` used (rustup's target or Debian's).
fn newest_artifact(root: &Path) -> anyhow::Result<PathBuf> {
    let candidates = [
        "target/wasm32-unknown-unknown/wasm-release/wasm_client.wasm",
        "target/wasm-debian/wasm32-unknown-unknown/wasm-release/wasm_client.wasm",
    ];
    candidates
        .iter()
        .map(|c| root.join(c))
        .filter_map(|p| {
            let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((t, p))
        })
        .max()
        .map(|(_, p)| p)
        .context("the wasm32 build produced no wasm_client.wasm")
}
