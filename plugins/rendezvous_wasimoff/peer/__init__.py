"""A wasimoff provider in Python: speaks the provider protocol and runs WASI binaries with wasmtime.

This is a *peer* of the broker, not part of it: it connects to ``/api/provider/ws`` as a
browser or Deno provider would and shares nothing with the broker but the wire schema
(:mod:`rendezvous_wasimoff.schema`, :mod:`rendezvous_wasimoff.codec`). It is the far end of
our tests and what a user without a browser runs:

    rendezvous-wasimoff-provider --broker http://localhost:4080 --workers 4

``slot.py`` runs one WASI binary in wasmtime; ``provider.py`` speaks the Envelope protocol;
``cli.py`` is the console script. Needs the ``provider`` extra (wasmtime, websockets, httpx).
"""

from rendezvous_wasimoff.peer.cli import main
from rendezvous_wasimoff.peer.provider import Provider

__all__ = ["Provider", "main"]
