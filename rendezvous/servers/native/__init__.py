"""The native server: HTTP/1.1 and WebSocket on asyncio (uvloop) with httptools, no ASGI.

Why it exists: measured here, an ASGI server's WebSocket machinery costs 1.2–2.1 ms of CPU
per overlay join (two handshakes, six frames), against 0.55 ms for the original node
server (bench/overlay.py). This server resolves routes on the :class:`rendezvous.app.App`
and drives channel and exchange handlers directly; whatever no route claims (static files,
404s) still goes through the App's ASGI face.

The parts: :mod:`.connection` (HTTP/1.1, the handshake, flow control and limits),
:mod:`.websocket` (sans-IO RFC 6455 framing), :mod:`.channel` (the Channel over a
connection), :mod:`.asgi` (the fallback into the App's ASGI face).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, Coroutine

import anyio

from rendezvous.servers import ServeOptions
from rendezvous.servers.native.connection import Connection


class ServerState:
    """State shared by the connections of one running native server."""

    def __init__(self, app: Any, options: ServeOptions) -> None:
        self.app = app
        self.options = options
        self.connections: set[Connection] = set()
        self.closing = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class NativeServer:
    name = "native"
    wants_uvloop = True

    async def serve(self, app: Any, sockets: list[socket.socket], options: ServeOptions, shutdown: anyio.Event) -> None:
        loop = asyncio.get_running_loop()
        state = ServerState(app, options)
        context = None
        if options.certfile is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(options.certfile), str(options.keyfile))
        servers = [
            await loop.create_server(lambda: Connection(state), sock=sock.dup(), ssl=context, backlog=4096)
            for sock in sockets
        ]
        try:
            await shutdown.wait()
        finally:
            state.closing = True
            for server in servers:
                server.close()
            for conn in list(state.connections):
                if conn.websocket is not None and not conn.websocket.closed:
                    await conn.websocket.close(1001, "server shutting down")
                elif conn.task is None and conn.transport is not None:
                    conn.close_transport()  # idle keep-alive connection
            with anyio.move_on_after(options.grace):
                while state.tasks:
                    await asyncio.sleep(0.05)
            for task in list(state.tasks):
                task.cancel()
            for conn in list(state.connections):
                conn.close_transport()


server = NativeServer()

__all__ = ["NativeServer", "ServerState", "server"]
