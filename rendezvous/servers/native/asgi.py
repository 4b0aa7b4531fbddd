"""The native server's way into the App's ASGI face, for whatever no route claims (static
files, admin pages, 404s): one buffered request in, one buffered response out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any


async def asgi_fallback(
    app: Any, method: str, path: str, raw_path: bytes, query: str, headers: Sequence[tuple[bytes, bytes]],
    body: bytes, client: tuple[str | None, int | None], scheme: str,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of ``app.fallback`` for one request."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": scheme, "path": path, "raw_path": raw_path, "query_string": query.encode("latin-1"),
        "root_path": "", "headers": headers, "client": client, "server": None,
    }
    sent = False
    status = 500
    response_headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # until cancelled
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers[:] = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in message.get("headers", ())
                if k.lower() not in (b"content-length", b"transfer-encoding", b"connection")
            ]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app.fallback(scope, receive, send)
    return status, response_headers, b"".join(chunks)
