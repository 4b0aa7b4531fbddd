"""WebTransport next to WebSocket on the same server: round trips/s and sessions held.

One server (overlay profile, native HTTP server, WebTransport on a UDP port) runs pinned to
core 0; this generator runs on core 1. A round trip is a real overlay routing: a /join
client learns its own id (the root tells it through a fresh /join, as webrtc-bootstrap
answers), then sends messages addressed to itself and waits for each to come back. The same
clients run over WebSocket (lean asyncio client) and over WebTransport (aioquic, one QUIC
connection per session, as browsers do; messages framed on a bidirectional stream).

Prints JSON lines:
  {"bench":"webtransport","metric":"roundtrips","transport":"websocket"|"webtransport",...}
      round trips/s, p50/p99 latency ms, server CPU ms per round trip
  {"bench":"webtransport","metric":"sessions","transport":...}
      concurrent sessions held open, server RSS kB per session

Usage: python bench/webtransport.py [--duration S] [--concurrency C] [--sessions N]
Note: aioquic is pure Python on both ends, so the generator's QUIC costs as much as the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
from common import cpu_seconds, free_port, prepare_generator, rss_kb, start_pinned
from wsclient import connect

SECRET = "bench"
PAYLOAD = "x" * 200


class Root:
    """The overlay root: tells every new client its id through one answering /join socket."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def start(self) -> None:
        self.answerer = await connect("127.0.0.1", self.port, "/join")
        self.root = await connect("127.0.0.1", self.port, f"/{SECRET}/webrtc-bootstrap-root", self.on_root)

    def on_root(self, _client, payload: bytes) -> None:
        msg = json.loads(payload)
        if isinstance(msg, dict) and msg.get("hello"):
            self.answerer.send(json.dumps({"destination": msg["origin"], "you": msg["origin"]}))


class WsPeer:
    async def open(self, port: int, wt_port: int) -> None:
        self.ws = await connect("127.0.0.1", port, "/join")

    async def send(self, text: str) -> None:
        self.ws.send(text)

    async def recv(self) -> str:
        return (await self.ws.messages.get()).decode()

    async def close(self) -> None:
        self.ws.close()


class WtPeer:
    async def open(self, port: int, wt_port: int) -> None:
        from rendezvous.testing import wt_connect

        self.cm = wt_connect(f"https://127.0.0.1:{wt_port}/join")
        self.wt = await self.cm.__aenter__()

    async def send(self, text: str) -> None:
        await self.wt.send(text)

    async def recv(self) -> str:
        return await self.wt.recv(30)

    async def close(self) -> None:
        await self.cm.__aexit__(None, None, None)


async def learn_id(peer) -> str:
    await peer.send(json.dumps({"destination": None, "hello": 1}))
    while True:
        msg = json.loads(await peer.recv())
        if "you" in msg:
            return msg["you"]


async def roundtrips(kind: str, port: int, wt_port: int, pid: int, duration: float, concurrency: int) -> dict:
    peers = []
    for _ in range(concurrency):
        peer = WtPeer() if kind == "webtransport" else WsPeer()
        await peer.open(port, wt_port)
        peers.append((peer, await learn_id(peer)))
    latencies: list[float] = []
    stop = time.monotonic() + duration
    cpu0, t0 = cpu_seconds(pid), time.monotonic()

    async def worker(peer, me: str) -> None:
        message = json.dumps({"destination": me, "p": PAYLOAD})
        while time.monotonic() < stop:
            started = time.perf_counter()
            await peer.send(message)
            await peer.recv()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(p, me) for p, me in peers))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    for peer, _ in peers:
        await peer.close()
    latencies.sort()
    n = len(latencies)
    return {"bench": "webtransport", "metric": "roundtrips", "transport": kind, "concurrency": concurrency,
            "roundtrips_per_s": round(n / elapsed, 1), "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 3),
            "server_cpu_ms_per_roundtrip": round(cpu * 1000 / max(n, 1), 4)}


async def sessions(kind: str, port: int, wt_port: int, pid: int, count: int) -> dict:
    before = rss_kb(pid)
    peers = []
    for _ in range(count):
        peer = WtPeer() if kind == "webtransport" else WsPeer()
        await peer.open(port, wt_port)
        peers.append(peer)
    await asyncio.sleep(1.0)
    after = rss_kb(pid)
    for peer in peers:
        await peer.close()
    return {"bench": "webtransport", "metric": "sessions", "transport": kind, "sessions_held": count,
            "server_rss_kb_per_session": round((after - before) / count, 2)}


async def run(args: argparse.Namespace) -> None:
    port, wt_port = free_port(), free_port()
    proc = start_pinned([sys.executable, "-m", "rendezvous", "serve", "--profile", "overlay", "--host", "127.0.0.1",
                         "--port", str(port), "--webtransport-port", str(wt_port), "--secret", SECRET,
                         "--timeout", "3600", "--max-prospects", "1000000", "--http-server", "native",
                         "--log-level", "error"], port)
    try:
        root = Root(port)
        await root.start()
        for kind in ("websocket", "webtransport"):
            print(json.dumps(await roundtrips(kind, port, wt_port, proc.pid, args.duration, args.concurrency)), flush=True)
        for kind in ("websocket", "webtransport"):
            print(json.dumps(await sessions(kind, port, wt_port, proc.pid, args.sessions)), flush=True)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=500)
    args = parser.parse_args()
    prepare_generator()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
