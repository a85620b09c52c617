"""Top entries of a `perf record -g` profile of the sidecar (run.sh with PERF=...), with
the binary's own addresses resolved by addr2line (some perf builds cannot read the
symbols of a Rust binary with debug info) and added up per function.

    python3 profile.py PERF_DATA BINARY [N]
"""
import collections
import re
import subprocess
import sys


def entries(data):
    """Each line of the profile's report by function: (percent, dso, kind, symbol), kind
    `k` for the kernel's and `.` for user space, busiest first."""
    report = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio", "-g", "none"],
        capture_output=True, text=True).stdout
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if m:
            yield float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()


def main():
    data, binary = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    # perf shows the binary's samples as file offsets; addr2line wants virtual addresses.
    segs = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout
    text = next(l.split() for l in segs.splitlines() if l.strip().startswith("LOAD") and "R E" in l)
    delta = int(text[2], 16) - int(text[1], 16)
    name = binary.rsplit("/", 1)[-1]
    totals, unresolved = collections.Counter(), []
    for pct, dso, _, sym in entries(data):
        if dso == name and sym.startswith("0x"):
            unresolved.append((pct, int(sym, 16) + delta))
        else:
            totals[f"{sym}  [{dso}]"] += pct
    if unresolved:
        out = subprocess.run(["addr2line", "-f", "-C", "-e", binary] + [hex(a) for _, a in unresolved],
                             capture_output=True, text=True).stdout.splitlines()[0::2]
        for (pct, _), fn in zip(unresolved, out):
            fn = re.sub(r"::\{\{closure\}\}|::h[0-9a-f]{16}$", "", fn)
            totals[f"{fn[:100]}  [{name}]"] += pct
    for sym, pct in totals.most_common(top):
        print(f"{pct:6.2f}%  {sym}")


if __name__ == "__main__":
    main()
