"""WebSocket clients for tests (the ``websockets`` package: ``pip install rendezvous[test]``)."""

from __future__ import annotations

import json
from typing import Any

import anyio


def ws_connect(url: str, **kwargs: Any) -> Any:
    """A ``websockets`` client connection (async context manager), with no size limit or pings."""
    from websockets.asyncio.client import connect

    kwargs.setdefault("max_size", None)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("open_timeout", 5)
    return connect(url, **kwargs)


async def recv_json(ws: Any, timeout: float = 5.0) -> Any:
    """The next frame, parsed as JSON; fails if none arrives within ``timeout``."""
    with anyio.fail_after(timeout):
        return json.loads(await ws.recv())


async def recv_frame(ws: Any, timeout: float = 5.0) -> str | bytes:
    with anyio.fail_after(timeout):
        return await ws.recv()


async def assert_silent(ws: Any, within: float = 0.3) -> None:
    """Assert that no frame arrives on ``ws`` within ``within`` seconds (and it stays open)."""
    with anyio.move_on_after(within):
        frame = await ws.recv()
        raise AssertionError(f"expected silence, got {frame!r}")


async def closed_code(ws: Any, timeout: float = 5.0) -> int | None:
    """Wait for the server to close ``ws``; returns the close code it sent (None if none)."""
    from websockets.exceptions import ConnectionClosed

    with anyio.fail_after(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code


async def ws_exchange(ws: Any, body: str, *, request_id: Any = 1, method: str = "POST", timeout: float = 10.0,
                      **fields: Any) -> dict[str, Any]:
    """One request/response route called over a channel (WebSocket or :func:`wt_connect`): the reply dict."""
    await ws.send(json.dumps({"id": request_id, "method": method, "body": body, **fields}))
    with anyio.fail_after(timeout):
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == request_id:
                return reply
