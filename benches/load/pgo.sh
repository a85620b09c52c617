#!/usr/bin/env bash
# A profile-guided release build: builds the sidecar instrumented (`-Cprofile-generate`),
# runs it in front of the nginx upstream on loopback with the load benchmark's sealed
# requests (SECONDS at 32 connections with the access log on, SECONDS at 256 with it
# off), merges the counts with `llvm-profdata`, and builds it again with them
# (`-Cprofile-use`). Prints the optimised binary's path, for
# `BASE_BIN=target/release/bsk-sidecar BIN=<it> benches/load/run.sh 8 3`.
#
#   benches/load/pgo.sh [SECONDS]
#
#   PGO_DIR=/tmp/bsk-pgo   where the builds, the raw counts and the merged profile (named
#                          by a hash of its content) go
#                          (each build is a full release build: about 8 minutes here)
#   TARGET=x86_64-unknown-linux-gnu.2.17
#                          build for this target with `cargo zigbuild`, as the packages
#                          are (packaging/build.sh); the CARGO_PROFILE_RELEASE_* settings
#                          in the environment apply as they do there. The profile names
#                          each function with its crate's hash, and cargo-zigbuild's
#                          settings change those hashes: a `cargo build --target` of the
#                          same triple makes a profile that matches nothing in the
#                          packages. So the instrumented build is a `cargo zigbuild`
#                          too, linked by the system's `cc` (`zig cc` cannot link the
#                          profiler's runtime: it takes `-u SYMBOL` for a file name),
#                          which changes no hash
#   STAGE=profile          stop once the profile is merged and print its path instead
#                          packaging/build.sh builds the packages with it
#   BOLT=1                 then lay the optimised binary out again with LLVM's post-link
#                          optimiser (Debian's bolt-19): the second build keeps its
#                          relocations (`--emit-relocs`), BOLT instruments it, the training
#                          runs again on the instrumented binary, and BOLT reorders its
#                          blocks and functions by those counts. Prints that binary's path.
#                          Host builds only (not with TARGET). Measured and not adopted
#                          (BENCHMARKS.md, the forty-third round); this repeats it
#
# The profile is the counts of the code it was made from, by the compiler that built it:
# it is made again for each build, never kept. The training run must answer every
# request 2xx; a refusal or no request at all fails the script.
# Needs the toolchain's llvm-tools (`rustup component add llvm-tools`), wrk and nginx.
set -euo pipefail
# The rest is one block, read whole before any of it runs: editing this file, or a
# checkout, while a run is under way does not change what the run does.
{
cd "$(dirname "$0")/../.."
. benches/load/common.sh
DUR=${1:-4}
PGO_DIR=${PGO_DIR:-/tmp/bsk-pgo}
TARGET=${TARGET:-}
STAGE=${STAGE:-build}
BOLT=${BOLT:-0}
if [ "$BOLT" = 1 ]; then
  [ -z "$TARGET" ] || { echo "pgo.sh: BOLT=1 is for host builds, not TARGET" >&2; exit 1; }
  command -v llvm-bolt-19 >/dev/null || apt-get install -y bolt-19 >&2
  # The tools' own directory: llvm-bolt finds its instrumentation runtime beside it.
  BOLT_TOOLS=/usr/lib/llvm-19/bin
fi
TARGET_DIR=${CARGO_TARGET_DIR:-./target}
PROFDATA=$(llvm_tools)/llvm-profdata
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || apt-get install -y "$tool" >&2
done
# RUSTFLAGS replaces .cargo/config.toml's flags: keep its mangling (the code layout's names).
FLAGS="-C symbol-mangling-version=v0"

# One release build of the sidecar into target directory $1 with the extra flags $2;
# prints the binary's path.
build() {
  if [ -n "$TARGET" ]; then
    CARGO_TARGET_DIR="$1" RUSTFLAGS="$FLAGS $2" \
      cargo zigbuild --locked --release --target "$TARGET" --bin bsk-sidecar >&2
    echo "$1/${TARGET%%.*}/release/bsk-sidecar"
  else
    CARGO_TARGET_DIR="$1" RUSTFLAGS="$FLAGS $2" cargo build --locked --release --bin bsk-sidecar >&2
    echo "$1/release/bsk-sidecar"
  fi
}

# The sealed bodies come from `load-bodies`: the release build's when there is one, else
# a debug build (the one the CI load smoke uses; sealing is not what is measured here).
GEN=${GEN:-$TARGET_DIR/release/load-bodies}
if [ ! -x "$GEN" ]; then
  GEN=$TARGET_DIR/debug/load-bodies
  [ -x "$GEN" ] || cargo build --locked --features bench-tools --bin load-bodies >&2
fi

rm -rf "$PGO_DIR/raw"
LINK=
[ -z "$TARGET" ] || LINK="-C linker=cc"
INSTRUMENTED=$(build "$PGO_DIR/gen" "-Cprofile-generate=$PGO_DIR/raw $LINK")

start_work
bodies_lua "$WORK/bodies.lua"
# Trains binary $1: SECONDS at 32 connections with the access log on, SECONDS at 256 with
# it off, each on a fresh state directory; the binary writes its counts when it exits.
train() {
  local bin=$1 run level conns
  # Sealed now: a token made before a build of several minutes would have expired.
  # Room for 150,000 requests a second, so no body is sent twice (a replay refused): the
  # instrumented build has answered 62,000 a second at 256 connections on this machine.
  "$GEN" $((DUR * 150000)) > "$WORK/bodies.txt"
  for run in "info 32" "warn 256"; do
    read -r level conns <<< "$run"
    # A fresh state directory, so the second run's replay table is empty too.
    rm -rf "$WORK/state"; mkdir -p "$WORK/state"
    sidecar_conf "$WORK/state" > "$WORK/sidecar.yaml"
    LLVM_PROFILE_FILE="$PGO_DIR/raw/%p-%m.profraw" RUST_LOG=$level \
      "$bin" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 &
    VG_PID=$!
    wait_port "$SC" || { cat "$WORK/sidecar.log" >&2; exit 1; }
    wrk -t1 -c"$conns" -d"${DUR}s" -s "$WORK/bodies.lua" "http://127.0.0.1:$SC/bsk/status" \
      -- "$WORK/bodies.txt" > "$WORK/wrk.txt"
    awk '/requests in|Non-2xx/' "$WORK/wrk.txt" >&2
    # The counts are written at exit: a clean shutdown on SIGTERM.
    kill -TERM "$VG_PID"; wait "$VG_PID" 2>/dev/null || true; VG_PID=
    # A profile of refusals would lay the code out for them: every request must pass.
    if grep -q 'Non-2xx' "$WORK/wrk.txt" || ! grep -qE '^ +[1-9][0-9]* requests in' "$WORK/wrk.txt"; then
      echo "pgo.sh: the training run at $conns connections did not answer every request 2xx" >&2
      cat "$WORK/wrk.txt" "$WORK/sidecar.log" >&2
      exit 1
    fi
  done
}
train "$INSTRUMENTED"
"$PROFDATA" merge -o "$PGO_DIR/merged.profdata" "$PGO_DIR"/raw/*.profraw
# The profile is named by its content: cargo rebuilds every crate when RUSTFLAGS change,
# never when only the file they name does.
rm -f "$PGO_DIR"/[0-9a-f]*.profdata
PROFILE=$PGO_DIR/$(sha256sum "$PGO_DIR/merged.profdata" | cut -c1-16).profdata
mv "$PGO_DIR/merged.profdata" "$PROFILE"
if [ "$STAGE" = profile ]; then
  echo "$PROFILE"
  exit 0
fi
if [ "$BOLT" != 1 ]; then
  build "$PGO_DIR/use" "-Cprofile-use=$PROFILE"
  exit
fi
OPTIMISED=$(build "$PGO_DIR/use" "-Cprofile-use=$PROFILE -Clink-arg=-Wl,--emit-relocs")
rm -rf "$PGO_DIR/bolt"; mkdir -p "$PGO_DIR/bolt"
"$BOLT_TOOLS/llvm-bolt" "$OPTIMISED" -instrument -o "$PGO_DIR/bolt/instrumented" \
  -instrumentation-file="$PGO_DIR/bolt/counts" -instrumentation-file-append-pid >&2
train "$PGO_DIR/bolt/instrumented"
"$BOLT_TOOLS/merge-fdata" "$PGO_DIR"/bolt/counts.*.fdata > "$PGO_DIR/bolt/counts.fdata"
"$BOLT_TOOLS/llvm-bolt" "$OPTIMISED" -o "$PGO_DIR/bolt/bsk-sidecar" -data="$PGO_DIR/bolt/counts.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
  -split-eh -icf=1 -use-gnu-stack -dyno-stats >&2
echo "$PGO_DIR/bolt/bsk-sidecar"
exit
}
