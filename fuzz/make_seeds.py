#!/usr/bin/env python3
"""Writes the fuzz seed corpora (fuzz/corpus/<target>/seed-*) from the project's vectors:
the spec's AES key/IV and plaintexts, HS256 tokens under the fuzz key set, the example
configs, and PROXY / X-Forwarded-For samples. Run from anywhere; rewrites the seeds."""

import base64
import hashlib
import hmac
import json
import os
import pathlib
import urllib.parse

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W"
IV = b"V0ZMZO6WZ45KY2PL"
JWT_SECRET = b"bsk-shared-hs256-secret-0123456789"
PASSCODE = "376423"
NOW = 1_700_000_000

SPEC_PLAIN = b'{"userid":"8527419636","ticketno":"20221202153322882","citizenmobile":"9963258963","citizenname":"Anupam Ghosh"}'
TICKET_PLAIN = b'{"userid":8527419636,"ticketNo":20221202153322882,"serviceCode":"AMD/003","name":"Anupam Ghosh"}'
PAYLOADS = {
    "api1": TICKET_PLAIN,
    "api2": b'{"userid":"8527419636","ticketNo":"20221202153322882","serviceCode":"AMD003","appNo":"A1","appSubTime":"20221202153322","applicationStatus":3}',
    "api3": b'{"userid":8527419636,"ticketNo":20221202153322882,"serviceCode":"HFW/001","applicationNo":"X9"}',
    "api4": b'{"userid":8527419636,"tokenNo":20221202153322882,"ServiceCode":"FIN002","applicationNo":"D7","documentType":2}',
    "api5a": b'{"otpId":12345,"documentNo":"D7"}',
    "api5b": b'{"otpld":"12345","userTypedOtp":987654}',
    "api6": b'{"userId":"9963258963","deptCode":"WCD","accessCode":4411}',
    "api7": b'{"fromDate":"2022-12-01","toDate":"2022-12-31"}',
    "nonascii": '{"userid":"8527419636","ticketNo":"20221202153322882","serviceCode":"অ/003","name":"অনুপম"}'.encode(),
    "deep": b'{"a":[[[[[[{"b":[1,2,3]}]]]]]]}',
    "escapes": b'{"name":"\\"\\\\\\u0985","ticketNo":2.0e16}',
}


def aes(plain: bytes) -> str:
    p = padding.PKCS7(128).padder()
    padded = p.update(plain) + p.finalize()
    enc = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor()
    return base64.b64encode(enc.update(padded) + enc.finalize()).decode()


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims: bytes) -> str:
    head = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(claims)
    sig = hmac.new(JWT_SECRET, head.encode(), hashlib.sha256).digest()
    return head + "." + b64url(sig)


def timed(plain: bytes) -> bytes:
    """The claims with iat/exp around the fuzz target's fixed clock, spliced in as text so
    the 17-digit number survives."""
    return plain[:-1] + b',"iat":%d,"exp":%d}' % (NOW - 10, NOW + 300)


def form(enc: str) -> bytes:
    return urllib.parse.urlencode({"agId": "BSK", "encData": enc}).encode()


def token_body(token: str) -> bytes:
    return json.dumps({"passcode": PASSCODE, "token": token}).encode()


def write(target: str, name: str, data: bytes) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# envelope_open: [stack index, flags, AUTH \0 BODY]. Flags: bits 0-1 content type
# (0 none, 1 form, 2 json, 3 text), bit 2 X-Passcode header.
def envelope(name: str, stack: int, flags: int, body: bytes, auth: bytes = b"") -> None:
    rest = auth + b"\0" + body if auth else body
    write("envelope_open", name, bytes([stack, flags]) + rest)


for label, plain in [("spec", SPEC_PLAIN), ("ticket", TICKET_PLAIN)]:
    enc = aes(plain)
    envelope(f"form-aes-{label}", 0, 1, form(enc))
    envelope(f"form-aes-json-{label}", 0, 2, json.dumps({"agId": "BSK", "encData": enc}).encode())
    envelope(f"token-jwt-{label}", 1, 2, token_body(jwt(timed(plain))))
    envelope(f"bearer-jwt-{label}", 2, 4, b"", b"Bearer " + jwt(timed(plain)).encode())
    inner = b'{"encData":"%s","iat":%d,"exp":%d}' % (enc.encode(), NOW - 10, NOW + 300)
    envelope(f"token-jwt-aes-{label}", 3, 2, token_body(jwt(inner)))
    envelope(f"form-aes-jwt-{label}", 4, 1, form(aes(jwt(timed(plain)).encode())))
    envelope(f"aes-{label}", 5, 3, enc.encode())
    envelope(f"aes-json-{label}", 5, 2, json.dumps({"encData": enc}).encode())
    envelope(f"jwt-{label}", 6, 3, jwt(timed(plain)).encode())

for name, plain in PAYLOADS.items():
    write("json_guard", name, plain)

for cfg in sorted((ROOT / "config").glob("*.yaml")) + sorted((ROOT / "tests/fixtures/cli").glob("*.yaml")):
    write("config_yaml", cfg.stem, cfg.read_bytes())

V2_SIG = b"\r\n\r\n\0\r\nQUIT\n"
proxies = {
    "v1-tcp4": b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v2-tcp4": V2_SIG + bytes([0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1, 0xDC, 0x04, 1, 0xBB]) + b"GET",
    "v2-tcp6": V2_SIG + bytes([0x21, 0x21, 0, 36]) + bytes(range(32)) + bytes([0xDC, 0x04, 1, 0xBB]),
    "v2-local": V2_SIG + bytes([0x20, 0x00, 0, 0]),
    "v2-tlv": V2_SIG + bytes([0x21, 0x11, 0, 19, 203, 0, 113, 7, 10, 0, 0, 1, 0xDC, 0x04, 1, 0xBB, 0x04, 0, 4, 1, 2, 3, 4]),
}
for name, data in proxies.items():
    write("proxy_headers", name, b"\0" + data)
xffs = {
    "xff-chain": (0, b"198.51.100.9, 203.0.113.7, 10.1.1.1"),
    "xff-lines": (0, b"198.51.100.9\n203.0.113.7:5555, 10.2.2.2"),
    "xff-v6": (3, b"[2001:db8::7]:443, 2001:db8::1, ::ffff:10.0.0.9"),
    "xff-untrusted": (1, b"10.0.0.1"),
}
for name, (peer, data) in xffs.items():
    write("proxy_headers", name, bytes([1, peer]) + data)
