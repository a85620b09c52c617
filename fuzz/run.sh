#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after another, and prints executions and
# crashes per target. Usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
# (default 600 s, all targets). Crashing inputs stay in fuzz/artifacts/<target>/; copy the
# ones worth keeping to fuzz/regressions/<target>/. Needs cargo-fuzz; the stable toolchain
# is told to accept the sanitizer flags through RUSTC_BOOTSTRAP=1.
# Exit status: 0 when no target crashed, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never

secs="${1:-600}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
sanitizer="${FUZZ_SANITIZER:-address}"
logs="${FUZZ_LOGS:-target/fuzz-logs}"
mkdir -p "$logs"

cargo fuzz build -O --sanitizer "$sanitizer" >/dev/null 2>"$logs/build.log" || {
    cat "$logs/build.log" >&2
    exit 2
}

status=0
printf '%-16s %12s %10s %8s %8s %s\n' target executions exec/s crashes seconds corpus
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    start=$(date +%s)
    dict=()
    [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
    # Fork mode with one worker: a crash is recorded and fuzzing goes on.
    cargo fuzz run -O --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -fork=1 -ignore_crashes=1 -ignore_ooms=1 \
        -ignore_timeouts=1 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" \
        >"$logs/$t.log" 2>&1 || true
    took=$(( $(date +%s) - start ))
    stats=$(grep -E '^#[0-9]+: cov' "$logs/$t.log" | tail -n 1 || true)
    execs=$(sed -nE 's/^#([0-9]+):.*/\1/p' <<<"$stats")
    rate=$(( ${execs:-0} / (took > 0 ? took : 1) ))
    after=$(find "artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    corpus=$(find "corpus/$t" -type f | wc -l)
    printf '%-16s %12s %10s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes" "$took" "$corpus"
    if [ -z "$execs" ]; then
        echo "  $t: no libFuzzer statistics; see $logs/$t.log" >&2
        status=1
    fi
    if [ "$crashes" -gt 0 ]; then
        status=1
        find "artifacts/$t" -type f -newermt "@$start" | sed 's/^/  new: /'
    fi
done
exit "$status"
