"""Chaos on a Snowflake cluster: nodes are ``rendezvous serve`` processes sharing one real
redis-server, proxies and clients are spread over them (each request to a node picked at random,
so a proxy's poll, its client and its answer are mostly on different nodes), and then a node is
killed with SIGKILL, a node is stopped past its TTL and continued, Redis's Pub/Sub connections
are killed, or redis-server is restarted. Checked throughout: no client waits past its timeout,
no offer reaches two polls, every answer reaches the client that sent the offer, requests fail
only on a dead node (or, while Redis is away, as the profile's own "no proxies" / "no match"),
and the keys in Redis return to their baseline within seconds."""

from __future__ import annotations

import collections
import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TypeVar

import anyio
import pytest
import redis

from rendezvous.testing import http_call
from rendezvous_snowflake.messages import encode_client_request

from .redis_fixture import RedisServer
from .test_snowflake import PATTERN

pytestmark = pytest.mark.anyio
HOLD, ANSWER_TIMEOUT, TTL = 1.0, 1.0, 1.0
N = TypeVar("N", bound="Node")
NO_PROXIES, TIMED_OUT = "no snowflake proxies currently available", "timed out waiting for answer!"
SLACK = 0.5  # scheduling on a shared 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One ``rendezvous serve --profile snowflake --backend redis`` process (other profiles' chaos
    tests make theirs with :meth:`start`)."""

    def __init__(self, index: int, redis_url: str, prefix: str, log_dir) -> None:
        port = _free_port()
        self.start(f"n{index}", port, log_dir, redis_url, prefix, TTL, "info", [
            "--profile", "snowflake", "--addr", f"127.0.0.1:{port}", "--disable-tls", "--disable-geoip",
            "--allowed-relay-pattern", PATTERN, "--proxy-timeout", str(HOLD), "--client-timeout", str(ANSWER_TIMEOUT)])

    def start(self, node_id: str, port: int, log_dir, redis_url: str, prefix: str, ttl: float, log_level: str,
              serve_args: list[str]) -> None:
        """Run ``rendezvous serve <serve_args>`` on the redis backend as ``node_id``, its log in ``log_dir``."""
        self.id, self.port = node_id, port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.log = log_dir / f"{node_id}.log"
        self.alive = True
        cmd = [sys.executable, "-m", "rendezvous", "serve", *serve_args, "--backend", "redis", "--backend-url", redis_url,
               "--backend-prefix", prefix, "--node-id", node_id, "--node-ttl", str(ttl), "--log-format", "json",
               "--log-level", log_level]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))  # noqa: SIM115

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)
        if signum == signal.SIGKILL:
            self.proc.wait(5)
            self.alive = False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logged(self) -> str:
        return self.log.read_text(errors="replace")


async def readyz(node: Node) -> int:
    try:
        return (await http_call(node.url + "/readyz", timeout=2)).status
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
        return 0


@contextlib.contextmanager
def stopped_after(nodes: list[N]) -> Iterator[list[N]]:
    """``nodes`` (started), each stopped when the block ends."""
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def nodes_on(redis_url: str, prefix: str, n: int, log_dir) -> contextlib.AbstractContextManager[list[Node]]:
    return stopped_after([Node(i, redis_url, prefix, log_dir) for i in range(n)])


async def all_ready(nodes: list[Node], timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout, shield=False):
        while [await readyz(node) for node in nodes if node.alive] != [200] * sum(node.alive for node in nodes):
            await anyio.sleep(0.05)


def offer_sdp(tag: str) -> str:
    return json.dumps({"type": "offer", "sdp": f"v=0\r\na=candidate:1 1 udp 1 10.0.0.2 5000 typ host\r\na=x-tag:{tag}\r\n"})


def answer_sdp(tag: str) -> str:
    return json.dumps({"type": "answer", "sdp": f"v=0\r\na=candidate:1 1 udp 1 10.0.0.3 6000 typ host\r\na=x-tag:{tag}\r\n"})


def tag_of(sdp_json: str) -> str:
    return json.loads(sdp_json)["sdp"].rsplit("a=x-tag:", 1)[1].strip()


class Load:
    """Proxies and clients on random live nodes; what every request got, and when."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.offers = collections.Counter()  # client tag -> polls that carried its offer
        self.wrong: list[tuple[str, str]] = []  # (client tag, answer tag) that differ
        self.replies: list[tuple[str, str, float, float, str]] = []  # (kind, node, start, end, outcome)
        self.failed: list[tuple[str, str, float, str]] = []  # (kind, node, time, error): transport errors
        self.stop_at = 0.0

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    async def _call(self, kind: str, node: Node, path: str, body: bytes, timeout: float):
        started = time.monotonic()
        try:
            return started, await http_call(node.url + path, "POST", body, timeout=timeout)
        except Exception as exc:  # a dead node: refused, reset, cut mid-reply
            self.failed.append((kind, node.id, started, type(exc).__name__))
            return started, None

    async def proxy(self, i: int) -> None:
        k = 0
        while time.monotonic() < self.stop_at:
            node = random.choice(self.live())
            sid = f"p{i}-{k}"
            body = json.dumps({"Sid": sid, "Version": "1.3", "Type": "standalone", "NAT": "unrestricted", "Clients": 0,
                               "AcceptedRelayPattern": PATTERN}).encode()
            started, reply = await self._call("poll", node, "/proxy", body, HOLD + 10)
            if reply is None:
                await anyio.sleep(0.05)
                continue
            got = reply.json()
            self.replies.append(("poll", node.id, started, time.monotonic(), got["Status"]))
            if got["Status"] != "client match":
                continue
            k += 1
            tag = tag_of(got["Offer"])
            self.offers[tag] += 1
            answer = json.dumps({"Version": "1.3", "Sid": sid, "Answer": answer_sdp(tag)}).encode()
            at = random.choice(self.live())
            started, reply = await self._call("answer", at, "/answer", answer, 10)
            if reply is not None:
                self.replies.append(("answer", at.id, started, time.monotonic(), reply.json()["Status"]))

    async def client(self, j: int) -> None:
        k = 0
        while time.monotonic() < self.stop_at:
            node = random.choice(self.live())
            tag = f"c{j}-{k}"
            k += 1
            started, reply = await self._call("client", node, "/client", encode_client_request(offer_sdp(tag), "restricted"),
                                              ANSWER_TIMEOUT + 10)
            if reply is None:
                await anyio.sleep(0.05)
                continue
            got = reply.json()
            if "answer" in got:
                if tag_of(got["answer"]) != tag:
                    self.wrong.append((tag, tag_of(got["answer"])))
                outcome = "answer"
            else:
                outcome = got["error"]
            self.replies.append(("client", node.id, started, time.monotonic(), outcome))
            if outcome == NO_PROXIES:
                await anyio.sleep(0.02)

    async def run(self, seconds: float, proxies: int = 16, clients: int = 8, during=None) -> None:
        self.stop_at = time.monotonic() + seconds
        async with anyio.create_task_group() as tg:
            for i in range(proxies):
                tg.start_soon(self.proxy, i)
            for j in range(clients):
                tg.start_soon(self.client, j)
            if during is not None:
                await during()

    def outcomes(self, kind: str, since: float = 0.0, until: float = float("inf")) -> collections.Counter:
        return collections.Counter(r[4] for r in self.replies if r[0] == kind and since <= r[2] and r[3] <= until)

    def check(self, *, may_fail: set[str] = frozenset()) -> None:
        """The invariants of every run."""
        assert not self.wrong, f"answers reached the wrong client: {self.wrong[:5]}"
        assert max(self.offers.values(), default=0) <= 1, "an offer reached two polls"
        for kind, node, started, ended, outcome in self.replies:
            limit = (HOLD if kind == "poll" else ANSWER_TIMEOUT) + SLACK
            assert ended - started <= limit, f"a {kind} on {node} waited {ended - started:.2f} s ({outcome})"
            assert outcome in {"poll": {"client match", "no match"}, "answer": {"success", "client gone"},
                               "client": {"answer", NO_PROXIES, TIMED_OUT}}[kind], (kind, outcome)
        unexpected = [f for f in self.failed if f[1] not in may_fail]
        assert not unexpected, f"requests to live nodes failed: {unexpected[:5]}"


def keys(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(k.decode() for k in client.keys(prefix + ":*"))


def transient(client: redis.Redis, prefix: str) -> list[str]:
    """Keys beyond the baseline (live nodes' liveness keys, the ticket counter, the set of nodes)."""
    return [k for k in keys(client, prefix) if ":node:" not in k and not k.endswith((":seq", ":nodes"))]


async def wait_for(predicate, timeout: float, what) -> float:
    """Seconds until ``predicate()`` held (``what()`` says what is left if it never does)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what()}")
        await anyio.sleep(0.05)
    return time.monotonic() - started


async def test_kill_9_a_node_under_load(redis_server, redis_prefix, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    with nodes_on(redis_server.url, redis_prefix, 3, tmp_path) as nodes:
        await all_ready(nodes)
        load, victim = Load(nodes), nodes[1]
        killed = {}

        async def kill_one() -> None:
            await anyio.sleep(1.5)
            killed["at"] = time.monotonic()
            victim.signal(signal.SIGKILL)

        await load.run(4.0, during=kill_one)
        load.check(may_fail={victim.id})
        after = killed["at"] + TTL + SLACK  # the dead node's key has expired
        assert load.outcomes("client", since=after)["answer"] >= 10, load.outcomes("client", since=after)
        assert load.outcomes("client", until=killed["at"])["answer"] >= 10
        # its traces in Redis: gone within a few seconds of the kill (liveness key, waiters, pool entries)
        dead = victim.id

        def no_trace() -> bool:
            return not any(dead in k for k in keys(client, redis_prefix)) and \
                dead.encode() not in client.smembers(f"{redis_prefix}:{{snowflake}}:nodes")

        took = await wait_for(no_trace, 5.0, lambda: (keys(client, redis_prefix),
                                                        client.smembers(f"{redis_prefix}:{{snowflake}}:nodes")))
        assert time.monotonic() - killed["at"] < 6.0, took
        await wait_for(lambda: not transient(client, redis_prefix), ANSWER_TIMEOUT + 4.0,
                       lambda: transient(client, redis_prefix))
        assert {k.rsplit(":", 1)[1] for k in keys(client, redis_prefix) if ":node:" in k} == {"n0", "n2"}


async def test_a_node_stopped_past_its_ttl_fences_itself_and_serves_again(redis_server, redis_prefix, tmp_path):
    with nodes_on(redis_server.url, redis_prefix, 2, tmp_path) as (a, b):
        await all_ready([a, b])
        body = json.dumps({"Sid": "held", "Version": "1.3", "Type": "standalone", "NAT": "unrestricted", "Clients": 0,
                           "AcceptedRelayPattern": PATTERN}).encode()
        got = {}
        async with anyio.create_task_group() as tg:
            async def held_poll() -> None:
                got["poll"] = await http_call(a.url + "/proxy", "POST", body, timeout=10)

            tg.start_soon(held_poll)
            await anyio.sleep(0.3)
            a.signal(signal.SIGSTOP)
            await anyio.sleep(TTL + 0.7)  # past its TTL: declared dead
            started = time.monotonic()
            denied = await http_call(b.url + "/client", "POST", encode_client_request(offer_sdp("c"), "restricted"))
            assert denied.json() == {"error": NO_PROXIES} and time.monotonic() - started < 0.5  # A's poll is not offered
            a.signal(signal.SIGCONT)
        assert got["poll"].json()["Status"] == "no match"  # ended by the fence (or its hold), never matched
        await all_ready([a, b])
        assert "declared dead" in a.logged()
        load = Load([a, b])
        await load.run(1.5, proxies=4, clients=4)
        load.check()
        assert load.outcomes("client")["answer"] >= 5


async def test_pubsub_connections_killed_under_load(redis_server, redis_prefix, tmp_path):
    with nodes_on(redis_server.url, redis_prefix, 3, tmp_path) as nodes:
        await all_ready(nodes)
        load = Load(nodes)
        kills = []

        async def kill_pubsub() -> None:
            for _ in range(3):
                await anyio.sleep(0.8)
                kills.append(redis_server.command("CLIENT", "KILL", "TYPE", "pubsub"))

        await load.run(3.5, during=kill_pubsub)
        load.check()
        assert all(k.startswith(b":") and k != b":0\r\n" for k in kills), kills  # each killed the 3 inboxes
        assert load.outcomes("client")["answer"] >= 30, load.outcomes("client")
        assert sum("inbox connection lost" in node.logged() for node in nodes) == 3


async def test_redis_restarted_under_load(tmp_path):
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        with nodes_on(server.url, "chaos", 3, tmp_path) as nodes:
            await all_ready(nodes)
            load = Load(nodes)
            seen = {}

            async def restart() -> None:
                await anyio.sleep(1.0)
                server.stop()
                seen["down"] = time.monotonic()
                await anyio.sleep(0.3)
                seen["readyz"] = [await readyz(node) for node in nodes]
                seen["healthz"] = [(await http_call(node.url + "/healthz")).status for node in nodes]
                await anyio.sleep(0.5)
                server.start()
                seen["up"] = time.monotonic()
                await all_ready(nodes, timeout=8)
                seen["ready"] = time.monotonic()

            await load.run(5.0, during=restart)
            load.check()
            assert seen["readyz"] == [503] * 3 and seen["healthz"] == [200] * 3
            assert seen["ready"] - seen["up"] < 3.0  # back by themselves
            away = load.outcomes("client", since=seen["down"] + 0.1, until=seen["up"])
            assert away and set(away) == {NO_PROXIES}, away  # fail fast, the profile's own answer
            assert load.outcomes("client", since=seen["ready"] + 0.5)["answer"] >= 5
    finally:
        server.stop()
