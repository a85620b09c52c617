#!/usr/bin/env bash
# Instructions per request: the sidecar's whole pipeline and nginx as a plain reverse
# proxy, each run under valgrind's callgrind in front of the same nginx upstream, counted
# over the requests of one wrk run. The count is the user-space work a request costs; it
# does not move with this machine's load, so it tells apart changes of a few percent that
# the timed load test (run.sh) cannot. It does not count the kernel's work or cache misses.
# Loopback only; about 30 s per target.
#
#   benches/load/instructions.sh [SECONDS]
#
#   BASE_BIN=/path/to/bsk-sidecar   also count this binary (a baseline build) as "baseline"
#   ALT_BIN=/path ALT_LABEL=name    and this one as "name"
#   ALT_LEVEL=info                  run the variant with its access log on (one line per
#                                   request, to a file): ALT_BIN=$BIN ALT_LEVEL=info counts
#                                   what the access log costs
#   ALT_REPLAY=off                  run the variant without the route's replay protection:
#                                   ALT_BIN=$BIN ALT_REPLAY=off counts what the replay check
#                                   costs
#   LOG_FORMAT=json                 the sidecars' log format (default: human)
#   CONNS=8                         wrk's connections
#   CACHE=1                         also simulate the caches and branch predictor
#                                   (callgrind's, about twice as slow) and print, per
#                                   request, the misses of the first-level instruction and
#                                   data caches and of the last level, the mispredicted
#                                   branches, and the KiB of code a request runs
#                                   (benches/load/footprint.py). A simulation of this
#                                   machine's cache sizes without prefetching: for telling
#                                   builds apart, not for cycles
#   KEEP=/tmp/cg                    keep each target's callgrind file there, for
#                                   `callgrind_annotate --inclusive=yes KEEP/<target>.out`
#   TOP=25                          how many of the sidecar's functions to list, by
#                                   inclusive count (0: none)
#
# Under valgrind the CPU has no SHA extensions, so SHA-256 (the JWT's HMAC, the replay
# key) runs in software and counts far more instructions than it costs natively with
# SHA-NI; the report gives each count with and without SHA-256's compression function.
# Needs valgrind, wrk and nginx (installed from Debian when missing, as root).
set -euo pipefail
# The rest is one block, read whole before any of it runs: editing this file, or a
# checkout, while a run is under way does not change what the run does.
{
cd "$(dirname "$0")/../.."
. benches/load/common.sh
DUR=${1:-6}
CONNS=${CONNS:-8}
TOP=${TOP:-25}
TARGET_DIR=${CARGO_TARGET_DIR:-./target}
BIN=${BIN:-$TARGET_DIR/release/bsk-sidecar}
BASE_BIN=${BASE_BIN:-}
ALT_BIN=${ALT_BIN:-}
alt_replay_checked
ALT_LABEL=${ALT_LABEL:-alt}

for tool in valgrind wrk nginx; do
  command -v "$tool" >/dev/null || apt-get install -y "$tool" >/dev/null
done
[ -x "$BIN" ] || cargo build --release --bin bsk-sidecar
GEN=$TARGET_DIR/release/load-bodies
[ -x "$GEN" ] || cargo build --release --features bench-tools --bin load-bodies

start_work
OUT=${KEEP:-$WORK}
mkdir -p "$OUT"
# The proxy in the foreground, one process, so valgrind follows it.
nginx_conf "$WORK/px" "$(proxy_block "$SC")"
sed -i 's/^daemon on;/daemon off;\nmaster_process off;/' "$WORK/px/nginx.conf"
bodies_lua "$WORK/bodies.lua"
# Warm-up bodies first, then the counted ones (SKIP), so none is a replay. Un-instrumented,
# the sidecar under valgrind answers about 10,000 requests a second: the two-second warm-up
# needs three times that room, or it runs into the counted bodies and those are refused as
# replays (cheaper than a forwarded request, so they would lower the count).
WARM=60000
"$GEN" $((WARM + 60000)) > "$WORK/bodies.txt"

RESULTS="$WORK/results.tsv"
CACHES="$WORK/caches.tsv"
SIM=()
[ "${CACHE:-0}" = 1 ] && SIM=(--cache-sim=yes --branch-sim=yes --dump-instr=yes)
count() { # $1 label, $2.. the command to run under callgrind
  local label=$1 out reqs bad total sha; shift
  rm -f "$OUT/$label.out"
  valgrind --tool=callgrind "${SIM[@]}" --instr-atstart=no --callgrind-out-file="$OUT/$label.out" "$@" \
    > "$WORK/$label.log" 2>&1 &
  VG_PID=$!
  wait_port "$SC" || { sleep 5; wait_port "$SC"; } || { cat "$WORK/$label.log" >&2; exit 1; }
  wrk -t1 -c"$CONNS" -d2s -s "$WORK/bodies.lua" "http://127.0.0.1:$SC/bsk/status" -- "$WORK/bodies.txt" > /dev/null
  callgrind_control -i on "$VG_PID" > /dev/null 2>&1
  out=$(SKIP=$WARM wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$WORK/bodies.lua" "http://127.0.0.1:$SC/bsk/status" -- "$WORK/bodies.txt")
  callgrind_control -i off "$VG_PID" > /dev/null 2>&1
  kill "$VG_PID"; wait "$VG_PID" 2>/dev/null || true; VG_PID=
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  total=$(awk '/^(totals|summary):/ {print $2}' "$OUT/$label.out" | sort -n | tail -1)
  # SHA-256's compression function, by its own count (all its inlined lines).
  sha=$(callgrind_annotate --threshold=100 --auto=no "$OUT/$label.out" 2>/dev/null \
    | awk '/sha2::sha256::compress256/ {gsub(",", "", $1); s += $1} END {print s + 0}')
  echo -e "$label\t$reqs\t${bad:-0}\t$total\t$sha" >> "$RESULTS"
  [ -z "${SIM[*]}" ] || echo -e "$label\t$(python3 benches/load/footprint.py "$OUT/$label.out" "$reqs")" >> "$CACHES"
  echo "  $label: $reqs requests (non-2xx ${bad:-0}), $total instructions" >&2
  [ "${bad:-0}" = 0 ] || echo "  warning: $label refused $bad of the counted requests; its count is not comparable" >&2
}

state() { local d; d=$(mktemp -d "$WORK/state.XXXX"); sidecar_conf "$d" "" "" "${1:-}" > "$d.yaml"; echo "$d.yaml"; }
count nginx nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"
LOG=(--log-format "${LOG_FORMAT:-human}")
[ -n "$BASE_BIN" ] && RUST_LOG=warn count baseline "$BASE_BIN" "${LOG[@]}" run --config "$(state)"
RUST_LOG=warn count sidecar "$BIN" "${LOG[@]}" run --config "$(state)"
[ -n "$ALT_BIN" ] && RUST_LOG=${ALT_LEVEL:-warn} count "$ALT_LABEL" "$ALT_BIN" "${LOG[@]}" run --config "$(state "${ALT_REPLAY:-}")"

python3 - "$RESULTS" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    label, reqs, bad, total, sha = line.split("\t")
    reqs = max(int(reqs), 1)
    rows[label] = (int(total) / reqs, (int(total) - int(sha)) / reqs, int(bad))
print(f"\n{'target':10} {'instructions/request':>21} {'without SHA-256':>16} {'non-2xx':>8}")
for label, (all_, rest, bad) in rows.items():
    print(f"{label:10} {all_:>21,.0f} {rest:>16,.0f} {bad:>8}")
n = rows.get("nginx")
for label, (all_, rest, _) in rows.items():
    if label != "nginx" and n:
        print(f"{label}/nginx: {all_ / n[0]:.2f}x ({rest / n[1]:.2f}x without SHA-256)")
b = rows.get("baseline")
for label, (all_, rest, _) in rows.items():
    if label not in ("nginx", "baseline") and b:
        print(f"{label}/baseline: {all_ / b[0]:.3f}x ({rest / b[1]:.3f}x without SHA-256)")
PY

if [ -n "${SIM[*]}" ]; then
  echo
  echo "per request, without SHA-256's software rounds (caches simulated at this machine's sizes):"
  python3 - "$CACHES" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
cols = ["instructions", "I1 misses", "D1 misses", "LL misses", "mispredicted", "hot code KiB"]
print(f"{'target':10}" + "".join(f"{c:>14}" for c in cols))
for label, *v in rows:
    print(f"{label:10}" + "".join(f"{float(x):>14,.1f}" for x in v))
n = next((v for label, *v in rows if label == "nginx"), None)
for label, *v in rows:
    if label != "nginx" and n:
        print(f"{label}/nginx: " + ", ".join(
            f"{c} {float(a) / float(b):.2f}x" for c, a, b in zip(cols, v, n) if float(b)))
PY
fi

if [ "$TOP" -gt 0 ]; then
  echo "the sidecar's functions by inclusive count, per request:"
  reqs=$(awk -F'\t' '$1 == "sidecar" {print $2}' "$RESULTS")
  callgrind_annotate --inclusive=yes "$OUT/sidecar.out" 2>/dev/null \
    | awk -v n="$TOP" -v r="$reqs" '/^ *[0-9,]+ \(/ && !/PROGRAM TOTALS/ {
        c = $1; gsub(",", "", c); f = $0; sub(/^[^)]*\) +/, "", f); sub(/ \[.*$/, "", f)
        sub(/^[^ ]*\.(rs|c|h|S):/, "", f); if (seen[f]++) next
        printf "  %8.0f  %s\n", c / r, substr(f, 1, 150); if (++k >= n) exit }'
fi
exit
}
