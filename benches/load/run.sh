#!/usr/bin/env bash
# Load test: CPU per request of the sidecar's whole pipeline ([token, jwt] route:
# passcode + HS256 verify + forward) against nginx as a plain reverse proxy, both in
# front of the same nginx upstream, measured in the same run. Loopback only; bounded.
#
#   benches/load/run.sh [DURATION_SECONDS] [CONNECTIONS]
#
# Needs: wrk, nginx (Debian packages), a release build (cargo build --release).
# Prints requests/s and CPU µs per request for each, and the ratio sidecar / nginx.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10}
CONNS=${2:-32}
BIN=./target/release/bsk-sidecar
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -s stop 2>/dev/null; nginx -p "$WORK/px" -c "$WORK/px/nginx.conf" -s stop 2>/dev/null; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
UP=$(free_port); PX=$(free_port); SC=$(free_port)

nginx_conf() { # $1 dir, $2 server block
  mkdir -p "$1/logs"
  cat > "$1/nginx.conf" <<CONF
worker_processes 1;
daemon on;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  $2
}
CONF
}
nginx_conf "$WORK/up" "server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{\"statusCode\":200}'; } }"
nginx_conf "$WORK/px" "server { listen 127.0.0.1:$PX; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"

cat > "$WORK/sidecar.yaml" <<CONF
admin: { listen: "off" }
state: { dir: $WORK/state }
limits: { per_ip_rate: { per_second: 1000000, burst: 1000000 } }
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: { secret: "bench-secret", require_exp: false }
    allow: [127.0.0.0/8]
listeners:
  - name: public
    listen: 127.0.0.1:$SC
    routes:
      - path: /bsk/status
        from: bsk
        envelope: [token, jwt]
        upstream: http://127.0.0.1:$UP/bsk/status
CONF
RUST_LOG=warn "$BIN" run --config "$WORK/sidecar.yaml" 2>"$WORK/sidecar.log" &
SC_PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$SC) 2>/dev/null && break; sleep 0.05; done

BODY=$(echo '{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/003","applicationNo":"123456"}' |
  "$BIN" seal --envelope token,jwt --jwt-secret bench-secret --passcode 376423)
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
LUA

cpu_ticks() { # utime+stime of all given pids, in clock ticks
  local t=0; for p in "$@"; do set -- $(cut -d' ' -f14,15 /proc/$p/stat); t=$((t + $1 + $2)); done; echo $t; }
HZ=$(getconf CLK_TCK)

measure() { # $1 label, $2 url, $3.. pids
  local label=$1 url=$2; shift 2
  local before after out reqs
  before=$(cpu_ticks "$@")
  out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" -s "$WORK/post.lua" "$url")
  after=$(cpu_ticks "$@")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  local us=$(python3 -c "print(round(($after-$before)/$HZ*1e6/$reqs,1))")
  echo "$label: $reqs requests, $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s, ${us} µs CPU/request, non-2xx: ${non2xx:-0}" >&2
  echo "$us"
}
PX_MASTER=$(cat "$WORK/px/nginx.pid")
PX_PIDS="$PX_MASTER $(pgrep -P "$PX_MASTER" | tr '\n' ' ')"
NG=$(measure "nginx proxy " "http://127.0.0.1:$PX/bsk/status" $PX_PIDS)
SCU=$(measure "bsk-sidecar " "http://127.0.0.1:$SC/bsk/status" $SC_PID)
echo "ratio sidecar/nginx CPU per request: $(python3 -c "print(round($SCU/$NG,2))")"
