#!/usr/bin/env bash
# Run every check and test punchdrop has, installing what is missing first.
# This is the README's test command; .ci/run calls exactly this.
source "$(dirname "$0")/lib.sh"

ensure_rust
# unshare and mount (private tmpfs for the full-disk test) come with util-linux and mount;
# coturn is the external TURN server the relay tests prove interoperability with; chromium
# (driven over CDP) and iproute2 (`ip`, loopback in a fresh namespace) run the browser tests.
apt_install util-linux mount coturn chromium iproute2
# The NAT lab (tests/tests/natlab.rs): NAT routers (iptables, nftables, conntrack) and a UPnP
# IGD / NAT-PMP router (miniupnpd-nftables) in namespaces (iproute2); `sysctl` (procps) for
# a host whose address changes.
apt_install iproute2 iptables nftables conntrack miniupnpd-nftables procps
# The deployment tests (tests/tests/deploy.rs): pebble, a test ACME CA that really validates
# (TLS-ALPN-01), and its mock DNS (pebble-challtestsrv).
apt_install pebble
# Nodes sharing rooms (tests/tests/cluster.rs): Redis, started by the tests on free ports.
apt_install redis-server

log "formatting"
cargo fmt --all -- --check
# The fuzz targets are their own workspace (nightly only), outside `--all`.
(cd fuzz && cargo fmt -- --check)

log "lints"
cargo clippy --release --workspace --all-targets -- -D warnings
# The hooks only tests use (native-peer's `test-hooks` feature) are code too.
cargo clippy --release -p native-peer --all-targets --features test-hooks -- -D warnings

log "web app: wasm-client for wasm32 (checks protocol builds there too) + JS glue"
cargo xtask web

# The end-to-end tests run native-peer with hooks users never get (offering a hostile name,
# skipping the free-space check): the `test-hooks` feature, enabled here and nowhere else.
TEST_FEATURES=(--features native-peer/test-hooks)

log "building the binaries the end-to-end tests run"
cargo build --release --workspace "${TEST_FEATURES[@]}"

log "tests"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cargo test --release --workspace "${TEST_FEATURES[@]}" 2>&1 | tee "$out"

# Every fuzz target briefly over its committed corpus and past crashes (a smoke check; the
# long runs are by hand, see DESIGN.md § Fuzzing).
log "fuzzing: every target for 10 s"
./scripts/fuzz.sh 10

# One closing line for the whole run: cargo's own last line belongs to whichever test binary
# ran last (often one with no tests).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
