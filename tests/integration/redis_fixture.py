"""A real redis-server for the tests (Debian's; ``.ci/run`` installs it), started by the tests
on a free loopback port in a temporary directory, never as a system service, and stopped by
its PID. Locally the tests skip when the binary is missing; under CI (CI=true) they fail."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from rendezvous.backends import BackendSettings, create_backend
from rendezvous.core import Deliver, Expired
from rendezvous.testing import wait_until


class RedisServer:
    def __init__(self, directory: str, *extra: str) -> None:
        self.directory = directory
        self.extra = list(extra)  # more redis-server options (``--replicaof``, ...)
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(5):  # the free port may be taken between our probe and the server's bind
            self.port = self.port or _free_port()
            self.process = subprocess.Popen(self._command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._answers_ping(deadline=time.monotonic() + 5):
                return
            self.stop()
            self.port = 0
        raise RuntimeError(f"{type(self).__name__} did not start")

    def _command_line(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.directory, "--daemonize", "no", "--loglevel", "warning", *self.extra]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def command(self, *args: str) -> bytes:
        """One command over a plain socket (inline protocol): for checks and chaos from tests."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            parts = [b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]
            sock.sendall(b"".join(parts))
            return sock.recv(1 << 20)

    def _answers_ping(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self.command("PING").startswith(b"+PONG"):
                    return True
            except OSError:
                time.sleep(0.02)
        return False


class RedisSentinel(RedisServer):
    """``redis-server --sentinel`` watching the primary at ``primary_port`` as ``service``, quick
    to act (down after 300 ms); its config file (Sentinel rewrites it) in ``directory``."""

    def __init__(self, directory: str, primary_port: int, service: str = "mymaster") -> None:
        super().__init__(directory)
        self.primary_port, self.service = primary_port, service

    def _command_line(self) -> list[str]:
        config = os.path.join(self.directory, f"sentinel-{self.port}.conf")
        with open(config, "w") as file:
            file.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
                       f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 1\n"
                       f"sentinel down-after-milliseconds {self.service} 300\n"
                       f"sentinel failover-timeout {self.service} 3000\n")
        return ["redis-server", config, "--sentinel", "--loglevel", "warning"]

    def primary(self) -> int:
        """The port of the primary this Sentinel names now."""
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service).split(b"\r\n")
        return int(reply[4])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server missing in CI (.ci/run installs it)")
        pytest.skip("redis-server not installed (apt-get install redis-server, or run .ci/run)")
    server = RedisServer(str(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """Keys of one test apart from every other's on the shared server."""
    return "t" + secrets.token_hex(4)


# -- pairing stores as nodes ------------------------------------------------------------------------
class StoreNode:
    """A pairing store as one node sees it: what its calls returned (``seen``) and what it was
    told later (timers, other nodes), in order."""

    def __init__(self, store: Any, seen: list, backend: Any = None, *, callbacks: bool = False) -> None:
        self.store = store
        self.seen = seen
        self.backend = backend
        self.scope: anyio.CancelScope | None = None  # cancel it: the node stops (a clean leave)
        self.callbacks = callbacks  # call the store's callback form (wait_now, ...) and await its ``then``

    async def _then(self, call: Any, *args: Any) -> tuple[Any, list]:
        future = asyncio.get_running_loop().create_future()
        call(*args, lambda value, effects: future.set_result((value, effects)))
        return await future

    async def wait(self, now, sid, party, pool="pool", order=0, info=None):
        if self.callbacks:
            effects = (await self._then(self.store.wait_now, now, sid, party, pool, order, info))[1]
        else:
            effects = await self.store.wait(now, sid, party, pool, order, info)
        self.seen += effects
        return effects

    async def ask(self, now, party, pools=("pool",), offer="o"):
        if self.callbacks:
            info, effects = await self._then(self.store.ask_now, now, party, pools, offer)
        else:
            info, effects = await self.store.ask(now, party, pools, offer)
        self.seen += effects
        return info, effects

    async def answer(self, now, sid, answer):
        if self.callbacks:
            info, effects = await self._then(self.store.answer_now, now, sid, answer)
        else:
            info, effects = await self.store.answer(now, sid, answer)
        self.seen += effects
        return info, effects

    async def gone(self, now, party):
        return await self.store.gone(now, party)

    async def advance(self, now):
        effects = await self.store.advance(now)
        self.seen += effects
        return effects

    def got(self, party) -> list:
        """What reached ``party`` (deliveries and expiries)."""
        return [e for e in self.seen if (type(e) is Deliver and e.to == party) or (type(e) is Expired and e.party == party)]


async def rendezvous_across(a: StoreNode, b: StoreNode, tag: str, timeout: float = 15.0) -> None:
    """A proxy waits on A, a client on B is matched with it (the offer crosses the bus to A) and
    gets its answer; tried again while the nodes are not connected (a failover under way, say)."""
    deadline = time.monotonic() + timeout
    for attempt in range(10_000):
        sid = f"{tag}-{attempt}"
        await a.wait(0.0, sid, f"proxy-{sid}", info=sid)
        info, _ = await b.ask(0.0, f"client-{sid}")
        if info == sid:
            await wait_until(lambda sid=sid: a.got(f"proxy-{sid}"))  # the offer, through the bus
            assert (await a.answer(0.0, sid, "answer"))[0] == sid
            await wait_until(lambda sid=sid: b.got(f"client-{sid}"))  # the answer, through the bus
            assert b.got(f"client-{sid}") == [Deliver(f"client-{sid}", "answer")]
            return
        await a.gone(0.0, f"proxy-{sid}")
        assert time.monotonic() < deadline, "no rendezvous"
        await anyio.sleep(0.1)


def recorder(seen: list) -> Any:
    async def record(effects: Any) -> None:
        seen.extend(effects)
    return record


@contextlib.asynccontextmanager
async def redis_nodes(url: str, prefix: str, n: int, *, hold_timeout: float = 10.0, answer_timeout: float = 10.0,
                      clock: Any = None, node_ttl: float = 3.0, callbacks: bool = False) -> AsyncIterator[list[StoreNode]]:
    """``n`` redis backends (nodes) with a pairing store each, sharing ``prefix`` on one server
    (``callbacks``: the nodes call the stores' callback form)."""
    settings = BackendSettings(url=url, prefix=prefix, node_ttl=node_ttl)
    clock = clock or (lambda: 0.0)
    async with anyio.create_task_group() as tg:
        nodes = []
        for _ in range(n):
            backend = create_backend("redis", settings)
            scope = anyio.CancelScope()

            async def run(backend: Any = backend, scope: anyio.CancelScope = scope, *, task_status: Any) -> None:
                with scope:
                    await backend.run(task_status=task_status)

            await tg.start(run)
            store = backend.pairing("sf", hold_timeout=hold_timeout, answer_timeout=answer_timeout, clock=clock)
            node = StoreNode(store, [], backend, callbacks=callbacks)
            node.scope = scope
            store.attach(recorder(node.seen))
            nodes.append(node)
        yield nodes
        tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def running_store_nodes(url: str, prefix: str, n: int, make_node: Any, *, node_ttl: float = 3.0) -> AsyncIterator[list]:
    """``n`` redis backends (nodes) sharing ``prefix`` on one server, each running with the node
    ``make_node(backend)`` builds around one of its stores (``.store``, run too); a node's
    ``scopes`` stop its backend and its store (a node's death)."""
    settings = BackendSettings(url=url, prefix=prefix, node_ttl=node_ttl)
    async with anyio.create_task_group() as tg:
        nodes = []
        for _ in range(n):
            backend = create_backend("redis", settings)
            scopes = [anyio.CancelScope(), anyio.CancelScope()]

            async def run(backend: Any = backend, scope: anyio.CancelScope = scopes[0], *, task_status: Any) -> None:
                with scope:
                    await backend.run(task_status=task_status)

            await tg.start(run)
            node = make_node(backend)
            node.scopes = scopes

            async def run_store(node: Any = node, scope: anyio.CancelScope = scopes[1]) -> None:
                with scope:
                    await node.store.run()

            tg.start_soon(run_store)
            nodes.append(node)
        yield nodes
        tg.cancel_scope.cancel()
