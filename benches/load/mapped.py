#!/usr/bin/env python3
"""Which of a running binary's code pages are mapped into the process, and whose code
they hold: the file-backed part of its resident memory.

    benches/load/mapped.py PID BINARY [TOP]

Reads /proc/PID/maps and /proc/PID/pagemap (the present bit of each page of the
binary's executable mapping) and the binary's symbol table (`nm -S -C`), then prints
the code pages mapped, in how many runs, and for the TOP crates (default 20; 0: none),
named by the first path segment of each symbol's name, the bytes of their code on
mapped pages against their whole size. A page maps its neighbours with it (the
kernel's fault-around, 64 KiB), so code that is never run is mapped when it sits near
code that is.
"""
import collections
import os
import re
import struct
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")


def code_mapping(pid, binary):
    real = os.path.realpath(binary)
    for line in open(f"/proc/{pid}/maps"):
        parts = line.split()
        if len(parts) >= 6 and parts[1].startswith("r-x") and os.path.realpath(parts[5]) == real:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            return start, end, int(parts[2], 16)
    sys.exit(f"no executable mapping of {binary} in process {pid}")


def load_bias(binary, start, offset):
    """Run-time address minus link-time address, from the executable LOAD segment."""
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and "E" in f[6:8]:
            file_off, vaddr = int(f[1], 16), int(f[2], 16)
            return start - offset - (vaddr - file_off)
    sys.exit(f"no executable LOAD segment in {binary}")


def crate(name):
    m = re.match(r"(?:<)?(?:&)?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)::", name)
    return m.group(1) if m else "(other)"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    pid, binary = int(sys.argv[1]), sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    start, end, offset = code_mapping(pid, binary)
    bias = load_bias(binary, start, offset)
    pages = (end - start) // PAGE
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        raw = f.read(pages * 8)
    present = [(struct.unpack_from("<Q", raw, i * 8)[0] >> 63) & 1 for i in range(pages)]
    runs = sum(1 for i, p in enumerate(present) if p and (i == 0 or not present[i - 1]))
    mapped = sum(present)
    print(f"code pages {pages}, mapped {mapped} ({mapped * PAGE / 2**20:.2f} MiB) in {runs} runs")
    if top == 0:
        return

    nm = subprocess.run(["nm", "-S", "-C", binary], capture_output=True, text=True, check=True).stdout
    on_mapped, whole = collections.Counter(), collections.Counter()
    for line in nm.splitlines():
        f = line.split(None, 3)
        if len(f) < 4 or f[2] not in "tTwW":
            continue
        at, size, name = bias + int(f[0], 16), int(f[1], 16), f[3]
        c = crate(name)
        whole[c] += size
        first, last = (at - start) // PAGE, (at + size - 1 - start) // PAGE
        for page in range(max(first, 0), min(last, pages - 1) + 1):
            if present[page]:
                lo, hi = max(at, start + page * PAGE), min(at + size, start + (page + 1) * PAGE)
                on_mapped[c] += hi - lo
    print(f"{'on mapped pages':>16} {'whole':>10}  crate")
    for c, n in on_mapped.most_common(top):
        print(f"{n:>16,} {whole[c]:>10,}  {c}")


if __name__ == "__main__":
    main()
