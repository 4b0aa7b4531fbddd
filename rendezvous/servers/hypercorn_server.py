"""hypercorn: the design card's default (HTTP/1.1, HTTP/2, TLS)."""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config

from rendezvous.servers import ServeOptions


class HypercornServer:
    name = "hypercorn"
    wants_uvloop = False

    async def serve(self, app: Any, sockets: list[socket.socket], options: ServeOptions, shutdown: anyio.Event) -> None:
        config = Config()
        # hypercorn takes ownership of an fd:// socket, so hand it duplicates.
        binds = [f"fd://{s.dup().detach()}" for s in sockets]
        # Without a certificate hypercorn serves ``bind`` as plain HTTP.
        config.bind = binds
        if options.certfile is not None:
            config.certfile = str(options.certfile)
            config.keyfile = str(options.keyfile)
        config.websocket_max_message_size = options.max_message_size
        config.graceful_timeout = options.grace
        config.keep_alive_timeout = options.keep_alive
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        await serve(app, config, shutdown_trigger=shutdown.wait, mode="asgi")


server = HypercornServer()
