"""hypercorn: the design card's default (HTTP/1.1, HTTP/2, TLS).

hypercorn's protocol machinery serves each connection; the accept loop and shutdown are ours
(instead of ``hypercorn.asyncio.serve``), for two reasons measured against hypercorn 0.18:

- A keep-alive connection whose client closes while idle is held until ``keep_alive_timeout``
  (75 s): hypercorn's connection task waits for its own idle timer after the read loop saw the
  client's FIN. :class:`_Connection` stops that timer once the peer is gone, so the socket is
  closed right away (1 500 sequential clients held ~1 000 descriptors before).
- Connections still open when the grace period ends are cancelled; on Python 3.11 asyncio's
  stream callback logs every cancelled connection task as an "Exception in callback ...
  CancelledError" traceback. Ours end such connections quietly (the transport is aborted).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import anyio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config

from rendezvous.servers import ServeOptions

#: as ``rendezvous.server.bind_sockets``: asyncio calls listen() again with this value
BACKLOG = 4096


class _Connection(TCPServer):
    """hypercorn's connection, closed as soon as the peer has closed its side."""

    async def _read_data(self) -> None:
        await super()._read_data()
        # The read loop ends on EOF or a read error, after telling the protocol (which ends
        # its streams). Stop the keep-alive timer: the connection's task group would otherwise
        # wait keep_alive_timeout for it before closing the socket.
        await self.idle_task.stop()


def make_config(options: ServeOptions) -> Config:
    config = Config()
    if options.certfile is not None:
        config.certfile = str(options.certfile)
        config.keyfile = str(options.keyfile)
    config.websocket_max_message_size = options.max_message_size
    config.graceful_timeout = options.grace
    config.keep_alive_timeout = options.keep_alive
    config.backlog = BACKLOG
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


class HypercornServer:
    name = "hypercorn"
    wants_uvloop = False

    async def serve(self, app: Any, sockets: list[socket.socket], options: ServeOptions, shutdown: anyio.Event) -> None:
        config = make_config(options)
        loop = asyncio.get_running_loop()
        context = WorkerContext(None)
        wrapped = ASGIWrapper(app)
        ssl_context = config.create_ssl_context() if config.ssl_enabled else None
        connections: set[asyncio.Task[Any]] = set()

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await _Connection(wrapped, loop, config, context, {}, reader, writer)
            except asyncio.CancelledError:
                # Cancelled at the end of the grace period: drop the connection, quietly.
                writer.transport.abort()
            finally:
                connections.discard(task)

        servers: list[asyncio.AbstractServer] = []
        try:
            for sock in sockets:
                # asyncio closes the socket it serves on; the framework closes its own.
                servers.append(await asyncio.start_server(
                    connected, sock=sock.dup(), backlog=BACKLOG, ssl=ssl_context,
                    ssl_handshake_timeout=config.ssl_handshake_timeout if ssl_context is not None else None,
                ))
            await shutdown.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(servers, context, connections, options.grace)


async def _stop(servers: list[asyncio.AbstractServer], context: WorkerContext, connections: set[asyncio.Task[Any]],
                grace: float) -> None:
    """Refuse new connections, let open ones finish for ``grace`` seconds, then cancel them."""
    for server in servers:
        server.close()
    # Idle keep-alive connections close now; requests in flight and WebSockets may finish.
    await context.terminated.set()
    if connections:
        _, pending = await asyncio.wait(set(connections), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)


server = HypercornServer()
