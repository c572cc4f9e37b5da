#!/usr/bin/env bash
# Run every check and test punchdrop has, installing what is missing first.
# This is the README's test command; .ci/run calls exactly this.
source "$(dirname "$0")/lib.sh"

ensure_rust
# unshare and mount (private tmpfs for the full-disk test) come with util-linux and mount;
# coturn is the external TURN server the relay tests prove interoperability with.
apt_install util-linux mount coturn

log "formatting"
cargo fmt --all -- --check

log "lints"
cargo clippy --release --workspace --all-targets -- -D warnings

log "protocol builds for wasm32"
wasm_build --release -p punchdrop-protocol

log "building the binaries the end-to-end tests run"
cargo build --release --workspace

log "tests"
cargo test --release --workspace
