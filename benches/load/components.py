"""Where a profile's samples go, by component: each sample is charged to the first frame on
its stack, from the leaf up, that belongs to a known part of the sidecar or its stack
(the pipeline's stages, hyper's codecs, tokio, ...). Needs a profile recorded with DWARF
call graphs (run.sh with PERF_ARGS="-F 2999 --call-graph dwarf,16384"), since the release
build keeps no frame pointers.

    python3 components.py PERF_DATA

Prints the kernel's and user space's shares, then each component's share of all samples.
"""
import collections
import re
import subprocess
import sys

# First match wins, so the more specific patterns come first.
COMPONENTS = [
    ("replay", r"guard::replay"),
    ("rate limits", r"guard::rate|governor"),
    ("payload ids", r"pipeline::ids"),
    ("payload validation", r"guard::payload|guard::fields|guard::schema"),
    ("JWT", r"envelope::jwt|jsonwebtoken"),
    ("AES", r"envelope::aes|^aes::|^cbc::"),
    ("envelope, other", r"envelope::"),
    ("metrics", r"metrics::|prometheus"),
    ("logging", r"tracing"),
    ("hyper server codec", r"role::Server"),
    ("hyper client codec", r"role::Client"),
    ("hyper, other", r"hyper::"),
    ("http crate", r"^http::"),
    ("pipeline", r"pipeline::"),
    ("server", r"server::"),
    ("forward", r"forward::"),
    ("tokio", r"tokio::|mio::"),
]
PATTERNS = [(name, re.compile(p)) for name, p in COMPONENTS]
FRAME = re.compile(r"\s*[0-9a-f]+ (.*) \((.*)\)$")

script = subprocess.run(
    ["perf", "script", "-i", sys.argv[1], "-F", "comm,tid,ip,sym,dso"],
    capture_output=True, text=True, errors="replace").stdout

totals, samples, user = collections.Counter(), 0, 0


def charge(frames):
    global samples, user
    if not frames:
        return
    samples += 1
    if "kernel" in frames[0][1]:
        return
    user += 1
    for sym, _ in frames:
        sym = sym.lstrip("<")
        for name, pattern in PATTERNS:
            if pattern.search(sym):
                totals[name] += 1
                return
    totals["unattributed (allocator, libc, ...)"] += 1


frames = []
for line in script.splitlines():
    if not line.startswith(("\t", " ")):
        if line.strip():
            charge(frames)
            frames = []
        continue
    m = FRAME.match(line)
    if m:
        frames.append((m.group(1), m.group(2)))
charge(frames)

if samples == 0:
    sys.exit("no samples")
print(f"{samples} samples: kernel {100 * (samples - user) / samples:.1f}%, user space {100 * user / samples:.1f}%")
for name, n in totals.most_common():
    print(f"{100 * n / samples:6.2f}%  {name}")
