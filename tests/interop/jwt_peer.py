#!/usr/bin/env python3
"""PyJWT peer for tests/interop.rs: HS256 tokens as a Python counterparty makes and checks them.

    python3 jwt_peer.py sign SECRET    < claims JSON   > compact token (no newline)
    python3 jwt_peer.py verify SECRET  < token         > claims JSON (no newline)

Only the library's own calls: jwt.encode(claims, secret, algorithm="HS256") and
jwt.decode(token, secret, algorithms=["HS256"]) with its default checks (signature, and
exp/nbf/iat when present). A rejected token exits 1 with the PyJWT error on stderr.
"""
import json
import sys

import jwt


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("sign", "verify"):
        print("usage: jwt_peer.py sign|verify SECRET", file=sys.stderr)
        return 2
    mode, secret = sys.argv[1], sys.argv[2]
    data = sys.stdin.buffer.read().decode("utf-8")
    if mode == "sign":
        claims = json.loads(data)
        token = jwt.encode(claims, secret, algorithm="HS256")
        sys.stdout.write(token)
        return 0
    try:
        claims = jwt.decode(data.strip(), secret, algorithms=["HS256"])
    except jwt.InvalidTokenError as e:
        print(f"rejected: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(
        json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
