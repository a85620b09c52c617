#!/usr/bin/env bash
# AES-256-CBC decryption of 1 MiB by the sidecar against OpenSSL on the same machine, in
# one run: `openssl speed -evp aes-256-cbc -decrypt` at 16 KiB blocks (AES-NI when the CPU
# has it, as the sidecar's `aes` crate detects it at run time), then the criterion bench
# `aes/1MiB` (raw decryption with unpadding, with base64 decoding first, and the raw
# decryption by RustCrypto's `cbc` as a baseline). Prints the throughputs and the ratios.
# Usage: benches/aes/run.sh [OPENSSL_SECONDS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-3}
command -v openssl >/dev/null || apt-get install -y openssl >/dev/null

# `openssl speed` prints "aes-256-cbc  <k/s at 16 B> ... <k/s at 16384 B>"; with -bytes
# only the one size, in thousands of bytes per second.
ossl=$(openssl speed -evp aes-256-cbc -decrypt -bytes 16384 -seconds "$secs" 2>/dev/null |
  awk '/^(aes-256-cbc|AES-256-CBC)/ {v=$NF} END {sub(/k$/, "", v); print v * 1000}')
[ -n "$ossl" ] && [ "$ossl" != 0 ] || { echo "could not read openssl speed's figure" >&2; exit 1; }

out=$(cargo bench --bench envelope -- 'aes/1MiB' 2>/dev/null)
echo "$out" | grep -E '^aes/1MiB|thrpt' >&2
python3 - "$ossl" <<PY
import re, sys
ossl = float(sys.argv[1])
out = """$out"""
units = {"B/s": 1, "KiB/s": 1024, "MiB/s": 1024**2, "GiB/s": 1024**3}
print(f"openssl speed -evp aes-256-cbc -decrypt, 16 KiB blocks: {ossl / 1024**2:.0f} MiB/s")
for name in ("decrypt_raw", "decrypt_base64", "decrypt_raw_cbc_crate"):
    m = re.search(r"aes/1MiB/" + name + r"\s+time:.*?\n\s+thrpt:\s+\[\S+ \S+ (\S+) (\S+) ", out, re.S)
    if not m:
        sys.exit(f"no throughput for {name} in the criterion output")
    v = float(m.group(1)) * units[m.group(2)]
    print(f"sidecar aes/1MiB/{name}: {v / 1024**2:.0f} MiB/s = {v / ossl:.2f}x openssl")
PY
