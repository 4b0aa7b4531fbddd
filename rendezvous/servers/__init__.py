"""HTTP server plugins (entry point group ``rendezvous.servers``).

A server plugin serves an ASGI app on sockets the framework has already bound (so the
bound address is known before serving, ephemeral ports included) until ``shutdown`` is set.
"""

from __future__ import annotations

import pathlib
import socket
from typing import Any, Protocol

import anyio
import attrs


@attrs.frozen
class ServeOptions:
    max_message_size: int
    grace: float
    certfile: pathlib.Path | None = None
    keyfile: pathlib.Path | None = None
    #: seconds an idle keep-alive connection is kept (long-poll peers reuse theirs between polls)
    keep_alive: float = 75.0


class HttpServer(Protocol):
    name: str
    #: run the event loop on uvloop when this server is chosen
    wants_uvloop: bool

    async def serve(self, app: Any, sockets: list[socket.socket], options: ServeOptions, shutdown: anyio.Event) -> None: ...
