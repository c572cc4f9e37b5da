#!/usr/bin/env bash
# Build and start punchdrop on localhost: the signalling server with the web app and the
# bundled TURN relay. Extra arguments go to `signalling` (e.g. --listen 0.0.0.0:8080).
source "$(dirname "$0")/lib.sh"

ensure_rust
log "building the web app (WASM)"
cargo xtask web
log "building the server and the command-line peer"
cargo build --release -p signalling -p native-peer
log "starting the signalling server (Ctrl-C stops it)"
echo "Open the URL below in a browser to send or receive files, or from a terminal:" >&2
echo "  target/release/native-peer send FILE      target/release/native-peer recv LINK|CODE" >&2
exec target/release/signalling "$@"
