"""``rendezvous-wasimoff-provider``: run the Python provider against a broker, and say what it does
(connected, each task with its duration, a progress line every ``--progress`` seconds,
disconnects and reconnects with backoff) on stderr."""

from __future__ import annotations

import argparse
import os
import sys
import time

import anyio

from rendezvous_wasimoff.peer.provider import Provider

PROG = "rendezvous-wasimoff-provider"


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


async def serve(provider: Provider, progress: float, retry_max: float) -> None:
    """Run ``provider``; reconnect after a disconnect or a failed connect, backing off to ``retry_max``."""
    delay = 1.0
    async with anyio.create_task_group() as tg:
        async def report_progress() -> None:
            while True:
                await anyio.sleep(progress)
                say(provider.progress())

        if progress > 0:
            tg.start_soon(report_progress)
        while True:
            connected_at = time.monotonic()
            try:
                await provider.run()
                reason = "the broker closed the connection"
            except OSError as exc:
                reason = f"cannot reach {provider.broker}: {exc.strerror or exc}"
            except Exception as exc:  # websockets' handshake and close errors
                reason = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - connected_at > 30:
                delay = 1.0  # it was up for a while: start the backoff again
            say(f"disconnected ({reason}); reconnecting in {delay:.0f} s")
            await anyio.sleep(delay)
            delay = min(retry_max, delay * 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="A wasimoff provider in Python: speaks the provider protocol and runs WASI binaries with wasmtime.")
    parser.add_argument("--broker", default=os.environ.get("WASIMOFF_BROKER", "http://localhost:4080"), help="broker URL (default: %(default)s)")
    parser.add_argument("--name", default=None, help="provider id (default: random)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="task slots (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="use the protojson subprotocol")
    parser.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines, 0: none (default: %(default)s)")
    parser.add_argument("--retry-max", type=float, default=30.0, help="longest wait between reconnects, seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.broker.startswith(("http://", "https://")):
        print(f"{PROG}: --broker must be an http:// or https:// URL, not {args.broker!r}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"{PROG}: --workers must be at least 1", file=sys.stderr)
        return 2
    provider = Provider(args.broker, name=args.name, workers=args.workers, json=args.json, report=say)
    try:
        anyio.run(serve, provider, args.progress, args.retry_max)
    except KeyboardInterrupt:
        say(provider.progress())
        return 130
    return 0
