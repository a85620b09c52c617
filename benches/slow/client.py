#!/usr/bin/env python3
"""The legitimate client: sends the same valid sealed request over and over, each on a
fresh connection from its own loopback address, for a fixed time, and prints the success
rate and latency percentiles.

Usage: client.py LABEL URL BODY_FILE SECONDS [SOURCE_IP]
Prints one line: LABEL ok/sent (rate%) p50 p99 max, latencies in ms."""

import http.client
import socket
import sys
import time
import urllib.parse

label, url, body_file, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
source = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.2"
u = urllib.parse.urlsplit(url)
body = open(body_file, "rb").read()
TIMEOUT = 10.0

latencies = []  # of successful requests, seconds
sent = ok = 0
failures = {}
end = time.monotonic() + seconds
while time.monotonic() < end:
    sent += 1
    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT, source_address=(source, 0))
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.request("POST", u.path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status == 200:
            ok += 1
            latencies.append(time.monotonic() - start)
        else:
            key = f"HTTP {resp.status}"
            failures[key] = failures.get(key, 0) + 1
    except Exception as e:  # a refused, reset or timed-out connection is a failure
        key = type(e).__name__
        failures[key] = failures.get(key, 0) + 1
        # Do not spin on an immediate refusal.
        time.sleep(max(0.0, 0.01 - (time.monotonic() - start)))


def pct(p):
    if not latencies:
        return float("nan")
    s = sorted(latencies)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * 1000


rate = 100.0 * ok / sent if sent else 0.0
fail = ", ".join(f"{k}: {v}" for k, v in sorted(failures.items())) or "none"
print(f"{label:<12} {ok:>6}/{sent:<6} ok ({rate:5.1f}%)  p50 {pct(50):7.2f} ms  p99 {pct(99):7.2f} ms  "
      f"max {max(latencies, default=float('nan')) * 1000:8.2f} ms  failures: {fail}")
