# Shared by the load benchmarks (run.sh, instructions.sh): ports, the nginx
# configurations, the sidecar's benchmark configuration and wrk's body script. Sourced;
# the functions read UP (the upstream's port) and SC (the sidecar's) when called.

# A free port on 127.0.0.1 for a server of the run. Chosen outside the kernel's range of
# ephemeral ports, which it hands to outgoing connections (wrk's, the proxies' to the
# upstream) and which port 0 draws from, so that no connection takes it before the
# server binds; and never one this shell was given before (kept in $WORK/.ports when
# WORK is set): two draws of port 0 in a row can return the same port.
free_port() {
  python3 - "${WORK:+$WORK/.ports}" <<'PY'
import random, socket, sys
kept = sys.argv[1]
try:
    taken = set(open(kept).read().split()) if kept else set()
except FileNotFoundError:
    taken = set()
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
outside = [p for p in range(10000, 65536) if not lo <= p <= hi and str(p) not in taken]
for port in random.sample(outside, min(len(outside), 200)):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    if kept:
        open(kept, "a").write(f"{port}\n")
    print(port)
    break
else:
    sys.exit("free_port: no free port outside the ephemeral range")
PY
}

# The directory of the toolchain's LLVM tools (llvm-profdata, llvm-nm), which
# `rustup component add llvm-tools` installs when they are missing; fails without them.
llvm_tools() {
  local found
  found=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)
  if [ -z "$found" ]; then
    rustup component add llvm-tools >&2
    found=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)
  fi
  [ -n "$found" ] || { echo "no llvm-profdata in the toolchain" >&2; return 1; }
  dirname "$found"
}

wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

nginx_conf() { # $1 dir, $2 server blocks, $3 worker processes (default 1)
  mkdir -p "$1/logs"
  cat > "$1/nginx.conf" <<CONF
worker_processes ${3:-1};
daemon on;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off;
  # Pools and keep-alive sized so neither side closes connections during a run (nginx's
  # defaults close an upstream connection after 1000 requests and keep 64 idle at most).
  upstream app { server 127.0.0.1:$UP; keepalive 1024; keepalive_requests 100000000; }
  keepalive_requests 100000000;
  $2
}
CONF
}

# The stand-in application: nginx answering every request with a small JSON document,
# on port $UP, from directory $1, with the server blocks $2 beside it (stopped with
# `nginx -p $1 -c $1/nginx.conf -s stop`).
start_upstream() {
  nginx_conf "$1" "server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{\"statusCode\":200}'; } }${2:+
  $2}"
  nginx -p "$1" -c "$1/nginx.conf"
  wait_port "$UP"
}

# For the profiling scripts: a work directory, removed at exit, with the stand-in
# application started in it. Sets WORK, UP and SC (the sidecar's port); at exit also
# kills VG_PID, the process being profiled, when set.
start_work() {
  WORK=$(mktemp -d); VG_PID=
  trap stop_work EXIT
  UP=$(free_port); SC=$(free_port)
  start_upstream "$WORK/up"
}
stop_work() {
  [ -n "$VG_PID" ] && kill "$VG_PID" 2>/dev/null
  nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$WORK"
}

# nginx as a plain reverse proxy to the upstream, listening on port $1.
proxy_block() { echo "server { listen 127.0.0.1:$1; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"; }
# The sidecar runs in a session of its own (`setsid`), as the proxies run when deployed:
# nginx daemonizes (`daemon on`), and systemd starts every service as a session leader.
# With the kernel's autogroups on, each session is one group to the scheduler; a sidecar
# left in the script's session would share that group's share of the CPUs with wrk.
# Started in the background from a non-interactive shell, setsid does not fork, so `$!`
# is the sidecar's pid; this checks it: fails unless pid $1 leads its own session.
session_leader() { [ "$(ps -o sid= -p "$1" | tr -d ' ')" = "$1" ] || { echo "pid $1 is not in a session of its own" >&2; return 1; }; }
# An nginx instance's master and worker pids, from its directory.
pids_of() { local m; m=$(cat "$1/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }

# ALT_REPLAY (run.sh, instructions.sh): "off" or unset; anything else stops the script
# before it starts any work, rather than measuring the default under another name.
alt_replay_checked() {
  case ${ALT_REPLAY:-} in '' | off) ;; *) echo "ALT_REPLAY is 'off' or unset, not '$ALT_REPLAY'" >&2; exit 2 ;; esac
}

# The sidecar: one peer, one [token, jwt, aes] route, every default protection on. The
# limits are raised so the benchmark measures the work, not the refusals.
sidecar_conf() { # $1 state dir, $2 backend (empty: embedded), $3 workers (empty: one per core),
  # $4 "off": the status route without replay protection (a relaxation, which `check` warns
  # of), to measure what the replay check costs
  local replay=
  [ "${4:-}" = off ] && replay=$'\n        replay: false'
  cat <<CONF
admin: { listen: "off" }
state: { dir: $1${2:+, backend: $2} }
limits:${3:+
  workers: $3}
  per_ip_rate: { per_second: 10000000, burst: 10000000 }
  max_connections: 20000
  max_connections_per_ip: 20000
  max_in_flight: 4096
  max_replay_entries: 2000000
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: { secret: "bench-jwt-secret-0123456789abcdef" }
    aes:
      keys:
        - { key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" }
    allow: [127.0.0.1/32]
    rate: { per_second: 10000000, burst: 10000000 }
  flood:                            # the flood scenario's allowlisted flooder
    agid: FLOOD
    passcode: "111111"
    jwt: { secret: "flood-jwt-secret-0123456789abcdef" }
    allow: [127.0.0.3/32]
listeners:
  - name: public
    listen: 127.0.0.1:$SC
    routes:
      - path: /bsk/status
        from: bsk
        envelope: [token, jwt, aes]$replay
        rate: { per_second: 10000000, burst: 10000000 }
        upstream: http://127.0.0.1:$UP/bsk/status
      - path: /flood/status
        from: flood
        envelope: [token, jwt]
        rate: { per_second: 100, burst: 100 }
        upstream: http://127.0.0.1:$UP/flood/status
CONF
}

# wrk's script: one distinct sealed body per request, in file order (from the SKIP-th,
# so a second wrk run on one sidecar sends bodies the first did not); past the end they
# repeat (and a replay-protected route answers 409, which the reports show as non-2xx).
# The script reads the file as it goes rather than holding every body: with hundreds of
# thousands of bodies in its Lua heap, wrk's one thread stalls now and then, and wrk's
# correction for coordinated omission turns each stall into many long latencies (a
# "latency held" above 1, see BENCHMARKS.md).
bodies_lua() { # $1 path of the script to write
  cat > "$1" <<'LUA'
local file
function init(args)
  file = assert(io.open(args[1], "r"))
  file:setvbuf("full", 1048576)
  for _ = 1, tonumber(os.getenv("SKIP") or "0") do file:read("*l") end
end
function request()
  local b = file:read("*l")
  if b == nil then file:seek("set", 0); b = file:read("*l") end
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, b)
end
LUA
}
