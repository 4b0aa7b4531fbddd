"""One contract for wasimoff's task queue, run against every backend: the rules of
``tests/unit/test_dispatch.py`` through the store interface, on ``memory`` and on ``redis`` (a
real redis-server); then the same queue spread over nodes (submitted on A, run on B). With
``memory`` the "nodes" are one store, which is what one node is. Then what only a cluster has:
a dead node's leases retried elsewhere and its own tasks cancelled, a fenced node, a clean
leave, and the keys left behind."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgpack
import pytest

from rendezvous.backends import create_backend
from rendezvous.core import Deliver, Failed, QueueFull, Revoke
from rendezvous.core.dispatch import wasimoff_retry_delay
from rendezvous.testing import wait_until

from .redis_fixture import RedisServer, running_store_nodes
from .test_overlay_cluster import keys

pytestmark = pytest.mark.anyio
TTL = 0.5


class Task:
    """A test task: an id and a payload; hashable by identity, as the broker's are."""

    def __init__(self, task_id: str, payload: str = "", attempts: int = 0) -> None:
        self.id, self.payload, self.attempts = task_id, payload, attempts

    def __repr__(self) -> str:
        return f"Task({self.id})"


class Codec:
    def task_id(self, task: Task) -> str:
        return task.id

    def dumps(self, task: Task) -> bytes:
        return msgpack.packb(task.payload)

    def loads(self, task_id: str, data: bytes, attempts: int) -> Task:
        return Task(task_id, msgpack.unpackb(data), attempts)

    def dumps_result(self, task: Task, result: Any) -> bytes:
        return msgpack.packb(result)

    def loads_result(self, task: Task, data: bytes) -> Any:
        return msgpack.unpackb(data)


class TaskNode:
    """A task store as one node sees it: what its calls returned and what it was told later, in ``seen``."""

    def __init__(self, store: Any, backend: Any = None) -> None:
        self.store, self.backend = store, backend
        self.seen: list = []
        self.scopes: list[anyio.CancelScope] = []

        async def record(effects: Any) -> None:
            self.seen.extend(effects)

        store.attach(record)

    async def call(self, method: str, *args: Any) -> list:
        effects = await getattr(self.store, method)(time.monotonic(), *args)
        self.seen += effects
        return effects

    async def submit(self, payload: str = "", requires: tuple = ()) -> Task:
        task = Task(self.store.new_id(), payload)
        await self.call("submit", task, (), requires)
        return task

    def started(self, worker: str) -> list:
        """The tasks given to ``worker`` (a party on this node), in order."""
        return [e.payload for e in self.seen if type(e) is Deliver and e.to == worker]

    def result(self, task: Task) -> Any:
        """The result or the errors that reached ``task``'s client, a list (exactly once: one item)."""
        return [e.payload if type(e) is Deliver else ("failed", e.errors) for e in self.seen
                if (type(e) is Deliver and e.to is task) or (type(e) is Failed and e.task is task)]

    def stop(self) -> None:
        for scope in self.scopes:
            scope.cancel()


@contextlib.asynccontextmanager
async def redis_task_nodes(url: str, prefix: str, n: int, *, node_ttl: float = 3.0, **options: Any) -> AsyncIterator[list]:
    async with running_store_nodes(url, prefix, n, lambda backend: TaskNode(backend.tasks("wasimoff", codec=Codec(), **options), backend),
                                   node_ttl=node_ttl) as nodes:
        yield nodes


@pytest.fixture(params=["memory", "redis"])
def cluster(request):
    kind = request.param

    @contextlib.asynccontextmanager
    async def make(n: int = 1, **options: Any) -> AsyncIterator[list[TaskNode]]:
        if kind == "memory":
            store = create_backend("memory").tasks("wasimoff", codec=Codec(), **options)
            node = TaskNode(store)
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.run)
                yield [node] * n
                tg.cancel_scope.cancel()
            return
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")
        async with redis_task_nodes(server.url, prefix, n, **options) as nodes:
            yield nodes
        assert keys(server, prefix) == []  # every node left cleanly: nothing is left behind

    make.kind = kind
    return make


async def worker(node: TaskNode, name: str, capacity: int, provides: Any = None) -> None:
    await node.call("add_worker", name, name, (), provides)
    await node.call("set_capacity", name, capacity)


# -- the matcher's rules, through the store ------------------------------------------------------------
async def test_a_task_runs_on_a_free_worker_and_its_result_reaches_its_client(cluster):
    async with cluster(2) as (a, b):
        await worker(b, "w", 1)
        task = await a.submit("job")
        await wait_until(lambda: len(b.started("w")) == 1)
        leased = b.started("w")[0]
        assert leased.id == task.id and leased.payload == "job"
        await b.call("completed", leased, "w", "done")
        await wait_until(lambda: a.result(task) == ["done"])
        # the slot is free again: the next task runs at once
        second = await a.submit("two")
        await wait_until(lambda: len(b.started("w")) == 2)
        await b.call("completed", b.started("w")[1], "w", "done 2")
        await wait_until(lambda: a.result(second) == ["done 2"])
        assert a.result(task) == ["done"]  # exactly once


async def test_the_queue_limit_refuses_and_waiting_tasks_run_in_order(cluster):
    async with cluster(2, queue_limit=3) as (a, b):
        tasks = [await a.submit(str(i)) for i in range(2)] + [await b.submit("2")]
        with pytest.raises(QueueFull):
            await a.submit("refused")
        with pytest.raises(QueueFull):
            await b.submit("refused")
        await worker(b, "w", 3)
        await wait_until(lambda: len(b.started("w")) == 3)
        assert [t.payload for t in b.started("w")] == ["0", "1", "2"]  # FIFO, across nodes
        for leased in b.started("w"):
            await b.call("completed", leased, "w", leased.payload)
        await wait_until(lambda: a.result(tasks[0]) == ["0"] and a.result(tasks[1]) == ["1"] and b.result(tasks[2]) == ["2"])


async def test_transport_errors_retry_after_the_backoff_elsewhere_then_fail(cluster):
    async with cluster(2, max_attempts=3) as (a, b):
        await worker(b, "wb", 1)
        task = await a.submit("flaky")
        times = []
        for attempt in range(3):
            await wait_until(lambda attempt=attempt: len(b.started("wb")) == attempt + 1)
            times.append(time.monotonic())
            await b.call("transport_error", b.started("wb")[-1], "wb", f"broken {attempt}")
        await wait_until(lambda: a.result(task) != [])
        assert a.result(task) == [("failed", ("broken 0", "broken 1", "broken 2"))]
        assert times[1] - times[0] >= wasimoff_retry_delay(1) - 0.002
        assert times[2] - times[1] >= wasimoff_retry_delay(2) - 0.002


async def test_first_result_wins_a_late_result_of_a_moved_lease_is_ignored(cluster):
    async with cluster(2) as (a, b):
        await worker(b, "old", 1)
        task = await a.submit("x")
        await wait_until(lambda: len(b.started("old")) == 1)
        first = b.started("old")[0]
        await b.call("remove_worker", "old")  # its provider went away: the task is retried
        await worker(a, "new", 1)
        await wait_until(lambda: len(a.started("new")) == 1)
        assert await b.call("completed", first, "old", "late") == []  # the old lease's answer: ignored
        await a.call("completed", a.started("new")[0], "new", "fresh")
        await wait_until(lambda: a.result(task) == ["fresh"])
        await anyio.sleep(0.1)
        assert a.result(task) == ["fresh"]


async def test_cancel_a_queued_task_leaves_and_a_running_one_is_revoked_where_it_runs(cluster):
    async with cluster(2) as (a, b):
        queued = await a.submit("q")
        assert await a.call("cancel", queued) == []
        await worker(b, "w", 1)
        running = await a.submit("r")
        await wait_until(lambda: len(b.started("w")) == 1)
        assert [t.id for t in b.started("w")] == [running.id]  # the cancelled one never ran
        await a.call("cancel", running)
        await wait_until(lambda: [type(e) for e in b.seen if type(e) is Revoke] == [Revoke])
        leased = b.started("w")[0]
        await b.call("completed", leased, "w", "too late")  # the revoked task's answer frees the slot
        assert a.result(running) == [] and a.result(queued) == []
        after = await a.submit("after")
        await wait_until(lambda: len(b.started("w")) == 2 and b.started("w")[1].id == after.id)
        await b.call("completed", b.started("w")[1], "w", "ok")
        await wait_until(lambda: a.result(after) == ["ok"])


async def test_capabilities_a_task_waits_for_a_worker_that_provides_what_it_requires(cluster):
    async with cluster(2) as (a, b):
        await worker(b, "plain", 1, provides=())
        task = await a.submit("py", requires=("pyodide",))
        plain = await a.submit("plain")
        await wait_until(lambda: len(b.started("plain")) == 1)
        assert b.started("plain")[0].id == plain.id  # the plain one passed the pyodide one
        await worker(a, "py", 1, provides=("pyodide",))
        await wait_until(lambda: len(a.started("py")) == 1)
        assert a.started("py")[0].id == task.id


# -- what only a cluster has ------------------------------------------------------------------------------
async def test_a_dead_nodes_leases_are_retried_elsewhere_and_its_own_tasks_cancelled(redis_server, redis_prefix):
    async with redis_task_nodes(redis_server.url, redis_prefix, 3, node_ttl=TTL) as (a, b, c):
        await worker(b, "wb", 2)
        kept = await a.submit("a's task")  # runs on B, which dies
        await wait_until(lambda: len(b.started("wb")) == 1)
        await worker(c, "wc", 1)
        orphan = await b.submit("b's task")  # B's client: cancelled when B dies
        await wait_until(lambda: len(b.started("wb")) == 2)  # (B had a free slot: it took its own task)
        b.backend.suspend_heartbeat()
        b.stop()  # (no clean leave: as a kill -9)
        await wait_until(lambda: any(t.id == kept.id for t in c.started("wc")), timeout=4 * TTL + 2)
        await c.call("completed", next(t for t in c.started("wc") if t.id == kept.id), "wc", "survived")
        await wait_until(lambda: a.result(kept) == ["survived"])
        await wait_until(lambda: [k for k in keys(redis_server, redis_prefix) if b":t:" in k] == [], timeout=3)
        await anyio.sleep(0.3)
        assert orphan.id not in [t.id for t in c.started("wc")]  # B's own task died with its client


async def test_a_fenced_node_answers_its_clients_and_serves_again(redis_server, redis_prefix):
    async with redis_task_nodes(redis_server.url, redis_prefix, 2, node_ttl=TTL) as (a, b):
        await worker(a, "wa", 1)
        mine = await a.submit("a's own")
        await wait_until(lambda: len(a.started("wa")) == 1)
        a.backend.suspend_heartbeat()  # A stalls past its TTL: B's beat cancels A's tasks (their clients are A's)
        await worker(b, "wb", 1)
        await wait_until(lambda: redis_server.command("EXISTS", f"{redis_prefix}:node:{a.backend.node_id}") == b":0\r\n",
                         timeout=3 * TTL + 2)
        a.backend.resume_heartbeat()
        await wait_until(lambda: a.result(mine) == [("failed", ("broker node lost",))], timeout=3)
        assert any(type(e) is Revoke for e in a.seen)  # what it ran was revoked
        assert await a.call("completed", a.started("wa")[0], "wa", "stale") == []  # its old lease counts for nothing
        task = await a.submit("after the fence")  # it serves again, under its new epoch
        await wait_until(lambda: any(t.id == task.id for t in a.started("wa") + b.started("wb")))
        assert mine.id not in [t.id for t in b.started("wb")]  # A's old task was cancelled, not retried


async def test_a_clean_leave_retries_what_it_ran_and_leaves_no_key(redis_server, redis_prefix):
    async with redis_task_nodes(redis_server.url, redis_prefix, 2) as (a, b):
        await worker(b, "wb", 1)
        task = await a.submit("moved")
        await wait_until(lambda: len(b.started("wb")) == 1)
        b.stop()
        await anyio.sleep(0.2)
        await worker(a, "wa", 1)
        await wait_until(lambda: len(a.started("wa")) == 1, timeout=3)
        await a.call("completed", a.started("wa")[0], "wa", "done")
        await wait_until(lambda: a.result(task) == ["done"])
    assert keys(redis_server, redis_prefix) == []


async def test_a_result_frame_lost_on_the_bus_is_read_from_the_record(redis_server, redis_prefix):
    async with redis_task_nodes(redis_server.url, redis_prefix, 2) as (a, b):
        handle = a.store.on_message
        lost = []

        def lossy(kind: bytes, token: int, payload: bytes) -> list:
            if kind == b"r" and not lost:  # the first result frame never arrives
                lost.append(payload)
                return []
            return handle(kind, token, payload)

        a.store.on_message = lossy
        await worker(b, "w", 1)
        task = await a.submit("x")
        await wait_until(lambda: len(b.started("w")) == 1)
        await b.call("completed", b.started("w")[0], "w", "kept")
        await wait_until(lambda: lost != [])
        await anyio.sleep(0.3)
        assert a.result(task) == []  # (the frame was lost)
        await wait_until(lambda: a.result(task) == ["kept"], timeout=5)  # re-read from its record
        await wait_until(lambda: [k for k in keys(redis_server, redis_prefix) if b":t:" in k] == [])
