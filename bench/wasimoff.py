"""wasimoff dispatch benchmark: N fake providers that answer every task at once, C clients
submitting through ConnectRPC (application/proto, as client_tsp.py); the broker pinned to core 0,
providers and clients on core 1.

  {"bench":"wasimoff","metric":"dispatch",...}  tasks/s, broker CPU ms per task, p50/p99 submit→result

Targets: >= 2000 tasks/s on one core, <= 0.5 ms broker CPU per task.
Usage: python bench/wasimoff.py [--server hypercorn|uvicorn|native|all] [--providers N] [--slots S]
                                [--clients C] [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import cpu_seconds, free_port, prepare_generator, start_pinned
from httpclient import Peer
from httpclient import connect as http_connect
from wsclient import connect as ws_connect

from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import pack, unpack

WASM = b"\x00asm\x01\x00\x00\x00"  # a valid (empty) module: the fake providers never run it


def start_broker(server: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "WASIMOFF_HTTP_LISTEN": f"127.0.0.1:{port}", "WASIMOFF_STATIC_FILES": ""}
    cmd = [sys.executable, "-m", "rendezvous", "serve", "--profile", "wasimoff", "--http-server", server,
           "--queue-limit", "100000"]
    return start_pinned(cmd, port, env=env)


class FakeProvider:
    """Answers Listing, Ping and every task immediately (status 0, stdout "ok")."""

    def __init__(self) -> None:
        self.ws = None
        self.tasks = 0

    def on_message(self, client, payload: bytes) -> None:
        envelope = schema.Envelope()
        envelope.ParseFromString(payload)
        if envelope.type != schema.REQUEST:
            return
        request = unpack(envelope)
        if isinstance(request, schema.ListingRequest):
            answer = schema.ListingResponse()
        elif isinstance(request, schema.Ping):
            answer = schema.Ping()
        elif isinstance(request, schema.Wasip1Request):
            answer = schema.Wasip1Response()
            answer.info.CopyFrom(request.info)
            answer.ok.status = 0
            answer.ok.stdout = b"ok"
            self.tasks += 1
        else:
            answer = request
        reply = schema.Envelope(sequence=envelope.sequence, type=schema.RESPONSE)
        pack(reply, answer)
        client.send(reply.SerializeToString(), binary=True)

    async def start(self, port: int, name: str, slots: int) -> None:
        self.ws = await ws_connect("127.0.0.1", port, f"/api/provider/ws?id={name}", self.on_message,
                                   "User-Agent: bench\r\nSec-WebSocket-Protocol: wasimoff_provider_v1_protobuf\r\n")
        event = schema.Envelope(sequence=0, type=schema.EVENT)
        pack(event, schema.ProviderResources(concurrency=slots))
        self.ws.send(event.SerializeToString(), binary=True)


TASK_PATH = "/api/client/wasimoff.v1.Tasks/RunWasip1"
PROTO = "content-type: application/proto\r\n"


async def prepare(ports: list[int], providers: int, slots: int, provider: type[FakeProvider] = FakeProvider,
                  settle: float = 0.5) -> tuple[list[FakeProvider], bytes]:
    """The binary uploaded (to ``ports[0]``), ``providers`` connected (provider i to ``ports[i mod n]``):
    the providers, and the body of a RunWasip1 request for the binary."""
    conn = await http_connect("127.0.0.1", ports[0])
    status, body = await conn.request("POST", "/api/storage/upload?name=bench.wasm", WASM)
    assert status == 200, body
    conn.close()
    fakes = [provider() for _ in range(providers)]
    for i, fake in enumerate(fakes):
        await fake.start(ports[i % len(ports)], f"fake{i}", slots)
    await asyncio.sleep(settle)
    request = schema.Wasip1Request()
    request.params.binary.ref = "bench.wasm"
    request.params.args.extend(["bench.wasm", "x"])
    return fakes, request.SerializeToString()


async def dispatch(port: int, pid: int, providers: int, slots: int, clients: int, duration: float) -> dict:
    fakes, body = await prepare([port], providers, slots)
    latencies: list[float] = []
    errors = 0
    peers = [Peer("127.0.0.1", port, await http_connect("127.0.0.1", port)) for _ in range(clients)]

    async def client_loop(peer: Peer, stop_at: float, record: bool) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            code, _reply = await peer.conn.request_with_headers("POST", TASK_PATH, body, PROTO)
            if code == 200:
                if record:
                    latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    await asyncio.gather(*(client_loop(p, time.monotonic() + 1.0, False) for p in peers))
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(client_loop(p, t0 + duration, True) for p in peers))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    for p in peers:
        p.close()
    for fake in fakes:
        fake.ws.close()
    latencies.sort()
    n = len(latencies)
    return {"providers": providers, "slots": slots, "clients": clients, "seconds": round(elapsed, 1), "tasks": n,
            "errors": errors, "tasks_per_s": round(n / elapsed, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if n else None,
            "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
            "broker_cpu_ms_per_task": round(cpu * 1000 / max(1, n), 3),
            "broker_cpu_utilisation": round(cpu / elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=["hypercorn", "uvicorn", "native", "all"], default="all")
    parser.add_argument("--providers", type=int, default=8)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    prepare_generator()
    for server in (["hypercorn", "uvicorn", "native"] if args.server == "all" else [args.server]):
        port = free_port()
        proc = start_broker(server, port)
        try:
            result = asyncio.run(dispatch(port, proc.pid, args.providers, args.slots, args.clients, args.duration))
            print(json.dumps({"bench": "wasimoff", "metric": "dispatch", "server": server, **result}), flush=True)
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()
