"""What a hostile or careless client must not do to any of the HTTP servers (issue 14).

Closed keep-alive connections release their sockets at once; a WebSocket upgrade over another
HTTP version is refused; SIGTERM with connections open is quiet; a client that sends without
reading cannot grow the server's memory; X-Forwarded-For is not taken for the client address.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import anyio
import pytest
from structlog.testing import capture_logs

from rendezvous.testing import LongPoll, closed_code, recv_json, serve, wait_until, ws_connect

from .conftest import SECRET

pytestmark = pytest.mark.anyio
UPGRADE_HEADERS = ("Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def read_until_closed(stream, within: float = 3.0) -> bytes:
    data = b""
    with anyio.move_on_after(within):
        try:
            while True:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return data


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
async def test_keep_alive_connections_closed_by_clients_release_their_sockets(http_server):
    """hypercorn held each one until its 75 s keep-alive timeout (1 024 fds: requests failed)."""
    async with serve("overlay", {"secret": SECRET}, http_server=http_server) as srv:
        before = open_fds()
        for _ in range(300):
            # Keep-alive (no "Connection: close"): read the answer, then the client hangs up.
            async with await anyio.connect_tcp("127.0.0.1", srv.port) as stream:
                await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while not data.endswith(b"\r\n\r\nok\n"):
                    data += await stream.receive()
        await wait_until(lambda: open_fds() <= before + 10, timeout=5)


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/9.9"])
async def test_websocket_upgrade_over_another_http_version_is_refused(http_server, version):
    """hypercorn answered "HTTP/1.1 200" with an accept header, then nothing."""
    async with serve("overlay", {"secret": SECRET}, http_server=http_server) as srv:
        async with await anyio.connect_tcp("127.0.0.1", srv.port) as stream:
            await stream.send(f"GET /join {version}\r\n{UPGRADE_HEADERS}".encode())
            reply = await read_until_closed(stream)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split(b" ")[1] in (b"400", b"505"), reply
    assert b"sec-websocket-accept" not in rest.lower()


async def test_spoofed_forwarded_for_is_not_the_client_address(http_server):
    """uvicorn trusted X-Forwarded-For from 127.0.0.1: --unsafe-logging logged the spoofed address."""
    async with serve("overlay", {"secret": SECRET}, http_server=http_server) as srv:
        with capture_logs() as logs:
            async with ws_connect(f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root",
                                  additional_headers={"X-Forwarded-For": "203.0.113.9"}):
                await wait_until(lambda: any(e["event"] == "root connected" for e in logs))
    connected = next(e for e in logs if e["event"] == "root connected")
    assert connected["client"] == "127.0.0.1"


class Server:
    """A `rendezvous serve` subprocess for the overlay; its JSON log goes to a file."""

    def __init__(self, tmp_path: pathlib.Path, http_server: str, *args: str) -> None:
        self.log = tmp_path / f"{http_server}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("RENDEZVOUS_") and k not in ("SECRET", "PORT")}
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rendezvous", "serve", "--profile", "overlay", "--host", "127.0.0.1", "--port", "0",
                 "--secret", SECRET, "--http-server", http_server, "--log-format", "json", *args],
                env=environ, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if '"serving"' in line:
                    self.url = json.loads(line)["url"]
                    self.port = int(self.url.rsplit(":", 1)[1])
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"server did not start: {self.log.read_text()}")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def test_sigterm_with_connections_open_is_quiet(tmp_path, http_server):
    """hypercorn printed a CancelledError traceback for every connection still open after the grace."""
    srv = Server(tmp_path, http_server, "--shutdown-grace", "1")
    ws = "ws" + srv.url[4:]
    streams = []
    try:
        async with anyio.create_task_group() as tg:
            root = await ws_connect(f"{ws}/{SECRET}/webrtc-bootstrap-root").__aenter__()
            peers = [await ws_connect(f"{ws}/join").__aenter__() for _ in range(3)]
            await peers[0].send('{"hi": 1}')
            assert (await recv_json(root))["hi"] == 1
            polls = [await LongPoll.open(f"{srv.url}/join") for _ in range(3)]

            async def poll(lp: LongPoll) -> None:
                try:
                    await lp.recv(timeout=20)
                except ConnectionError:
                    pass

            for lp in polls:
                tg.start_soon(poll, lp)
            for request in (
                b"POST /join HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab",  # a body that never ends
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers that never end
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # answered, then idle (keep-alive)
            ):
                stream = await anyio.connect_tcp("127.0.0.1", srv.port)
                await stream.send(request)
                streams.append(stream)
            await anyio.sleep(0.3)
            srv.proc.send_signal(signal.SIGTERM)
            for ws_client in (root, *peers):
                assert await closed_code(ws_client) == 1001
            rc = await anyio.to_thread.run_sync(lambda: srv.proc.wait(timeout=15))
            tg.cancel_scope.cancel()
    finally:
        srv.kill()
        for stream in streams:
            await stream.aclose()
    log = srv.log.read_text()
    assert rc == 0, log
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert '"stopped"' in log


def flood(port: int, kind: str, limit: int) -> int:
    """Send ``kind`` without ever reading, until ``limit`` bytes or the server stops reading."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        if kind == "pings":
            sock.sendall(f"GET /join HTTP/1.1\r\n{UPGRADE_HEADERS}".encode())
            time.sleep(0.3)
            chunk = (bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125) * 512  # masked pings
        elif kind == "headers":
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            chunk = (b"X-Pad: " + b"a" * 57 + b"\r\n") * 1024  # a head that never ends
        else:
            chunk = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2048
        sock.settimeout(0.5)
        sent, stalled = 0, 0.0
        while sent < limit and stalled < 1.5:
            try:
                sent += sock.send(chunk)
                stalled = 0.0
            except socket.timeout:
                stalled += 0.5
            except OSError:  # the server hung up on us: fine too
                break
        return sent
    finally:
        sock.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the server's VmRSS from /proc")
@pytest.mark.parametrize("kind", ["pipelines", "pings", "headers"])
async def test_a_client_that_never_reads_cannot_grow_the_server(tmp_path, http_server, kind):
    """uvicorn buffered without bound: +1.1 GB for 20 MB of pipelined /metrics; pongs and header lines likewise."""
    srv = Server(tmp_path, http_server)
    try:
        await anyio.sleep(0.3)
        before = srv.rss_mb()
        sent = await anyio.to_thread.run_sync(flood, srv.port, kind, 64 << 20)
        grown = srv.rss_mb() - before
    finally:
        srv.kill()
    # The server stops reading (what fills is the kernel's socket buffers), and holds little.
    assert sent < 32 << 20, f"the server kept reading: {sent >> 20} MB"
    assert grown < 64, f"{grown:.0f} MB more for {sent >> 20} MB sent"
