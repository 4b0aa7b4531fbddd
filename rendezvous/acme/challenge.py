"""The HTTP-01 listener (port 80): ACME challenge answers, and a redirect to HTTPS for the rest.

As Go's ``autocert.Manager.HTTPHandler(nil)``: ``/.well-known/acme-challenge/<token>`` is
answered for the configured hostnames only (403 for another host, 404 for an unknown token);
any other GET or HEAD is redirected (302) to the same URL over HTTPS, anything else is
``400 Use HTTPS``. Go always redirects to port 443; here the redirect names the HTTPS port
when it is not 443.

:func:`answer` decides (pure); :func:`serve` is the small HTTP/1.1 server (h11), one request
per connection.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.parse
from collections.abc import Callable, Collection, Mapping

import anyio
import attrs
import h11

PREFIX = "/.well-known/acme-challenge/"
HEAD_LIMIT = 8192
READ_TIMEOUT = 10.0


@attrs.frozen
class Reply:
    status: int
    body: bytes = b""
    location: str | None = None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def answer(method: str, target: str, host: str, tokens: Mapping[str, str], hostnames: Collection[str],
           https_port: int) -> Reply:
    """What the HTTP-01 listener answers to ``method target`` with ``Host: host``."""
    if target.startswith(("http://", "https://")):  # absolute form: keep path and query
        parts = urllib.parse.urlsplit(target)
        host, target = host or parts.netloc, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    name = _strip_port(host).lower()
    path = target.partition("?")[0]
    if path.startswith(PREFIX):
        if name not in hostnames:
            return Reply(403, f"acme: host {name!r} is not one of the ACME hostnames\n".encode())
        validation = tokens.get(path[len(PREFIX):])
        if validation is None:
            return Reply(404, b"acme: no such challenge\n")
        return Reply(200, validation.encode())
    if method not in ("GET", "HEAD"):
        return Reply(400, b"Use HTTPS\n")
    if not name:
        return Reply(400, b"missing Host\n")
    port = "" if https_port == 443 else f":{https_port}"
    return Reply(302, location=f"https://{_strip_port(host)}{port}{target}")


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  respond: Callable[[str, str, str], Reply]) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    try:
        with anyio.fail_after(READ_TIMEOUT):
            event = conn.next_event()
            while event is h11.NEED_DATA:
                conn.receive_data(await reader.read(4096))
                event = conn.next_event()
        if isinstance(event, h11.Request):
            host = dict(event.headers).get(b"host", b"").decode("latin-1")
            reply = respond(event.method.decode("ascii"), event.target.decode("latin-1"), host)
            body = b"" if event.method == b"HEAD" else reply.body
            headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(reply.body))),
                       ("Connection", "close")]
            if reply.location is not None:
                headers.append(("Location", reply.location))
            writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)))
            writer.write(conn.send(h11.Data(data=body)) if body else b"")
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
    except (h11.ProtocolError, TimeoutError, OSError):
        pass  # a bad or slow client: just close
    finally:
        writer.close()


async def serve(sockets: list[socket.socket], respond: Callable[[str, str, str], Reply]) -> None:
    """Serve HTTP-01 on ``sockets`` until cancelled."""
    servers = [await asyncio.start_server(lambda r, w: _handle(r, w, respond), sock=sock.dup()) for sock in sockets]
    try:
        await anyio.sleep_forever()
    finally:
        for server in servers:
            server.close()
