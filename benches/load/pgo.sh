#!/usr/bin/env bash
# A profile-guided release build, to measure against the plain one: builds the sidecar
# instrumented (`-Cprofile-generate`), runs it in front of the nginx upstream on loopback
# with the load benchmark's sealed requests (4 s at 32 connections with the access log
# on, 4 s at 256 with it off), merges the counts with `llvm-profdata`, and builds it
# again with them (`-Cprofile-use`). Prints the optimised binary's path, for
# `BASE_BIN=target/release/bsk-sidecar BIN=<it> benches/load/run.sh 8 3`.
#
#   benches/load/pgo.sh [SECONDS]
#
#   PGO_DIR=/tmp/bsk-pgo   where the two builds, the raw counts and the merged profile go
#                          (each build is a full release build: about 8 minutes here)
#
# Not the release build's default: the profile is a 10 MB file tied to the compiler's
# LLVM and to the code it was counted on, and a build from it is a second full build
# after a load run. BENCHMARKS.md (the twenty-second round) has what it measured.
# Needs the toolchain's llvm-tools (`rustup component add llvm-tools`), wrk and nginx.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/load/common.sh
DUR=${1:-4}
PGO_DIR=${PGO_DIR:-/tmp/bsk-pgo}
profdata() { find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1; }
[ -n "$(profdata)" ] || rustup component add llvm-tools >/dev/null
PROFDATA=$(profdata)
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || apt-get install -y "$tool" >/dev/null
done
# RUSTFLAGS replaces .cargo/config.toml's flags: keep its mangling (the code layout's names).
FLAGS="-C symbol-mangling-version=v0"
GEN=${CARGO_TARGET_DIR:-./target}/release/load-bodies
[ -x "$GEN" ] || cargo build --release --features bench-tools --bin load-bodies
CARGO_TARGET_DIR="$PGO_DIR/gen" RUSTFLAGS="$FLAGS -Cprofile-generate=$PGO_DIR/raw" \
  cargo build --release --bin bsk-sidecar
rm -rf "$PGO_DIR/raw"

start_work
bodies_lua "$WORK/bodies.lua"
# Room for about 60,000 requests a second, so no body is sent twice (a replay refused).
"$GEN" $((DUR * 60000)) > "$WORK/bodies.txt"
for run in "info 32" "warn 256"; do
  read -r level conns <<< "$run"
  # A fresh state directory, so the second run's replay table is empty too.
  rm -rf "$WORK/state"; mkdir -p "$WORK/state"
  sidecar_conf "$WORK/state" > "$WORK/sidecar.yaml"
  LLVM_PROFILE_FILE="$PGO_DIR/raw/%p-%m.profraw" RUST_LOG=$level \
    "$PGO_DIR/gen/release/bsk-sidecar" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 &
  VG_PID=$!
  wait_port "$SC" || { cat "$WORK/sidecar.log" >&2; exit 1; }
  wrk -t1 -c"$conns" -d"${DUR}s" -s "$WORK/bodies.lua" "http://127.0.0.1:$SC/bsk/status" \
    -- "$WORK/bodies.txt" | awk '/requests in|Non-2xx/' >&2
  # The counts are written at exit: a clean shutdown on SIGTERM.
  kill -TERM "$VG_PID"; wait "$VG_PID" 2>/dev/null || true; VG_PID=
done
"$PROFDATA" merge -o "$PGO_DIR/merged.profdata" "$PGO_DIR"/raw/*.profraw
# A new profile, a new build: cargo does not see the profile's content change.
rm -rf "$PGO_DIR/use"
CARGO_TARGET_DIR="$PGO_DIR/use" RUSTFLAGS="$FLAGS -Cprofile-use=$PGO_DIR/merged.profdata" \
  cargo build --release --bin bsk-sidecar
echo "$PGO_DIR/use/release/bsk-sidecar"
