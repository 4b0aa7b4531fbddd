"""wasimoff on the redis backend: several nodes share one task queue. In-process servers on one
real redis-server; clients on one node, providers on another, over the real client APIs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from rendezvous.testing import serve, wait_until
from rendezvous_wasimoff import schema

from .redis_fixture import RedisServer
from .test_overlay_cluster import keys
from .wasimoff_peers import RawProvider, ok_response, run_rpc, wasip1

pytestmark = pytest.mark.anyio
TTL = 1.0
WASM = b"\x00asm\x01\x00\x00\x00"


def redis_settings(url: str, prefix: str, **more: Any) -> dict:
    return {"backend": "redis", "backend_url": url, "backend_prefix": prefix, "node_ttl": TTL, **more}


@contextlib.asynccontextmanager
async def cluster(url: str, prefix: str, n: int = 2, **settings: Any) -> AsyncIterator[list]:
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for _ in range(n):
            own = {"static_files": None, "quic_listen": "", **settings}
            nodes.append(await stack.enter_async_context(serve("wasimoff", own, server=redis_settings(url, prefix))))
        yield nodes


def broker(srv: Any) -> Any:
    return srv.runtimes["wasimoff"].broker


TASK_KEYS = (b":t:", b":q:", b":o:", b":l:", b":delayed", b":classes")


def task_keys(server: RedisServer, prefix: str) -> list[bytes]:
    return [k for k in keys(server, prefix) if any(part in k for part in TASK_KEYS)]


async def no_task_keys(server: RedisServer, prefix: str) -> None:
    """Until no task is left in Redis (the nodes' own entries stay while they run)."""
    await wait_until(lambda: task_keys(server, prefix) == [], timeout=5)


async def serve_tasks(provider: RawProvider, count: int, stdout: bytes = b"hi\n") -> list[str]:
    """Answer ``count`` tasks; their ids."""
    ids = []
    for _ in range(count):
        envelope, request = await provider.recv_request(schema.Wasip1Request, timeout=10)
        ids.append(request.info.id)
        await provider.respond(envelope.sequence, ok_response(request, stdout))
    return ids


async def capacity(provider: RawProvider, n: int) -> None:
    await provider.event(schema.ProviderResources(concurrency=n))


async def test_client_on_a_provider_on_b_connectrpc(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix) as (a, b), httpx.AsyncClient(timeout=30) as http:
        async with RawProvider(b, name="pb") as provider:
            await capacity(provider, 2)
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_tasks, provider, 1)
                await wait_until(lambda: broker(b).dispatch.free_slots() == 2)
                reply, response = await run_rpc(http, a, wasip1(blob=WASM, args=["x"]))
            assert reply.status_code == 200, reply.text
            assert response.ok.stdout == b"hi\n" and response.info.provider == "pb"
            assert response.info.id.startswith(broker(a).tasks._node.node_id)  # named by the node it was submitted on
        await no_task_keys(redis_server, redis_prefix)
    assert keys(redis_server, redis_prefix) == []  # the nodes left cleanly
