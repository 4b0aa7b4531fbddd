"""Every route over every transport: channels over HTTP long-poll, exchanges over channels.

A profile declares what its original speaks: :class:`ChannelRoute` s (WebSocket-shaped) or
:class:`ExchangeRoute` s (request/response). The :class:`Bridges` made here give each route the
other shape too, at the same path, so any profile runs over any transport without knowing it:

**A channel over HTTP long-poll** (``ConnectionInfo.transport == "http-longpoll"``)
  - ``POST <path>[?query]`` opens a session. The channel's query is the request's query; an
    offered subprotocol list goes in ``Sec-WebSocket-Protocol`` as for a WebSocket. If the profile
    accepts: ``200 {"session": "<id>", "subprotocol": <str|null>}``; if it refuses: its status.
  - ``GET <path>?session=<id>`` waits (up to ``poll_timeout``) for the next message from the
    server: ``200`` with the message (``text/plain; charset=utf-8`` for text,
    ``application/octet-stream`` for binary), ``204`` if none came in time.
  - ``POST <path>?session=<id>`` sends one message (the body; binary when the content type is
    ``application/octet-stream``, else UTF-8 text): ``204``. Over the route's size cap: ``413``
    and the session closes with 1009, as a WebSocket would.
  - ``DELETE <path>?session=<id>`` closes it with 1000: ``204``.
  - Once the session is closed, each of these answers ``410 {"code": <close code>, "reason": ...}``;
    an unknown id answers ``404``. A session nobody polls for ``idle_timeout`` closes with 1006.
  - ``GET <path>`` without a session is left to static files / 404, as before.

**An exchange over a channel** (WebSocket or WebTransport at the exchange's path)
  - Each text message is one request: ``{"id": <any>, "method": "POST", "query": "",
    "headers": {...}, "body": "<text>"}`` (``method`` defaults to ``POST``; ``body_base64`` instead of
    ``body`` for bytes). The reply is ``{"id": <same>, "status": 200, "headers": {...},
    "body": "<text>"}`` (``body_base64`` when the body is not UTF-8).
  - Requests run concurrently (long-polls may overlap), at most ``max_in_flight`` per channel
    (more → status 429). Replies come in completion order, matched by ``id``, which comes back
    as sent (a number as written, ``1e999`` included). A handler that fails answers ``500``
    with a request id, logged with its traceback, as over HTTP; the channel keeps serving.
  - Strings become request text as a browser's ``fetch`` makes them: a lone surrogate (from a
    ``\\ud800`` escape) is U+FFFD. ``NaN`` and ``Infinity`` are not JSON.
  - A message that is not a JSON object closes the channel with 1007; a binary message, 1003.
    Closing the channel cancels its requests in flight, as a client hanging up would.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from rendezvous import gojson
from rendezvous.transports.base import (
    METHOD_NOT_ALLOWED,
    ChannelClosed,
    ChannelRoute,
    ConnectionInfo,
    ExchangeRoute,
    HttpRequest,
    HttpResponse,
    Inbox,
    Route,
    SendTimeout,
)
from rendezvous.transports.handlers import run_exchange

JSON = (("content-type", "application/json"),)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_int(text: str) -> Any:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts: kept as written
        return gojson.Number(text)


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else gojson.Number(text)  # 1e999: kept as written


_decode_envelope = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float).decode


def _usv(text: str) -> str:
    """A string as ``fetch`` sends it: lone surrogates become U+FFFD."""
    return text if text.isascii() or not gojson.SURROGATE.search(text) else gojson.SURROGATE.sub("\ufffd", text)


# Replies: the id goes back as it came, however deep or large.
_dumps = gojson.encoder()


def _query_param(query: str, name: str) -> tuple[str | None, str]:
    """The value of ``name`` in ``query``, and the query without it."""
    found, rest = None, []
    for part in query.split("&") if query else ():
        key, _, value = part.partition("=")
        if key == name and found is None:
            found = value
        else:
            rest.append(part)
    return found, "&".join(rest)


def _closed(code: int, reason: str) -> HttpResponse:
    return HttpResponse(410, json.dumps({"code": code, "reason": reason}).encode(), JSON)


class LongPollChannel:
    """A channel whose peer is a series of HTTP requests."""

    def __init__(self, session_id: str, info: ConnectionInfo, max_queued: int) -> None:
        self.id = session_id
        self.info = info
        self._inbox = Inbox()  # peer → profile
        self._outbox = Inbox()  # profile → peer (what the polls collect)
        self._space: asyncio.Event = asyncio.Event()
        self._space.set()
        self._max_queued = max_queued
        self.decided: asyncio.Future[HttpResponse] = asyncio.get_running_loop().create_future()
        self.last_seen = time.monotonic()
        self.polling = 0

    @property
    def closed(self) -> bool:
        return self._inbox.closed

    # -- the profile's side ------------------------------------------------------------------
    def expect(self, kind: str) -> None:
        """A hint only: this transport hands whole messages to the profile, which checks their kind."""

    async def accept(self, subprotocol: str | None = None) -> None:
        self._inbox.raise_if_closed()
        if not self.decided.done():
            self.decided.set_result(HttpResponse(200, json.dumps({"session": self.id, "subprotocol": subprotocol}).encode(), JSON))

    async def refuse(self, status: int = 403, body: bytes = b"") -> None:
        if not self.decided.done():
            self.decided.set_result(HttpResponse(status, body))
        self._close(1005, "")

    async def receive(self) -> str | bytes:
        return await self._inbox.get()

    async def send(self, message: str | bytes, timeout: float | None = None) -> None:
        self._inbox.raise_if_closed()
        if len(self._outbox.messages) >= self._max_queued:
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), timeout)
            except TimeoutError:
                raise SendTimeout() from None
            self._inbox.raise_if_closed()
        self._outbox.put(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._close(code, reason)

    # -- the HTTP side -------------------------------------------------------------------------
    def _close(self, code: int, reason: str) -> None:
        if not self.decided.done():
            self.decided.set_result(HttpResponse(403))
        self._inbox.close(code, reason)
        self._outbox.close(code, reason)  # queued messages are still collected, then the close
        self._space.set()

    async def poll(self, timeout: float) -> HttpResponse:
        outbox = self._outbox
        if outbox.waiting and not outbox.messages:
            return HttpResponse(204)  # a second concurrent poll gets nothing
        self.polling += 1
        try:
            message = await asyncio.wait_for(outbox.get(), timeout)
        except TimeoutError:
            return HttpResponse(204)
        except ChannelClosed as closed:
            return _closed(closed.code, closed.reason)
        finally:
            self.polling -= 1
            self.last_seen = time.monotonic()
        if len(outbox.messages) < self._max_queued:
            self._space.set()
        if isinstance(message, bytes):
            return HttpResponse(200, message, (("content-type", "application/octet-stream"),))
        return HttpResponse(200, message.encode(), (("content-type", "text/plain; charset=utf-8"),))

    def deliver(self, request: HttpRequest, max_size: int) -> HttpResponse:
        self.last_seen = time.monotonic()
        if self._inbox.closed:
            return _closed(self._inbox.code, self._inbox.reason)
        if len(request.body) > max_size:
            self._close(1009, "message too big")
            return HttpResponse.text(413, "message too big\n")
        if request.headers.get("content-type", "").split(";")[0].strip() == "application/octet-stream":
            self._inbox.put(request.body)
        else:
            try:
                self._inbox.put(request.body.decode("utf-8"))
            except UnicodeDecodeError:
                self._close(1007, "invalid UTF-8")
                return HttpResponse.text(400, "text message is not UTF-8\n")
        return HttpResponse(204)


@attrs.define
class Bridges:
    """Derived routes plus the long-poll sessions they own. Registered as a transport of the
    app so that server shutdown closes its sessions (1001) like any other channel."""

    poll_timeout: float = 25.0
    idle_timeout: float = 60.0
    max_queued: int = 1024
    max_in_flight: int = 32
    max_sessions: int = 100_000  # open long-poll sessions; past this an open gets 503
    decide_timeout: float = 30.0  # a profile that neither accepts nor refuses a session by then: 504
    name: str = "bridges"
    scope_type: str = "bridges"  # never an ASGI scope: nothing is bound
    sessions: dict[str, LongPollChannel] = attrs.field(factory=dict)
    tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    closing: bool = False
    _sweeping: bool = False

    def derive(self, routes: Sequence[Route]) -> list[Route]:
        """For each path with only one kind of route, a route of the other kind."""
        channel_paths = {r.path for r in routes if isinstance(r, ChannelRoute)}
        exchange_paths = {r.path for r in routes if isinstance(r, ExchangeRoute)}
        out: list[Route] = []
        for route in routes:
            if isinstance(route, ChannelRoute) and route.path not in exchange_paths:
                out.append(self.channel_over_http(route))
            elif isinstance(route, ExchangeRoute) and route.path not in channel_paths:
                out.append(self.exchange_over_channel(route))
        return out

    def bind(self, route: Route) -> None:
        return None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- channels over HTTP long-poll ----------------------------------------------------------
    def channel_over_http(self, route: ChannelRoute) -> ExchangeRoute:
        async def handle(request: HttpRequest) -> HttpResponse:
            session_id, query = _query_param(request.query, "session")
            if session_id is None:
                if request.method == "POST":
                    return await self._open(route, request, query)
                return HttpResponse.text(404, "not found\n")
            channel = self.sessions.get(session_id)
            if channel is None:
                return HttpResponse.text(404, "no such session\n")
            if request.method == "GET":
                return await channel.poll(self.poll_timeout)
            if request.method == "POST":
                return channel.deliver(request, route.max_message_size)
            if request.method == "DELETE":
                await channel.close(1000)
                return HttpResponse(204)
            return METHOD_NOT_ALLOWED

        return ExchangeRoute(route.path, handle, frozenset(), max(route.max_message_size, 1) + 1, too_large_status=413)

    async def _open(self, route: ChannelRoute, request: HttpRequest, query: str) -> HttpResponse:
        if self.closing:
            return HttpResponse.text(503, "shutting down\n")
        if len(self.sessions) >= self.max_sessions:
            return HttpResponse.text(503, "too many long-poll sessions\n")
        offered = tuple(p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip())
        info = ConnectionInfo("http-longpoll", request.path, query, request.headers, request.client_host, None, offered)
        channel = LongPollChannel(secrets.token_urlsafe(24), info, self.max_queued)
        self.sessions[channel.id] = channel

        async def run() -> None:
            try:
                await route.handler(channel)
            except ChannelClosed:
                pass
            finally:
                channel._close(1000, "")
                # Let a last poll collect the close before the id is forgotten.
                await asyncio.sleep(self.poll_timeout if not self.closing else 0)
                self.sessions.pop(channel.id, None)

        self._spawn(run())
        if not self._sweeping:
            self._sweeping = True
            self._spawn(self._sweep())
        try:
            return await asyncio.wait_for(asyncio.shield(channel.decided), self.decide_timeout)
        except TimeoutError:
            channel._close(1011, "not accepted in time")
            return HttpResponse.text(504, "the session was neither accepted nor refused in time\n")

    async def _sweep(self) -> None:
        try:
            while self.sessions and not self.closing:
                await asyncio.sleep(min(self.idle_timeout / 2, 5.0))
                self._expire_idle()
        finally:
            self._sweeping = False

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for channel in list(self.sessions.values()):
            if not channel.closed and not channel.polling and now - channel.last_seen > self.idle_timeout:
                channel._close(1006, "no poll")

    # -- exchanges over channels ---------------------------------------------------------------
    def exchange_over_channel(self, route: ExchangeRoute) -> ChannelRoute:
        async def handle(channel: Any) -> None:
            await channel.accept()
            in_flight: set[asyncio.Task[Any]] = set()
            try:
                while True:
                    message = await channel.receive()
                    if isinstance(message, bytes):
                        await channel.close(1003, "requests are JSON text messages")
                        return
                    try:
                        envelope = _decode_envelope(message)
                    except (ValueError, RecursionError):
                        envelope = None
                    if not isinstance(envelope, dict):
                        await channel.close(1007, "a request is a JSON object")
                        return
                    if len(in_flight) >= self.max_in_flight:
                        await _reply(channel, envelope.get("id"), HttpResponse.text(429, "too many requests in flight\n"))
                        continue
                    task = self._spawn(self._exchange(route, channel, envelope))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            finally:
                for task in list(in_flight):
                    task.cancel()  # the client hung up: as an HTTP disconnect would

        return ChannelRoute(route.path, handle, max_message_size=route.max_body_size * 2 + 4096)

    async def _exchange(self, route: ExchangeRoute, channel: Any, envelope: dict[str, Any]) -> None:
        request_id = envelope.get("id")
        method = envelope.get("method", "POST")
        headers = envelope.get("headers", {})
        query = envelope.get("query", "")
        try:
            if "body_base64" in envelope:
                body = base64.b64decode(envelope["body_base64"], validate=True)
            else:
                text = envelope.get("body", "")
                if not isinstance(text, str):
                    raise ValueError
                body = _usv(text).encode()
            if not isinstance(method, str) or not isinstance(headers, dict) or not isinstance(query, str):
                raise ValueError
            sent = {_usv(str(k).lower()): _usv(str(v)) for k, v in headers.items()}
        except (ValueError, TypeError, binascii.Error, RecursionError):
            await _reply(channel, request_id, HttpResponse.text(400, "bad request envelope\n"))
            return
        request = HttpRequest(_usv(method), channel.info.path, _usv(query), {**channel.info.headers, **sent}, body,
                              channel.info.client_host)
        # As over HTTP: the method rule, the body cap, and a failing handler is a logged 500 (the channel serves on).
        await _reply(channel, request_id, await run_exchange(route, request, len(body) > route.max_body_size))

    async def shutdown(self, code: int = 1001) -> None:
        self.closing = True
        for channel in list(self.sessions.values()):
            channel._close(code, "server shutting down")
        if self.tasks:
            # Handlers see the close and return; whatever still waits after that is cancelled.
            _, pending = await asyncio.wait(list(self.tasks), timeout=1.0)
            for task in pending:
                task.cancel()


async def _reply(channel: Any, request_id: Any, response: HttpResponse) -> None:
    reply: dict[str, Any] = {"id": request_id, "status": response.status, "headers": dict(response.headers)}
    try:
        reply["body"] = response.body.decode("utf-8")
    except UnicodeDecodeError:
        reply["body_base64"] = base64.b64encode(response.body).decode()
    with contextlib.suppress(ChannelClosed):
        await channel.send(_dumps(reply))


def all_routes(routes: Iterable[Route], bridges: Bridges | None) -> list[Route]:
    routes = list(routes)
    return routes + (bridges.derive(routes) if bridges is not None else [])
