#!/usr/bin/env bash
# Outbox write throughput: pushes/s the sidecar accepts (`delivery: queued`, each one
# committed before its 202) with the embedded redb store and with PostgreSQL, one after
# the other on the same machine. Loopback only; about 2 x DURATION seconds plus start-up.
#
#   benches/outbox/run.sh [DURATION_SECONDS] [CONNS]
#
# Every request is a distinct API-2 push (a wrk Lua script numbers the tickets), so each
# is a real insert: outbox row, idempotency key and journal record in one transaction.
# The peer is down (a closed loopback port) with a long retry, so delivery adds only a
# failed attempt now and then and the queue grows: this measures the write path.
# PostgreSQL is a throwaway cluster (initdb + pg_ctl, default settings: fsync and
# synchronous_commit on), run as `postgres` when this runs as root. Needs wrk and the
# PostgreSQL server binaries (.ci/install-state-deps installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10}
CONNS=${2:-16}
TARGET_DIR=${CARGO_TARGET_DIR:-./target}
BIN=${BIN:-$TARGET_DIR/release/bsk-sidecar}
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
[ -x "$BIN" ] || cargo build --release --bin bsk-sidecar

PGBIN=$(pg_config --bindir 2>/dev/null || true)
[ -x "$PGBIN/initdb" ] || PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
AS=()
[ "$(id -u)" = 0 ] && AS=(runuser -u postgres --)

WORK=$(mktemp -d)
SC_PID=
cleanup() {
  [ -n "$SC_PID" ] && kill "$SC_PID" 2>/dev/null
  "${AS[@]}" "$PGBIN/pg_ctl" stop -w -m fast -D "$WORK/pg/data" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

chmod 755 "$WORK"; mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"
PGPORT=$(free_port)
"${AS[@]}" "$PGBIN/initdb" -A trust -U postgres -E UTF8 -D "$WORK/pg/data" >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" start -w -D "$WORK/pg/data" -l "$WORK/pg/log" \
  -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1" >/dev/null
PGURL="postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable"

cat > "$WORK/push.lua" <<'LUA'
-- `tid` is a global each thread gets from setup(): a local would hide it.
local n = 0
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
request = function()
  n = n + 1
  local body = string.format('{"userid":9054233544,"ticketNo":2022121%d%09d,"serviceCode":"AMD/003","appNo":"A-%d","deptPayRefNo":"2342","paidAmt":200.00,"message":"Draft Submitted","applicationStatus":2,"statusCode":200,"citizenname":"Test Citizen","citizenmobile":"9963258963"}', tid, n, n)
  return wrk.format("POST", "/push", {["Content-Type"] = "application/json"}, body)
end
local shown = false
response = function(status, headers, body)
  if status ~= 202 and not shown then shown = true; io.stderr:write("first non-202: ", status, " ", body, "\n") end
end
LUA

run() { # label backend-yaml
  local label=$1 backend=$2 port state
  port=$(free_port)
  state="$WORK/state-$label"
  cat > "$WORK/$label.yaml" <<YAML
admin: { listen: "off" }
state: { dir: "$state"$backend }
limits:
  per_ip_rate: { per_second: 1000000, burst: 1000000 }
  upstream_connect_timeout: 1s
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: { secret: "outbox-bench-jwt-secret-0123456789abcdef", sign_exp: 5m }
    url: https://127.0.0.1:9/api
listeners:
  - name: egress
    listen: 127.0.0.1:$port
    routes:
      - path: /push
        to: bsk
        remote: /push
        envelope: [token, jwt]
        delivery: queued
        retry: { initial: 30s, max: 5m }
YAML
  RUST_LOG=warn "$BIN" run --config "$WORK/$label.yaml" 2>"$WORK/$label.log" &
  SC_PID=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
  wrk -t2 -c"$CONNS" -d"${DUR}s" -s "$WORK/push.lua" "http://127.0.0.1:$port/push" >"$WORK/$label.wrk" 2>"$WORK/$label.err"
  head -2 "$WORK/$label.err" >&2
  kill "$SC_PID"; wait "$SC_PID" 2>/dev/null || true; SC_PID=
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$label.wrk")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$WORK/$label.wrk"); non2xx=${non2xx:-0}
  p50=$(awk '/Latency/ {print $2; exit}' "$WORK/$label.wrk")
  printf '%-10s pushes/s %8s   mean latency %8s   non-2xx %s   (%s connections, %ss)\n' \
    "$label" "$rps" "$p50" "$non2xx" "$CONNS" "$DUR"
}

echo "== outbox write throughput ($(nproc) cores, $("$PGBIN/postgres" --version))"
run redb ""
run postgres ", backend: { postgres: \"$PGURL\" }"
echo "postgres rows: $(psql -qtA "$PGURL" -c 'SELECT count(*) FROM bsk_outbox') queued, $(psql -qtA "$PGURL" -c 'SELECT count(*) FROM bsk_journal') journaled"
