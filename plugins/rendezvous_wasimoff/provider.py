"""The old import path of the Python provider, which is now the peer package
:mod:`rendezvous_wasimoff.peer`. Kept because console scripts installed before the move
point here, and some tests import ``Provider`` from here."""

from rendezvous_wasimoff.peer import Provider, main

__all__ = ["Provider", "main"]
