"""HTTP request/response transport: carries :class:`ExchangeRoute` s over ASGI ``http`` scopes.

A long-poll is simply an exchange whose handler awaits; a client that goes away while it
waits cancels the handler, so whatever it was holding is released by its ``finally``.
"""

from __future__ import annotations

from typing import Any

import anyio

from rendezvous.transports.base import ExchangeRoute, HttpRequest, HttpResponse, Route, header_map
from rendezvous.transports.handlers import run_exchange


async def send_response(send: Any, response: HttpResponse) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge()
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


async def _watch_disconnect(receive: Any, scope: anyio.CancelScope) -> None:
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            scope.cancel()
            return


class HttpTransport:
    name = "http"
    scope_type = "http"

    def bind(self, route: Route) -> Any:
        if not isinstance(route, ExchangeRoute):
            return None
        limit = route.max_body_size

        async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
            too_large = False
            try:
                body = await read_body(receive, limit)
            except _BodyTooLarge:
                body, too_large = b"", True
            except _Disconnected:
                return
            client = scope.get("client") or (None, None)
            request = HttpRequest(
                method=scope["method"],
                path=scope["path"],
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=header_map(scope.get("headers", ())),
                body=body,
                client_host=client[0],
            )
            response = None
            async with anyio.create_task_group() as tg:
                # A client that hangs up mid long-poll cancels the handler.
                tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
                response = await run_exchange(route, request, too_large)
                tg.cancel_scope.cancel()
            if response is not None:
                await send_response(send, response)

        return asgi

    async def shutdown(self, code: int = 1001) -> None:
        return None


transport = HttpTransport
