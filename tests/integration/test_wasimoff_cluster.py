"""wasimoff on the redis backend: several nodes share one task queue. In-process servers on one
real redis-server; clients on one node, providers on another, over the real client APIs."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from rendezvous.core.dispatch import wasimoff_retry_delay
from rendezvous.testing import serve, wait_until
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import SUBPROTOCOL_PROTOBUF, Codec, pack, unpack
from rendezvous_wasimoff.peer import Provider
from rendezvous_wasimoff.programs import tool_wasm

from .redis_fixture import RedisServer
from .test_overlay_cluster import keys
from .wasimoff_peers import GenAPeer, RawProvider, ok_response, run_rpc, wasip1

pytestmark = pytest.mark.anyio
TTL = 1.0
WASM = b"\x00asm\x01\x00\x00\x00"


def redis_settings(url: str, prefix: str, **more: Any) -> dict:
    return {"backend": "redis", "backend_url": url, "backend_prefix": prefix, "node_ttl": TTL, **more}


TOOL = bytes(tool_wasm())
TOOL_REF = "sha256:" + hashlib.sha256(TOOL).hexdigest()


@contextlib.asynccontextmanager
async def cluster(url: str, prefix: str, n: int = 2, webtransport: bool = False, **settings: Any) -> AsyncIterator[list]:
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for _ in range(n):
            own = {"static_files": None, **settings}
            server = redis_settings(url, prefix, **({"webtransport_port": 0} if webtransport else {}))
            nodes.append(await stack.enter_async_context(serve("wasimoff", own, http_server="native", server=server)))
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


async def client_socket(srv: Any, requests: list) -> list:
    """The gen-C client socket: every request sent at once, the answers by sequence."""
    codec = Codec(SUBPROTOCOL_PROTOBUF)
    async with connect(srv.ws_url + "/api/client/ws", subprotocols=[SUBPROTOCOL_PROTOBUF], max_size=None) as ws:
        for seq, request in enumerate(requests, 1):
            envelope = schema.Envelope(sequence=seq, type=schema.REQUEST)
            pack(envelope, request)
            await ws.send(codec.encode(envelope))
        answers: dict[int, Any] = {}
        with anyio.fail_after(20):
            while len(answers) < len(requests):
                envelope = codec.decode(await ws.recv())
                answers[envelope.sequence] = unpack(envelope)
    return [answers[i] for i in range(1, len(requests) + 1)]


async def test_every_client_api_on_a_runs_on_a_real_provider_on_b(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix) as (a, b), httpx.AsyncClient(timeout=30) as http:
        assert (await http.post(a.url + "/api/storage/upload?name=tool.wasm", content=TOOL)).text == TOOL_REF + "\n"
        async with anyio.create_task_group() as tg:
            provider = await tg.start(Provider(b.url, name="onb", workers=2).run)
            await wait_until(lambda: broker(b).dispatch.free_slots() == 2)
            # ConnectRPC (protobuf, by name: the upload made on A is seen by B's provider)
            _, response = await run_rpc(http, a, wasip1("tool.wasm", ["tool", "echo", "a", "b"], reference="r-1"))
            assert response.ok.stdout == b"a b\n" and response.info.provider == "onb" and response.info.reference == "r-1"
            # ConnectRPC (JSON)
            r = await http.post(a.url + "/api/client/wasimoff.v1.Tasks/RunWasip1",
                                json={"params": {"binary": {"ref": "tool.wasm"}, "args": ["tool", "echo", "js"]}})
            assert r.status_code == 200 and r.json()["info"]["provider"] == "onb"
            # HTTP exec
            r = await http.post(a.url + "/api/client/run/tool.wasm", headers={"X-Args": "cat", "X-Env-Who": "me"}, content=b"in")
            assert r.status_code == 200 and r.content == b"WHO=me\nCONTENT_LENGTH=2\nin" and r.headers["x-wasimoff-provider"] == "onb"
            # the client WebSocket, three at once
            answers = await client_socket(a, [wasip1("tool.wasm", ["tool", "echo", str(i)]) for i in range(3)])
            assert [x.ok.stdout for x in answers] == [b"0\n", b"1\n", b"2\n"]
            # generation A's /run (translated for the gen-C provider on B)
            await wait_until(lambda: broker(a).provider_count() == 1, timeout=5)  # (the cluster's count)
            r = await http.post(a.url + "/api/broker/v1/run", json={"bin": "tool.wasm", "exec": [{"args": ["echo", "gena"]}]})
            assert r.status_code == 200, r.text
            assert json.loads(r.text)[0]["result"]["stdout"] == "gena\n", r.text
            assert provider.tasks_run == 7
            tg.cancel_scope.cancel()
        await no_task_keys(redis_server, redis_prefix)


async def test_a_gen_a_provider_on_b_runs_a_task_submitted_on_a(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, webtransport=True) as (a, b), httpx.AsyncClient(timeout=30) as http:
        await http.post(a.url + "/api/storage/upload?name=tool.wasm", content=TOOL)
        async with GenAPeer(b, pool=1) as peer:
            await wait_until(lambda: broker(b).dispatch.free_slots() == 1, timeout=5)
            reply, response = await run_rpc(http, a, wasip1("tool.wasm", ["tool", "echo", "wt"]))
            assert response is not None, reply.text
            assert response.ok.stdout == b"wt\n" and peer.files["tool.wasm"] == TOOL


async def test_the_queue_limit_is_the_clusters(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, queue_limit=2) as (a, b), httpx.AsyncClient(timeout=30) as http:
        async with anyio.create_task_group() as tg:
            for node in (a, b):  # no provider anywhere: both wait in the shared queue
                tg.start_soon(run_rpc, http, node, wasip1(blob=WASM))
            await wait_until(lambda: len([k for k in task_keys(redis_server, redis_prefix) if b":t:" in k]) == 2, timeout=5)
            for node in (a, b):
                reply, _ = await run_rpc(http, node, wasip1(blob=WASM))
                assert reply.status_code == 429 and "Queue Full" in reply.text
            tg.cancel_scope.cancel()
        await no_task_keys(redis_server, redis_prefix)  # the clients went away: their tasks were cancelled


async def test_a_client_leaving_on_a_revokes_its_task_on_b(redis_server, redis_prefix):
    async with (cluster(redis_server.url, redis_prefix) as (a, b), httpx.AsyncClient(timeout=30) as http,
                RawProvider(b, name="pb") as provider):
        await capacity(provider, 1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_rpc, http, a, wasip1(blob=WASM))
            envelope, request = await provider.recv_request(schema.Wasip1Request)
            tg.cancel_scope.cancel()  # the client hangs up
        _, cancel = await provider.recv_request(schema.Cancel)
        assert cancel.id == request.info.id
        await provider.respond(envelope.sequence, ok_response(request))  # a late answer frees the slot
        await wait_until(lambda: broker(b).dispatch.free_slots() == 1)
        await no_task_keys(redis_server, redis_prefix)


async def test_a_provider_dying_mid_task_on_b_is_retried_on_a(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix) as (a, b), httpx.AsyncClient(timeout=30) as http:
        async with anyio.create_task_group() as tg:
            result: dict = {}

            async def submit() -> None:
                result["r"] = await run_rpc(http, a, wasip1(blob=WASM, args=["x"]))

            async with RawProvider(b, name="doomed") as doomed:
                await capacity(doomed, 1)
                tg.start_soon(submit)
                _, first = await doomed.recv_request(schema.Wasip1Request)
            async with RawProvider(a, name="heir") as heir:
                await capacity(heir, 1)
                served = await serve_tasks(heir, 1, b"again\n")
            await wait_until(lambda: "r" in result)
        _, response = result["r"]
        assert served == [first.info.id] and response.ok.stdout == b"again\n" and response.info.provider == "heir"
        await no_task_keys(redis_server, redis_prefix)


async def test_transport_errors_retry_across_nodes_with_the_backoff_then_fail(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, max_attempts=4) as (a, b), httpx.AsyncClient(timeout=30) as http:
        async with RawProvider(b, name="flaky") as flaky, anyio.create_task_group() as tg:
            await capacity(flaky, 1)
            result: dict = {}

            async def submit() -> None:
                result["r"] = await run_rpc(http, a, wasip1(blob=WASM))

            tg.start_soon(submit)
            times = []
            for attempt in range(4):
                envelope, _ = await flaky.recv_request(schema.Wasip1Request)
                times.append(time.monotonic())
                await flaky.respond(envelope.sequence, error=f"boom {attempt}")
            await wait_until(lambda: "r" in result)
        reply, _ = result["r"]
        assert reply.status_code == 500 and all(f"boom {i}" in reply.text for i in range(4))
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # each retry waited the original's backoff (5.6, 10, 18 ms), however many nodes there are
        assert all(gap >= wasimoff_retry_delay(i) - 0.002 for i, gap in enumerate(gaps, 1)), gaps
        await no_task_keys(redis_server, redis_prefix)


async def test_cluster_info_counts_every_nodes_providers(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix) as (a, b):
        seen: dict[str, list[int]] = {"pa": [], "pb": []}

        async def listen(provider: RawProvider) -> None:
            while True:
                _, payload = await provider.recv(timeout=30)
                if isinstance(payload, schema.ClusterInfo):
                    seen[provider.url.rsplit("=", 1)[1]].append(payload.providers)

        async with RawProvider(a, name="pa") as pa, anyio.create_task_group() as tg:
            tg.start_soon(listen, pa)
            await capacity(pa, 1)
            await wait_until(lambda: seen["pa"] == [1])
            async with RawProvider(b, name="pb") as pb, anyio.create_task_group() as tg_b:
                tg_b.start_soon(listen, pb)
                await capacity(pb, 1)
                await wait_until(lambda: seen["pa"][-1:] == [2] and seen["pb"][-1:] == [2], timeout=5)
                assert broker(a).provider_count() == broker(b).provider_count() == 2
                tg_b.cancel_scope.cancel()
            await wait_until(lambda: seen["pa"][-1:] == [1], timeout=5)  # pb left: A's provider is told
            tg.cancel_scope.cancel()


async def test_uploads_are_seen_on_every_node_and_survive_a_restart_of_all(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix) as (a, b), httpx.AsyncClient(timeout=30) as http:
        big = b"PK\x03\x04" + bytes(range(256)) * (5 * 4096 + 7)  # a zip of more than one chunk
        ref = (await http.post(a.url + "/api/storage/upload?name=big.zip", content=big)).text.strip()
        assert (await http.get(b.url + "/api/storage/big.zip")).content == big
        await http.post(b.url + "/api/storage/upload?name=tool.wasm", content=TOOL)
    async with cluster(redis_server.url, redis_prefix, n=1) as (c,), httpx.AsyncClient(timeout=30) as http:
        r = await http.get(c.url + "/api/storage/big.zip")
        assert r.content == big and r.headers["x-wasimoff-ref"] == ref
        r = await http.get(c.url + "/api/storage/" + TOOL_REF, headers={"range": "bytes=0-3"})
        assert r.status_code == 206 and r.content == b"\x00asm"
        assert (await http.get(c.url + "/api/storage/nothing.wasm")).status_code == 404


async def test_while_redis_is_away_tasks_are_refused_at_once_and_served_again_after(tmp_path):
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        async with (cluster(server.url, "r") as (a, b), httpx.AsyncClient(timeout=30) as http,
                    RawProvider(b, name="pb") as provider, anyio.create_task_group() as tg):
            await capacity(provider, 1)
            server.stop()
            await wait_until(lambda: not broker(a).tasks._node.ready, timeout=5)
            with anyio.fail_after(2):  # at once, in the client API's own terms
                reply, _ = await run_rpc(http, a, wasip1(blob=WASM))
            assert reply.status_code == 503 and "unavailable" in reply.text
            server.start()  # empty: every node fences itself once and registers again
            await wait_until(lambda: broker(a).tasks._node.ready and broker(b).tasks._node.ready, timeout=8)
            tg.start_soon(serve_tasks, provider, 1, b"back\n")
            _, response = await run_rpc(http, a, wasip1(blob=WASM))
            assert response.ok.stdout == b"back\n"
    finally:
        server.stop()


async def test_a_directory_storage_is_refused_on_a_cluster_in_one_line(redis_server, redis_prefix, tmp_path):
    from rendezvous.errors import ConfigError

    with pytest.raises(ConfigError, match=r"WASIMOFF_FILESTORAGE: on a cluster .* leave it unset"):
        async with cluster(redis_server.url, redis_prefix, n=1, filestorage=f"dirfs://{tmp_path}"):
            pass


@pytest.mark.parametrize("scheduler,expected", [("simplematch", ["p1", "p1", "p1", "p1"]),
                                                ("roundrobin", ["p1", "p2", "p1", "p2"]),
                                                ("anyfree", ["p1", "p1", "p1", "p1"])])
async def test_the_node_that_takes_a_task_places_it_with_its_scheduler(redis_server, redis_prefix, scheduler, expected):
    async with (cluster(redis_server.url, redis_prefix, scheduler=scheduler) as (a, b),
                httpx.AsyncClient(timeout=30) as http, RawProvider(b, name="p1") as p1, RawProvider(b, name="p2") as p2):
        served: list[str] = []

        async def answer(provider: RawProvider, name: str) -> None:
            while True:
                envelope, request = await provider.recv_request(schema.Wasip1Request, timeout=30)
                served.append(name)
                await provider.respond(envelope.sequence, ok_response(request))

        async with anyio.create_task_group() as tg:
            for provider, name in ((p1, "p1"), (p2, "p2")):
                await capacity(provider, 2)
                tg.start_soon(answer, provider, name)
            await wait_until(lambda: broker(b).dispatch.free_slots() == 4)
            for _ in expected:  # one at a time, submitted on A
                reply, _ = await run_rpc(http, a, wasip1(blob=WASM))
                assert reply.status_code == 200
            tg.cancel_scope.cancel()
        assert served == expected


async def test_throughput_overall_counts_tasks_completed_on_every_node(redis_server, redis_prefix):
    async with (cluster(redis_server.url, redis_prefix) as (a, b), httpx.AsyncClient(timeout=30) as http,
                RawProvider(a, name="idle") as idle, RawProvider(b, name="busy") as busy, anyio.create_task_group() as tg):
        overall: list[float] = []

        async def listen() -> None:
            while True:
                _, payload = await idle.recv(timeout=30)
                if isinstance(payload, schema.Throughput):
                    overall.append(payload.overall)

        tg.start_soon(listen)
        await capacity(busy, 4)
        tg.start_soon(serve_tasks, busy, 12)
        await wait_until(lambda: broker(b).dispatch.free_slots() == 4)
        async with anyio.create_task_group() as clients:
            for _ in range(12):  # submitted on B, run on B: A's provider hears of them
                clients.start_soon(run_rpc, http, b, wasip1(blob=WASM))
        await wait_until(lambda: sum(overall) >= 12, timeout=5)
        assert broker(a).metrics.completed.value == 0  # (none of them was A's)
        tg.cancel_scope.cancel()
