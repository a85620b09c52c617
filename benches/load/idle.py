"""Idle keep-alive connections: opens COUNT connections to HOST:PORT, BATCH at a time,
sends one request on each (a line of BODIES, a distinct sealed body per connection),
reads its answer, and holds every connection open until all are done. With PID and HOLD,
it then holds them HOLD seconds more and prints that process's resident set (VmRSS, KiB):
what holding the idle connections costs once the server has settled, beside the peak
of the ramp.

    python3 idle.py HOST PORT COUNT BATCH BODIES [PID HOLD]
"""
import asyncio
import sys
import time


async def one(host, port, body, held, status):
    r, w = await asyncio.open_connection(host, port)
    w.write(
        b"POST /bsk/status HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    status[head.split(b" ", 2)[1]] = status.get(head.split(b" ", 2)[1], 0) + 1
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await r.readexactly(length)
    held.append(w)


async def main():
    host, port, count, batch, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with open(path, "rb") as f:
        bodies = [line.rstrip(b"\n") for _, line in zip(range(count), f)]
    if len(bodies) < count:
        sys.exit(f"need {count} bodies, have {len(bodies)}")
    held, status = [], {}
    for start in range(0, count, batch):
        await asyncio.gather(*(one(host, port, b, held, status) for b in bodies[start:start + batch]))
    print(f"  idle: {len(held)} connections open after one request each; statuses {status}", file=sys.stderr)
    if len(sys.argv) > 7:
        time.sleep(float(sys.argv[7]))
        with open(f"/proc/{sys.argv[6]}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        print(rss)
    for w in held:
        w.close()


asyncio.run(main())
