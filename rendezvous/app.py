"""The lean ASGI application: exact-path dispatch to transports, Quart for the long tail.

Hot paths (channels, exchanges) are looked up in a dict by ``(scope type, path)`` and go
straight to a transport adapter; only what no route claims (static files, 404s) pays for
Quart's request machinery (DESIGN.md §6).
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterable, Sequence

from rendezvous.transports.base import HttpResponse, Route
from rendezvous.transports.http import send_response


class DuplicateRoute(ValueError):
    pass


def make_static_app(static_dirs: Sequence[pathlib.Path]) -> Any:
    """A Quart app serving static files from ``static_dirs`` (first match wins), ``/`` → index.html."""
    from quart import Quart, abort, send_from_directory

    app = Quart("rendezvous.static", static_folder=None)

    @app.route("/", defaults={"filename": "index.html"})
    @app.route("/<path:filename>")
    async def serve_file(filename: str) -> Any:
        for directory in static_dirs:
            candidate = directory / filename
            if candidate.is_file():
                return await send_from_directory(directory, filename)
        abort(404)

    return app


class App:
    """ASGI callable. Built once per server from the mounted routes and transports."""

    def __init__(self, routes: Iterable[tuple[str, Route]], transports: Sequence[Any], static_dirs: Sequence[pathlib.Path] = ()) -> None:
        routes = list(routes)
        self.transports = list(transports)
        self._table: dict[tuple[str, str], Any] = {}
        # Paths with one "*" (e.g. "/*/webrtc-bootstrap-root"): tried in order after the
        # exact table; "*" matches any non-empty text. Keeps secrets out of the dict lookup.
        self._patterns: list[tuple[str, str, str, Any]] = []
        for prefix, route in routes:
            path = prefix.rstrip("/") + route.path
            for transport in self.transports:
                handler = transport.bind(route)
                if handler is None:
                    continue
                if "*" in path:
                    head, _, tail = path.partition("*")
                    self._patterns.append((transport.scope_type, head, tail, handler))
                    continue
                key = (transport.scope_type, path)
                if key in self._table:
                    raise DuplicateRoute(f"two routes claim {transport.scope_type} {path}")
                self._table[key] = handler
        self._static = make_static_app(static_dirs) if static_dirs else None
        self.max_message_size = max(
            (getattr(r, "max_message_size", 0) for _, r in routes), default=64 * 1024
        )

    @property
    def paths(self) -> list[tuple[str, str]]:
        return sorted(self._table)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        path = scope.get("path", "")
        handler = self._table.get((kind, path))
        if handler is None:
            for scope_type, head, tail, candidate in self._patterns:
                if (
                    scope_type == kind
                    and len(path) > len(head) + len(tail)
                    and path.startswith(head)
                    and path.endswith(tail)
                ):
                    handler = candidate
                    break
        if handler is not None:
            await handler(scope, receive, send)
            return
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # Unknown path: refuse the upgrade (the server answers 403, no 101).
            await send({"type": "websocket.close", "code": 1000})
        elif self._static is not None and scope["method"] in ("GET", "HEAD"):
            await self._static(scope, receive, send)
        else:
            await send_response(send, HttpResponse.text(404, "not found\n"))

    async def _lifespan(self, receive: Any, send: Any) -> None:
        # Startup and shutdown are run by rendezvous.server around the HTTP server.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
