"""Chaos on a wasimoff cluster: nodes are ``rendezvous serve --profile wasimoff --backend redis``
processes sharing one real redis-server; providers (scripted, each with many slots) and clients
(the gen-C client socket) are connections from this process. A node is killed with SIGKILL and a
provider's connection is cut while a thousand tasks are in flight. Checked: every task whose
client is still connected ends exactly once at its client with its own result, a task runs
twice only if its first run was on the dead node or the cut provider, and no key is left."""

from __future__ import annotations

import collections
import contextlib
import random
import signal
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from rendezvous.testing import wait_until
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import SUBPROTOCOL_PROTOBUF, Codec, pack, unpack

from .test_overlay_cluster import keys
from .test_snowflake_chaos import Node as _ChaosNode
from .test_snowflake_chaos import _free_port, all_ready, stopped_after
from .test_wasimoff_cluster import task_keys
from .wasimoff_peers import ok_response, wasip1

pytestmark = pytest.mark.anyio
TTL = 1.0
WASM = b"\x00asm\x01\x00\x00\x00"


class Node(_ChaosNode):
    """One ``rendezvous serve --profile wasimoff --backend redis`` process."""

    def __init__(self, index: int, redis_url: str, prefix: str, log_dir: Any) -> None:
        port = _free_port()
        self.start(f"w{index}", port, log_dir, redis_url, prefix, TTL, "warning", [
            "--profile", "wasimoff", "--host", "127.0.0.1", "--port", str(port), "--quic-listen", "",
            "--static-files", str(log_dir / "none")])


def processes(redis_url: str, prefix: str, n: int, log_dir: Any) -> contextlib.AbstractContextManager[list[Node]]:
    return stopped_after([Node(i, redis_url, prefix, log_dir) for i in range(n)])


class FastProvider:
    """A provider with ``slots`` slots that answers each task after a few ms with its reference;
    ``runs`` records which provider ran which task."""

    def __init__(self, node: Node, name: str, slots: int, runs: dict[str, list[str]]) -> None:
        self.url = f"{node.ws_url}/api/provider/ws?id={name}"
        self.name, self.slots, self.runs = name, slots, runs
        self.codec = Codec(SUBPROTOCOL_PROTOBUF)
        self.ws: Any = None
        self.running: set[str] = set()  # task ids received and not answered yet

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        except* (ConnectionClosed, OSError, EOFError):
            pass  # its node died, or it was cut
        self.running.clear()

    async def _run(self, task_status: Any) -> None:
        async with connect(self.url, subprotocols=[SUBPROTOCOL_PROTOBUF], user_agent_header="chaos",
                           max_size=None, ping_interval=None) as ws, anyio.create_task_group() as tg:
            self.ws = ws
            await self._send(schema.EVENT, 0, schema.ProviderResources(concurrency=self.slots))
            task_status.started(self)
            async for frame in ws:
                envelope = self.codec.decode(frame)
                payload = unpack(envelope)
                if envelope.type != schema.REQUEST:
                    continue
                if isinstance(payload, schema.ListingRequest):
                    await self._send(schema.RESPONSE, envelope.sequence, schema.ListingResponse())
                elif isinstance(payload, schema.Ping):
                    await self._send(schema.RESPONSE, envelope.sequence, schema.Ping())
                elif isinstance(payload, schema.Wasip1Request):
                    self.runs[payload.info.id].append(self.name)
                    self.running.add(payload.info.id)
                    tg.start_soon(self._answer, envelope.sequence, payload)
                else:  # a Cancel: answered; the task's answer still comes (the broker ignores it)
                    await self._send(schema.RESPONSE, envelope.sequence, None)
            tg.cancel_scope.cancel()

    async def _answer(self, sequence: int, request: Any) -> None:
        await anyio.sleep(random.uniform(0.005, 0.04))
        with contextlib.suppress(ConnectionClosed):
            await self._send(schema.RESPONSE, sequence, ok_response(request, request.info.reference.encode()))
        self.running.discard(request.info.id)

    async def _send(self, kind: int, sequence: int, payload: Any) -> None:
        envelope = schema.Envelope(sequence=sequence, type=kind)
        if payload is not None:
            pack(envelope, payload)
        await self.ws.send(self.codec.encode(envelope))

    def cut(self) -> None:
        """The provider dies: its connection is dropped without a close."""
        self.ws.transport.abort()


async def client_socket(node: Node, refs: list[str], answers: dict[str, list[bytes]], ids: dict[str, str]) -> None:
    """Sends a task per reference on one client socket, records every answer by reference."""
    codec = Codec(SUBPROTOCOL_PROTOBUF)
    with contextlib.suppress(ConnectionClosed, OSError, EOFError):
        async with connect(node.ws_url + "/api/client/ws", subprotocols=[SUBPROTOCOL_PROTOBUF], max_size=None,
                           ping_interval=None) as ws:
            for seq, ref in enumerate(refs, 1):
                envelope = schema.Envelope(sequence=seq, type=schema.REQUEST)
                pack(envelope, wasip1(blob=WASM, reference=ref))
                await ws.send(codec.encode(envelope))
            got = 0
            while got < len(refs):
                envelope = codec.decode(await ws.recv())
                payload = unpack(envelope)
                ref = refs[envelope.sequence - 1]
                answers[ref].append(payload.ok.stdout if not envelope.error else envelope.error.encode())
                ids[ref] = payload.info.id if not envelope.error else ""
                got += 1


async def test_kill_9_of_a_node_and_a_provider_cut_with_a_thousand_tasks_in_flight(redis_server, redis_prefix, tmp_path):
    runs: dict[str, list[str]] = collections.defaultdict(list)
    answers: dict[str, list[bytes]] = collections.defaultdict(list)
    ids: dict[str, str] = {}
    on_a = [f"a{i}" for i in range(800)]  # clients on A (survives)
    on_b = [f"b{i}" for i in range(200)]  # clients on B (killed): their tasks are cancelled
    with processes(redis_server.url, redis_prefix, 3, tmp_path) as (a, b, c):
        await all_ready([a, b, c])
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                providers = {}
                for node, names in ((a, ("pa1", "pa2")), (b, ("pb1", "pb2")), (c, ("pc1", "pc2"))):
                    for name in names:
                        providers[name] = await tg.start(FastProvider(node, name, 8, runs).run)
                async with anyio.create_task_group() as clients:
                    for i in range(4):
                        clients.start_soon(client_socket, a, on_a[i::4], answers, ids)
                    clients.start_soon(client_socket, b, on_b, answers, ids)
                    await wait_until(lambda: sum(map(len, answers.values())) >= 200, timeout=30)
                    on_dead = set(providers["pb1"].running | providers["pb2"].running)
                    b.signal(signal.SIGKILL)
                    cut = set(providers["pa2"].running)
                    providers["pa2"].cut()
                    assert on_dead and cut, "the node and the provider were killed while running tasks"
                tg.cancel_scope.cancel()
        # every task of A's clients ended exactly once, with its own result
        assert {ref: answers[ref] for ref in on_a if answers[ref] != [ref.encode()]} == {}
        a_ids = {ids[ref] for ref in on_a}
        twice = {task_id for task_id in a_ids if len(runs[task_id]) > 1}
        # a second run only for tasks whose first run was on the dead node's providers or the cut one
        assert all(runs[t][0] in ("pb1", "pb2", "pa2") for t in twice), {t: runs[t] for t in twice}
        assert all(len(runs[t]) <= 2 for t in a_ids)
        assert all(runs[t] for t in a_ids)
        await wait_until(lambda: task_keys(redis_server, redis_prefix) == [], timeout=2 * TTL + 3)  # B's tasks too
        for node in (a, c):
            node.stop()
        await wait_until(lambda: keys(redis_server, redis_prefix) == [], timeout=2 * TTL + 3)


async def test_restart_every_node_with_kill_9_and_find_the_uploads(redis_server, redis_prefix, tmp_path):
    tool = b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 8192  # two chunks
    with processes(redis_server.url, redis_prefix, 2, tmp_path) as (a, b):
        await all_ready([a, b])
        async with httpx.AsyncClient(timeout=30) as http:
            ref = (await http.post(a.url + "/api/storage/upload?name=big.wasm", content=tool)).text.strip()
            assert (await http.get(b.url + "/api/storage/big.wasm")).content == tool
        for node in (a, b):
            node.signal(signal.SIGKILL)
    (tmp_path / "again").mkdir()
    with processes(redis_server.url, redis_prefix, 2, tmp_path / "again") as (c, d):
        await all_ready([c, d])
        async with httpx.AsyncClient(timeout=30) as http:
            for node in (c, d):
                r = await http.get(node.url + "/api/storage/big.wasm")
                assert r.content == tool and r.headers["x-wasimoff-ref"] == ref
                assert (await http.get(node.url + "/api/storage/" + ref)).content == tool


async def test_a_node_stalled_past_its_ttl_is_fenced_and_nothing_ends_twice(redis_server, redis_prefix, tmp_path):
    """B stops (SIGSTOP) for 2.5 × node_ttl with tasks running on its providers, then runs again.
    Meanwhile the others retry what it ran and cancel what its clients sent; when it runs again it
    finds itself declared dead: its clients are answered "broker node lost", and its providers'
    late results count for nothing. Every task ends exactly once at its client."""
    runs: dict[str, list[str]] = collections.defaultdict(list)
    answers: dict[str, list[bytes]] = collections.defaultdict(list)
    ids: dict[str, str] = {}
    on_a = [f"a{i}" for i in range(300)]
    on_b = [f"b{i}" for i in range(100)]
    with processes(redis_server.url, redis_prefix, 3, tmp_path) as (a, b, c):
        await all_ready([a, b, c])
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                providers = {}
                for node, names in ((a, ("pa",)), (b, ("pb",)), (c, ("pc",))):
                    for name in names:
                        providers[name] = await tg.start(FastProvider(node, name, 8, runs).run)
                async with anyio.create_task_group() as clients:
                    for i in range(3):
                        clients.start_soon(client_socket, a, on_a[i::3], answers, ids)
                    clients.start_soon(client_socket, b, on_b, answers, ids)
                    await wait_until(lambda: sum(map(len, answers.values())) >= 60, timeout=30)
                    b.signal(signal.SIGSTOP)
                    stalled = set(providers["pb"].running)
                    await anyio.sleep(2.5 * TTL)
                    b.signal(signal.SIGCONT)
                assert stalled, "B stalled while its provider ran tasks"
                tg.cancel_scope.cancel()
        assert {ref: answers[ref] for ref in on_a if answers[ref] != [ref.encode()]} == {}
        for ref in on_b:  # B's clients: their result, or "broker node lost" — once
            assert len(answers[ref]) == 1 and answers[ref][0] in (ref.encode(), b"broker node lost"), (ref, answers[ref])
        twice = {t for t in (ids[ref] for ref in on_a) if len(runs[t]) > 1}
        # Twice only after a first run on a node declared dead: B, and whichever other node a busy
        # machine starved of its heartbeats past the TTL (its log says so; a first run on A or C was
        # seen once in a fresh-clone CI run while I ran other checks beside it).
        dead = {name for node, name in ((a, "pa"), (b, "pb"), (c, "pc")) if "this node was declared dead" in node.logged()}
        assert "pb" in dead
        assert all(runs[t][0] in dead for t in twice), ({t: runs[t] for t in twice}, dead)
        await wait_until(lambda: task_keys(redis_server, redis_prefix) == [], timeout=2 * TTL + 3)
        for node in (a, b, c):
            node.stop()
        await wait_until(lambda: keys(redis_server, redis_prefix) == [], timeout=2 * TTL + 3)
