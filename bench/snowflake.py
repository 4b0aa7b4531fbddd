"""Snowflake broker benchmark: idle polling and full rendezvous, server and generator on separate cores.

  {"bench":"snowflake","metric":"idle",...}        P proxies holding polls: polls/s, server CPU ms per poll
  {"bench":"snowflake","metric":"held_rss",...}    server RSS per held poll with N polls held at once
  {"bench":"snowflake","metric":"rendezvous",...}  P proxies + C clients, each matched proxy answers at once:
                                                   rendezvous/s, client p50/p99, server CPU ms per rendezvous

Targets per core (the Go broker v2.5.1 on this kind of machine): >= 3000 rendezvous/s, <= 0.4 ms CPU per
idle poll, <= 45 kB RSS per held poll. The server runs pinned to core 0, this generator to core 1; every
simulated peer keeps one keep-alive connection, as the Go peers do.

Usage: python bench/snowflake.py [--server hypercorn|uvicorn|native|all] [--proxies P] [--clients C]
                                 [--duration S] [--held N] [--hold S]
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
from common import cpu_seconds, free_port, prepare_generator, rss_kb, start_pinned  # noqa: E402
from httpclient import Peer, connect  # noqa: E402

SDP = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + "a=x-pad:" + "y" * 900 + "\r\na=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\n"
OFFER = json.dumps({"type": "offer", "sdp": SDP})
ANSWER = json.dumps({"type": "answer", "sdp": SDP})
CLIENT_BODY = b"1.0\n" + json.dumps({"offer": OFFER, "nat": "unrestricted", "fingerprint": "2B280B23E1107BB62ABFC40DDCC8824814F80A72"}).encode()


def start_server(server: str, port: int, hold: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rendezvous", "serve", "--profile", "snowflake", "--addr", f"127.0.0.1:{port}",
           "--disable-tls", "--disable-geoip", "--allowed-relay-pattern", "snowflake.torproject.net$",
           "--proxy-timeout", str(hold), "--client-timeout", "10", "--http-server", server, "--log-level", "error"]
    return start_pinned(cmd, port)


def poll_body(sid: str, nat: str = "restricted") -> bytes:
    return json.dumps({"Sid": sid, "Version": "1.3", "Type": "standalone", "NAT": nat, "Clients": 0,
                       "AcceptedRelayPattern": "snowflake.torproject.net$"}).encode()


async def open_many(port: int, n: int) -> list[Peer]:
    conns = []
    for start in range(0, n, 500):
        conns += await asyncio.gather(*(connect("127.0.0.1", port) for _ in range(min(500, n - start))))
    return [Peer("127.0.0.1", port, c) for c in conns]


async def proxy_loop(conn, sid: str, stop_at: float, stats: dict, answer: bool) -> None:
    body = poll_body(sid)
    while time.monotonic() < stop_at:
        status, reply = await conn.request("POST", "/proxy", body)
        stats["polls"] += 1
        if status != 200:
            stats["errors"] += 1
            continue
        if answer and reply.startswith(b'{"Status":"client match"'):
            a = json.dumps({"Version": "1.3", "Sid": sid, "Answer": ANSWER}).encode()
            status, reply = await conn.request("POST", "/answer", a)
            stats["answers"] += 1
            if reply != b'{"Status":"success"}':
                stats["errors"] += 1


async def client_loop(conn, stop_at: float, stats: dict, latencies: list) -> None:
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        status, reply = await conn.request("POST", "/client", CLIENT_BODY)
        if status == 200 and reply.startswith(b'{"answer"'):
            latencies.append(time.perf_counter() - start)
        elif b"no snowflake proxies" in reply:
            stats["denied"] += 1
            await asyncio.sleep(0.001)
        else:
            stats["errors"] += 1


async def idle(port: int, pid: int, proxies: int, duration: float) -> dict:
    conns = await open_many(port, proxies)
    stats = {"polls": 0, "errors": 0, "answers": 0}
    stop_at = time.monotonic() + 2.0
    await asyncio.gather(*(proxy_loop(c, f"w{i}", stop_at, {"polls": 0, "errors": 0, "answers": 0}, False) for i, c in enumerate(conns[:50])))
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    stop_at = t0 + duration
    await asyncio.gather(*(proxy_loop(c, f"i{i}", stop_at, stats, False) for i, c in enumerate(conns)))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    for c in conns:
        c.close()
    return {"proxies": proxies, "seconds": round(elapsed, 1), "polls": stats["polls"], "errors": stats["errors"],
            "polls_per_s": round(stats["polls"] / elapsed, 1),
            "server_cpu_ms_per_poll": round(cpu * 1000 / max(1, stats["polls"]), 3)}


async def held_rss(port: int, pid: int, held: int, hold: float) -> dict:
    warm = await open_many(port, 200)
    for c in warm:
        c.close()
    await asyncio.sleep(1.0)
    before = rss_kb(pid)
    conns = await open_many(port, held)
    for i, c in enumerate(conns):
        c.transport.write(b"POST /proxy HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(poll_body(f"h{i}")) + poll_body(f"h{i}"))
    await asyncio.sleep(min(hold * 0.6, 4.0))
    after = rss_kb(pid)
    for c in conns:
        c.close()
    return {"held_polls": held, "rss_before_kb": before, "rss_after_kb": after,
            "rss_kb_per_held_poll": round((after - before) / held, 2)}


async def rendezvous(port: int, pid: int, proxies: int, clients: int, duration: float) -> dict:
    pconns = await open_many(port, proxies)
    cconns = await open_many(port, clients)
    stats = {"polls": 0, "errors": 0, "answers": 0, "denied": 0}
    latencies: list[float] = []
    warm_stop = time.monotonic() + 1.0
    await asyncio.gather(*(proxy_loop(c, f"p{i}", warm_stop + 1.0, {"polls": 0, "errors": 0, "answers": 0}, True) for i, c in enumerate(pconns)),
                         *(client_loop(c, warm_stop, {"denied": 0, "errors": 0}, []) for c in cconns))
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    stop_at = t0 + duration
    tasks = [asyncio.ensure_future(proxy_loop(c, f"q{i}", stop_at + 10, stats, True)) for i, c in enumerate(pconns)]
    await asyncio.gather(*(client_loop(c, stop_at, stats, latencies) for c in cconns))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    for t in tasks:
        t.cancel()
    for c in pconns + cconns:
        c.close()
    latencies.sort()
    n = len(latencies)
    return {"proxies": proxies, "clients": clients, "seconds": round(elapsed, 1), "rendezvous": n,
            "denied": stats["denied"], "errors": stats["errors"], "rendezvous_per_s": round(n / elapsed, 1),
            "client_p50_ms": round(statistics.median(latencies) * 1000, 2) if n else None,
            "client_p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
            "server_cpu_ms_per_rendezvous": round(cpu * 1000 / max(1, n), 3),
            "server_cpu_utilisation": round(cpu / elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=["hypercorn", "uvicorn", "native", "all"], default="all")
    parser.add_argument("--proxies", type=int, default=5000, help="proxies for the idle-poll measurement")
    parser.add_argument("--rdv-proxies", type=int, default=400)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--held", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=10.0, help="the broker's proxy hold time (the Go broker: 10 s)")
    args = parser.parse_args()
    prepare_generator()
    servers = ["hypercorn", "uvicorn", "native"] if args.server == "all" else [args.server]
    for server in servers:
        for metric in ("idle", "held_rss", "rendezvous"):
            port = free_port()
            proc = start_server(server, port, args.hold)
            try:
                if metric == "idle":
                    result = asyncio.run(idle(port, proc.pid, args.proxies, max(args.duration, 2 * args.hold)))
                elif metric == "held_rss":
                    result = asyncio.run(held_rss(port, proc.pid, args.held, args.hold))
                else:
                    result = asyncio.run(rendezvous(port, proc.pid, args.rdv_proxies, args.clients, args.duration))
                print(json.dumps({"bench": "snowflake", "metric": metric, "server": server, **result}), flush=True)
            finally:
                proc.terminate()
                proc.wait(15)


if __name__ == "__main__":
    main()
