"""Flood traffic for the isolation scenario, from its own loopback source address.

    python3 flood.py connect SOURCE HOST PORT SECONDS     new connections, closed at once
                                                          (SOURCE 127.0.0.*: from .10 to .249 in turn)
    python3 flood.py request SOURCE HOST PORT SECONDS     keep-alive POSTs past a rate limit

Prints how many connections were made, or how many requests were answered by status.
"""
import asyncio
import socket
import struct
import sys
import time


def connect_flood(source, host, port, seconds):
    end, n, failed = time.monotonic() + seconds, 0, 0
    linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT eats the source ports
    while time.monotonic() < end:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        try:
            # Many sources: the sidecar's closed ends wait in TIME_WAIT, so one source
            # address soon has no port whose tuple is free.
            s.bind((source.replace("*", str(10 + n % 240)), 0))
            s.connect((host, port))
            n += 1
        except OSError:
            failed += 1
        finally:
            s.close()
    print(f"connections {n} failed {failed}")


async def request_flood(source, host, port, seconds, conns=16):
    end, status = time.monotonic() + seconds, {}
    req = (
        b"POST /flood/status HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )

    async def one():
        r, w = await asyncio.open_connection(host, port, local_addr=(source, 0))
        while time.monotonic() < end:
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            code = head.split(b" ", 2)[1].decode()
            status[code] = status.get(code, 0) + 1
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await r.readexactly(length)
        w.close()

    await asyncio.gather(*(one() for _ in range(conns)), return_exceptions=True)
    print("requests " + " ".join(f"{k}:{v}" for k, v in sorted(status.items())))


mode, source, host, port, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
if mode == "connect":
    connect_flood(source, host, port, seconds)
else:
    asyncio.run(request_flood(source, host, port, seconds))
