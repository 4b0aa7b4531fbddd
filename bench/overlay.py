"""Overlay benchmark: realistic joins and idle sockets, ours vs the original node server.

A join is what the real client does (spec §1.6): the joiner opens /join and sends an offer
and two candidates towards the root; the root, on the offer, opens its own /join and sends
an answer and two candidates to the joiner's id; the joiner has joined when all three
arrived; both sockets close. The server runs pinned to core 0, this generator on core 1.

Prints JSON lines:
  {"bench":"overlay","metric":"joins",...}  joins/s, p50/p99 join latency, server CPU ms per join
  {"bench":"overlay","metric":"idle",...}   server RSS per idle /join socket
  {"bench":"overlay","metric":"ratio",...}  ours / original joins/s (same core, same generator)

Usage: python bench/overlay.py [--target ours|original|both] [--server hypercorn|uvicorn|native|all]
                               [--duration S] [--concurrency C] [--idle N]
The original needs `npm ci --ignore-scripts` in tests/interop/js (the package's bin/server
crashes, so it is started as `new Server(secret, {port})`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import ROOT, cpu_seconds, free_port, prepare_generator, rss_kb, start_pinned
from wsclient import connect

JS = ROOT / "tests" / "interop" / "js"
SECRET = "bench"
OFFER = json.dumps({"type": "offer", "sdp": "v=0\r\n" + "a=x-pad:" + "y" * 1200 + "\r\n"})
CANDIDATE = {"candidate": {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMLineIndex": 0, "sdpMid": "0"}}


def start_server(target: str, server: str, port: int, lifetime_s: int) -> subprocess.Popen:
    if target == "ours":
        cmd = [sys.executable, "-m", "rendezvous", "serve", "--profile", "overlay", "--host", "127.0.0.1",
               "--port", str(port), "--secret", SECRET, "--timeout", str(lifetime_s), "--max-prospects", "1000000",
               "--http-server", server]
        cwd = ROOT
    else:
        script = ("const S=require('webrtc-bootstrap').Server;"
                  "new S(process.argv[1],{port:+process.argv[2],timeout:+process.argv[3]})")
        cmd = ["node", "-e", script, SECRET, str(port), str(lifetime_s * 1000)]
        cwd = JS
    return start_pinned(cmd, port, cwd=cwd)


class Overlay:
    """The root side of the benchmark: answers every offer through a fresh /join."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.root = None
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.root = await connect("127.0.0.1", self.port, f"/{SECRET}/webrtc-bootstrap-root", self.on_root)

    def on_root(self, _client, payload: bytes) -> None:
        msg = json.loads(payload)
        if not isinstance(msg, dict) or msg.get("rank") != 0:
            return  # heartbeats and trickle candidates; the answer goes to the origin directly
        task = asyncio.ensure_future(self.answer(msg["origin"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def answer(self, origin: str) -> None:
        ws = await connect("127.0.0.1", self.port, "/join")
        ws.send(json.dumps({"origin": None, "destination": origin, "signal": {"type": "answer", "sdp": OFFER}, "rank": 0}))
        for rank in (1, 2):
            ws.send(json.dumps({"origin": None, "destination": origin, "signal": CANDIDATE, "rank": rank}))
        ws.close()


async def one_join(port: int) -> float:
    start = time.perf_counter()
    ws = await connect("127.0.0.1", port, "/join")
    try:
        for rank, signal in enumerate((json.loads(OFFER), CANDIDATE, CANDIDATE)):
            ws.send(json.dumps({"origin": None, "destination": None, "signal": signal, "rank": rank}))
        for _ in range(3):
            await asyncio.wait_for(ws.messages.get(), 10)
        return time.perf_counter() - start
    finally:
        ws.close()


async def run_joins(port: int, pid: int, duration: float, concurrency: int) -> dict:
    overlay = Overlay(port)
    await overlay.start()
    latencies: list[float] = []
    failures = 0
    for _ in range(50):  # warm-up
        await one_join(port)
    stop_at = 0.0

    async def worker() -> None:
        nonlocal failures
        while time.monotonic() < stop_at:
            try:
                latencies.append(await one_join(port))
            except (TimeoutError, OSError, ConnectionError):
                failures += 1

    cpu0, t0, gen0 = cpu_seconds(pid), time.monotonic(), time.process_time()
    stop_at = t0 + duration
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu, gen = time.monotonic() - t0, cpu_seconds(pid) - cpu0, time.process_time() - gen0
    overlay.root.close()
    latencies.sort()
    n = len(latencies)
    return {
        "joins": n, "failures": failures, "seconds": round(elapsed, 2),
        "joins_per_s": round(n / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
        "server_cpu_ms_per_join": round(cpu * 1000 / n, 3) if n else None,
        "server_cpu_utilisation": round(cpu / elapsed, 2),
        # near 100: the generator, not the server, is the limit (then compare CPU per join)
        "generator_cpu_pct": round(100 * gen / elapsed, 1),
    }


async def run_idle(port: int, pid: int, count: int) -> dict:
    warm = [await connect("127.0.0.1", port, "/join") for _ in range(100)]
    for ws in warm:
        ws.close()
    await asyncio.sleep(1.0)
    before = rss_kb(pid)
    sockets = []
    for start in range(0, count, 250):
        sockets += await asyncio.gather(*(connect("127.0.0.1", port, "/join") for _ in range(min(250, count - start))))
    await asyncio.sleep(2.0)
    after = rss_kb(pid)
    for ws in sockets:
        ws.close()
    return {"sockets": len(sockets), "rss_before_kb": before, "rss_after_kb": after,
            "rss_kb_per_socket": round((after - before) / len(sockets), 2)}


def bench(target: str, server: str, args: argparse.Namespace) -> dict:
    port = free_port()
    proc = start_server(target, server, port, lifetime_s=600)
    try:
        joins = asyncio.run(run_joins(port, proc.pid, args.duration, args.concurrency))
        line = {"bench": "overlay", "metric": "joins", "target": target, "server": server if target == "ours" else "node-ws6",
                "concurrency": args.concurrency, **joins}
        print(json.dumps(line), flush=True)
        if args.idle:
            idle = asyncio.run(run_idle(port, proc.pid, args.idle))
            print(json.dumps({"bench": "overlay", "metric": "idle", "target": target,
                              "server": line["server"], **idle}), flush=True)
        return line
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=["ours", "original", "both"], default="both")
    parser.add_argument("--server", choices=["hypercorn", "uvicorn", "native", "all"], default="all")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--idle", type=int, default=10000, help="idle /join sockets for the RSS measurement (0: skip)")
    args = parser.parse_args()
    prepare_generator()
    results = {}
    servers = ["hypercorn", "uvicorn", "native"] if args.server == "all" else [args.server]
    if args.target in ("original", "both"):
        results["original"] = bench("original", "", args)
    if args.target in ("ours", "both"):
        for server in servers:
            results[server] = bench("ours", server, args)
    if "original" in results:
        base = results["original"]["joins_per_s"]
        for server in servers:
            if server in results and base:
                print(json.dumps({"bench": "overlay", "metric": "ratio", "server": server,
                                  "joins_per_s_vs_original": round(results[server]["joins_per_s"] / base, 2),
                                  "cpu_per_join_vs_original": round(results[server]["server_cpu_ms_per_join"]
                                                                    / results["original"]["server_cpu_ms_per_join"], 2)}),
                      flush=True)


if __name__ == "__main__":
    main()
