"""Fuzz every profile on the default server, as an operator runs it (`rendezvous serve`, JSON logs
at debug): mutated HTTP requests and channel messages, seeded so a failure is reproducible.

Asserted for every case: an answer within a few seconds (no hang), never a 500, never a WebSocket
close 1011; and at the end: the server still serves, and its log holds no traceback.
Bounded in count (``RENDEZVOUS_FUZZ_CASES`` per profile, default 500) and in time.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from rendezvous.testing import ws_connect
from tests.integration.test_cli import Serving, env

pytestmark = pytest.mark.anyio
CASES = int(os.environ.get("RENDEZVOUS_FUZZ_CASES", "500"))
ANSWER_WITHIN = 8.0  # seconds; long polls are configured to end within 1-2 s

# Values that broke decoders or encoders before (issue 14) and their relatives.
HOSTILE_JSON = [
    '"\\ud800"', '"\\udfff\\ud800"', "1" * 5000, "1e999", "-1e999", "-0", "1.5", "1e2", "9223372036854775808",
    "null", "true", "[]", "{}", '""', '"' + "x" * 70000 + '"', "[" * 3000 + "]" * 3000, '"\\u0000"',
    '"a\\r\\nSet-Cookie: x=1"', '"€ü\\u2028<script>"', "NaN", "Infinity", '{"a":', "0x10",
]
HOSTILE_TEXT = ["", "\r\n", "%00", "%ff%fe", "../../etc/passwd", "€", "a" * 5000, "\x00", "?", "#", "*", " "]


def mutate_json(rng: random.Random, text: str) -> str:
    """Replace one value (or key) of a JSON document with a hostile one, as raw JSON text."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    marker = "\x01HOSTILE\x01"
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + [key])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, path + [i])

    walk(doc, [])
    path = rng.choice(paths)
    if not path:
        return rng.choice(HOSTILE_JSON)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = marker
    return json.dumps(doc).replace(json.dumps(marker), rng.choice(HOSTILE_JSON), 1)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[at : at + rng.randint(1, 16)]
        elif kind == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data[at:at] = data[at : at + rng.randint(1, 64)]
    return bytes(data)


def mutate_body(rng: random.Random, body: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.55:
        head, sep, rest = body.partition(b"\n") if body.startswith(b"1.0\n") else (b"", b"", body)
        return head + sep + mutate_json(rng, rest.decode("utf-8", "replace")).encode("utf-8", "surrogatepass")
    if roll < 0.9:
        return mutate_bytes(rng, body)
    return rng.choice([b"", b"\xff" * 100, os.urandom(rng.randint(1, 3000)), b"{" * 5000])


def mutate_request(rng: random.Random, seed: tuple[str, str, dict[str, str], bytes]) -> bytes:
    method, path, headers, body = seed
    headers = dict(headers)
    roll = rng.random()
    if roll < 0.1:
        method = rng.choice(["GET", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "FOO", "POST"])
    elif roll < 0.2:
        path = path + rng.choice(HOSTILE_TEXT).replace(" ", "%20").replace("\r\n", "%0d%0a")
    elif roll < 0.3:
        name = rng.choice(["content-type", "x-forwarded-for", "forwarded", "origin", "snowflake-nat-type", "x-args",
                           "x-env-a", "accept-encoding", "connect-protocol-version", "x-" + "a" * 100])
        headers[name] = rng.choice(["", "application/proto", "application/json", "1.2.3.4, ::1, [::1]:80",
                                    "for=\"[2001:db8::1]:80\";proto=https", "\xff\xfe", "a" * 3000, "1"])
    if method != "HEAD" and rng.random() < 0.9:
        body = mutate_body(rng, body)
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


async def http_case(port: int, raw: bytes) -> bytes:
    """Send one request; the whole reply (the server closes: ``Connection: close``)."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        await stream.send(raw)
        reply = b""
        try:
            while True:
                reply += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            pass
    return reply


SDP = '{"type":"offer","sdp":"v=0\\r\\na=candidate:1 1 udp 2130706431 203.0.113.7 5000 typ host\\r\\n"}'
ANSWER = '{"type":"answer","sdp":"v=0\\r\\na=candidate:1 1 udp 2130706431 198.51.100.9 5001 typ host\\r\\n"}'
WASM = b"\x00asm\x01\x00\x00\x00"

SNOWFLAKE_HTTP = [
    ("POST", "/proxy", {}, json.dumps({"Sid": "fuzzsid", "Version": "1.3", "Type": "standalone", "NAT": "unrestricted",
                                        "Clients": 0, "AcceptedRelayPattern": "snowflake.torproject.net$"}).encode()),
    ("POST", "/client", {}, b"1.0\n" + json.dumps({"offer": SDP, "nat": "restricted",
                                                  "fingerprint": "2B280B23E1107BB62ABFC40DDCC8824814F80A72"}).encode()),
    ("POST", "/client", {"snowflake-nat-type": "restricted"}, SDP.encode()),
    ("POST", "/answer", {}, json.dumps({"Version": "1.3", "Sid": "fuzzsid", "Answer": ANSWER}).encode()),
    ("GET", "/amp/client/" + base64.urlsafe_b64encode(b"1.0\n" + json.dumps({"offer": SDP, "nat": "unknown"}).encode()).decode().rstrip("="), {}, b""),
    ("GET", "/debug", {}, b""), ("GET", "/metrics", {}, b""), ("GET", "/prometheus", {}, b""),
    ("OPTIONS", "/proxy", {"origin": "https://example.org"}, b""), ("GET", "/robots.txt", {}, b""),
]
OVERLAY_HTTP = [("GET", "/healthz", {}, b""), ("GET", "/metrics", {}, b""), ("GET", "/join", {}, b""),
                ("POST", "/join", {"content-type": "application/json"}, b'{"subprotocols":[]}')]
WASIMOFF_HTTP = [
    ("POST", "/api/storage/upload?name=fuzz.wasm", {"content-type": "application/wasm"}, WASM),
    ("GET", "/api/storage/fuzz.wasm", {}, b""),
    ("POST", "/api/client/run/fuzz.wasm", {"x-args": "fuzz a b", "x-env-a": "1"}, b"stdin"),
    ("POST", "/api/client/wasimoff.v1.Tasks/RunWasip1", {"content-type": "application/json"},
     json.dumps({"params": {"binary": {"ref": "fuzz.wasm"}, "args": ["fuzz", "x"], "stdin": "aGk="},
                 "info": {"reference": "r"}}).encode()),
    ("POST", "/api/client/wasimoff.v1.Tasks/Upload", {"content-type": "application/json"},
     json.dumps({"upload": {"blob": base64.b64encode(WASM).decode(), "ref": "fuzz2.wasm"}}).encode()),
    ("GET", "/api/version", {}, b""), ("GET", "/healthz", {}, b""), ("GET", "/metrics", {}, b""),
    ("POST", "/api/broker/v1/run", {"content-type": "application/json"},
     json.dumps({"bin": "fuzz.wasm", "exec": [{"args": ["fuzz"], "envs": ["A=1"], "stdin": "hi"}]}).encode()),
]

# (path, subprotocols, seed messages): channel routes, and exchange routes over a channel (bridges)
SNOWFLAKE_WS = [("/proxy", [], [json.dumps({"id": 1, "method": "POST", "query": "", "headers": {},
                                              "body": SNOWFLAKE_HTTP[0][3].decode()})])]
OVERLAY_WS = [("/join", [], ['{"type":"offer","sdp":"v=0","destination":"00000000000000000000000000000000"}',
                             '{"origin":"x","signal":{"candidate":"c"}}']),
              ("/s/webrtc-bootstrap-root", [], ['{"destination":"00000000000000000000000000000000","signal":{}}'])]
WASIMOFF_WS = [("/api/client/ws", ["wasimoff_provider_v1_json"],
                ['{"sequence":"1","type":"MESSAGE_TYPE_REQUEST","payload":{"@type":"type.googleapis.com/wasimoff.v1.Task.Wasip1.Request",'
                 '"params":{"binary":{"ref":"fuzz.wasm"},"args":["fuzz"]}}}']),
               ("/api/provider/ws?id=fuzzer", ["wasimoff_provider_v1_json"],
                ['{"sequence":"1","type":"MESSAGE_TYPE_EVENT","payload":{"@type":"type.googleapis.com/wasimoff.v1.Event.ProviderInfo",'
                 '"name":"fuzz","useragent":"x"}}'])]

PROFILES = {
    "snowflake": (["--disable-tls", "--disable-geoip", "--proxy-timeout", "1", "--client-timeout", "1"], SNOWFLAKE_HTTP, SNOWFLAKE_WS),
    "overlay": (["--secret", "s"], OVERLAY_HTTP, OVERLAY_WS),
    "wasimoff": ([], WASIMOFF_HTTP, WASIMOFF_WS),
}


async def channel_case(rng: random.Random, base: str, seed: tuple[str, list[str], list[str]]) -> int | None:
    """Open the channel, send mutated messages; the close code if the server closed it."""
    path, subprotocols, messages = seed
    try:
        async with ws_connect(base + path, subprotocols=subprotocols or None) as ws:
            for message in messages + [rng.choice(messages)]:
                text = mutate_json(rng, message) if rng.random() < 0.7 else mutate_bytes(rng, message.encode()).decode("utf-8", "replace")
                await ws.send(text if rng.random() < 0.9 else text.encode("utf-8", "surrogatepass"))
            with anyio.move_on_after(0.3):
                while True:
                    await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    except Exception as exc:  # a refused upgrade (403/404) is an answer too
        if "server rejected" in str(exc) or "HTTP" in str(exc):
            return None
        raise
    return None


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_fuzz_profile_on_the_default_server(profile, tmp_path):
    args, http_seeds, ws_seeds = PROFILES[profile]
    environ = env(WASIMOFF_QUIC_LISTEN="")  # no UDP listener: tests must not clash on :4443
    srv = Serving(["--profile", profile, "--host", "127.0.0.1", "--port", "0", "--log-format", "json",
                   "--log-level", "debug", *args], environ)
    provider = None
    try:
        url = srv.wait_for("serving")["url"]
        port = int(url.rsplit(":", 1)[1])
        base = "ws" + url[4:]
        if profile == "wasimoff":  # a real provider, so tasks run (and fail) instead of queueing
            script = os.path.join(os.path.dirname(sys.executable), "rendezvous-wasimoff-provider")
            provider = subprocess.Popen([script, "--broker", url,
                                         "--workers", "2", "--name", "fuzzprov"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            await anyio.sleep(1.0)
        rng = random.Random(f"{profile}-14")
        failures: list[str] = []

        async def one(i: int) -> None:
            case_rng = random.Random(rng.random())
            if ws_seeds and i % 5 == 4:
                seed = case_rng.choice(ws_seeds)
                code = 0
                with anyio.move_on_after(ANSWER_WITHIN):
                    code = await channel_case(case_rng, base, seed)
                if code == 0:
                    failures.append(f"{seed[0]}: no close or answer within {ANSWER_WITHIN} s")
                if code == 1011:
                    failures.append(f"{seed[0]}: closed 1011")
                return
            raw = mutate_request(case_rng, case_rng.choice(http_seeds))
            reply = b""
            with anyio.move_on_after(ANSWER_WITHIN):
                reply = await http_case(port, raw)
            if not reply:
                failures.append(f"{raw[:300]!r} -> no answer within {ANSWER_WITHIN} s")
                return
            status = reply[9:12]
            if not reply.startswith(b"HTTP/1.1 ") or status == b"500":
                failures.append(f"{raw[:200]!r} -> {reply[:200]!r}")

        limiter = anyio.CapacityLimiter(16)

        async def limited(i: int) -> None:
            async with limiter:
                await one(i)

        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                for i in range(CASES):
                    tg.start_soon(limited, i)
        assert not failures, "\n".join(failures[:25])
        # still serving
        reply = await http_case(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 ")
    finally:
        if provider is not None:
            provider.terminate()
            provider.wait(10)
        rc = srv.stop()
    assert rc == 0
    tracebacks = [r for r in srv.lines if "exception" in r or "Traceback" in str(r.get("raw", ""))]
    assert tracebacks == []
