#!/usr/bin/env bash
# Writes the code layout of the release binary (packaging/hot-code.ld, a linker script
# build.rs passes to the linker): the functions a running sidecar executes, hottest
# first, at the start of its `.text`. The binary is run in front of an nginx upstream, on
# loopback, with a load of sealed requests (the [token, jwt, aes] route of the load
# benchmark, access log on): first under valgrind's callgrind from start-up, which lists
# every function of the binary that ran, by its own instruction count; then natively
# under perf at 256 connections, which adds the functions it sampled or saw take a page
# fault (code chosen by CPU features valgrind lacks, contended paths).
#
#   benches/load/layout.sh [SECONDS]
#
#   BIN=/path/to/bsk-sidecar   the binary to profile (default: target/release/bsk-sidecar,
#                              built by `cargo build --release` when missing)
#   OUT=path                   where to write the script (default: packaging/hot-code.ld)
#   MERGE=1                    keep the script's list and add to it what BIN ran that it
#                              lacks: for the packages' build, profile-guided, whose
#                              inlining, and so whose functions, differ from the host
#                              build's (`CARGO_PROFILE_RELEASE_STRIP=none bash
#                              packaging/build.sh` keeps its symbols; BIN=target/
#                              x86_64-unknown-linux-gnu/release/bsk-sidecar)
#
# Why: the kernel maps a binary's code into a process 64 KiB around each page it first
# runs. Spread over 12 MB of code, the 1.6 MB a sidecar runs mapped about 10 MiB, most of
# the resident set's file-backed part; laid out together, they map about as much as they
# are. A function is named by its mangled name with the crates' hashes as wildcards: in
# Rust's v0 mangling (.cargo/config.toml) `Cs*_`, so the layout survives dependency
# upgrades and feature changes, and a generic function's instantiations are told apart
# by their type arguments. A name may match a few functions more (two versions of one
# crate, the library and the binary both named bsk_sidecar), about 40 KB in all; names
# with their hashes would match nothing in a build for an explicit `--target` (the
# packages), whose hashes all differ. A name that no longer exists matches nothing: a
# stale layout costs memory, never a build. Rerun this after a change that moves the
# request path.
# Needs valgrind, perf, wrk and nginx (installed from Debian when missing, as root).
set -euo pipefail
# The rest is one block, read whole before any of it runs: editing this file, or a
# checkout, while a run is under way does not change what the run does.
{
cd "$(dirname "$0")/../.."
. benches/load/common.sh
DUR=${1:-4}
TARGET_DIR=${CARGO_TARGET_DIR:-./target}
BIN=${BIN:-$TARGET_DIR/release/bsk-sidecar}
OUT=${OUT:-packaging/hot-code.ld}

for tool in valgrind wrk nginx; do
  command -v "$tool" >/dev/null || apt-get install -y "$tool" >/dev/null
done
command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null
[ -x "$BIN" ] || cargo build --release --bin bsk-sidecar
GEN=$TARGET_DIR/release/load-bodies
[ -x "$GEN" ] || cargo build --release --features bench-tools --bin load-bodies

start_work
bodies_lua "$WORK/bodies.lua"
"$GEN" 200000 > "$WORK/bodies.txt"
mkdir -p "$WORK/state"
sidecar_conf "$WORK/state" > "$WORK/sidecar.yaml"

# Mangled names, as the linker knows them; the access log goes to a file.
RUST_LOG=info valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/cg.out" \
  "$BIN" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 &
VG_PID=$!
wait_port "$SC" || { sleep 5; wait_port "$SC"; } || { cat "$WORK/sidecar.log" >&2; exit 1; }
wrk -t1 -c8 -d"${DUR}s" -s "$WORK/bodies.lua" "http://127.0.0.1:$SC/bsk/status" -- "$WORK/bodies.txt" \
  | awk '/requests in|Non-2xx/' >&2
kill -TERM "$VG_PID"; wait "$VG_PID" 2>/dev/null || true; VG_PID=

# Natively, what callgrind's CPU does not show: code chosen by CPU features valgrind
# lacks (SHA-NI, AVX-512), sampled by perf, and every function that first touched a
# page (perf's page-fault event, from start-up on), listed after the functions callgrind
# saw.
rm -rf "$WORK/state"; mkdir -p "$WORK/state"
RUST_LOG=info perf record -q -e cpu-clock/freq=9999/ -e page-faults/period=1/ -o "$WORK/perf.data" \
  -- "$BIN" run --config "$WORK/sidecar.yaml" > "$WORK/sidecar.log" 2>&1 &
VG_PID=$!
wait_port "$SC" || { cat "$WORK/sidecar.log" >&2; exit 1; }
# Many connections: the paths only contention takes (a lock's slow path, a queue grown).
wrk -t1 -c256 -d"${DUR}s" -s "$WORK/bodies.lua" "http://127.0.0.1:$SC/bsk/status" -- "$WORK/bodies.txt" \
  | awk '/requests in|Non-2xx/' >&2
pkill -TERM -P "$VG_PID" || true  # perf's child, the sidecar
wait "$VG_PID" 2>/dev/null || true; VG_PID=
perf script -i "$WORK/perf.data" --no-demangle -F ip,sym,dso 2>/dev/null \
  | awk -v dso="($(realpath "$BIN"))" '$NF == dso {print $2}' | sort | uniq -c | sort -rn \
  | awk '{print $2}' > "$WORK/native.txt"

python3 - "$WORK/cg.out" "$(realpath "$BIN")" "$OUT" "$WORK/native.txt" "${MERGE:-0}" <<'PY'
import collections, os, re, sys
path, binary, out, native, merge = sys.argv[1:]
merge = merge == "1"
# callgrind's format: "ob=", "fn=" name the current object and function, "(id) name" the
# first time and "(id)" after; cost lines follow; a "calls=" line's next line is the
# inclusive cost of a call, not the function's own.
names = {"ob": {}, "fn": {}}
own = collections.Counter()
ob = fn = None
after_call = False
for line in open(path, errors="replace"):
    m = re.match(r"(c?)(ob|fn|fl|fi|fe)=\((\d+)\)(?: (.*))?", line)
    if m:
        called, kind, ident, name = m.groups()
        if kind in names:
            if name is not None:
                names[kind][ident] = name.strip()
            if not called:
                if kind == "ob":
                    ob = names["ob"][ident]
                else:
                    fn = names["fn"][ident]
        continue
    if line.startswith("calls="):
        after_call = True
        continue
    if line[:1].isdigit() or line[:1] in "+-*":
        if after_call:
            after_call = False
            continue
        parts = line.split()
        if len(parts) >= 2 and ob == binary and fn:
            own[fn] += int(parts[1])


def pattern(symbol):
    """The symbol's name with the build's hashes as wildcards."""
    p = re.sub(r"17h[0-9a-f]{16}E$", "17h*E", symbol)  # legacy mangling's hash
    p = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", p)  # v0 mangling's crate disambiguators
    return re.sub(r"\.(llvm\.)?\d+$", ".*", p)  # names LTO made unique or global


ran = [symbol for symbol, cost in own.most_common() if cost > 0]
ran += [line.strip() for line in open(native)]  # perf's, by samples and faults
lines, seen = [], set()


def entry(name):
    # A cold function is in .text.unlikely.<name>, a C constructor in .text.startup.<name>;
    # in a profile-guided build (packaging/build.sh) a hot one is in .text.hot.<name>.
    return f"    *(.text.{name} .text.hot.{name} .text.unlikely.{name} .text.startup.{name})"


if merge and os.path.exists(out):  # keep what the script lists, add what it lacks
    for line in open(out):
        m = re.match(r"    \*\(\.text\.(\S+) ", line)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            lines.append(entry(m.group(1)))
for symbol in ran:
    symbol = re.sub(r"'\d+$", "", symbol)  # a recursive call shows as "name'2"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.$]*", symbol):
        continue  # "(below main)", bare addresses
    name = pattern(symbol)
    if name in seen:
        continue
    seen.add(name)
    lines.append(entry(name))
with open(out, "w") as f:
    f.write("/* The functions a running bsk-sidecar executes, hottest first, laid out together\n")
    f.write("   ahead of the rest of its code. Written by benches/load/layout.sh; build.rs passes\n")
    f.write("   it to the linker for x86_64 Linux release builds. */\n")
    f.write("SECTIONS {\n  .text : {\n" + "\n".join(lines) + "\n  }\n} INSERT AFTER .eh_frame;\n")
print(f"{len(lines)} functions of {binary} ran; their layout is in {out}", file=sys.stderr)
PY
exit
}
