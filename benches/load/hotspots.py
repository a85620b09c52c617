"""The hottest instructions of the sidecar's busiest functions in a `perf record` profile
(run.sh with PERF=...), each with the code it was inlined from. Time a request spends
waiting on memory (a cache or TLB miss on a large table) shows here, at the instruction
after the load that missed, where an instruction count (instructions.sh) sees nothing.

    python3 hotspots.py PERF_DATA [FUNCTIONS] [INSTRUCTIONS]

For each of the FUNCTIONS (default 3) functions of the sidecar's binary with the most
samples, the INSTRUCTIONS (default 6) instructions with the most samples, as a share of
that function's samples; each with the instruction before it and the inlined functions
and source lines `perf annotate` puts above that one (nearest last).
"""
import re
import subprocess
import sys

from profile import entries  # this directory's profile.py, beside this script

data = sys.argv[1]
functions = int(sys.argv[2]) if len(sys.argv) > 2 else 3
per_function = int(sys.argv[3]) if len(sys.argv) > 3 else 6


def perf(*args):
    return subprocess.run(["perf", *args, "-i", data], capture_output=True, text=True).stdout


# The functions of user-space code ([.]) outside the C library and the vDSO, busiest first.
busiest = [(pct, sym) for pct, dso, kind, sym in entries(data)
           if kind == "." and not dso.startswith(("libc", "[vdso]", "ld-linux"))][:functions]

INSN = re.compile(r"\s*([\d.]+)\s*:\s+([0-9a-f]+):\s+(.*)")
CONTEXT = re.compile(r"\s*:\s+\d+\s+(.*\S)")
for share, sym in busiest:
    print(f"{share:5.2f}% of the samples: {sym[:110]}")
    lines = perf("annotate", "--stdio", "-l", sym).splitlines()
    # Each instruction with the one before it, and the inline frames and source lines
    # annotate printed last above that one: a sample lands just after the instruction
    # that kept the processor waiting (a load that missed), so that is the one named.
    insns, context, prev = [], [], ("", [])
    for line in lines:
        m = INSN.match(line)
        if m:
            text = f"{m.group(2)}: {m.group(3).split('//')[0].strip()}"
            insns.append((float(m.group(1)), text, prev))
            prev = (text, list(context))
            continue
        c = CONTEXT.match(line)
        if c and not c.group(1).startswith("//"):
            context = (context + [c.group(1)])[-3:]
    for pct, text, (before, ctx) in sorted(insns, key=lambda i: -i[0])[:per_function]:
        if pct <= 0:
            break
        print(f"  {pct:5.2f}%  {text[:90]}")
        print(f"          after {before[:84]}")
        for c in ctx:
            print(f"          in {c[:87]}")
