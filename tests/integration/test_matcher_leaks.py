"""What abandoned requests leave behind in a real server (issue 14): nothing that counts against
a bound, and nothing that holds their payload."""

from __future__ import annotations

import gc

import anyio
import pytest

from rendezvous.testing import http_call, serve, wait_until
from rendezvous_wasimoff.profile import TaskHandle
from rendezvous_wasimoff.programs import tool_wasm

pytestmark = pytest.mark.anyio
QUEUE_LIMIT = 8
BODY = b"x" * 512 * 1024


def task_handles() -> int:
    """Client requests still reachable anywhere in the process (a handle holds the request body)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, TaskHandle))


async def test_abandoned_http_exec_requests_free_their_queue_places_and_payloads(http_server):
    settings = {"static_files": None, "queue_limit": QUEUE_LIMIT}
    async with serve("wasimoff", settings, http_server=http_server) as srv:
        dispatch = srv.runtimes["wasimoff"].dispatch
        uploaded = await http_call(srv.url + "/api/storage/upload?name=tool.wasm", "POST", bytes(tool_wasm()))
        assert uploaded.status_code == 200
        head = (f"POST /api/client/run/tool.wasm HTTP/1.1\r\nHost: {srv.host}\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n").encode("latin-1")

        async def submit() -> anyio.abc.SocketStream:
            """One HTTP-exec request that no provider takes (none is connected): it queues."""
            stream = await anyio.connect_tcp(srv.host, srv.port)
            queued = dispatch.queued
            await stream.send(head + BODY)
            await wait_until(lambda: dispatch.queued > queued)
            return stream

        async def refused() -> bool:
            reply = await http_call(srv.url + "/api/client/run/tool.wasm", "POST", b"", timeout=5)
            return reply.status_code == 429 and reply.text == "Queue Full\n"  # the request's fault: 4xx

        live = [await submit()]  # a live task heads the queue, so nothing ever pops it
        abandoned = [await submit() for _ in range(QUEUE_LIMIT - 1)]
        assert await refused()
        with anyio.fail_after(5):
            for stream in abandoned:
                await stream.aclose()  # the client hangs up
            await wait_until(lambda: dispatch.queued == len(live))
            live += [await submit() for _ in range(QUEUE_LIMIT - 1)]  # accepted: their places are free again
            assert dispatch.queued == QUEUE_LIMIT and await refused()
            assert task_handles() == len(live)  # no abandoned request's body is held anywhere
        for stream in live:
            await stream.aclose()
        await wait_until(lambda: dispatch.queued == 0)
        assert task_handles() == 0
