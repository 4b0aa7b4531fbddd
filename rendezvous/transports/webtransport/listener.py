"""The UDP listener: QUIC configuration and certificates, and the sessions it has open.

Not an ASGI transport: the server starts it beside the HTTP server, in the same event loop,
and stops it with it. Each QUIC connection it accepts is an :class:`H3Protocol`.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import anyio
from aioquic.asyncio import serve
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration

from rendezvous.transports.webtransport import compat
from rendezvous.transports.webtransport.h3 import H3Protocol
from rendezvous.transports.webtransport.session import WebTransportSession


def server_configuration(certificate: Any) -> QuicConfiguration:
    """HTTP/3 with datagrams on (Chromium loses them silently otherwise: spec webtransport.md, pitfall 7)."""
    configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=False, max_datagram_frame_size=65536)
    configuration.certificate = certificate.certificate
    configuration.private_key = certificate.private_key
    return configuration


class WebTransportTransport:
    """The UDP listener. Not an ASGI transport: started by the server beside the HTTP server."""

    name = "webtransport"

    def __init__(self, app: Any, certificate: Any) -> None:
        self.app = app
        self.certificate = certificate
        self.open: set[WebTransportSession] = set()
        self.closing = False
        self._server: Any = None
        self.port: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def create_protocol(self, *args: Any, **kwargs: Any) -> H3Protocol:
        """One accepted QUIC connection (aioquic calls this with the ``QuicConnection``)."""
        return H3Protocol(*args, transport=self, **kwargs)

    async def start(self, host: str | None = None, port: int | None = None, *, sock: socket.socket | None = None) -> int:
        """Serve on ``sock``, a UDP socket already bound (the server binds every socket before it
        starts anything, so that a port in use is a configuration error), or bind ``host``/``port``."""
        configuration = server_configuration(self.certificate)
        if sock is None:
            if host is None or port is None:
                raise TypeError("start() needs a bound sock, or host and port")
            self._server = await serve(host, port, configuration=configuration, create_protocol=self.create_protocol)
        else:
            _, self._server = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: QuicServer(configuration=configuration, create_protocol=self.create_protocol), sock=sock)
        self.port = compat.listening_port(self._server)
        return self.port

    def use_certificate(self, certificate: Any) -> None:
        """New sessions get ``certificate``; sessions already open keep theirs."""
        self.certificate = certificate
        if self._server is not None:
            compat.replace_configuration(self._server, server_configuration(certificate))

    async def shutdown(self, code: int = 1001) -> None:
        self.closing = True
        for channel in list(self.open):
            await channel.close(code, "server shutting down")
        await anyio.sleep(0.05)  # let the close capsules leave
        if self._server is not None:
            self._server.close()
