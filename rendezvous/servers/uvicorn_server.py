"""uvicorn with httptools and uvloop: the high-throughput choice."""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Iterator

import anyio
import uvicorn

from rendezvous.servers import ServeOptions


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # rendezvous handles SIGINT/SIGTERM itself and sets the shutdown event.
        yield


class UvicornServer:
    name = "uvicorn"
    wants_uvloop = True

    async def serve(self, app: Any, sockets: list[socket.socket], options: ServeOptions, shutdown: anyio.Event) -> None:
        config = uvicorn.Config(
            app,
            http="httptools",
            ws="websockets-sansio",
            loop="none",
            lifespan="off",
            ws_max_size=options.max_message_size,
            ws_ping_interval=None,
            ws_per_message_deflate=False,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(options.grace) or 1,
            timeout_keep_alive=int(options.keep_alive),
            ssl_certfile=str(options.certfile) if options.certfile else None,
            ssl_keyfile=str(options.keyfile) if options.keyfile else None,
            server_header=False,
        )
        instance = _EmbeddedServer(config)

        async def stop_when_asked() -> None:
            await shutdown.wait()
            instance.should_exit = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_when_asked)
            await instance.serve(sockets=[s.dup() for s in sockets])
            tg.cancel_scope.cancel()


server = UvicornServer()
