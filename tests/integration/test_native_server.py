"""The native HTTP/WebSocket server against hostile and unusual clients, over raw sockets."""

from __future__ import annotations

import base64
import gc
import os
import re
import struct

import anyio
import httpx
import pytest

from rendezvous.testing import recv_json, serve, ws_connect

pytestmark = pytest.mark.anyio

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(opcode, payload, *, fin=True, mask=True, rsv=0):
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def raw_ws(srv, path="/join"):
    stream = await anyio.connect_tcp("127.0.0.1", srv.port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send(UPGRADE.format(path=path, key=key).encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await stream.receive()
    assert response.startswith(b"HTTP/1.1 101"), response
    return stream, response.split(b"\r\n\r\n", 1)[1]


async def read_close_code(stream, leftover=b""):
    data = leftover
    with anyio.fail_after(5):
        while True:
            while len(data) >= 2:
                n = data[1] & 0x7F
                if len(data) < 2 + n:
                    break
                if data[0] & 0x0F == 0x8:
                    return struct.unpack("!H", data[2:4])[0] if n >= 2 else None
                data = data[2 + n:]
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None


@pytest.fixture
async def srv():
    async with serve("overlay", {"secret": "s", "send_timeout": 1.0}, http_server="native") as running:
        yield running


@pytest.mark.parametrize(
    "bad,code",
    [
        (frame(0x1, b"{}", mask=False), 1002),
        (frame(0x1, b"{}", rsv=0x40), 1002),
        (frame(0x1, b"\xff\xfe"), 1007),
        (frame(0x3, b"x"), 1002),
        (frame(0x9, b"x" * 126), 1002),
        (frame(0x0, b"x"), 1002),
        (frame(0x1, b"x" * 70000), 1009),
        (frame(0x1, b"x" * 40000, fin=False) + frame(0x0, b"x" * 40000), 1009),
    ],
)
async def test_protocol_violations_close_with_the_right_code(srv, bad, code):
    async with ws_connect(srv.ws_url + "/s/webrtc-bootstrap-root") as root, ws_connect(srv.ws_url + "/join") as good:
        stream, leftover = await raw_ws(srv)
        await stream.send(bad)
        assert await read_close_code(stream, leftover) == code
        await good.send('{"still":"served"}')
        assert (await recv_json(root))["still"] == "served"


async def test_fragmented_message_and_ping(srv):
    async with ws_connect(srv.ws_url + "/s/webrtc-bootstrap-root") as root:
        stream, leftover = await raw_ws(srv)
        await stream.send(frame(0x1, b'{"a":', fin=False) + frame(0x9, b"hi") + frame(0x0, b'"b"}'))
        data = leftover
        with anyio.fail_after(5):
            while len(data) < 4:
                data += await stream.receive()
        assert data[:4] == b"\x8a\x02hi"  # pong with the ping's payload
        assert (await recv_json(root))["a"] == "b"
        await stream.send(frame(0x8, struct.pack("!H", 1000)))
        assert await read_close_code(stream) == 1000


@pytest.mark.parametrize("payload,status", [
    (b"\x16\x03\x01 not http at all\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\n" + b"X: aaaa\r\n" * 10000 + b"\r\n", b"431"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),
])
async def test_garbage_http_and_huge_heads(srv, payload, status):
    for _ in range(2):
        stream = await anyio.connect_tcp("127.0.0.1", srv.port)
        await stream.send(payload)
        with anyio.fail_after(5):
            response = await stream.receive()
        assert response.startswith(b"HTTP/1.1 " + status), response
        await stream.aclose()
    async with httpx.AsyncClient() as http:
        assert (await http.get(srv.url + "/healthz")).status_code == 200


async def test_bad_upgrades(srv):
    cases = [
        ("GET /join HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", b"400"),
        ("POST /join HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5aw==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n", b"400"),
        (UPGRADE.format(path="/nowhere", key="a2V5a2V5a2V5a2V5a2V5aw=="), b"403"),
        (UPGRADE.format(path="/wrong/webrtc-bootstrap-root", key="a2V5a2V5a2V5a2V5a2V5aw=="), b"403"),
    ]
    for request, status in cases:
        stream = await anyio.connect_tcp("127.0.0.1", srv.port)
        await stream.send(request.encode())
        with anyio.fail_after(5):
            response = await stream.receive()
        assert response.split(b" ")[1] == status, (request, response)
        await stream.aclose()


async def test_keep_alive_pipelining_head_and_methods(srv):
    stream = await anyio.connect_tcp("127.0.0.1", srv.port)
    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                      b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    with anyio.fail_after(5):
        while data.count(b"HTTP/1.1 ") < 4 or not data.endswith(b"not found\n"):
            data += await stream.receive()
    statuses = re.findall(rb"HTTP/1\.1 (\d+)", data)
    assert statuses == [b"200", b"200", b"405", b"404"]
    assert b"ok\n" in data
    await stream.aclose()


async def test_slow_reader_does_not_block_others(http_server):
    """A prospect that never reads its socket must not stall the server for anyone else (any server)."""
    async with serve("overlay", {"secret": "s", "send_timeout": 1.0}, http_server=http_server) as srv, ws_connect(srv.ws_url + "/s/webrtc-bootstrap-root") as root:
        stream, _ = await raw_ws(srv)  # never reads
        await stream.send(frame(0x1, b'{"who":"slow"}'))
        slow_id = (await recv_json(root))["origin"]
        async with ws_connect(srv.ws_url + "/join") as sender:
            big = '{"destination":"%s","pad":"%s"}' % (slow_id, "x" * 60000)
            with anyio.fail_after(10):
                for _ in range(200):  # ~12 MB towards a reader that never reads
                    await sender.send(big)
                await sender.send('{"sender":"still served"}')
                assert (await recv_json(root))["sender"] == "still served"
        async with ws_connect(srv.ws_url + "/join") as other:
            await other.send('{"fine":true}')
            assert (await recv_json(root))["fine"] is True
        assert srv.metrics.get_sample_value("rendezvous_overlay_dropped_total", {"reason": "slow_receiver"}) == 1
        await stream.aclose()


@pytest.mark.parametrize("trickle", [
    [b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: b\r\n"],  # a head that never ends
    [b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", b"abc", b"def"],  # a body that never ends
])
async def test_slow_loris_gets_408_and_is_dropped(srv, trickle, monkeypatch):
    from rendezvous.servers.native import connection

    monkeypatch.setattr(connection, "HEAD_TIMEOUT", 0.5)
    stream = await anyio.connect_tcp("127.0.0.1", srv.port)
    for piece in trickle:
        await stream.send(piece)
        await anyio.sleep(0.1)  # trickling, but each piece well inside the deadline
    with anyio.fail_after(3):
        reply = await stream.receive()
        assert reply.startswith(b"HTTP/1.1 408")
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            while True:
                await stream.receive()


async def test_half_closed_client_still_gets_its_answer(srv):
    stream = await anyio.connect_tcp("127.0.0.1", srv.port)
    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await stream.send_eof()
    data = b""
    with anyio.fail_after(5):
        try:
            while True:
                data += await stream.receive()
        except anyio.EndOfStream:
            pass
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok\n")


async def test_a_client_that_pipelines_without_reading_is_not_buffered_without_bound(srv):
    """The server stops reading from a peer whose output it cannot deliver, so the peer's
    sends stall instead of the server's memory growing (native)."""
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    sock.setblocking(False)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    sent = 0
    with anyio.fail_after(20):
        stalled_since = None
        while sent < 20_000_000:
            try:
                sent += sock.send(request)
                stalled_since = None
            except BlockingIOError:
                now = anyio.current_time()
                stalled_since = stalled_since or now
                if now - stalled_since > 1.0:
                    break  # the server stopped reading us
                await anyio.sleep(0.01)
    sock.close()
    assert sent < 20_000_000  # with no bound the server read (and answered into memory) all of it
    async with httpx.AsyncClient() as http:
        assert (await http.get(srv.url + "/healthz")).status_code == 200


async def test_a_peer_that_never_reads_its_output_is_dropped(srv, monkeypatch):
    from rendezvous.servers.native import connection

    monkeypatch.setattr(connection, "STALL_TIMEOUT", 0.5)
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    sock.setblocking(False)
    ping = frame(0x9, b"x" * 125)
    stream, _ = await raw_ws(srv)  # keep a second, well-behaved socket to check the server serves on
    key = base64.b64encode(os.urandom(16)).decode()
    sock.send(UPGRADE.format(path="/join", key=key).encode())
    await anyio.sleep(0.2)
    with anyio.fail_after(20):
        while True:
            try:
                sock.send(ping * 50)  # pings whose pongs are never read
            except BlockingIOError:
                await anyio.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                break  # dropped
            await anyio.sleep(0)
    sock.close()
    await stream.send(frame(0x8, struct.pack("!H", 1000)))
    assert await read_close_code(stream) == 1000


async def test_a_frame_of_the_wrong_kind_is_refused_on_its_header():
    """wasimoff's client socket on the protobuf subprotocol takes binary frames only: a 64 MiB
    text frame is closed 1003 from its header alone, its payload never read."""
    async with serve("wasimoff", {"static_files": None}) as srv:
        stream = await anyio.connect_tcp("127.0.0.1", srv.port)
        upgrade = UPGRADE.format(path="/api/client/ws", key="a2V5a2V5a2V5a2V5a2V5aw==").replace(
            "\r\n\r\n", "\r\nSec-WebSocket-Protocol: wasimoff_provider_v1_protobuf\r\n\r\n")
        await stream.send(upgrade.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += await stream.receive()
        assert response.startswith(b"HTTP/1.1 101")
        await anyio.sleep(0.1)  # the profile has chosen the subprotocol
        await stream.send(bytes([0x81, 0xFF]) + struct.pack("!Q", 64 * 1024 * 1024) + b"mask")
        assert await read_close_code(stream, response.split(b"\r\n\r\n", 1)[1]) == 1003


def _connections() -> int:
    from rendezvous.servers.native.connection import Connection

    return sum(1 for o in gc.get_objects() if type(o) is Connection)


async def test_closed_connections_are_freed_without_the_cycle_collector(srv):
    """A closed connection is freed by reference counting: nothing it held points back at it (a
    cycle would wait, with everything it holds, for the collector, which runs rarely here)."""
    gc.collect()
    gc.disable()
    try:
        before = _connections()
        for _ in range(5):
            async with ws_connect(srv.url.replace("http", "ws") + "/join") as ws:  # an overlay join's socket
                await ws.send('{"signal": {"type": "offer"}}')
            stream, _ = await raw_ws(srv)  # a peer that vanishes without a close frame
            await stream.aclose()
            async with httpx.AsyncClient() as client:  # HTTP with keep-alive, then closed
                assert (await client.get(srv.url + "/healthz")).status_code == 200
        with anyio.fail_after(5):
            while _connections() > before:
                await anyio.sleep(0.05)
    finally:
        gc.enable()
