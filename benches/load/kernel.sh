#!/usr/bin/env bash
# What the kernel does for one request: system calls (by kind), scheduler switches and
# wake-ups, and TCP segments on loopback, for nginx as a plain reverse proxy and for the
# sidecar's whole pipeline, each in front of the same nginx upstream and counted over
# whole wrk runs, interleaved ROUNDS times. Counts, not time: most of a request's CPU on
# loopback is the kernel's (run.sh prints the user and system split), and these say where
# the two proxies' kernel work differs. Loopback only; about ROUNDS x 2 x (SECONDS + 4) s.
#
#   benches/load/kernel.sh [SECONDS] [ROUNDS]
#
#   BIN=/path/to/bsk-sidecar   the sidecar (default: the release build)
#   CONNS=32                   wrk's connections
#   WORKERS=1                  the sidecar's `limits.workers` (default: one per core)
#   DETAIL=1                   then one more run of each with the switches and wake-ups
#                              recorded one by one (perf record): whom the proxy wakes
#                              (the upstream, wrk, its own threads) and why its threads
#                              stop (preempted while runnable, or asleep) and for whom
#
# The system calls, switches and wake-ups are the proxy's own (perf's tracepoints on its
# processes; a wake-up is counted where the proxy wakes another thread, such as the
# upstream's or wrk's). The segments are every TCP segment sent on the machine during
# the run (`nstat`): both hops of every request, and nothing else runs here.
# Needs perf (tracepoints only, no hardware counters), nstat (iproute2), wrk and nginx
# (installed from Debian when missing, as root).
set -euo pipefail
# The rest is one block, read whole before any of it runs: editing this file, or a
# checkout, while a run is under way does not change what the run does.
{
cd "$(dirname "$0")/../.."
. benches/load/common.sh
DUR=${1:-5}
ROUNDS=${2:-2}
CONNS=${CONNS:-32}
TARGET_DIR=${CARGO_TARGET_DIR:-./target}
BIN=${BIN:-$TARGET_DIR/release/bsk-sidecar}

command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null
command -v nstat >/dev/null || apt-get install -y iproute2 >/dev/null
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || apt-get install -y "$tool" >/dev/null
done
[ -x "$BIN" ] || cargo build --release --bin bsk-sidecar
GEN=$TARGET_DIR/release/load-bodies
[ -x "$GEN" ] || cargo build --release --features bench-tools --bin load-bodies
ulimit -n "$(ulimit -Hn)"

start_work
PX=$(free_port)
nginx_conf "$WORK/px" "$(proxy_block "$PX")"
nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"
wait_port "$PX"
PX_PIDS=$(pids_of "$WORK/px")
state=$(mktemp -d "$WORK/state.XXXX")
sidecar_conf "$state" "" "${WORKERS:-}" > "$state.yaml"
RUST_LOG=warn setsid "$BIN" run --config "$state.yaml" 2>>"$WORK/sidecar.log" &
VG_PID=$!
wait_port "$SC" || { cat "$WORK/sidecar.log" >&2; exit 1; }
session_leader "$VG_PID"
bodies_lua "$WORK/bodies.lua"
# A body per request the sidecar serves in all its runs (a body sent twice is a replay).
"$GEN" $((DUR * (ROUNDS + 1) * 100000)) > "$WORK/bodies.txt"

CALLS="recvfrom read readv writev write sendto sendmsg epoll_wait epoll_ctl futex getsockopt setsockopt ioctl"
EVENTS=raw_syscalls:sys_enter,sched:sched_switch,sched:sched_wakeup
for c in $CALLS; do EVENTS="$EVENTS,syscalls:sys_enter_$c"; done
RESULTS="$WORK/results.tsv"
SKIP=0
# One wrk run against target $1 on port $2 while the perf command from $3 on, which ends
# in `-- sleep`, watches it: the window holds the whole wrk run, its start-up (reading
# the bodies) included. Sets REQS.
drive() {
  local label=$1 port=$2 out
  shift 2
  "$@" 2>/dev/null &
  local watcher=$!
  sleep 0.5
  out=$(SKIP=$SKIP wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$WORK/bodies.lua" \
    "http://127.0.0.1:$port/bsk/status" -- "$WORK/bodies.txt")
  wait "$watcher"
  REQS=$(echo "$out" | awk '/requests in/ {print $1}')
  [ "$label" = sidecar ] && SKIP=$((SKIP + REQS + 1000))
  echo "$out" | grep -q "Non-2xx" && echo "  warning: $label answered non-2xx: $(echo "$out" | grep Non-2xx)" >&2
  return 0
}
measure() { # $1 label, $2 port, $3 pids (comma-separated)
  nstat -n
  drive "$1" "$2" perf stat -x, -e "$EVENTS" -p "$3" -o "$WORK/perf.csv" -- sleep $((DUR + 4))
  local reqs=$REQS segs
  segs=$(nstat | awk '$1 == "TcpOutSegs" {print $2}')
  awk -F, -v l="$1" -v r="$reqs" -v s="${segs:-0}" '
    $1 ~ /^[0-9]+$/ { n = $3; sub(/^.*:(sys_enter_)?/, "", n); sub(/^sys_enter$/, "syscalls", n); v[n] = $1 }
    END {
      printf "%s\t%d", l, r
      for (k in v) printf "\t%s=%.3f", k, v[k] / r
      printf "\tsegments=%.3f\n", s / r
    }' "$WORK/perf.csv" >> "$RESULTS"
}

for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="nginx sidecar"; else order="sidecar nginx"; fi
  for t in $order; do
    case $t in
      nginx) measure nginx "$PX" "$(echo $PX_PIDS | tr ' ' ',')" ;;
      sidecar) measure sidecar "$SC" "$VG_PID" ;;
    esac
  done
  echo "round $round: $order" >&2
done

# The switches and wake-ups one by one: whom each wakes, why each switch happens and to
# whom (by role: the proxy's own threads, the upstream, wrk, anything else).
detail() { # $1 label, $2 port, $3 pids (comma-separated), $4 its threads' ids (default: $3)
  drive "$1" "$2" perf record -q -e sched:sched_switch,sched:sched_wakeup -p "$3" \
    -o "$WORK/$1.data" -- sleep $((DUR + 4))
  perf script -i "$WORK/$1.data" -F tid,event,trace > "$WORK/$1.events" 2>/dev/null
  python3 - "$1" "$REQS" "${4:-$3}" "$(pids_of "$WORK/up" | tr ' ' ',')" "$WORK/$1.events" <<'PY'
import collections, re, sys
label, reqs = sys.argv[1], max(int(sys.argv[2]), 1)
own = set(sys.argv[3].split(","))
upstream = set(sys.argv[4].split(","))
def role(pid, comm):
    if pid in own:
        return "its own"
    if pid in upstream:
        return "upstream"
    return "wrk" if comm == "wrk" else "other"
wakes, switches = collections.Counter(), collections.Counter()
for line in open(sys.argv[5]):
    if "sched:sched_wakeup" in line:
        m = re.search(r"comm=(.+?) pid=(\d+)", line)
        if m:
            wakes[role(m.group(2), m.group(1))] += 1
    elif "sched:sched_switch" in line:
        m = re.search(r"prev_state=(\S+) ==> next_comm=(.+?) next_pid=(\d+)", line)
        if m:
            why = "preempted" if m.group(1).startswith("R") else "asleep"
            switches[(why, role(m.group(3), m.group(2)))] += 1
print(f"{label}: per request, over {reqs} requests")
print("  wakes " + ", ".join(f"{k} {v / reqs:.3f}" for k, v in wakes.most_common()))
print("  switches " + ", ".join(f"{w} for {r} {v / reqs:.3f}" for (w, r), v in switches.most_common()))
PY
}
if [ "${DETAIL:-0}" = 1 ]; then
  echo
  detail nginx "$PX" "$(echo $PX_PIDS | tr ' ' ',')"
  detail sidecar "$SC" "$VG_PID" "$(ls /proc/"$VG_PID"/task | paste -sd,)"
fi
nginx -p "$WORK/px" -c "$WORK/px/nginx.conf" -s stop 2>/dev/null || true

python3 - "$RESULTS" "$CALLS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, reqs, *kv = line.rstrip("\n").split("\t")
    rows.setdefault(label, []).append({k: float(v) for k, v in (p.split("=") for p in kv)})
calls = sys.argv[2].split()
cols = ["syscalls"] + calls + ["switch", "wakeup", "segments"]
names = {"switch": "sched_switch", "wakeup": "sched_wakeup"}
def med(label, col):
    return statistics.median(r.get(names.get(col, col), 0.0) for r in rows[label])
print(f"\nper request, the median of {len(rows.get('nginx', []))} rounds each:")
print(f"{'':12}" + "".join(f"{t:>10}" for t in rows))
for col in cols:
    vals = [med(t, col) for t in rows]
    if all(v == 0 for v in vals):
        continue
    print(f"{col:12}" + "".join(f"{v:>10.3f}" for v in vals))
# The calls of no kind listed above.
print(f"{'other calls':12}" + "".join(
    f"{med(t, 'syscalls') - sum(med(t, c) for c in calls):>10.3f}" for t in rows))
PY
exit
}
