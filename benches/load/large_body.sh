#!/usr/bin/env bash
# CPU and receive calls per request carrying a 1,000,000-byte body (under the default
# 1 MiB `max_body`), sent back to back on one keep-alive connection to the benchmark's
# `[token, jwt, aes]` route. The body is read whole before the envelope refuses it (401),
# so this measures reading a large body: how many reads it takes and what they cost.
# Loopback only.
#
#   BIN=<build> [BASE_BIN=<build>] benches/load/large_body.sh [REQUESTS=1000] [ROUNDS=2]
#
# With BASE_BIN the two builds alternate, ROUNDS times each. CPU is utime+stime from /proc
# (10 ms ticks: keep REQUESTS high); receive calls come from a second, shorter run under
# `strace -c -f`.
set -euo pipefail
# The rest is one block, read whole before any of it runs: editing this file, or a
# checkout, while a run is under way does not change what the run does.
{
cd "$(dirname "$0")/../.."
. benches/load/common.sh
N=${1:-1000}
ROUNDS=${2:-2}
TARGET_DIR=${CARGO_TARGET_DIR:-./target}
BIN=${BIN:-$TARGET_DIR/release/bsk-sidecar}
BASE_BIN=${BASE_BIN:-}
command -v strace >/dev/null || apt-get install -y strace >/dev/null
[ -x "$BIN" ] || cargo build --release --bin bsk-sidecar

WORK=$(mktemp -d)
SC_PID=
cleanup() { [ -n "$SC_PID" ] && kill "$SC_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/send.py" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
req = (b"POST /bsk/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       b"Content-Length: 1000000\r\n\r\n" + b"a" * 1000000)
for _ in range(int(sys.argv[2])):
    s.sendall(req)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("closed before an answer")
        got += chunk
    head, rest = got.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 401 "):
        sys.exit("unexpected answer: " + head.split(b"\r\n")[0].decode())
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(rest) < n:
        rest += s.recv(65536)
PY

measure() { # $1 label, $2 binary
  local label=$1 bin=$2 d c0 c1 st
  SC=$(free_port); UP=$(free_port)
  d=$(mktemp -d "$WORK/state.XXXX"); sidecar_conf "$d" > "$d.yaml"
  RUST_LOG=warn "$bin" run --config "$d.yaml" > "$WORK/sc.log" 2>&1 & SC_PID=$!
  wait_port "$SC"
  python3 "$WORK/send.py" "$SC" 5
  c0=$(awk '{print $14 + $15}' "/proc/$SC_PID/stat")
  python3 "$WORK/send.py" "$SC" "$N"
  c1=$(awk '{print $14 + $15}' "/proc/$SC_PID/stat")
  strace -c -f -p "$SC_PID" -o "$WORK/st" 2>/dev/null & st=$!
  sleep 0.5
  python3 "$WORK/send.py" "$SC" 100
  kill -INT "$st"; wait "$st" || true
  kill "$SC_PID"; wait "$SC_PID" 2>/dev/null || true; SC_PID=
  awk -v label="$label" -v n="$N" -v t=$((c1 - c0)) '
    $NF == "recvfrom" || $NF == "read" { r += $4 } $NF == "epoll_wait" { e = $4 }
    END { printf "%-9s %7.0f µs CPU/request  %6.1f receive calls/request  %5.1f epoll_wait/request\n",
          label, t * 10000 / n, r / 100, e / 100 }' "$WORK/st"
}

for _ in $(seq "$ROUNDS"); do
  measure sidecar "$BIN"
  if [ -n "$BASE_BIN" ]; then measure baseline "$BASE_BIN"; fi
done
exit
}
