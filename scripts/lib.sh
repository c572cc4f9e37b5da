# Shared helpers for punchdrop's scripts. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# apt-get install what is missing (we are root on the project's machines; use sudo otherwise).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# A Rust toolchain with rustfmt and clippy.
ensure_rust() {
    if ! command -v cargo >/dev/null; then
        echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
        exit 1
    fi
    if command -v rustup >/dev/null; then
        for c in rustfmt clippy; do
            rustup component list --installed 2>/dev/null | grep -q "^$c" \
                || timeout 120 rustup component add "$c" || true
        done
    fi
}

# Build a crate for wasm32-unknown-unknown: the ordinary rustup target when it can be had,
# else Debian's rustc-web with -Zbuild-std (see DESIGN.md § Building the WASM).
# Usage: wasm_build CARGO_ARGS...
wasm_build() {
    if command -v rustup >/dev/null; then
        if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
            log "adding the wasm32-unknown-unknown target"
            timeout 120 rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
        fi
        if rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
            cargo build --target wasm32-unknown-unknown "$@"
            return
        fi
    fi
    log "rustup has no wasm32 std here: using Debian's rustc-web with -Zbuild-std"
    apt_install rustc-web cargo-web rust-web-src
    local lld
    lld="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
    PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$lld" \
        cargo build --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort \
        --target-dir target/wasm-debian "$@"
}
