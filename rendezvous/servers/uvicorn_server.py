"""uvicorn with httptools and uvloop: the high-throughput choice.

uvicorn's own protocols, changed by subclassing (uvicorn takes protocol classes):

- Pipelined requests: uvicorn resumes reading after every answered request, even while earlier
  pipelined requests still wait, so a client pipelining without reading the answers made it
  queue requests without bound. :class:`_HttpProtocol` reads more only once they are answered.
- Pings: uvicorn answers every ping without looking at its write buffer, so a client flooding
  pings without reading filled memory with pongs. :class:`_WebSocketProtocol` stops reading
  while the transport's write buffer is over its high-water mark.
- Request heads: uvicorn with httptools keeps every header line it is sent; over 64 KiB of
  request line and headers is answered 400 and the connection closed.
- A WebSocket upgrade over any HTTP version but 1.1 is refused with 505 (uvicorn rewrote the
  request line to HTTP/1.1 and accepted it).

Connections still open when the grace period ends are aborted, so their handlers end on a
disconnect rather than being cancelled by uvicorn (one "Exception in ASGI application" each).

Proxy headers (``X-Forwarded-For``) are not trusted: the client address is the socket's peer.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from rendezvous.servers import ServeOptions

_WRONG_VERSION = b"WebSocket needs HTTP/1.1\n"
#: request line + headers, as the native server (uvicorn with httptools has no cap: headers
#: sent without end were kept without bound)
MAX_HEAD_BYTES = 64 * 1024


class _PipelineFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while pipelined requests wait.

    (uvicorn resumes reading whenever a request's handler asks for its body and after every
    answer; a request is only queued behind another once its own body has been read.)"""

    def __init__(self, transport: Any, pipeline: Any) -> None:
        super().__init__(transport)
        self._pipeline = pipeline

    def resume_reading(self) -> None:
        if not self._pipeline:
            super().resume_reading()


class _HttpProtocol(HttpToolsProtocol):
    _head_bytes = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.flow = _PipelineFlow(transport, self.pipeline)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            # uvicorn answers a parser error with 400 and closes the connection.
            raise httptools.HttpParserError("request head too large")

    def handle_websocket_upgrade(self) -> None:
        if self.parser.get_http_version() != "1.1":
            self.transport.write(
                b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_WRONG_VERSION), _WRONG_VERSION))
            self.transport.close()
            return
        super().handle_websocket_upgrade()


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    _write_blocked = False

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_blocked = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_blocked = False
        if not self.read_paused:  # else receive() resumes once the app has taken its messages
            self.transport.resume_reading()

    async def receive(self) -> Any:
        message = await super().receive()  # may resume reading
        if self._write_blocked:
            self.transport.pause_reading()
        return message


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # rendezvous handles SIGINT/SIGTERM itself and sets the shutdown event.
        yield


def make_config(app: Any, options: ServeOptions) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=_HttpProtocol,
        ws=_WebSocketProtocol,
        loop="none",
        lifespan="off",
        # The client address is the socket's peer; X-Forwarded-For from anyone (uvicorn trusts
        # 127.0.0.1 by default) would otherwise replace it in scope["client"] and in the logs.
        proxy_headers=False,
        ws_max_size=options.max_message_size,
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(options.grace) + 1,  # a backstop: see stop_when_asked
        timeout_keep_alive=int(options.keep_alive),
        ssl_certfile=str(options.certfile) if options.certfile else None,
        ssl_keyfile=str(options.keyfile) if options.keyfile else None,
        server_header=False,
    )


class UvicornServer:
    name = "uvicorn"
    wants_uvloop = True

    async def serve(self, app: Any, sockets: list[socket.socket], options: ServeOptions, shutdown: anyio.Event) -> None:
        instance = _EmbeddedServer(make_config(app, options))

        async def stop_when_asked() -> None:
            await shutdown.wait()
            instance.should_exit = True
            # Drop what is still open after the grace period: its handlers see a disconnect and
            # end. (uvicorn itself would cancel their tasks, logging a traceback for each.)
            await anyio.sleep(options.grace)
            for connection in list(instance.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_when_asked)
            await instance.serve(sockets=[s.dup() for s in sockets])
            tg.cancel_scope.cancel()


server = UvicornServer()
