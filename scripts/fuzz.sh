#!/usr/bin/env bash
# Smoke-run every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for a bounded time each, over
# a throwaway copy of its committed corpus, and fail naming the target if any crashes.
# Installs cargo-fuzz if it is missing.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  libFuzzer's -max_total_time for each target (default 10)
#   TARGET...           only these targets (default: every target `cargo fuzz list` shows)
#
# The committed corpora (fuzz/corpus/<target>/) are only read: new inputs land in a temporary
# copy that is deleted afterwards. Every input that once crashed a target
# (fuzz/regressions/<target>/) is run first, too. A crashing input is kept in
# fuzz/artifacts/<target>/.
# Longer runs by hand (they do grow the corpus; minimise it afterwards):
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET -- -max_total_time=600
#   RUSTC_BOOTSTRAP=1 cargo fuzz cmin TARGET
source "$(dirname "$0")/lib.sh"

secs="${1:-10}"
shift || true
case "$secs" in
    '' | *[!0-9]*)
        echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
        exit 2
        ;;
esac

ensure_rust

# cargo-fuzz passes nightly rustc flags (-Zsanitizer=address). By default the machine's own
# toolchain is told to accept them (RUSTC_BOOTSTRAP=1): CI machines have only that one, and
# stable rustc ships the sanitizer runtimes too. FUZZ_TOOLCHAIN=nightly uses a rustup
# toolchain instead.
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    fuzz_cargo=(cargo "+$FUZZ_TOOLCHAIN")
else
    fuzz_cargo=(cargo)
    export RUSTC_BOOTSTRAP=1
fi

if ! command -v cargo-fuzz >/dev/null; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

cd "$ROOT/fuzz"
log "building the fuzz targets"
"${fuzz_cargo[@]}" fuzz build

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz_cargo[@]}" fuzz list)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    if [ ! -d "corpus/$t" ]; then
        echo "fuzz: no committed corpus for target $t (fuzz/corpus/$t)" >&2
        failed+=("$t")
        continue
    fi
    log "fuzzing $t for ${secs} s"
    rm -rf "${scratch:?}/$t"
    mkdir -p "$scratch/$t"
    cp -R "corpus/$t/." "$scratch/$t/"
    # Read-only extra corpus: libFuzzer writes new inputs only to the first directory.
    extra=()
    [ -d "regressions/$t" ] && extra=("regressions/$t")
    # One process, one job, at low priority; the build above is reused (same flags).
    if nice -n 10 "${fuzz_cargo[@]}" fuzz run "$t" "$scratch/$t" "${extra[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1; then
        grep -E '^(#[0-9]+.*DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::new_units_added)' \
            "$scratch/$t.log" >&2 || true
    else
        tail -n 60 "$scratch/$t.log" >&2
        echo "fuzz: target $t FAILED (crashing input in fuzz/artifacts/$t/)" >&2
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${secs} s each with no crash" >&2
