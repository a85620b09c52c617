#!/usr/bin/env bash
# CI smoke run of the load benchmark: `run.sh` for one short round at 32 connections, with
# a small idle-connection scenario, on debug builds (no release build in CI: whole-program
# optimisation takes minutes). It measures nothing worth reading; it fails when the
# benchmark itself is broken: a target that does not start, a request not answered 2xx,
# a scenario that does not run to its end. Loopback only; about a minute after the build.
# Usage: benches/load/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TERM_COLOR=never
TARGET_DIR=${CARGO_TARGET_DIR:-./target}

cargo build --features bench-tools --bin bsk-sidecar --bin load-bodies
out=$(mktemp)
trap 'rm -f "$out"' EXIT
BIN=$TARGET_DIR/debug/bsk-sidecar GEN=$TARGET_DIR/debug/load-bodies BODIES=20000 \
  CONNS=32 IDLE=200 IDLE_HOLD=1 FLOOD=0 benches/load/run.sh 1 1 2>&1 | tee "$out"

fail=0
for target in nginx sidecar; do
  line=$(grep -E "^  $target +c=32 " "$out" || true)
  if [ -z "$line" ]; then
    echo "load smoke: no measurement of $target" >&2
    fail=1
  elif ! grep -q "non-2xx 0 " <<<"$line" || grep -qE " 0 req/s" <<<"$line"; then
    echo "load smoke: $target did not answer every request 2xx: $line" >&2
    fail=1
  fi
done
if ! grep -q "statuses {b'200': 200}" "$out"; then
  echo "load smoke: the idle-connection scenario did not get 200 answers to all 200" >&2
  fail=1
fi
if ! grep -q "^idle: sidecar holding 200 keep-alive connections" "$out"; then
  echo "load smoke: no idle-connection result" >&2
  fail=1
fi
[ "$fail" = 0 ] && echo "load smoke: ok"
exit "$fail"
