#!/usr/bin/env bash
# Build and start punchdrop on localhost: the signalling server with its web pages.
# Extra arguments go to `signalling` (e.g. --listen 0.0.0.0:8080).
source "$(dirname "$0")/lib.sh"

ensure_rust
log "building"
cargo build --release -p signalling -p native-peer
log "starting the signalling server (Ctrl-C stops it)"
echo "Send a file from another terminal with:  target/release/native-peer send FILE" >&2
exec target/release/signalling "$@"
