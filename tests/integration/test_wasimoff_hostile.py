"""wasimoff broker against hostile or broken providers (issue 14): names that would split
or break HTTP headers, a provider that stops reading, and the retry metric."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time

import anyio
import httpx
import pytest

from rendezvous.testing import closed_code, serve, wait_until
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import SUBPROTOCOL_PROTOBUF, Codec, pack, unpack
from rendezvous_wasimoff.genc import session as provider_session
from rendezvous_wasimoff.programs import tool_wasm

from .wasimoff_peers import RawProvider, ok_response, run_rpc, wasip1

pytestmark = pytest.mark.anyio
TOOL = bytes(tool_wasm())


def broker(http_server="native", **settings):
    return serve("wasimoff", {"static_files": None, **settings}, http_server=http_server)


def client():
    return httpx.AsyncClient(timeout=30)


async def admitted(provider, concurrency=1):
    """Wait for ClusterInfo (the provider is in), then announce capacity."""
    await provider.recv()
    await provider.event(schema.ProviderResources(concurrency=concurrency))


# -- 1: provider names never reach a header unvalidated -------------------------------------------
@pytest.mark.parametrize("name", ["evil%0d%0aSet-Cookie:%20pwned=1", "%E2%82%AC", "tab%09bed", "nul%00", "bad%ff",
                                  "x" * 257])
async def test_a_provider_name_outside_printable_ascii_is_refused(http_server, name):
    async with broker(http_server) as srv:
        async with RawProvider(srv, name=name, auto=False) as p:
            assert await closed_code(p.ws) == 1008
            assert "provider id" in p.ws.close_reason
        async with RawProvider(srv, name="fine-Name_1.2~x", auto=False) as p:  # a nanoid and more is fine
            listing = p.codec.decode(await p.ws.recv())
            assert listing.payload.type_url.endswith("Listing.Request")


@pytest.mark.parametrize("reported", ["evil\r\nSet-Cookie: pwned=1", "\u20ac", "other"])
async def test_the_name_a_provider_reports_in_its_result_is_not_trusted(http_server, reported):
    async with broker(http_server) as srv, client() as http:
        await http.post(srv.url + "/api/storage/upload?name=tool.wasm", content=TOOL)
        async with RawProvider(srv, name="honest") as p, anyio.create_task_group() as tg:
            await admitted(p)
            replies = {}

            async def exec_over_http():
                replies["http"] = await http.post(srv.url + "/api/client/run/tool.wasm", content=b"in")

            async def answer():
                envelope, task = await p.recv_request(schema.Wasip1Request)
                response = ok_response(task, stdout=b"out")
                response.info.provider = reported
                await p.respond(envelope.sequence, response)

            tg.start_soon(answer)
            with anyio.fail_after(10):
                await exec_over_http()
            tg.start_soon(answer)
            _, rpc = await run_rpc(http, srv, wasip1("tool.wasm"), timeout=10)
        reply = replies["http"]
        assert reply.status_code == 200 and reply.content == b"out"
        assert "set-cookie" not in reply.headers and reply.headers["x-wasimoff-provider"] == "honest"
        assert rpc.info.provider == "honest"


# -- 2: a provider that stops reading -----------------------------------------------------------
class FrozenProvider:
    """A raw TCP WebSocket provider that answers the Listing request, announces a slot, and then
    never reads again (a frozen browser tab), with a small receive buffer."""

    def __init__(self, srv, name="frozen"):
        self.host, self.port = srv.url.split("//", 1)[1].rsplit(":", 1)
        self.name = name
        self.codec = Codec(SUBPROTOCOL_PROTOBUF)

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        self.sock = sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.setblocking(False)
        await loop.sock_connect(sock, (self.host, int(self.port)))
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        await loop.sock_sendall(sock, (
            f"GET /api/provider/ws?id={self.name} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL_PROTOBUF}\r\n"
            "User-Agent: frozen-tab\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        listing = self.codec.decode(await self._frame())
        assert isinstance(unpack(listing), schema.ListingRequest)
        await self._send(schema.Envelope(sequence=listing.sequence, type=schema.RESPONSE), schema.ListingResponse())
        await self._send(schema.Envelope(sequence=0, type=schema.EVENT), schema.ProviderResources(concurrency=1))
        return self  # from here on, nothing is read

    async def __aexit__(self, *exc):
        self.sock.close()

    async def _recv(self):
        with anyio.fail_after(5):
            data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        assert data, "closed"
        return data

    async def _frame(self):
        while True:
            if len(self.buffer) >= 2:
                length, offset = self.buffer[1] & 0x7F, 2
                if length == 126:
                    length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
                elif length == 127:
                    length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
                if len(self.buffer) >= offset + length:
                    frame, self.buffer = self.buffer[offset:offset + length], self.buffer[offset + length:]
                    return frame
            self.buffer += await self._recv()

    async def _send(self, envelope, payload):
        pack(envelope, payload)
        data = self.codec.encode(envelope)
        mask = os.urandom(4)
        header = bytes([0x82]) + (bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0x80 | 126]) + struct.pack("!H", len(data)))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)


async def test_a_provider_that_stops_reading_is_closed_and_its_task_runs_elsewhere(http_server, monkeypatch):
    # Pings are far apart: only the send deadline can notice the frozen provider.
    monkeypatch.setattr(provider_session, "SEND_SECONDS_PER_MIB", 0.1)
    async with broker(http_server, ping_interval=60.0, send_timeout=0.5, metrics=True) as srv, client() as http:
        await http.post(srv.url + "/api/storage/upload?name=tool.wasm", content=TOOL)
        stdin = os.urandom(8 << 20)  # more than every buffer on the way holds (Linux: tcp_wmem max 4 MiB)
        async with FrozenProvider(srv), RawProvider(srv, name="healthy") as healthy:
            await healthy.recv()  # ClusterInfo: both are in; only the frozen one has a slot yet
            async with anyio.create_task_group() as tg:
                result = {}

                async def submit():
                    result["r"] = await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "cat"], stdin=stdin), timeout=30)

                started = time.monotonic()
                tg.start_soon(submit)
                with anyio.fail_after(5):  # the frozen provider gets the task
                    while "\nwasimoff_tasks_scheduled 1.0\n" not in (await http.get(srv.url + "/metrics")).text:
                        await anyio.sleep(0.02)
                await healthy.event(schema.ProviderResources(concurrency=1))
                envelope, task = await healthy.recv_request(schema.Wasip1Request, timeout=15)
                assert task.params.stdin == stdin
                await healthy.respond(envelope.sequence, ok_response(task, stdout=hashlib.sha256(stdin).digest()))
                await wait_until(lambda: "r" in result, timeout=10)
                elapsed = time.monotonic() - started
        reply, response = result["r"]
        assert response.ok.stdout == hashlib.sha256(stdin).digest() and response.info.provider == "healthy"
        assert elapsed < 12, elapsed  # the send deadline (0.5 s + 0.1 s per MiB here), not a 60 s ping
        metrics = (await http.get(srv.url + "/metrics")).text
        assert 'wasimoff_task_retries_count{attempt="2"} 1.0' in metrics


# -- 3: the retry metric ------------------------------------------------------------------------
async def test_retries_are_counted_when_providers_die_mid_task():
    async with broker(metrics=True) as srv, client() as http:
        await http.post(srv.url + "/api/storage/upload?name=tool.wasm", content=TOOL)
        async with anyio.create_task_group() as tg:
            result = {}

            async def submit():
                result["r"] = await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "echo", "x"]))

            tg.start_soon(submit)
            for name in ("doomed1", "doomed2"):  # each dies holding the task
                async with RawProvider(srv, name=name) as doomed:
                    await admitted(doomed)
                    await doomed.recv_request(schema.Wasip1Request)
            async with RawProvider(srv, name="rescuer") as rescuer:
                await admitted(rescuer)
                envelope, task = await rescuer.recv_request(schema.Wasip1Request)
                await rescuer.respond(envelope.sequence, ok_response(task, stdout=b"x\n"))
                await wait_until(lambda: "r" in result, timeout=10)
        assert result["r"][1].info.provider == "rescuer"
        text = (await http.get(srv.url + "/metrics")).text
        # The original's CounterVec: one sample per attempt number that was a retry.
        assert 'wasimoff_task_retries_count{attempt="2"} 1.0' in text
        assert 'wasimoff_task_retries_count{attempt="3"} 1.0' in text
        assert "\nwasimoff_tasks_scheduled 3.0\n" in text and "\nwasimoff_tasks_completed 1.0\n" in text
