#!/usr/bin/env bash
# Load test: the sidecar's whole pipeline against nginx as a plain reverse proxy, both in
# front of the same nginx upstream, interleaved in one run. Loopback only; bounded time
# (about ROUNDS x 2 x targets x (DURATION + 2) seconds, plus the idle-connection scenario).
#
#   benches/load/run.sh [DURATION_SECONDS] [ROUNDS]
#
#   BASE_BIN=/path/to/bsk-sidecar   also measure this binary (a baseline build) as "baseline"
#   ALT_BIN=/path ALT_LABEL=name    and this one (another variant) as "name"; the line
#                                   "name/sidecar" gives its CPU a request against the
#                                   sidecar's round by round, with the interval
#   SAME=1                          also measure BIN a second time in each round, as
#                                   "sidecar-again": the control for this machine's noise.
#                                   The line "sidecar-again/sidecar" is the ratio a change
#                                   must beat to be told apart from it
#   ALT_LEVEL=info                  run the variant with its access log on
#   ALT_WORKERS=1                   run the variant with `limits.workers` set to this
#   ALT_REPLAY=off                  run the variant without the route's replay protection
#                                   (ALT_BIN=$BIN ALT_REPLAY=off: what the replay check costs)
#   CONNS="32 256"                  client connections per measurement
#   IDLE=10000                      idle keep-alive connections in the idle scenario (0: skip)
#   IDLE_HOLD=15                    seconds they are held before the settled RSS is read
#   GEN=/path/to/load-bodies        the body generator (default: the release build's)
#   FLOOD=0                         skip the flood-isolation scenario
#   PERF=/tmp/sidecar.perf          record a profile of the sidecar (perf, per connection count),
#                                   then print its top functions (profile.py) and their
#                                   hottest instructions (hotspots.py)
#   PERF_LABEL=logged               profile this target instead of "sidecar"
#   PERF_ARGS="-F 2999 --call-graph dwarf,16384"
#                                   perf's sampling options (default: -F 499 -g); with DWARF
#                                   call graphs, components.py groups the samples by component
#   LOGS=1                          also measure the sidecar with its access log on (one line
#                                   per request, to a file) as "logged", and judge its cost
#                                   against the sidecar's round by round (at most 1.1x)
#   LOG_FORMAT=json                 the sidecar's log format (default: human; the shipped
#                                   systemd unit writes json)
#   NGINX_ALL=1                     also measure nginx with one worker process per core
#                                   ("nginx-all"; "nginx" runs one), and print the ratios
#                                   against it
#   REDIS=1                         also measure the sidecar with `state.backend.redis` on a
#                                   local redis-server (replay cache and peer/route limits
#                                   shared) as "redis", and print what the Redis checks add
#
# The sidecar route is `[token, jwt, aes]` with the defaults: allowlist, per-address,
# per-peer and per-route limits, passcode, HS256, AES-256-CBC, freshness (10 min) and replay
# protection. Every request carries a fresh token (a file of distinct sealed bodies, made
# per round by the `load-bodies` tool, built with `--features bench-tools`), so no
# request is a replay.
# Access logs are off on both sides (sidecar: RUST_LOG=warn; nginx: access_log off).
#
# Per target and connection count it prints the median over rounds of: requests/s,
# p50/p99 latency, CPU µs per request of the proxy (utime+stime from /proc; utime alone
# too, and the user and system ratios against nginx), CPU µs the
# upstream spent per request it served, new upstream connections (nginx stub_status
# `accepts`), peak RSS (VmHWM; nginx: master + worker; each round's line adds the resident
# anonymous and file-backed memory at the end), and context switches per request
# (every thread of the proxy, from /proc), and "latency held": the latencies' sum over
# connections x duration. Each connection has one request in flight, so the requests'
# own latencies add up to less than 1; but wrk corrects its figures for coordinated
# omission (a latency longer than the mean time between a connection's requests adds the
# latencies of the requests it held back), so a true tail lifts the sum a little above 1
# and a stall of wrk's own thread far above it. A measurement above 1.05 is named in a
# warning: its p50/p99 hold many latencies wrk added, not only the requests' own. Then
# the ratio lines. Each CPU ratio is given round by round as well, with the median of
# those ratios and an interval that holds that median with 95% confidence (no assumption
# on the noise's shape: order statistics of the rounds, from 6 rounds up; with fewer,
# the whole range and its confidence). Against nginx the line judges the target of at
# most 1.0x: met when the whole interval is at or below it, not met when the whole
# interval is above it, else undecided. Two more lines judge the p99 (at most nginx's)
# and the requests/s (at least nginx's) the same way, round by round.
# Needs wrk and nginx (installed from Debian when missing, as root).
set -euo pipefail
# The rest is one block, read whole before any of it runs: editing this file, or a
# checkout, while a run is under way does not change what the run does.
{
cd "$(dirname "$0")/../.."
. benches/load/common.sh
DUR=${1:-8}
ROUNDS=${2:-3}
CONNS=${CONNS:-"32 256"}
IDLE=${IDLE:-10000}
IDLE_HOLD=${IDLE_HOLD:-15}
TARGET_DIR=${CARGO_TARGET_DIR:-./target}
BIN=${BIN:-$TARGET_DIR/release/bsk-sidecar}
BASE_BIN=${BASE_BIN:-}
ALT_BIN=${ALT_BIN:-}
alt_replay_checked
ALT_LABEL=${ALT_LABEL:-alt}
# More bodies than any target serves in DUR seconds here (the sidecar up to 66k/s, nginx
# 80k/s on 2026-12-02): a body sent twice is refused as a replay (non-2xx), which is
# cheaper than a real request and would flatter the sidecar's CPU per request.
BODIES=${BODIES:-$((DUR * 100000))}

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get install -y wrk nginx >/dev/null
fi
if [ "${REDIS:-0}" = 1 ] && ! command -v redis-server >/dev/null; then
  apt-get install -y redis-server >/dev/null
fi
[ -x "$BIN" ] || cargo build --release --bin bsk-sidecar
GEN=${GEN:-$TARGET_DIR/release/load-bodies}
[ -x "$GEN" ] || cargo build --release --features bench-tools --bin load-bodies
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
SC_PID=
RD_PID=
cleanup() {
  [ -n "$SC_PID" ] && kill "$SC_PID" 2>/dev/null
  [ -n "$RD_PID" ] && kill "$RD_PID" 2>/dev/null
  nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -s stop 2>/dev/null || true
  nginx -p "$WORK/px" -c "$WORK/px/nginx.conf" -s stop 2>/dev/null || true
  [ -f "$WORK/pa/nginx.conf" ] && nginx -p "$WORK/pa" -c "$WORK/pa/nginx.conf" -s stop 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

UP=$(free_port); ST=$(free_port); PX=$(free_port); SC=$(free_port); RD=$(free_port)

start_upstream "$WORK/up" "server { listen 127.0.0.1:$ST; location / { stub_status; } }"
nginx_conf "$WORK/px" "$(proxy_block "$PX")"
nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"
wait_port "$PX"
# NGINX_ALL=1: the same proxy with one worker process per core, as the sidecar's default
# runs one connection worker per core.
if [ "${NGINX_ALL:-0}" = 1 ]; then
  PA=$(free_port)
  nginx_conf "$WORK/pa" "$(proxy_block "$PA")" auto
  nginx -p "$WORK/pa" -c "$WORK/pa/nginx.conf"
  wait_port "$PA"
  PA_PIDS=$(pids_of "$WORK/pa")
fi
UP_PIDS=$(pids_of "$WORK/up")
PX_PIDS=$(pids_of "$WORK/px")


start_sidecar() { # $1 binary, $2 backend, $3 log level (default warn: no access log), $4 workers,
  # $5 "shared": in this script's session (the flood scenario), not one of its own,
  # $6 "off": without replay protection; sets SC_PID
  local state session=setsid
  state=$(mktemp -d "$WORK/state.XXXX")
  sidecar_conf "$state" "${2:-}" "${4:-}" "${6:-}" > "$state.yaml"
  [ "${5:-}" = shared ] && session=
  RUST_LOG=${3:-warn} $session "$1" --log-format "${LOG_FORMAT:-human}" run --config "$state.yaml" 2>>"$WORK/sidecar.log" &
  SC_PID=$!
  wait_port "$SC" || { cat "$WORK/sidecar.log" >&2; exit 1; }
  [ -z "$session" ] || session_leader "$SC_PID"
}
stop_sidecar() { kill "$SC_PID"; wait "$SC_PID" 2>/dev/null || true; SC_PID=; }
bodies_lua "$WORK/bodies.lua"


HZ=$(getconf CLK_TCK)
# CPU ticks of the processes: fields $1 of /proc/<pid>/stat (14 utime, 15 stime), summed.
stat_ticks() { local f=$1 t=0 v; shift; for p in "$@"; do for v in $(cut -d' ' -f"$f" "/proc/$p/stat"); do t=$((t + v)); done; done; echo "$t"; }
ticks() { stat_ticks 14,15 "$@"; }
uticks() { stat_ticks 14 "$@"; } # the user-space share alone
hwm_kib() { local t=0 v; for p in "$@"; do v=$(awk '/VmHWM/ {print $2}' "/proc/$p/status"); t=$((t + v)); done; echo "$t"; }
# Resident KiB now, anonymous and file-backed (the binary's and libraries' mapped pages).
rss_split() { cat $(for p in "$@"; do echo "/proc/$p/status"; done) | awk '/RssAnon/ {a += $2} /RssFile/ {f += $2} END {print a + 0, f + 0}'; }
# Context switches of every thread of the processes (voluntary: a thread waited; not:
# it was preempted), for the wake-ups a design costs per request.
switches() { cat $(for p in "$@"; do echo /proc/$p/task/*/status; done) 2>/dev/null | awk '/ctxt_switches/ {t += $2} END {print t + 0}'; }
accepts() { curl -s "http://127.0.0.1:$ST/" | awk 'NR==3 {print $1}'; }

RESULTS="$WORK/results.tsv"
measure() { # $1 label, $2 conns, $3 port, $4.. proxy pids
  local label=$1 c=$2 port=$3; shift 3
  local t0 u0 a0 s0 out t1 u1 a1 s1
  a0=$(accepts); t0=$(ticks "$@"); u0=$(ticks $UP_PIDS); s0=$(switches "$@"); o0=$(uticks "$@")
  if [ -n "${PERF:-}" ] && [ "$label" = "${PERF_LABEL:-sidecar}" ]; then
    # shellcheck disable=SC2086 # PERF_ARGS is a list of perf options
    # Every process of the target (nginx: its master and worker).
    perf record -q ${PERF_ARGS:--F 499 -g} -p "$(IFS=,; echo "$*")" -o "$PERF.$c" -- sleep "$DUR" 2>/dev/null &
  fi
  out=$(wrk -t1 -c"$c" -d"${DUR}s" --latency -s "$WORK/bodies.lua" "http://127.0.0.1:$port/bsk/status" -- "$WORK/bodies.txt")
  t1=$(ticks "$@"); u1=$(ticks $UP_PIDS); a1=$(accepts); s1=$(switches "$@"); o1=$(uticks "$@")
  echo "$out" | python3 -c '
import re, sys
out = sys.stdin.read()
label, c, hz, cpu, up, newc, hwm, sw, ucpu, split = sys.argv[1:]
anon, mapped = (int(k) / 1024 for k in split.split())
def ms(s):
    v, unit = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]
m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
reqs = int(m.group(1))
took = float(m.group(2)) * {"ms": 1e-3, "s": 1, "m": 60}[m.group(3)]
# Each connection has one request in flight at most, so the latencies of a true run add
# up to less than connections x duration. wrk has reported runs (nginx as well as the
# sidecar, for minutes at a time on this VM) whose latencies add up to several times
# that: their percentiles are not the latencies of the requests. This is the sum, as a share.
mean = ms(re.search(r"Latency\s+(\S+)", out).group(1))
held = mean / 1e3 * reqs / (int(c) * took)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
bad = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: (.*)", out)
errs = m.group(1) if m else "none"
us = int(cpu) / int(hz) * 1e6 / max(reqs, 1)
user = int(ucpu) / int(hz) * 1e6 / max(reqs, 1)
uu = int(up) / int(hz) * 1e6 / max(reqs, 1)
cs = int(sw) / max(reqs, 1)
print(f"{label}\t{c}\t{rps:.0f}\t{p50:.2f}\t{p99:.2f}\t{us:.1f}\t{uu:.1f}\t{newc}\t{int(hwm)/1024:.1f}\t{bad}\t{cs:.3f}\t{user:.1f}\t{held:.2f}")
print(f"  {label:9} c={c:<4} {rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  {us:5.1f} µs CPU/req (user {user:4.1f})  upstream {uu:5.1f} µs/req  new upstream conns {newc:>5}  peak RSS {int(hwm)/1024:5.1f} MiB (at the end {anon:.1f} anonymous, {mapped:.1f} file)  non-2xx {bad}  {cs:.2f} context switches/req  socket errors: {errs}  latency sum / (conns x time) {held:.2f}", file=sys.stderr)
' "$label" "$c" "$HZ" $((t1 - t0)) $((u1 - u0)) $((a1 - a0 - 1)) "$(hwm_kib "$@")" $((s1 - s0)) $((o1 - o0)) "$(rss_split "$@")" >> "$RESULTS"
}

TARGETS="nginx"
[ "${NGINX_ALL:-0}" = 1 ] && TARGETS="$TARGETS nginx-all"
[ -n "$BASE_BIN" ] && TARGETS="$TARGETS baseline"
TARGETS="$TARGETS sidecar"
[ "${SAME:-0}" = 1 ] && TARGETS="$TARGETS sidecar-again"
[ -n "$ALT_BIN" ] && TARGETS="$TARGETS $ALT_LABEL"
[ "${LOGS:-0}" = 1 ] && TARGETS="$TARGETS logged"
if [ "${REDIS:-0}" = 1 ]; then
  TARGETS="$TARGETS redis"
  redis-server --port "$RD" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    > "$WORK/redis.log" 2>&1 &
  RD_PID=$!
  wait_port "$RD" || { cat "$WORK/redis.log" >&2; exit 1; }
fi
# "sidecar-again" is the sidecar started again: the same binary, log level and workers.
role_of() { case $1 in sidecar-again) echo sidecar ;; *) echo "$1" ;; esac; }
bin_of() { case $1 in baseline) echo "$BASE_BIN" ;; sidecar | redis | logged) echo "$BIN" ;; *) echo "$ALT_BIN" ;; esac; }
level_of() {
  case $1 in
    logged) echo info ;;
    nginx | baseline | sidecar | redis) echo warn ;;
    *) echo "${ALT_LEVEL:-warn}" ;;
  esac
}
# $2 for the variant (ALT_BIN's target), nothing for the others.
alt_only() { case $1 in nginx | baseline | sidecar | redis | logged) ;; *) echo "$2" ;; esac; }
workers_of() { alt_only "$1" "${ALT_WORKERS:-}"; }
replay_of() { alt_only "$1" "${ALT_REPLAY:-}"; }
# A key prefix per start: Redis outlives each sidecar, and the bodies of a round repeat
# between its measurements, so a shared prefix would turn the next run's requests into
# replays.
backend_of() {
  if [ "$1" = redis ]; then
    echo "{ redis: \"redis://127.0.0.1:$RD/0\", replicas: 1, redis_prefix: \"bench$(date +%s%N)\" }"
  fi
}
echo "load: $(nproc) cores; $(uptime)" >&2
for round in $(seq "$ROUNDS"); do
  "$GEN" "$BODIES" > "$WORK/bodies.txt"
  # Rotate the order each round, so no target always runs first or last.
  set -- $TARGETS
  for _ in $(seq $(( (round - 1) % $# ))); do set -- "${@:2}" "$1"; done
  order="$*"
  echo "round $round: $order" >&2
  for c in $CONNS; do
    for t in $order; do
      if [ "$t" = nginx ]; then
        measure nginx "$c" "$PX" $PX_PIDS
      elif [ "$t" = nginx-all ]; then
        measure nginx-all "$c" "$PA" $PA_PIDS
      else
        r=$(role_of "$t")
        start_sidecar "$(bin_of "$r")" "$(backend_of "$r")" "$(level_of "$r")" "$(workers_of "$r")" "" "$(replay_of "$r")"
        r0=0; if [ "$t" = redis ]; then r0=$(ticks "$RD_PID"); fi
        measure "$t" "$c" "$SC" "$SC_PID"; stop_sidecar
        # redis-server's own CPU, per request of the run just measured.
        if [ "$t" = redis ]; then
          echo -e "rcpu\t$c\t$(( $(ticks "$RD_PID") - r0 ))\t$(tail -1 "$RESULTS" | cut -f3)" >> "$RESULTS"
        fi
      fi
    done
  done
done

# Idle keep-alive connections: one request each, sent 200 at a time, then held.
if [ "$IDLE" -gt 0 ]; then
  "$GEN" 1 > "$WORK/one.txt"
  for t in $TARGETS; do
    if [ "$t" = nginx ] || [ "$t" = nginx-all ] || [ "$t" = redis ] || [ "$t" = logged ] || [ "$t" = sidecar-again ]; then continue; fi
    start_sidecar "$(bin_of "$t")"
    rss0=$(hwm_kib "$SC_PID")
    held=$(python3 benches/load/idle.py 127.0.0.1 "$SC" "$IDLE" 200 "$WORK/bodies.txt" "$SC_PID" "$IDLE_HOLD")
    echo -e "idle\t$t\t$IDLE\t$(awk "BEGIN {printf \"%.1f\", $rss0/1024}")\t$(awk "BEGIN {printf \"%.1f\", $(hwm_kib "$SC_PID")/1024}")\t$(awk "BEGIN {printf \"%.1f\", $held/1024}")" >> "$RESULTS"
    stop_sidecar
  done
fi

# Flood isolation: the legitimate client (127.0.0.1, c=32) alone, then while 127.0.0.10-249
# (not allowlisted: refused at accept) opens connections as fast as it can, then while
# 127.0.0.3 (allowlisted, its route limited to 100/s) sends keep-alive requests past
# its limit. The cost of a refusal is measured with each flood alone: sidecar CPU /
# refusals. The sidecar, wrk and the flooder share this script's session here, the layout
# of every round before the proxies ran in sessions of their own: on one 2-core machine
# the flooder's own CPU competes with the legitimate client, and how much it takes from
# it depends on how the scheduler groups the three (BENCHMARKS.md, the forty-first
# round), so the layout stays fixed for the figures to compare.
if [ "${FLOOD:-1}" = 1 ]; then
  for phase in solo connect request connect-alone request-alone; do
    start_sidecar "$BIN" "" "" "" shared
    kind=${phase%-alone}
    src="127.0.0.*"; [ "$kind" = request ] && src=127.0.0.3
    t0=$(ticks "$SC_PID")
    reqs=0; flood=none
    case $phase in
      *-alone)
        flood=$(python3 benches/load/flood.py "$kind" "$src" 127.0.0.1 "$SC" "$DUR") ;;
      *)
        FP=
        if [ "$phase" != solo ]; then
          python3 benches/load/flood.py "$kind" "$src" 127.0.0.1 "$SC" $((DUR + 1)) > "$WORK/flood.out" & FP=$!
          sleep 0.5
          t0=$(ticks "$SC_PID")
        fi
        out=$(wrk -t1 -c32 -d"${DUR}s" -s "$WORK/bodies.lua" "http://127.0.0.1:$SC/bsk/status" -- "$WORK/bodies.txt")
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        if [ -n "$FP" ]; then wait "$FP" || true; flood=$(cat "$WORK/flood.out"); fi ;;
    esac
    t1=$(ticks "$SC_PID")
    echo -e "flood\t$phase\t$reqs\t$((t1 - t0))\t$flood" >> "$RESULTS"
    echo "  flood $phase: legitimate $reqs requests; flood: $flood" >&2
    stop_sidecar
  done
fi

python3 - "$RESULTS" "$HZ" "$DUR" "$IDLE_HOLD" "${ALT_BIN:+$ALT_LABEL}" <<'PY'
import sys, statistics as st
from math import comb
rows, idle, flood, rcpu = {}, [], {}, {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "rcpu":
        # redis-server ticks over one run, and that run's req/s.
        us = int(f[2]) / int(sys.argv[2]) * 1e6 / max(float(f[3]) * int(sys.argv[3]), 1)
        rcpu.setdefault(int(f[1]), []).append(us); continue
    if f[0] == "idle":
        idle.append(f); continue
    if f[0] == "flood":
        flood[f[1]] = f; continue
    rows.setdefault((f[0], int(f[1])), []).append([float(x) for x in f[2:]])
med = {k: [st.median(col) for col in zip(*v)] for k, v in rows.items()}
for (t, c), v in sorted(rows.items()):
    refused = sum(r[7] for r in v)
    if refused:
        print(f"WARNING: {t} at c={c} answered {refused:.0f} requests non-2xx; its CPU per request "
              "is not comparable (more bodies than requests: BODIES)", file=sys.stderr)
def per_round(t, other, c, target=None, col=3, most=True):
    # Column col (default CPU/req) of t against other, round by round (the two measured
    # within minutes of each other), to show how far this machine's noise moves one
    # ratio; then their median and a distribution-free interval for it: between the
    # k-th smallest and the k-th largest ratio, k the largest for which the median lies
    # there with at least 95% confidence (a binomial count of the rounds on either side;
    # with too few rounds, the whole range and the confidence it has). With a target,
    # whether the ratio is at most that: met when all of the interval is at or below,
    # not met when all is above (with most=False, at least that: the other way round).
    pairs = zip(rows.get((t, c), []), rows.get((other, c), []))
    rs = [a[col] / b[col] for a, b in pairs if b[col]]
    listed = ", ".join(f"{r:.2f}" for r in rs)
    if len(rs) < 2:
        return listed
    n, rs = len(rs), sorted(rs)
    conf = lambda k: 1 - 2 * sum(comb(n, i) for i in range(k)) / 2 ** n
    k = max([k for k in range(1, n // 2 + 1) if conf(k) >= 0.95] or [1])
    lo, hi = rs[k - 1], rs[n - k]
    said = ""
    if target is not None:
        # A target is a most (CPU, latency) or, with most=False, a least (throughput).
        good, bad = (hi <= target, lo > target) if most else (lo >= target, hi < target)
        said = ": {} {:.1f}x {}".format(
            "<=" if most else ">=", target, "too few rounds to judge (6 give 95%)" if conf(k) < 0.95 else
            "met" if good else "not met" if bad else "undecided")
    return f"{listed}; median of rounds {st.median(rs):.2f}x, {conf(k):.0%} interval {lo:.2f}-{hi:.2f}x{said}"
cols = ["req/s", "p50 ms", "p99 ms", "CPU µs/req", "upstream µs/req", "new upstream conns", "peak RSS MiB", "non-2xx", "ctx switches/req", "user µs/req", "latency held"]
HELD = 1.05  # latency held above this: the measurement's p50/p99 hold many latencies wrk added
lifted = [(t, c, r[10]) for (t, c), v in rows.items() for r in v if len(r) > 10 and r[10] > HELD]
if lifted:
    print(f"WARNING: {len(lifted)} of {sum(map(len, rows.values()))} measurements report latencies that add up to more "
          f"than their connections could have waited (latency held > {HELD}, at most "
          f"{max(h for _, _, h in lifted):.1f}): their p50/p99 hold many latencies wrk added for the requests "
          "a long wait held back, not only the requests' own", file=sys.stderr)
print("\nmedian over rounds:")
print(f"{'target':9} {'conns':>5} " + " ".join(f"{c:>18}" for c in cols))
for (t, c), v in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"{t:9} {c:>5} " + " ".join(f"{x:>18.2f}" for x in v))
for c in sorted({c for _, c in med}):
    for t in sorted({t for t, _ in med} - {"nginx", "nginx-all"}):
        if (t, c) in med and ("nginx", c) in med:
            a, n = med[(t, c)], med[("nginx", c)]
            print(f"c={c} {t}/nginx: CPU/req {a[3]/n[3]:.2f}x (per round {per_round(t, 'nginx', c, 1.0)}; user {a[9]/n[9]:.2f}x, system {(a[3]-a[9])/(n[3]-n[9]):.2f}x)  req/s {a[0]/n[0]:.2f}x  p99 {a[2]:.2f}/{n[2]:.2f} ms  new upstream conns {a[5]:.0f}/{n[5]:.0f}  peak RSS {a[6]:.1f}/{n[6]:.1f} MiB")
            # The latency and throughput targets, paired round by round as the CPU's is.
            print(f"c={c} {t}/nginx: p99 (per round {per_round(t, 'nginx', c, 1.0, col=2)})")
            print(f"c={c} {t}/nginx: req/s (per round {per_round(t, 'nginx', c, 1.0, col=0, most=False)})")
    for t in sorted({t for t, _ in med} - {"nginx", "nginx-all"}):
        if (t, c) in med and ("nginx-all", c) in med:
            a, n = med[(t, c)], med[("nginx-all", c)]
            print(f"c={c} {t}/nginx-all: CPU/req {a[3]/n[3]:.2f}x (per round {per_round(t, 'nginx-all', c)})  req/s {a[0]/n[0]:.2f}x  p99 {a[2]:.2f}/{n[2]:.2f} ms")
    for t in sorted({t for t, _ in med} - {"nginx", "nginx-all", "baseline"}):
        if ("baseline", c) in med and (t, c) in med:
            a, b = med[(t, c)], med[("baseline", c)]
            print(f"c={c} {t}/baseline: CPU/req {a[3]/b[3]:.2f}x (per round {per_round(t, 'baseline', c)}; user {a[9]/b[9]:.2f}x)  req/s {a[0]/b[0]:.2f}x  p99 {a[2]/b[2]:.2f}x  peak RSS {a[6]/b[6]:.2f}x")
    # A variant (ALT_BIN) against the sidecar itself, paired round by round: what the
    # change it carries does, judged by its own interval rather than read off two ratios
    # against nginx.
    t = sys.argv[5]
    if t and (t, c) in med and ("sidecar", c) in med:
        a, e = med[(t, c)], med[("sidecar", c)]
        print(f"c={c} {t}/sidecar: CPU/req {a[3]/e[3]:.2f}x (per round {per_round(t, 'sidecar', c)}; user {a[9]/e[9]:.2f}x, system {(a[3]-a[9])/(e[3]-e[9]):.2f}x)  req/s {a[0]/e[0]:.2f}x  p99 {a[2]:.2f}/{e[2]:.2f} ms  context switches/req {a[8]:.2f}/{e[8]:.2f}")
    if ("sidecar-again", c) in med and ("sidecar", c) in med:
        g, e = med[("sidecar-again", c)], med[("sidecar", c)]
        print(f"c={c} sidecar-again/sidecar (one binary twice: the noise): CPU/req {g[3]/e[3]:.2f}x (per round {per_round('sidecar-again', 'sidecar', c)}; user {g[9]/e[9]:.2f}x)  req/s {g[0]/e[0]:.2f}x  p99 {g[2]/e[2]:.2f}x")
    if ("logged", c) in med and ("sidecar", c) in med:
        l, e = med[("logged", c)], med[("sidecar", c)]
        # Paired round by round, and judged against the target of at most 10% more.
        print(f"c={c} access log on / off: CPU/req {l[3]/e[3]:.2f}x (per round {per_round('logged', 'sidecar', c, 1.1)})  req/s {l[0]/e[0]:.2f}x  p99 {l[2]:.2f}/{e[2]:.2f} ms  context switches/req {l[8]:.3f}/{e[8]:.3f}")
    if ("redis", c) in med and ("sidecar", c) in med:
        r, e = med[("redis", c)], med[("sidecar", c)]
        extra = f"  redis-server {st.median(rcpu[c]):.1f} µs CPU/req" if c in rcpu else ""
        print(f"c={c} redis vs embedded: p50 {r[1] - e[1]:+.2f} ms  p99 {r[2] - e[2]:+.2f} ms  sidecar CPU/req {r[3] - e[3]:+.1f} µs ({r[3]/e[3]:.2f}x)  req/s {r[0]/e[0]:.2f}x{extra}")
for f in idle:
    print(f"idle: {f[1]} holding {f[2]} keep-alive connections: peak RSS {f[4]} MiB (at start {f[3]} MiB), {f[5]} MiB after holding them {sys.argv[4]} s")
if "solo" in flood:
    hz = int(sys.argv[2])
    solo_reqs = int(flood["solo"][2])
    print(f"flood: legitimate client alone {solo_reqs} requests, {int(flood['solo'][3]) / hz * 1e6 / solo_reqs:.1f} µs CPU each")
    def refused(what):
        if what[0] == "connections":
            return int(what[1])
        return sum(int(kv.split(":")[1]) for kv in what[1:] if not kv.startswith("200:"))
    for kind in ("connect", "request"):
        line = f"flood {kind}:"
        if kind in flood:
            line += f" legitimate client kept {int(flood[kind][2]) / solo_reqs:.0%} of its solo throughput;"
        if kind + "-alone" in flood:
            f = flood[kind + "-alone"]
            n = refused(f[4].split())
            line += f" alone, {n} refused at {int(f[3]) / hz * 1e6 / max(n, 1):.1f} µs CPU per refusal"
        print(line)
PY

if [ -n "${PERF:-}" ]; then
  for c in $CONNS; do
    [ -f "$PERF.$c" ] || continue
    echo "profile of the sidecar at c=$c (top entries, % of its samples):"
    python3 benches/load/profile.py "$PERF.$c" "$BIN" 20
    echo "the hottest instructions of its busiest functions (where a request waits on memory):"
    python3 benches/load/hotspots.py "$PERF.$c" 3 6
  done
fi
exit
}
