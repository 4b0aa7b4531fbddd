"""Snowflake broker benchmark: idle polling and full rendezvous, server and generator on separate cores.

  {"bench":"snowflake","metric":"idle",...}        P proxies holding polls: polls/s, server CPU ms per poll
  {"bench":"snowflake","metric":"held_rss",...}    server RSS per held poll with N polls held at once
  {"bench":"snowflake","metric":"rendezvous",...}  P proxies + C clients, each matched proxy answers at once:
                                                   rendezvous/s, client p50/p99, server CPU ms per rendezvous
  {"bench":"snowflake","metric":"ratio",...}       with --anchor-cmd: ours / the original, same core, same generator

Targets per core (the Go broker v2.5.1 on this kind of machine): >= 3000 rendezvous/s, <= 0.4 ms CPU per
idle poll, <= 45 kB RSS per held poll. The server runs pinned to core 0, the generator to core 1; every
simulated peer keeps one keep-alive connection, as the Go peers do. Every line carries generator_cpu_pct:
near 100 the generator, not the server, is the limit.

--anchor-cmd runs the original Go broker first, under the same generator and on the same core, e.g.
  --anchor-cmd '/tmp/anchors/bin/broker-v2.5.1 --disable-tls --addr 127.0.0.1:{port} --disable-geoip
                --bridge-list-path {bridges} --allowed-relay-pattern snowflake.torproject.net$'
({port}: a free port; {bridges}: a bridge list with the default bridge, written to a temp dir at run time and
also given to ours). The command is split like a shell would but not run by one, so the PID sampled is the
broker's. v2.5.1 holds polls 10 s and has no flag for it: keep --hold 10 when comparing.

--go-load PATH drives both with the Go load generator (snowflake-load, see its README) instead of the built-in
Python one: "rendezvous" is its rendezvous scenario, "idle" its scale scenario (polls/s, CPU per poll, RSS per
held poll from /debug in one run; --held is not used). Its full JSON line is kept under "load".

Usage: python bench/snowflake.py [--server hypercorn|uvicorn|native|all|LIST] [--proxies P] [--rdv-proxies P]
                                 [--clients C] [--duration S] [--held N] [--hold S]
                                 [--anchor-cmd CMD] [--go-load PATH] [--metrics idle,held_rss,rendezvous]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import GENERATOR_CORE, cpu_seconds, free_port, prepare_generator, rss_kb, start_pinned
from httpclient import Peer, connect

SDP = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + "a=x-pad:" + "y" * 900 + "\r\na=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\n"
OFFER = json.dumps({"type": "offer", "sdp": SDP})
ANSWER = json.dumps({"type": "answer", "sdp": SDP})
CLIENT_BODY = b"1.0\n" + json.dumps({"offer": OFFER, "nat": "unrestricted", "fingerprint": "2B280B23E1107BB62ABFC40DDCC8824814F80A72"}).encode()


BRIDGE = {"displayName": "default", "webSocketAddress": "wss://snowflake.torproject.net/",
          "fingerprint": "2B280B23E1107BB62ABFC40DDCC8824814F80A72"}
ORIGINAL = "original"


def start_server(server: str, port: int, hold: float, bridges: str, anchor_cmd: str = "") -> subprocess.Popen:
    """Ours with HTTP server ``server``, or (server == ORIGINAL) the original broker from ``anchor_cmd``."""
    if server == ORIGINAL:
        return start_pinned(shlex.split(anchor_cmd.format(port=port, bridges=bridges)), port)
    cmd = [sys.executable, "-m", "rendezvous", "serve", "--profile", "snowflake", "--addr", f"127.0.0.1:{port}",
           "--disable-tls", "--disable-geoip", "--allowed-relay-pattern", "snowflake.torproject.net$",
           "--bridge-list-path", bridges, "--proxy-timeout", str(hold), "--client-timeout", "10",
           "--http-server", server]
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
    """Poll back to back; keep the Sid while there is no match, take a fresh one after a match (as proxy/lib
    does: the Go broker routes an answer by Sid, so a reused Sid can reach the proxy's next poll instead)."""
    current, matches = sid, 0
    body = poll_body(current)
    while time.monotonic() < stop_at:
        status, reply = await conn.request("POST", "/proxy", body)
        stats["polls"] += 1
        if status != 200:
            stats["errors"] += 1
            continue
        if answer and reply.startswith(b'{"Status":"client match"'):
            a = json.dumps({"Version": "1.3", "Sid": current, "Answer": ANSWER}).encode()
            status, reply = await conn.request("POST", "/answer", a)
            stats["answers"] += 1
            if reply != b'{"Status":"success"}':
                stats["errors"] += 1
            matches += 1
            current = f"{sid}.{matches}"
            body = poll_body(current)


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
    cpu0, gen0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
    stop_at = t0 + duration
    await asyncio.gather(*(proxy_loop(c, f"i{i}", stop_at, stats, False) for i, c in enumerate(conns)))
    elapsed, cpu, gen = time.monotonic() - t0, cpu_seconds(pid) - cpu0, time.process_time() - gen0
    for c in conns:
        c.close()
    return {"proxies": proxies, "seconds": round(elapsed, 1), "polls": stats["polls"], "errors": stats["errors"],
            "polls_per_s": round(stats["polls"] / elapsed, 1),
            "server_cpu_ms_per_poll": round(cpu * 1000 / max(1, stats["polls"]), 3),
            "server_cpu_utilisation": round(cpu / elapsed, 2), "generator_cpu_pct": round(100 * gen / elapsed, 1)}


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
    cpu0, gen0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
    stop_at = t0 + duration
    tasks = [asyncio.ensure_future(proxy_loop(c, f"q{i}", stop_at + 10, stats, True)) for i, c in enumerate(pconns)]
    await asyncio.gather(*(client_loop(c, stop_at, stats, latencies) for c in cconns))
    elapsed, cpu, gen = time.monotonic() - t0, cpu_seconds(pid) - cpu0, time.process_time() - gen0
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
            "server_cpu_utilisation": round(cpu / elapsed, 2), "generator_cpu_pct": round(100 * gen / elapsed, 1)}


def go_load(path: str, metric: str, port: int, pid: int, args: argparse.Namespace) -> dict:
    """One run of the Go load generator (on the generator core); its JSON line, summarised like ours."""
    if metric == "rendezvous":
        scenario = ["-scenario", "rendezvous", "-proxies", str(args.rdv_proxies), "-clients", str(args.clients),
                    "-ramp", "2s", "-warmup", "3s"]
    else:  # idle: the scale scenario is idle polling plus /debug, so CPU per poll and RSS per held poll in one run
        scenario = ["-scenario", "scale", "-proxies", str(args.proxies), "-ramp", f"{args.hold}s", "-warmup", "2s"]
    cmd = ["taskset", "-c", str(GENERATOR_CORE), path, "-broker", f"http://127.0.0.1:{port}", "-broker-pid", str(pid),
           "-proxy-timeout", f"{args.hold}s", "-client-timeout", "10s", "-duration", f"{args.duration}s", *scenario]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True, text=True).stdout
    load = json.loads(out.strip().splitlines()[-1])
    cpu = load.get("broker_cpu_pct", 0.0) / 100  # cores
    summary = {"seconds": load["window_s"], "errors": load["errors"], "generator": "go",
               "generator_cpu_pct": load.get("generator_cpu_pct"), "server_cpu_utilisation": round(cpu, 2)}
    if metric == "rendezvous":
        lat, rate = load["client_latency_ms"], load["rendezvous_per_s"]
        summary.update(proxies=load["proxies"], clients=load["clients"], rendezvous_per_s=round(rate, 1),
                       client_p50_ms=lat.get("p50"), client_p99_ms=lat.get("p99"),
                       client_timeouts=load["client_timeouts"], denied=load["client_no_proxies"],
                       server_cpu_ms_per_rendezvous=round(cpu * 1000 / rate, 3) if rate else None)
    else:
        summary.update(proxies=load["proxies"], polls_per_s=round(load["polls_per_s"], 1),
                       server_cpu_ms_per_poll=load.get("broker_cpu_ms_per_poll"),
                       held_polls=load.get("held_polls"), rss_kb_per_held_poll=load.get("broker_rss_kb_per_held_poll"))
    return {**summary, "load": load}


def ratios(results: dict, servers: list[str]) -> None:
    """Ours / the original for every figure both have (higher is better for rates, lower for costs)."""
    figures = [("rendezvous", "rendezvous_per_s"), ("rendezvous", "server_cpu_ms_per_rendezvous"),
               ("rendezvous", "client_p50_ms"), ("idle", "server_cpu_ms_per_poll"),
               ("idle", "rss_kb_per_held_poll"), ("held_rss", "rss_kb_per_held_poll")]
    for server in servers:
        line = {}
        for metric, key in figures:
            ours, base = results.get((server, metric), {}).get(key), results.get((ORIGINAL, metric), {}).get(key)
            if ours is not None and base:
                line[f"{metric}.{key}_vs_original"] = round(ours / base, 2)
        if line:
            print(json.dumps({"bench": "snowflake", "metric": "ratio", "server": server, **line}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="all",
                        help="hypercorn, uvicorn, native, all, or a comma-separated list (ours; default: all)")
    parser.add_argument("--proxies", type=int, default=5000, help="proxies for the idle-poll measurement")
    parser.add_argument("--rdv-proxies", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--held", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=10.0, help="the broker's proxy hold time (the Go broker: 10 s)")
    parser.add_argument("--metrics", default="idle,held_rss,rendezvous", help="comma-separated subset to run")
    parser.add_argument("--anchor-cmd", default="", help="the original broker's command line, with {port} and "
                        "optionally {bridges}; run first, same core, same generator, then ratio lines")
    parser.add_argument("--go-load", default="", metavar="PATH",
                        help="drive every server with this Go snowflake-load binary instead of the Python generator")
    args = parser.parse_args()
    prepare_generator()
    servers = ["hypercorn", "uvicorn", "native"] if args.server == "all" else args.server.split(",")
    metrics = args.metrics.split(",")
    if args.go_load:
        metrics = [m for m in metrics if m != "held_rss"] or ["idle"]  # the Go "idle" run measures RSS per held poll
    targets = ([ORIGINAL] if args.anchor_cmd else []) + servers
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-snowflake-") as tmp:
        bridges = str(pathlib.Path(tmp) / "bridges.jsonl")
        pathlib.Path(bridges).write_text(json.dumps(BRIDGE) + "\n")
        for metric in metrics:
            for server in targets:
                port = free_port()
                proc = start_server(server, port, args.hold, bridges, args.anchor_cmd)
                try:
                    if args.go_load:
                        result = go_load(args.go_load, metric, port, proc.pid, args)
                    elif metric == "idle":
                        result = asyncio.run(idle(port, proc.pid, args.proxies, max(args.duration, 2 * args.hold)))
                    elif metric == "held_rss":
                        result = asyncio.run(held_rss(port, proc.pid, args.held, args.hold))
                    else:
                        result = asyncio.run(rendezvous(port, proc.pid, args.rdv_proxies, args.clients, args.duration))
                    results[(server, metric)] = result
                    line = {"bench": "snowflake", "metric": metric, "target": "original" if server == ORIGINAL else "ours",
                            "server": args.anchor_cmd.split()[0].rsplit("/", 1)[-1] if server == ORIGINAL else server,
                            "generator": "python", **result}
                    print(json.dumps(line), flush=True)
                finally:
                    proc.terminate()
                    proc.wait(15)
    if args.anchor_cmd:
        ratios(results, servers)


if __name__ == "__main__":
    main()
