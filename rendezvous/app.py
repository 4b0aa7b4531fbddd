"""The application: routes resolved by exact path (or one ``*`` pattern), and its ASGI face.

Hot paths (channels, exchanges) are looked up in a dict by ``(kind, path)``. Over ASGI they
go straight to a transport adapter; the native server (``rendezvous.servers.native``) calls
the same routes without ASGI at all. Only what no route claims (static files, 404s) pays for
Quart's request machinery (DESIGN.md §6).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from rendezvous.transports.base import ChannelRoute, HttpResponse, Route, SessionRoute
from rendezvous.transports.http import send_response

CHANNEL = "channel"
EXCHANGE = "exchange"
SESSION = "session"  # WebTransport sessions handed over whole
_SCOPE_KIND = {"websocket": CHANNEL, "http": EXCHANGE}


class DuplicateRoute(ValueError):
    pass


def make_static_app(static_dirs: Sequence[tuple[str, pathlib.Path]]) -> Any:
    """A Quart app serving each ``(prefix, directory)`` under its prefix (``/prefix/`` → index.html)."""
    from quart import Quart, abort, redirect, send_from_directory

    app = Quart("rendezvous.static", static_folder=None)

    @app.route("/", defaults={"filename": ""})
    @app.route("/<path:filename>")
    async def serve_file(filename: str) -> Any:
        path = "/" + filename
        for prefix, directory in static_dirs:
            if prefix and path == prefix:
                return redirect(prefix + "/")
            if prefix and not path.startswith(prefix + "/"):
                continue
            name = path[len(prefix) + 1:] or "index.html"
            if (directory / name).is_file():
                return await send_from_directory(directory, name)
        abort(404)

    return app


def static_at(static_dirs: Sequence[pathlib.Path | tuple[str, pathlib.Path]]) -> list[tuple[str, pathlib.Path]]:
    """``(prefix, directory)`` pairs (a bare directory is served at ``/``); two at one prefix are a
    :class:`DuplicateRoute` (one would hide the other's files)."""
    pairs = [(entry[0].rstrip("/"), entry[1]) if isinstance(entry, tuple) else ("", entry) for entry in static_dirs]
    claimed: dict[str, pathlib.Path] = {}
    for prefix, directory in pairs:
        if prefix in claimed:
            raise DuplicateRoute(f"two static directories claim {prefix}/: {claimed[prefix]} and {directory}")
        claimed[prefix] = directory
    return pairs


def mounted(prefix: str, route: Route) -> Route:
    """``route`` served under ``prefix``; its handler still sees the path it was written for.

    (Like ASGI's ``root_path``: a profile mounted at ``/ov`` gets ``/join``, not ``/ov/join``.)
    """
    prefix = prefix.rstrip("/")
    if not prefix:
        return route
    inner = route.handler
    cut = len(prefix)
    if isinstance(route, (ChannelRoute, SessionRoute)):
        async def channel_handler(channel: Any) -> None:
            channel.info = attrs.evolve(channel.info, path=channel.info.path[cut:])
            await inner(channel)

        return attrs.evolve(route, path=prefix + route.path, handler=channel_handler)

    async def exchange_handler(request: Any) -> Any:
        return await inner(attrs.evolve(request, path=request.path[cut:]))

    return attrs.evolve(route, path=prefix + route.path, handler=exchange_handler)


class App:
    """Built once per server from the mounted routes; an ASGI callable too."""

    def __init__(self, routes: Iterable[tuple[str, Route]], transports: Sequence[Any],
                 static_dirs: Sequence[pathlib.Path | tuple[str, pathlib.Path]] = (), bridges: Any = None) -> None:
        """``static_dirs``: directories served for what no route claims, each at ``/`` or under a
        prefix (``(prefix, directory)``). ``bridges`` (a :class:`rendezvous.transports.bridges.Bridges`):
        also carry channel routes over HTTP long-poll and exchange routes over channels, at the same paths."""
        static = static_at(static_dirs)
        plain = [mounted(prefix, route) for prefix, route in routes]
        if bridges is not None:
            plain += bridges.derive(plain)
        routes = [(m.path, m) for m in plain]
        self.transports = list(transports) + ([bridges] if bridges is not None else [])
        self._exact: dict[tuple[str, str], Route] = {}
        # Paths with one "*" (e.g. "/*/webrtc-bootstrap-root") are tried in order after the
        # exact table; "*" matches any text. Keeps secrets out of the dict lookup.
        self._patterns: list[tuple[str, str, str, Route]] = []
        for path, route in routes:
            kind = CHANNEL if isinstance(route, ChannelRoute) else SESSION if isinstance(route, SessionRoute) else EXCHANGE
            if "*" in path:
                head, _, tail = path.partition("*")
                self._patterns.append((kind, head, tail, route))
            elif (kind, path) in self._exact:
                raise DuplicateRoute(f"two routes claim {kind} {path}")
            else:
                self._exact[(kind, path)] = route
        # ASGI handlers, bound by the transport that carries each kind of route.
        self._asgi: dict[tuple[str, int], Any] = {}
        for _, route in routes:
            for transport in self.transports:
                handler = transport.bind(route)
                if handler is not None:
                    self._asgi[(transport.scope_type, id(route))] = handler
        self._static = make_static_app(static) if static else None
        self.max_message_size = max((getattr(r, "max_message_size", 0) for _, r in routes), default=64 * 1024)

    def resolve(self, kind: str, path: str) -> Route | None:
        """The route for ``kind`` (``"channel"`` or ``"exchange"``) at ``path``, if any."""
        route = self._exact.get((kind, path))
        if route is not None:
            return route
        for route_kind, head, tail, candidate in self._patterns:
            if route_kind == kind and len(path) >= len(head) + len(tail) and path.startswith(head) and path.endswith(tail):
                return candidate
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope_type = scope["type"]
        if scope_type == "lifespan":
            await self._lifespan(receive, send)
            return
        route = self.resolve(_SCOPE_KIND.get(scope_type, ""), scope.get("path", ""))
        handler = self._asgi.get((scope_type, id(route))) if route is not None else None
        if handler is not None:
            await handler(scope, receive, send)
        else:
            await self.fallback(scope, receive, send)

    async def fallback(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """What no route claims: static files (GET/HEAD), else 404; unknown upgrades refused."""
        if scope["type"] == "websocket":
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
