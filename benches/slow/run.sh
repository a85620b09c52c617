#!/usr/bin/env bash
# Slow attacks (slowloris, slow body, slow read) against the sidecar on a [token, jwt]
# route while a legitimate client keeps sending valid sealed requests; prints the
# legitimate client's success rate and p50/p99 latency without attack and during each
# attack, in one run. Run by hand, not in CI. Loopback only; bounded in time.
#
#   benches/slow/run.sh [ATTACK_SECONDS] [ATTACK_CONNECTIONS]      (default 30 s, 1000)
#
# Needs: slowhttptest (apt-get install -y slowhttptest), python3, and builds the release
# binary. The attacker connects from 127.0.0.1. Two legitimate clients run at once: one
# from 127.0.0.2 (another address, as the portal is not the attacker: the line that
# matters) and one from 127.0.0.1 (sharing the attacker's address, where the per-address
# connection cap is expected to refuse it). The sidecar runs with its default limits
# (header_read_timeout 10s, body_read_timeout 30s, max_connections_per_ip 256).
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-30}
CONNS=${2:-1000}
RAMP=6 # seconds for slowhttptest to open its connections before measuring
BIN=./target/release/bsk-sidecar
HERE=benches/slow
command -v slowhttptest >/dev/null || { echo "slowhttptest missing: apt-get install -y slowhttptest" >&2; exit 2; }
cargo build --release --quiet
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { # $1 port: wait until something accepts there (bounded)
    for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "nothing listens on 127.0.0.1:$1" >&2; exit 1
}
UP=$(free_port); SC=$(free_port); ADMIN=$(free_port)

python3 "$HERE/upstream.py" "$UP" &
PIDS+=($!)
cat >"$WORK/sidecar.yaml" <<CONF
admin: { listen: 127.0.0.1:$ADMIN }
state: { dir: $WORK/state }
limits: { per_ip_rate: { per_second: 1000000, burst: 1000000 } }
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: { secret: "slow-bench-secret", require_exp: false }
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
PIDS+=($!)
wait_port "$UP"
wait_port "$SC"

echo '{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/003","applicationNo":"123456"}' |
    "$BIN" seal --envelope token,jwt --jwt-secret slow-bench-secret --passcode 376423 >"$WORK/body.json"
URL="http://127.0.0.1:$SC/bsk/status"

clients() { # $1 label: both legitimate clients for DUR seconds, at once
    python3 "$HERE/client.py" "$1" "$URL" "$WORK/body.json" "$DUR" 127.0.0.2 >"$WORK/$1.other" &
    local other=$!
    python3 "$HERE/client.py" "$1" "$URL" "$WORK/body.json" "$DUR" 127.0.0.1 >"$WORK/$1.same" &
    local same=$!
    wait "$other" "$same"
    sed 's/^/other IP  /' "$WORK/$1.other"
    sed 's/^/same IP   /' "$WORK/$1.same"
}

echo "sidecar on 127.0.0.1:$SC; attacks ${DUR}s x $CONNS connections from 127.0.0.1"
echo "legitimate clients: 'other IP' from 127.0.0.2, 'same IP' from the attacker's 127.0.0.1"
clients baseline

attack() { # $1 label, rest: slowhttptest mode options
    local label=$1; shift
    slowhttptest "$@" -c "$CONNS" -r 200 -l $((DUR + RAMP + 5)) -u "$URL" -p 3 >"$WORK/$label.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    sleep "$RAMP" # let the attacker open its connections; the measurement starts after
    clients "$label"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # slowhttptest's own view at the end: connections it still held, and whether its probe
    # found the service available.
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/$label.log" |
        grep -E '^\s*(closed|pending|connected|service available):' | tail -n 4 |
        tr -s ' \t' ' ' | paste -sd' ' | sed "s/^/             attacker: /"
}
attack slowloris -H -i 5 -x 24 -t POST
attack slow-body -B -i 5 -x 24 -s 16384 -f application/json
attack slow-read -X -k 3 -w 16 -y 32 -n 5 -z 8 -t GET

echo "sidecar counters after the run:"
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E '^bsk_[a-z_]*(reject|refus|timeout|connection|closed)[a-z_]*(\{| )' | grep -v ' 0$' | sed 's/^/  /' || true
