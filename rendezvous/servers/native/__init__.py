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
from collections.abc import Coroutine
from typing import Any

import anyio

from rendezvous.servers import ServeOptions
from rendezvous.servers.native.connection import Connection
from rendezvous.tls import server_context

#: seconds between the looks at the connections' deadlines (so a head or keep-alive timeout fires
#: up to this much late)
SWEEP = 0.25


class ServerState:
    """State shared by the connections of one running native server."""

    def __init__(self, app: Any, options: ServeOptions) -> None:
        self.app = app
        self.options = options
        self.connections: set[Connection] = set()
        self.closing = False
        self.loop = asyncio.get_running_loop()
        #: channel handlers, which may outlive their connection (HTTP handlers are found through
        #: their connections: a lost connection cancels its handler, and a set per request costs)
        self.channel_tasks: set[asyncio.Task[Any]] = set()
        #: request target -> (path, query, exchange route, body limit), for the targets seen most
        self.targets: dict[bytes, tuple[str, str, Any, int]] = {}
        #: connections that armed a deadline (head, keep-alive) since the last sweep
        self.deadlines: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def watch(self, connection: Connection) -> None:
        """``connection`` has a deadline: the sweep looks at it (one timer for the server, not
        one per connection; an idle server keeps none)."""
        self.deadlines.add(connection)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.deadlines.clear()

    def _sweep(self) -> None:
        now = self.loop.time()
        due = [c for c in self.deadlines if c.deadline is None or c.deadline <= now]
        for connection in due:
            self.deadlines.discard(connection)
            if connection.deadline is not None:
                connection.deadline_passed()  # (may arm again: then it is watched again)
        self._sweeper = self.loop.call_later(SWEEP, self._sweep) if self.deadlines else None

    def spawn(self, coro: Coroutine[Any, Any, Any], channel: bool = False) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        if channel:
            self.channel_tasks.add(task)
            task.add_done_callback(self.channel_tasks.discard)
        return task

    def busy(self) -> list[Any]:
        """The handlers still running (tasks, and requests waiting without one: ``done``/``cancel``)."""
        running: list[Any] = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        return running + [t for t in self.channel_tasks if t not in running]


class NativeServer:
    name = "native"
    wants_uvloop = True

    async def serve(self, app: Any, sockets: list[socket.socket], options: ServeOptions, shutdown: anyio.Event) -> None:
        loop = asyncio.get_running_loop()
        state = ServerState(app, options)
        context = None
        if options.certfile is not None:
            # Registered with rendezvous.tls: a renewed certificate (ACME) is loaded into this
            # same context, and so reaches the handshakes that follow.
            context = server_context(options.certfile, options.keyfile)
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
                while state.busy():  # noqa: ASYNC110 -- polls the connections' tasks until the grace ends
                    await asyncio.sleep(0.05)
            for task in state.busy():
                task.cancel()
            for conn in list(state.connections):
                conn.close_transport()
            state.stop_sweeping()


server = NativeServer()

__all__ = ["NativeServer", "ServerState", "server"]
