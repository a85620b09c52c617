#!/usr/bin/env python3
"""Cache and branch figures per request from a callgrind file made with
`--cache-sim=yes --branch-sim=yes --dump-instr=yes` (instructions.sh, CACHE=1).

    footprint.py CALLGRIND_FILE REQUESTS

Prints one tab-separated line: instructions, first-level instruction-cache misses,
first-level data-cache misses (reads and writes), last-level misses, mispredicted
branches (conditional and indirect) — each per request — and the hot code: the KiB of
distinct 64-byte code lines run at least once every other request, the code a request
needs in the instruction cache. SHA-256's software rounds are left out of every figure:
valgrind's CPU has no SHA extensions, so they stand for a few SHA-NI instructions in a
real run. They are found by function (`sha2::sha256::…`), as instructions.sh finds them:
in a build that inlines them into their callers (a profile-guided one) they stay in.
"""
import collections
import re
import sys

SHA = re.compile(r"sha2::sha256::")


def main(path, requests):
    names = {}

    def name(kind, value):
        # "(7) /path" defines id 7; "(7)" refers to it again.
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", value)
        if not m:
            return value
        ident, text = m.groups()
        if text:
            names[(kind, ident)] = text
            return text
        return names.get((kind, ident), ident)

    events = []
    totals = None
    line_runs = collections.Counter()  # code line -> instructions run on it
    addr = 0
    in_sha = False
    skip_next = False
    for raw in open(path, errors="replace"):
        head = raw[:4]
        if head == "fn=(":
            in_sha = bool(SHA.search(name("fn", raw[3:].strip())))
            continue
        if head == "cfn=":
            name("fn", raw[4:].strip())
            continue
        if raw.startswith("events:"):
            events = raw.split()[1:]
            totals = [0] * len(events)
            continue
        if raw.startswith("calls="):
            skip_next = True
            continue
        first = raw[:1]
        if not first or first not in "0123456789+-*":
            continue
        parts = raw.split()
        a = parts[0]
        if a.startswith("0x"):
            addr = int(a, 16)
        elif a[0] in "+-":
            step = int(a[1:], 0)
            addr += step if a[0] == "+" else -step
        if skip_next:  # the inclusive cost of a call, counted where it was spent
            skip_next = False
            continue
        if in_sha:
            continue
        for i, v in enumerate(parts[2:]):
            totals[i] += int(v)
        if parts[2:]:
            line_runs[addr >> 6] += int(parts[2])
    ev = dict(zip(events, totals))
    per = lambda *keys: sum(ev.get(k, 0) for k in keys) / requests
    hot = sum(1 for runs in line_runs.values() if runs * 2 >= requests)
    print("\t".join(f"{v:.1f}" for v in (
        per("Ir"), per("I1mr"), per("D1mr", "D1mw"), per("ILmr", "DLmr", "DLmw"),
        per("Bcm", "Bim"), hot * 64 / 1024)))


if __name__ == "__main__":
    main(sys.argv[1], max(int(sys.argv[2]), 1))
