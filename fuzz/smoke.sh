#!/usr/bin/env bash
# CI smoke run of the fuzz targets: builds them (dev profile, no sanitizer: the cheapest
# build), then for each target replays the committed seeds and every saved regression
# input and fuzzes on for SECONDS (default 20). Fails on any crash, leaving the input in
# fuzz/artifacts/<target>/. Usage: fuzz/smoke.sh [SECONDS]
# Needs cargo-fuzz (cargo install cargo-fuzz --locked); under CI=true its absence fails.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never
secs="${1:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "fuzz smoke: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
        exit 1
    fi
    echo "fuzz smoke: cargo-fuzz is not installed; skipped (outside CI)" >&2
    exit 0
fi

flags=(--dev --sanitizer none)
cargo fuzz build "${flags[@]}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $(cargo fuzz list); do
    dirs=("corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    mkdir -p "$scratch/$t"
    dict=()
    [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
    # New inputs go to the scratch directory; the committed seeds stay as they are.
    if ! cargo fuzz run "${flags[@]}" "$t" "$scratch/$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 "${dict[@]}" >"$scratch/$t.log" 2>&1; then
        grep -E -A1 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$scratch/$t.log" | head -n 6 >&2 || true
        tail -n 25 "$scratch/$t.log" >&2
        echo "fuzz smoke: $t FAILED" >&2
        exit 1
    fi
    stats=$(grep -E '^Done [0-9]+ runs' "$scratch/$t.log" | tail -n 1)
    echo "fuzz smoke: $t ok: ${stats:-no statistics}"
done
