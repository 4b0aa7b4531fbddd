"""``rendezvous-wasimoff-provider``: run the Python provider against a broker."""

from __future__ import annotations

import argparse
import os

import anyio

from rendezvous_wasimoff.peer.provider import Provider


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rendezvous-wasimoff-provider", description="A wasimoff provider in Python: speaks the provider protocol and runs WASI binaries with wasmtime.")
    parser.add_argument("--broker", default=os.environ.get("WASIMOFF_BROKER", "http://localhost:4080"))
    parser.add_argument("--name", default=None, help="provider id (default: random)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="use the protojson subprotocol")
    args = parser.parse_args(argv)
    try:
        anyio.run(Provider(args.broker, name=args.name, workers=args.workers, json=args.json).run)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"rendezvous-wasimoff-provider: cannot reach {args.broker}: {exc}")
        return 1
    return 0
