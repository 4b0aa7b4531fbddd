"""Cluster benchmark: the memory backend against 1, 2 and 4 nodes on the redis backend (Snowflake; the
overlay with ``overlay``).

One JSON line per measurement:

  {"bench":"cluster","metric":"cpu",...}      a fixed load below saturation (--rate rendezvous/s), requests
                                              on random nodes: broker CPU per rendezvous (all nodes) and
                                              redis-server CPU per rendezvous, for memory x1, redis x1, x2, x4
                                              (and memory x1 at rate/N: the load each of N nodes has)
  {"bench":"cluster","metric":"idle",...}     proxies polling with no client (--idle-proxies, --hold): broker and
                                              redis-server CPU per idle poll, memory x1 and redis x1
  {"bench":"cluster","metric":"scaling",...}  saturating load, each node held to the same CPU share (--share of
                                              a core; x4 at half of it each, so the four together have what x2
                                              has): rendezvous/s of memory x1, redis x1 and redis x2 measured
                                              side by side, then of redis x2 and redis x4 side by side (see
                                              run_scaling: why at once); each round's ratios, their medians;
                                              --placement sticky: proxies answer where they polled;
                                              --sequential: one setup after the other, best over --clients
  {"bench":"cluster","metric":"latency",...}  a light load (--latency-rate): client p50/p99 for memory x1 and for
                                              redis x3 with every rendezvous across three nodes (poll on A,
                                              client on B, answer on C); the added p50/p99
  {"bench":"cluster","metric":"overlay",...}  the overlay's realistic joins (bench/overlay.py's) at saturation, each
                                              node held to --share: joins/s for memory x1, redis x1, redis x2 (the
                                              root on node 0, each joiner and each answer on a random node), and
                                              the ratios (target: redis x2 >= 1.6 x redis x1)
  {"bench":"cluster","metric":"wasimoff",...} bench/wasimoff.py's dispatch (fake providers answering at once, clients
                                              on ConnectRPC) at saturation, each node held to --share: tasks/s for
                                              memory x1, redis x1, redis x2 (providers and clients spread over the
                                              nodes), and the ratios (target: redis x2 >= 1.6 x redis x1)
  {"bench":"cluster","metric":"wasimoff_kill",...} wasimoff on redis x3, providers taking 50 ms a task, clients on every
                                              node; one node killed with SIGKILL after 3 s: every request of a client
                                              on a surviving node must end with a result or an error ("lost": none
                                              within 30 s), by cause
  {"bench":"cluster","metric":"kill",...}     redis x3 at --kill-rate, one node killed with SIGKILL after 4 s:
                                              client outcomes by cause, time until >= 99 % of the clients that
                                              reach a live node succeed again, time until the keys in Redis
                                              are back at their baseline

How the CPU share is held (the "share_method" field): cgroup v1 (cpu.cfs_quota_us under
/sys/fs/cgroup/cpu) or cgroup v2 (cpu.max) where writable, a group per node with a 20 ms period;
otherwise every node is pinned to the server core with taskset and the shares are not equal (said so).
Brokers run on core 0, the generator and redis-server on core 1 (as bench/snowflake.py, plus Redis away
from the brokers, as on another host; on their core every send to it switched to it at once); every line
carries generator_cpu_pct (near 100: the generator was the limit, not the brokers). A load balancer is
simulated: requests go to random live nodes, and a node that refuses a connection leaves the rotation.

Targets (docs/scale-out.md): redis x2 >= 1.7 x redis x1 and >= 1.5 x memory x1 at the same share; broker CPU
per rendezvous on redis <= 1.35 x memory; redis-server <= 40 us per rendezvous; added p50 <= 1 ms, p99 <= 3 ms.

Usage: python bench/cluster.py [--metrics cpu,idle,scaling,latency,kill,overlay,wasimoff,wasimoff_kill,floor] [--rate 800]
                               [--share 0.2] [--clients-per-node 120] [--placement random|sticky] [--rounds 3]
                               [--sequential [--clients 120,240,480]]
                               [--duration 10] [--latency-rate 50] [--kill-rate 300]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import os
import pathlib
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Self

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import GENERATOR_CORE, SERVER_CORE, cpu_seconds, free_port, prepare_generator, start_pinned
from httpclient import HttpConnection, connect
from wsclient import connect as ws_connect

PATTERN = "snowflake.torproject.net$"
FINGERPRINT = "2B280B23E1107BB62ABFC40DDCC8824814F80A72"
BRIDGE = {"displayName": "default", "webSocketAddress": "wss://snowflake.torproject.net/", "fingerprint": FINGERPRINT}
SDP = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + "a=x-pad:" + "y" * 900 + "\r\na=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\n"
CLIENT_BODY = b"1.0\n" + json.dumps({"offer": json.dumps({"type": "offer", "sdp": SDP}), "nat": "unrestricted",
                                     "fingerprint": FINGERPRINT}).encode()
ANSWER = json.dumps({"type": "answer", "sdp": SDP})
PERIOD_US = 20_000
OVERLAY_SECRET = "bench"
OVERLAY_OFFER = {"type": "offer", "sdp": "v=0\r\n" + "a=x-pad:" + "y" * 1200 + "\r\n"}
OVERLAY_CANDIDATE = {"candidate": {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
                                   "sdpMLineIndex": 0, "sdpMid": "0"}}


# -- the machine ----------------------------------------------------------------------------------
class CpuShare:
    """Each node held to ``fraction`` of a core: a cgroup of its own with a CPU quota."""

    V1, V2 = pathlib.Path("/sys/fs/cgroup/cpu"), pathlib.Path("/sys/fs/cgroup")

    def __init__(self) -> None:
        self.groups: list[pathlib.Path] = []
        if os.access(self.V1 / "cpu.cfs_quota_us", os.R_OK) and os.access(self.V1, os.W_OK):
            self.method = "cgroup-v1 cpu.cfs_quota_us"
        elif "cpu" in _read(self.V2 / "cgroup.controllers").split() and os.access(self.V2, os.W_OK):
            self.method = "cgroup-v2 cpu.max"
        else:
            self.method = "taskset (shares not held)"

    def hold(self, pid: int, fraction: float | None) -> pathlib.Path | None:
        if fraction is None or self.method.startswith("taskset"):
            return None
        quota = int(PERIOD_US * fraction)
        if self.method.startswith("cgroup-v1"):
            group = self.V1 / f"rdv-bench-{os.getpid()}-{pid}"
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            group = self.V2 / f"rdv-bench-{os.getpid()}-{pid}"
            group.mkdir()
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        (group / "cgroup.procs").write_text(str(pid))
        self.groups.append(group)
        return group

    def release(self, groups: list[pathlib.Path] | None = None) -> None:
        """Remove ``groups`` (all of them by default) once their processes have exited."""
        for group in list(self.groups if groups is None else groups):
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:  # its process is still exiting
                    time.sleep(0.05)
            self.groups.remove(group)


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class Redis:
    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.proc = start_pinned(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", directory, "--loglevel", "warning"], self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        # On the generator's core: beside the brokers, every send to it would switch to it at once
        # (a loopback wake-up), which a Redis on another host never costs them.
        os.sched_setaffinity(self.proc.pid, {GENERATOR_CORE})

    def command(self, *args: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"".join([b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]))
            data = b""
            while not data.endswith(b"\r\n") or data.count(b"\r\n") < _resp_lines(data):
                data += sock.recv(1 << 20)
            return data

    def keys(self, prefix: str) -> list[str]:
        reply = self.command("KEYS", prefix + ":*").split(b"\r\n")
        return [line.decode() for line in reply[2::2] if line]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _resp_lines(data: bytes) -> int:
    """Lines a KEYS reply has (``*n`` then n bulk strings of two lines each)."""
    if data.startswith(b"*"):
        return 1 + 2 * int(data[1:data.index(b"\r\n")])
    return 1


class Node:
    def __init__(self, backend: str, redis: Redis | None, index: int, prefix: str, bridges: str, hold: float,
                 profile: str = "snowflake") -> None:
        self.port = free_port()
        env = None
        if profile == "wasimoff":
            env = {**os.environ, "WASIMOFF_HTTP_LISTEN": f"127.0.0.1:{self.port}", "WASIMOFF_STATIC_FILES": "",
                   "WASIMOFF_QUIC_LISTEN": ""}
            cmd = [sys.executable, "-m", "rendezvous", "serve", "--profile", "wasimoff", "--http-server", "native",
                   "--queue-limit", "100000"]
        elif profile == "overlay":
            cmd = [sys.executable, "-m", "rendezvous", "serve", "--profile", "overlay", "--host", "127.0.0.1",
                   "--port", str(self.port), "--secret", OVERLAY_SECRET, "--timeout", "300",
                   "--max-prospects", "1000000", "--http-server", "native"]
        else:
            cmd = [sys.executable, "-m", "rendezvous", "serve", "--profile", "snowflake", "--addr", f"127.0.0.1:{self.port}",
                   "--disable-tls", "--disable-geoip", "--allowed-relay-pattern", PATTERN, "--bridge-list-path", bridges,
                   "--proxy-timeout", str(hold), "--client-timeout", "10", "--http-server", "native", "--log-level", "error"]
        if backend == "redis":
            cmd += ["--backend", "redis", "--backend-url", redis.url, "--backend-prefix", prefix,
                    "--node-id", f"bench{index}", "--node-ttl", "3"]
        self.proc = start_pinned(cmd, self.port, env=env)
        self.alive = True

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        self.alive = False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


class Setup:
    """``n`` nodes of ``backend`` (and a redis-server for them), each held to ``share`` of a core."""

    def __init__(self, backend: str, n: int, share: float | None, shares: CpuShare, tmp: str, hold: float = 10.0,
                 profile: str = "snowflake") -> None:
        self.backend, self.n, self.share, self.shares, self.hold = backend, n, share, shares, hold
        self.profile = profile
        self.tmp = tmp
        self.redis: Redis | None = None
        self.nodes: list[Node] = []
        self.groups: list[pathlib.Path] = []  # its nodes' cgroups

    def __enter__(self) -> Self:
        bridges = str(pathlib.Path(self.tmp) / "bridges.jsonl")
        pathlib.Path(bridges).write_text(json.dumps(BRIDGE) + "\n")
        if self.backend == "redis":
            self.redis = Redis(self.tmp)
        self.prefix = f"b{random.getrandbits(32):08x}"
        for i in range(self.n):
            node = Node(self.backend, self.redis, i, self.prefix, bridges, self.hold, self.profile)
            group = self.shares.hold(node.proc.pid, self.share)
            if group is not None:
                self.groups.append(group)
            self.nodes.append(node)
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()
        self.shares.release(self.groups)

    def broker_cpu(self) -> float:
        return sum(cpu_seconds(node.proc.pid) for node in self.nodes if node.alive)

    def redis_cpu(self) -> float:
        return cpu_seconds(self.redis.proc.pid) if self.redis is not None else 0.0


# -- the generator --------------------------------------------------------------------------------
class Generator:
    """Simulated proxies and clients, one keep-alive connection per peer and node. ``placement``:
    ``random`` (each request to a random live node, as behind a load balancer), ``sticky`` (the
    same, but a proxy's answer goes to the node it polled, on the connection it polled on, as the
    real proxies' keep-alive connections do behind a TCP load balancer) or ``across`` (polls to
    node 0, clients to node 1, answers to node 2)."""

    def __init__(self, setup: Setup, placement: str = "random") -> None:
        self.ports = [node.port for node in setup.nodes]
        self.live = list(range(len(self.ports)))
        self.placement = placement
        self.running = True
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.events: list[tuple[float, str]] = []  # (time, outcome) of every client request
        self.latencies: list[float] = []
        self.rendezvous = 0

    def pick(self, role: str, polled: int | None = None) -> int:
        if self.placement == "across":
            return {"poll": 0, "client": 1, "answer": 2}[role]
        if self.placement == "sticky" and polled is not None and polled in self.live:
            return polled  # the proxy answers on the connection it polled on
        return random.choice(self.live)

    def failed(self, node: int) -> None:
        if node in self.live and len(self.live) > 1:
            self.live.remove(node)  # the load balancer's health check takes it out

    async def request(self, conns: dict[int, HttpConnection], node: int, path: str, body: bytes) -> tuple[int, bytes]:
        conn = conns.get(node)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            conn = conns[node] = await connect("127.0.0.1", self.ports[node])
        return await conn.request("POST", path, body)

    async def proxy(self, i: int) -> None:
        conns: dict[int, HttpConnection] = {}
        sid, k = f"p{i}", 0
        while self.running:
            node = self.pick("poll")
            body = json.dumps({"Sid": sid, "Version": "1.3", "Type": "standalone", "NAT": "restricted", "Clients": 0,
                               "AcceptedRelayPattern": PATTERN}).encode()
            try:
                _, reply = await self.request(conns, node, "/proxy", body)
                if not reply.startswith(b'{"Status":"client match"'):
                    continue
                answer = json.dumps({"Version": "1.3", "Sid": sid, "Answer": ANSWER}).encode()
                node = self.pick("answer", polled=node)
                await self.request(conns, node, "/answer", answer)
            except (ConnectionError, OSError):
                conns.pop(node, None)
                self.failed(node)
                await asyncio.sleep(0.05)
                continue
            k += 1
            sid = f"p{i}.{k}"
        for conn in conns.values():
            conn.close()

    async def client(self, conns: dict[int, HttpConnection]) -> None:
        node = self.pick("client")
        started = time.perf_counter()
        try:
            _, reply = await self.request(conns, node, "/client", CLIENT_BODY)
        except (ConnectionError, OSError):
            conns.pop(node, None)
            self.failed(node)
            outcome = "connection error"
        else:
            if reply.startswith(b'{"answer"'):
                outcome = "answer"
                self.latencies.append(time.perf_counter() - started)
                self.rendezvous += 1
            elif b"no snowflake proxies" in reply:
                outcome = "no proxies"
            elif b"timed out" in reply:
                outcome = "timed out"
            else:
                outcome = "other: " + reply[:60].decode(errors="replace")
        self.outcomes[outcome] += 1
        self.events.append((time.monotonic(), outcome))

    async def closed_loop(self, clients: int) -> None:
        async def one() -> None:
            conns: dict[int, HttpConnection] = {}
            while self.running:
                await self.client(conns)
                if self.events[-1][1] != "answer":
                    await asyncio.sleep(0.1)  # as a client backs off (spinning, it would crowd the proxies out)

        await asyncio.gather(*(one() for _ in range(clients)))

    async def paced(self, rate: float) -> None:
        """One client request every 1/rate s, each on a free simulated client."""
        free: list[dict] = [{} for _ in range(64)]
        tasks: set[asyncio.Task] = set()
        start, sent = time.monotonic(), 0

        async def one(conns: dict) -> None:
            try:
                await self.client(conns)
            finally:
                free.append(conns)

        while self.running:
            due = start + sent / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            sent += 1
            task = asyncio.ensure_future(one(free.pop() if free else {}))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=15)


async def measured(setup: Setup, seconds: float, count: Callable[[], int]) -> tuple[int, float, float, float, float]:
    """Over the next ``seconds``: how much ``count()`` grew, the time that took, and the CPU seconds the
    brokers, redis-server and this generator spent meanwhile."""
    done0, cpu0, redis0, gen0, t0 = count(), setup.broker_cpu(), setup.redis_cpu(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return (count() - done0, time.monotonic() - t0, setup.broker_cpu() - cpu0, setup.redis_cpu() - redis0,
            time.process_time() - gen0)


async def wind_down(load: asyncio.Future, timeout: float = 15) -> None:
    """Let the load's loops end (their running flag is off), or cancel them after ``timeout`` s."""
    try:
        await asyncio.wait_for(load, timeout)
    except TimeoutError:
        load.cancel()


async def measure(setup: Setup, *, proxies: int, seconds: float, warmup: float = 2.0, rate: float | None = None,
                  clients: int = 0, placement: str = "random") -> dict:
    gen = Generator(setup, placement)
    load = asyncio.ensure_future(asyncio.gather(*(gen.proxy(i) for i in range(proxies)),
                                                gen.paced(rate) if rate else gen.closed_loop(clients)))
    await asyncio.sleep(warmup)
    gen.latencies.clear()
    window = await measured(setup, seconds, lambda: gen.rendezvous)
    gen.running = False
    await wind_down(load)
    return _result(setup, gen, *window)


async def measure_together(setups: list[Setup], *, seconds: float, proxies_per_node: int, clients_per_node: int,
                           warmup: float = 2.0, placement: str = "random") -> list[dict]:
    """:func:`measure` (closed loop) of several setups at the same time, each with its own simulated
    peers (proxies and clients in proportion to its nodes): whatever the machine does meanwhile, it
    does to all of them. (generator_cpu_pct: this whole generator's.)"""
    gens = [Generator(setup, placement) for setup in setups]
    load = asyncio.ensure_future(asyncio.gather(
        *(gen.proxy(i) for setup, gen in zip(setups, gens, strict=True) for i in range(proxies_per_node * setup.n)),
        *(gen.closed_loop(clients_per_node * setup.n) for setup, gen in zip(setups, gens, strict=True))))
    await asyncio.sleep(warmup)
    for gen in gens:
        gen.latencies.clear()
    windows = await asyncio.gather(*(measured(setup, seconds, functools.partial(getattr, gen, "rendezvous"))
                                     for setup, gen in zip(setups, gens, strict=True)))
    for gen in gens:
        gen.running = False
    await wind_down(load)
    return [_result(setup, gen, *window) for setup, gen, window in zip(setups, gens, windows, strict=True)]


def _result(setup: Setup, gen: Generator, done: int, elapsed: float, broker: float, redis: float, generator: float) -> dict:
    latencies = sorted(gen.latencies)
    n = len(latencies)
    return {"rendezvous": done, "seconds": round(elapsed, 1), "rendezvous_per_s": round(done / elapsed, 1),
            "broker_cpu_us_per_rendezvous": round(broker * 1e6 / max(1, done), 1),
            "redis_cpu_us_per_rendezvous": round(redis * 1e6 / max(1, done), 1) if setup.redis else None,
            "broker_cpu_cores": round(broker / elapsed, 3),
            "client_p50_ms": round(statistics.median(latencies) * 1000, 3) if n else None,
            "client_p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 3) if n else None,
            "outcomes": dict(gen.outcomes), "generator_cpu_pct": round(100 * generator / elapsed, 1)}


SETUPS = (("memory", 1), ("redis", 1), ("redis", 2), ("redis", 4))


def emit(line: dict) -> dict:
    print(json.dumps({"bench": "cluster", **line}), flush=True)
    return line


def run_cpu(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    """At the same total rate; and, for N nodes, memory x1 at rate/N as well: a node's cost per
    rendezvous falls as its load rises (more is done per loop step), so N nodes sharing a rate are
    also compared with one memory node at the load each of them has."""
    memory: dict[float, float] = {}

    def cpu(backend: str, n: int, rate: float) -> dict:
        with Setup(backend, n, None, shares, tmp) as setup:
            result = asyncio.run(measure(setup, proxies=200, seconds=args.duration, rate=rate))
        return emit({"metric": "cpu", "backend": backend, "nodes": n, "rate": rate, **result})

    for backend, n in SETUPS:
        line = cpu(backend, n, args.rate)
        if backend == "memory":
            memory[args.rate] = line["broker_cpu_us_per_rendezvous"]
            continue
        if n > 1:
            memory[args.rate / n] = cpu("memory", 1, args.rate / n)["broker_cpu_us_per_rendezvous"]
        emit({"metric": "cpu_ratio", "backend": backend, "nodes": n, "rate": args.rate,
              "broker_cpu_vs_memory": round(line["broker_cpu_us_per_rendezvous"] / memory[args.rate], 2),
              "broker_cpu_vs_memory_at_the_load_per_node": round(line["broker_cpu_us_per_rendezvous"] / memory[args.rate / n], 2),
              "target": 1.35, "redis_cpu_us_per_rendezvous": line["redis_cpu_us_per_rendezvous"], "redis_target_us": 40})


def run_scaling(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    """Each setup's capacity at saturation with its nodes held to --share of a core (x4 at half of
    it). By default the setups that a target compares run at the same time (memory x1, redis x1 and
    redis x2; then redis x2 and redis x4), on the one server core, each with its own simulated peers:

    * this machine's speed drifts by tens of percent within minutes (a memory node alone at 25 %:
      2 196-3 156 rendezvous/s in one hour), so setups measured one after the other compare the
      machine's moments as much as the setups; measured at once, each comparison sees one moment
      (two memory nodes side by side: within 1-4 % of each other in every run);
    * nodes that share a core slow each other down (a memory node with a neighbour: ~10-20 % less
      than alone), which one after the other would charge to redis x2 and x4 and never to x1: side
      by side, every node has neighbours.

    Each round's ratios are printed, and their medians. Each line says whether its nodes used
    their whole share (``saturated``: the CPU they took is >= 95 % of it; if not, the peers were
    too few). --sequential: the setups one after the other instead (forward, then backward in the
    next round), each at its best over the --clients concurrencies."""
    if args.sequential:
        run_scaling_sequential(args, shares, tmp)
        return
    groups = ((("memory", 1, 1.0), ("redis", 1, 1.0), ("redis", 2, 1.0)), (("redis", 2, 1.0), ("redis", 4, 0.5)))
    rounds = []
    for index in range(args.rounds):
        ratios = {}
        for group in groups:
            with contextlib.ExitStack() as stack:
                setups = [stack.enter_context(Setup(backend, n, args.share * part, shares, tmp)) for backend, n, part in group]
                results = asyncio.run(measure_together(setups, seconds=args.duration, proxies_per_node=300,
                                                       clients_per_node=args.clients_per_node, placement=args.placement))
            rates, cpu, redis = {}, {}, {}
            for (backend, n, part), result in zip(group, results, strict=True):
                share = args.share * part
                rates[(backend, n)] = result["rendezvous_per_s"]
                cpu[(backend, n)] = result["broker_cpu_us_per_rendezvous"]
                redis[(backend, n)] = result["redis_cpu_us_per_rendezvous"]
                emit({"metric": "scaling", "round": index, "together": [f"{b} x{k}" for b, k, _ in group],
                      "backend": backend, "nodes": n, "share_per_node": share, "clients": args.clients_per_node * n,
                      "placement": args.placement, "share_method": shares.method,
                      "saturated": result["broker_cpu_cores"] >= 0.95 * share * n, **result})
            ratios.update(_scaling_ratios(rates))
            if ("memory", 1) in rates:
                # the CPU targets at this load (saturation): broker CPU per rendezvous on Redis vs memory,
                # redis-server's per rendezvous
                ratios["broker_cpu_redis1_vs_memory1"] = round(cpu[("redis", 1)] / cpu[("memory", 1)], 2)
                ratios["broker_cpu_redis2_vs_memory1"] = round(cpu[("redis", 2)] / cpu[("memory", 1)], 2)
                ratios["redis_server_us_redis1"] = redis[("redis", 1)]
                ratios["redis_server_us_redis2"] = redis[("redis", 2)]
        rounds.append(ratios)
        emit({"metric": "scaling_round", "round": index, **ratios})
    emit({"metric": "scaling_ratio", "method": "together", "share_method": shares.method, "share_per_node": args.share,
          "placement": args.placement, **{key: statistics.median(r[key] for r in rounds) for key in rounds[0]},
          "rounds": rounds, **SCALING_TARGETS, "target_broker_cpu_vs_memory": 1.35, "target_redis_server_us": 40})


def run_scaling_sequential(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    """The setups one after the other, each at its best rate over the --clients concurrencies. A
    node's cost per rendezvous falls as its queue deepens (one write and one read carry more
    requests and Redis calls), so a fixed concurrency spread over more nodes measures shallower
    queues, not less capacity: with 120 clients, four nodes at 12.5 % ran 0.59x two at 25 %, with
    240 0.97x. Rounds go forward then backward (memory, x1, x2, x4, then x4, x2, x1, memory, ...),
    so that a drift that goes one way moves a ratio up in one round and down in the next; each
    round's ratios are printed, and the ratios of the setups' median capacities."""
    concurrencies = [int(c) for c in str(args.clients).split(",")]
    capacities: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    rounds = []
    for index in range(args.rounds):
        best_of_round = {}
        for backend, n in (SETUPS if index % 2 == 0 else SETUPS[::-1]):
            share = args.share / 2 if n == 4 else args.share
            best: dict = {}
            for clients in concurrencies:
                with Setup(backend, n, share, shares, tmp) as setup:
                    result = asyncio.run(measure(setup, proxies=600, clients=clients, seconds=args.duration,
                                                 placement=args.placement))
                emit({"metric": "scaling", "round": index, "backend": backend, "nodes": n, "share_per_node": share,
                      "clients": clients, "placement": args.placement, "share_method": shares.method, **result})
                if result["rendezvous_per_s"] > best.get("rendezvous_per_s", -1):
                    best = {**result, "clients": clients}
            best_of_round[(backend, n)] = best["rendezvous_per_s"]
            capacities[(backend, n)].append(best["rendezvous_per_s"])
            emit({"metric": "scaling_best", "round": index, "backend": backend, "nodes": n, "share_per_node": share,
                  "placement": args.placement, "clients": best["clients"], "rendezvous_per_s": best["rendezvous_per_s"],
                  "broker_cpu_us_per_rendezvous": best["broker_cpu_us_per_rendezvous"],
                  "redis_cpu_us_per_rendezvous": best["redis_cpu_us_per_rendezvous"]})
        rounds.append(_scaling_ratios(best_of_round))
    emit({"metric": "scaling_ratio", "method": "sequential", "share_method": shares.method, "share_per_node": args.share, "placement": args.placement,
          **_scaling_ratios({k: statistics.median(v) for k, v in capacities.items()}),
          "rounds": rounds, **SCALING_TARGETS})


SCALING_TARGETS = {"target_vs_redis1": 1.7, "target_vs_memory1": 1.5, "target_x4": 0.9}
_RATIOS = (("redis2_vs_redis1", ("redis", 2), ("redis", 1)), ("redis2_vs_memory1", ("redis", 2), ("memory", 1)),
           ("redis4_at_half_share_vs_redis2", ("redis", 4), ("redis", 2)))


def _scaling_ratios(rates: dict[tuple[str, int], float]) -> dict:
    """The ratios the targets name, of those setups that ``rates`` has."""
    return {name: round(rates[top] / rates[bottom], 2) for name, top, bottom in _RATIOS if top in rates and bottom in rates}


def run_latency(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    results = {}
    for backend, n, placement in (("memory", 1, "random"), ("redis", 3, "across")):
        with Setup(backend, n, None, shares, tmp) as setup:
            results[backend] = asyncio.run(measure(setup, proxies=50, seconds=args.duration, rate=args.latency_rate,
                                                   placement=placement))
        emit({"metric": "latency", "backend": backend, "nodes": n, "placement": placement, "rate": args.latency_rate,
              **{k: results[backend][k] for k in ("rendezvous", "client_p50_ms", "client_p99_ms", "outcomes",
                                                  "generator_cpu_pct")}})
    emit({"metric": "latency_added", "p50_ms": round(results["redis"]["client_p50_ms"] - results["memory"]["client_p50_ms"], 3),
          "p99_ms": round(results["redis"]["client_p99_ms"] - results["memory"]["client_p99_ms"], 3),
          "target_p50_ms": 1.0, "target_p99_ms": 3.0})


async def floor_client(url: str, rate: float, seconds: float, batch: int) -> dict:
    """A broker's Redis connection alone (the project's Mux, uvloop): ``batch`` PINGs per loop step,
    awaited, ``rate`` calls/s; its own CPU seconds."""
    from rendezvous.backends.redis.mux import Mux, connection_factory

    connected = asyncio.Event()
    mux = Mux(connection_factory(url), [], on_late=lambda late, reply: None, on_connect=lambda first: connected.set())
    runner = asyncio.ensure_future(mux.run())
    await connected.wait()

    async def paced(call: bool) -> tuple[int, float, float]:
        calls, cpu0, t0 = 0, time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            if call:
                await asyncio.gather(*(mux.call("PING") for _ in range(batch)))
            calls += batch
            pause = t0 + calls / rate - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
        return calls, time.monotonic() - t0, time.process_time() - cpu0

    calls, elapsed, cpu = await paced(True)
    _, _, pacing = await paced(False)  # the same loop without the calls: its own wake-ups, to subtract
    runner.cancel()
    return {"calls": calls, "seconds": elapsed, "cpu_s": cpu, "pacing_cpu_s": pacing}


def run_floor(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    """What one Redis call costs at all, whatever the script: redis-server's CPU and a broker's
    (a client on the server core, on the project's Mux; less its pacing loop's own wake-ups, measured
    apart) per PING, alone (one per loop step, as at light load) and 16 per loop step (as under
    load), at three calls per rendezvous at --rate. A light-load rendezvous needs three such calls
    (wait, claim, answer)."""
    redis = Redis(tmp)
    try:
        for batch in (1, 16):
            before = cpu_seconds(redis.proc.pid)
            out = subprocess.run(["taskset", "-c", str(SERVER_CORE), sys.executable, __file__, "--floor-client",
                                  redis.url, str(3 * args.rate), str(args.duration), str(batch)],
                                 check=True, capture_output=True, text=True).stdout
            client = json.loads(out)
            redis_s = cpu_seconds(redis.proc.pid) - before
            calls = client["calls"]
            emit({"metric": "floor", "batch": batch, "calls": calls,
                  "calls_per_s": round(calls / client["seconds"], 1),
                  "redis_cpu_us_per_call": round(redis_s * 1e6 / calls, 1),
                  "client_cpu_us_per_call": round((client["cpu_s"] - client["pacing_cpu_s"]) * 1e6 / calls, 1),
                  "client_pacing_cpu_us_per_call": round(client["pacing_cpu_s"] * 1e6 / calls, 1),
                  "redis_cpu_us_per_three_calls": round(3 * redis_s * 1e6 / calls, 1), "redis_target_us": 40})
    finally:
        redis.stop()


def run_idle(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    """Proxies polling with no client (most of a real broker's load): each idle poll is a wait
    and, at its hold's end, a withdraw in Redis, where one node does neither."""
    async def idle(setup: Setup, proxies: int, seconds: float) -> dict:
        gen = Generator(setup)
        polls = collections.Counter()

        async def counting(i: int) -> None:  # (a proxy loop that never sees a match: count its polls)
            conns: dict[int, HttpConnection] = {}
            while gen.running:
                node = gen.pick("poll")
                body = json.dumps({"Sid": f"i{i}", "Version": "1.3", "Type": "standalone", "NAT": "restricted",
                                   "Clients": 0, "AcceptedRelayPattern": PATTERN}).encode()
                await gen.request(conns, node, "/proxy", body)
                polls["n"] += 1
            for conn in conns.values():
                conn.close()

        load = asyncio.ensure_future(asyncio.gather(*(counting(i) for i in range(proxies))))
        await asyncio.sleep(args.hold + 1)
        n0, cpu0, redis0, t0 = polls["n"], setup.broker_cpu(), setup.redis_cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        n, elapsed = polls["n"] - n0, time.monotonic() - t0
        broker, redis = setup.broker_cpu() - cpu0, setup.redis_cpu() - redis0
        gen.running = False
        await asyncio.wait_for(load, args.hold + 10)
        return {"polls_per_s": round(n / elapsed, 1), "broker_cpu_us_per_poll": round(broker * 1e6 / max(1, n), 1),
                "redis_cpu_us_per_poll": round(redis * 1e6 / max(1, n), 1) if setup.redis else None}

    for backend in ("memory", "redis"):
        with Setup(backend, 1, None, shares, tmp, hold=args.hold) as setup:
            result = asyncio.run(idle(setup, args.idle_proxies, args.duration))
        emit({"metric": "idle", "backend": backend, "nodes": 1, "proxies": args.idle_proxies, "hold_s": args.hold, **result})


def run_kill(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    with Setup("redis", 3, None, shares, tmp) as setup:
        baseline_keys = None

        async def scenario() -> dict:
            nonlocal baseline_keys
            gen = Generator(setup)
            load = asyncio.ensure_future(asyncio.gather(*(gen.proxy(i) for i in range(200)), gen.paced(args.kill_rate)))
            await asyncio.sleep(4.0)
            before = collections.Counter(outcome for _, outcome in gen.events)
            killed_at = time.monotonic()
            setup.nodes[1].kill()
            key_counts = []
            while time.monotonic() < killed_at + 8.0:
                await asyncio.sleep(0.25)
                key_counts.append((round(time.monotonic() - killed_at, 2), setup.redis.keys(setup.prefix)))
            gen.running = False
            await asyncio.wait_for(load, 20)
            after = [(t - killed_at, o) for t, o in gen.events if t >= killed_at]
            windows = collections.defaultdict(collections.Counter)
            for t, outcome in after:
                windows[int(t / 0.5)][outcome] += 1
            recovered = next((w * 0.5 for w in sorted(windows) if windows[w]["answer"] >= 0.99 * (
                sum(windows[w].values()) - windows[w]["connection error"])), None)
            dead = "bench1"
            gone = next((t for t, keys in key_counts if not any(dead in k for k in keys)), None)
            return {"before_kill": dict(before), "after_kill": dict(collections.Counter(o for _, o in after)),
                    "seconds_until_99pct_success": recovered,
                    "seconds_until_no_key_of_the_dead_node": gone,
                    "keys_after_kill": [(t, len(keys)) for t, keys in key_counts][::4]}

        result = asyncio.run(scenario())
        # with the load stopped: back at the baseline (live nodes' keys, ticket counter, node set)
        started = time.monotonic()
        while time.monotonic() - started < 20:
            rest = [k for k in setup.redis.keys(setup.prefix) if ":node:" not in k and not k.endswith((":seq", ":nodes"))]
            if not rest:
                break
            time.sleep(0.25)
        emit({"metric": "kill", "nodes": 3, "rate": args.kill_rate, **result,
              "seconds_until_baseline_after_load": round(time.monotonic() - started, 2), "left": rest[:5]})


def summary(unit: str, setup: Setup, done: int, elapsed: float, broker: float, redis: float, generator: float,
            latencies: list[float]) -> dict:
    """A measurement's line: ``done`` units (joins, tasks) in ``elapsed`` s, CPU seconds of the brokers, of
    redis-server and of this generator meanwhile, and the units' latencies."""
    latencies = sorted(latencies)
    n = len(latencies)
    return {"seconds": round(elapsed, 1), f"{unit}s_per_s": round(done / elapsed, 1),
            f"broker_cpu_us_per_{unit}": round(broker * 1e6 / max(1, done), 1),
            f"redis_cpu_us_per_{unit}": round(redis * 1e6 / max(1, done), 1) if setup.redis else None,
            "broker_cpu_cores": round(broker / elapsed, 3),
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if n else None,
            "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
            "generator_cpu_pct": round(100 * generator / elapsed, 1)}


def run_scaled(args: argparse.Namespace, shares: CpuShare, tmp: str, profile: str, unit: str, measure: Any) -> None:
    """``measure(setup)`` (at saturation) on memory x1, redis x1 and redis x2, each node held to ``--share``,
    then the ratios (#13's target: redis x2 >= 1.6 x redis x1)."""
    rates = {}
    for backend, n in (("memory", 1), ("redis", 1), ("redis", 2)):
        with Setup(backend, n, args.share, shares, tmp, profile=profile) as setup:
            result = asyncio.run(measure(setup))
        rates[(backend, n)] = result[f"{unit}s_per_s"]
        emit({"metric": profile, "backend": backend, "nodes": n, "share_per_node": args.share,
              "share_method": shares.method, **result})
    emit({"metric": f"{profile}_ratio", "share_method": shares.method, "share_per_node": args.share,
          "redis2_vs_redis1": round(rates[("redis", 2)] / rates[("redis", 1)], 2), "target_vs_redis1": 1.6,
          "redis2_vs_memory1": round(rates[("redis", 2)] / rates[("memory", 1)], 2),
          "redis1_vs_memory1": round(rates[("redis", 1)] / rates[("memory", 1)], 2)})


async def measure_joins(setup: Setup, *, seconds: float, concurrency: int, warmup: float = 2.0) -> dict:
    """bench/overlay.py's realistic joins over the setup's nodes: the root on node 0, each joiner's socket
    and each of the root's answering sockets on a random node (so on x2 half the frames cross nodes)."""
    ports = [node.port for node in setup.nodes]
    answering: set[asyncio.Task] = set()

    async def answer(origin: str) -> None:
        ws = await ws_connect("127.0.0.1", random.choice(ports), "/join")
        ws.send(json.dumps({"origin": None, "destination": origin, "signal": {"type": "answer", "sdp": "x"}, "rank": 0}))
        for rank in (1, 2):
            ws.send(json.dumps({"origin": None, "destination": origin, "signal": OVERLAY_CANDIDATE, "rank": rank}))
        ws.close()

    def on_root(_client: object, payload: bytes) -> None:
        msg = json.loads(payload)
        if isinstance(msg, dict) and msg.get("rank") == 0:
            task = asyncio.ensure_future(answer(msg["origin"]))
            answering.add(task)
            task.add_done_callback(answering.discard)

    root = await ws_connect("127.0.0.1", ports[0], f"/{OVERLAY_SECRET}/webrtc-bootstrap-root", on_root)
    joined, latencies = 0, []
    failed: list[float] = []  # when each failed join started
    running = True

    async def joiner() -> None:
        nonlocal joined
        while running:
            started = time.perf_counter()
            ws = None
            try:
                ws = await ws_connect("127.0.0.1", random.choice(ports), "/join")
                for rank, signal in enumerate((OVERLAY_OFFER, OVERLAY_CANDIDATE, OVERLAY_CANDIDATE)):
                    ws.send(json.dumps({"origin": None, "destination": None, "signal": signal, "rank": rank}))
                for _ in range(3):
                    await asyncio.wait_for(ws.messages.get(), 10)
                joined += 1
                latencies.append(time.perf_counter() - started)
            except (TimeoutError, OSError, ConnectionError):
                failed.append(started)
                await asyncio.sleep(0.05)
            finally:
                if ws is not None:
                    ws.close()

    load = asyncio.ensure_future(asyncio.gather(*(joiner() for _ in range(concurrency))))
    await asyncio.sleep(warmup)
    latencies.clear()
    measured_from = time.perf_counter()
    done, elapsed, broker, redis, generator = await measured(setup, seconds, lambda: joined)
    running = False
    await wind_down(load)
    root.close()
    # Joins that started in the warm-up are told apart: the first ones may race the root's registration.
    in_warmup = sum(1 for started in failed if started < measured_from)
    return {"joins": done, "failures": len(failed) - in_warmup, "failures_started_in_warmup": in_warmup,
            **summary("join", setup, done, elapsed, broker, redis, generator, latencies)}


def run_overlay(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    run_scaled(args, shares, tmp, "overlay", "join",
               lambda setup: measure_joins(setup, seconds=args.duration, concurrency=args.joiners))


async def measure_tasks(setup: Setup, *, seconds: float, providers: int, slots: int, clients: int) -> dict:
    """bench/wasimoff.py's dispatch over the setup's nodes: the binary uploaded on node 0, provider i on
    node i mod n, client j on node j mod n (so on x2 half the tasks cross nodes when a node is busy)."""
    import wasimoff as wm  # (bench/wasimoff.py: its fake provider and request)

    ports = [node.port for node in setup.nodes]
    fakes, body = await wm.prepare(ports, providers, slots, settle=1.0)
    conns = [await connect("127.0.0.1", ports[j % len(ports)]) for j in range(clients)]
    done, errors, latencies = 0, 0, []
    running = True

    async def client_loop(conn: HttpConnection) -> None:
        nonlocal done, errors
        while running:
            started = time.perf_counter()
            code, _ = await conn.request_with_headers("POST", wm.TASK_PATH, body, wm.PROTO)
            if code == 200:
                done += 1
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
                await asyncio.sleep(0.01)

    load = asyncio.ensure_future(asyncio.gather(*(client_loop(c) for c in conns)))
    await asyncio.sleep(2.0)
    latencies.clear()
    n_done, elapsed, broker, redis, generator = await measured(setup, seconds, lambda: done)
    running = False
    await wind_down(load)
    for c in conns:
        c.close()
    for fake in fakes:
        fake.ws.close()
    return {"tasks": n_done, "errors": errors,
            **summary("task", setup, n_done, elapsed, broker, redis, generator, latencies)}


def run_wasimoff(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    run_scaled(args, shares, tmp, "wasimoff", "task",
               lambda setup: measure_tasks(setup, seconds=args.duration, providers=8, slots=2, clients=64))


def run_wasimoff_kill(args: argparse.Namespace, shares: CpuShare, tmp: str) -> None:
    import wasimoff as wm

    class SlowProvider(wm.FakeProvider):
        """Answers a task 50 ms after it came (so tasks are running when a node dies)."""

        def on_message(self, client, payload: bytes) -> None:
            envelope = wm.schema.Envelope()
            envelope.ParseFromString(payload)
            if envelope.type == wm.schema.REQUEST and isinstance(wm.unpack(envelope), wm.schema.Wasip1Request):
                asyncio.get_running_loop().call_later(0.05, self.answer_late, client, payload)
            else:
                super().on_message(client, payload)

        def answer_late(self, client, payload: bytes) -> None:
            if client.transport is not None and not client.transport.is_closing():  # (its node may have died)
                super().on_message(client, payload)

    async def scenario(setup: Setup) -> dict:
        ports = [node.port for node in setup.nodes]
        fakes, body = await wm.prepare(ports, 6, 2, SlowProvider, settle=1.0)
        outcomes: dict[int, collections.Counter[str]] = {i: collections.Counter() for i in range(3)}
        running = True

        async def client(node: int) -> None:
            conn = await connect("127.0.0.1", ports[node])
            while running:
                try:
                    code, _ = await asyncio.wait_for(conn.request_with_headers("POST", wm.TASK_PATH, body, wm.PROTO), 30)
                except TimeoutError:
                    outcomes[node]["lost (no answer in 30 s)"] += 1
                    return
                except (ConnectionError, OSError):
                    outcomes[node]["connection error"] += 1
                    return  # (its node died: a client there reconnects elsewhere, a new request)
                outcomes[node]["result" if code == 200 else f"error {code}"] += 1

        load = asyncio.ensure_future(asyncio.gather(*(client(j % 3) for j in range(60))))
        await asyncio.sleep(3.0)
        setup.nodes[1].kill()
        await asyncio.sleep(6.0)
        running = False
        await asyncio.wait_for(load, 40)
        for fake in fakes:
            fake.ws.close()
        survivors = outcomes[0] + outcomes[2]
        return {"killed": "node 1 of 3", "outcomes_on_surviving_nodes": dict(survivors),
                "outcomes_on_the_killed_node": dict(outcomes[1]),
                "lost": survivors["lost (no answer in 30 s)"], "target_lost": 0}

    with Setup("redis", 3, None, shares, tmp, profile="wasimoff") as setup:
        emit({"metric": "wasimoff_kill", **asyncio.run(scenario(setup))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", default="cpu,idle,scaling,latency,kill")
    parser.add_argument("--rate", type=float, default=800.0, help="rendezvous/s of the CPU measurement")
    parser.add_argument("--share", type=float, default=0.2, help="share of a core per node in the scaling runs")
    parser.add_argument("--clients-per-node", type=int, default=120, help="scaling runs: concurrent clients per node")
    parser.add_argument("--sequential", action="store_true",
                        help="scaling runs: the setups one after the other instead of side by side")
    parser.add_argument("--clients", default="120,240,480",
                        help="--sequential: concurrent clients (a list: each setup's best rate counts)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--latency-rate", type=float, default=50.0)
    parser.add_argument("--kill-rate", type=float, default=300.0)
    parser.add_argument("--idle-proxies", type=int, default=2000, help="proxies of the idle-poll measurement")
    parser.add_argument("--hold", type=float, default=3.0, help="the brokers' proxy hold time in the idle-poll measurement")
    parser.add_argument("--joiners", type=int, default=50, help="concurrent joins of the overlay measurement")
    parser.add_argument("--rounds", type=int, default=3, help="scaling runs: rounds (--sequential: forward then backward)")
    parser.add_argument("--placement", choices=("random", "sticky"), default="random",
                        help="scaling runs: every request to a random node, or proxies answering where they polled")
    parser.add_argument("--floor-client", nargs=4, metavar=("URL", "RATE", "SECONDS", "BATCH"),
                        help=argparse.SUPPRESS)  # (the floor measurement's client, in its own process)
    args = parser.parse_args()
    if args.floor_client:
        url, rate, seconds, batch = args.floor_client
        import uvloop

        print(json.dumps(uvloop.run(floor_client(url, float(rate), float(seconds), int(batch)))))
        return
    prepare_generator()
    shares = CpuShare()
    runs = {"cpu": run_cpu, "idle": run_idle, "scaling": run_scaling, "latency": run_latency, "kill": run_kill,
            "overlay": run_overlay, "wasimoff": run_wasimoff, "wasimoff_kill": run_wasimoff_kill,
            "floor": run_floor}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        try:
            for metric in args.metrics.split(","):
                runs[metric](args, shares, tmp)
        finally:
            shares.release()


if __name__ == "__main__":
    main()
