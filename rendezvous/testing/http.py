"""HTTP clients for tests: one request per connection (cheap for thousands of long-polls), and a
channel over the HTTP long-poll bridge."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio


class HttpReply:
    __slots__ = ("content", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.status = status
        self.headers = headers
        self.content = content

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


async def http_call(url: str, method: str = "GET", body: bytes = b"", headers: Mapping[str, str] | None = None,
                    timeout: float = 30.0) -> HttpReply:
    """One HTTP/1.1 request on its own connection: cheap enough for thousands at once.

    (A pooled client such as httpx slows down sharply with many concurrent long-polls on one
    pool; load tests and long-poll tests use this instead.)
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with anyio.fail_after(timeout):
        async with await anyio.connect_tcp(parts.hostname or "", parts.port or 80) as stream:
            await stream.send(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, rest = data.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            reply_headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                reply_headers[name.strip().lower()] = value.strip()
            status = int(status_line.split(" ")[1])
            length = reply_headers.get("content-length")
            try:
                while length is None or len(rest) < int(length):
                    rest += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            if reply_headers.get("transfer-encoding", "").lower() == "chunked":
                rest = _dechunk(rest)
            elif length is not None:
                rest = rest[: int(length)]
    return HttpReply(status, reply_headers, rest)


class LongPoll:
    """A channel over HTTP long-poll (see :mod:`rendezvous.transports.bridges`), for tests.

    ``lp = await LongPoll.open(srv.url + "/join")``; ``await lp.send("x")``; ``await lp.recv()``;
    ``lp.close_code`` once the server closed it.
    """

    def __init__(self, url: str, session: str, subprotocol: str | None) -> None:
        self.url = url
        self.session = session
        self.subprotocol = subprotocol
        self.close_code: int | None = None

    @classmethod
    async def open(cls, url: str, headers: Mapping[str, str] | None = None) -> LongPoll:
        reply = await http_call(url, "POST", b"", headers)
        if reply.status != 200:
            raise ConnectionError(f"long-poll open refused: {reply.status} {reply.content!r}")
        opened = json.loads(reply.content)
        base = url.split("?", 1)[0]
        return cls(base, opened["session"], opened.get("subprotocol"))

    async def send(self, message: str | bytes) -> HttpReply:
        binary = isinstance(message, bytes)
        body = message if isinstance(message, bytes) else message.encode()
        kind = "application/octet-stream" if binary else "text/plain; charset=utf-8"
        return await http_call(f"{self.url}?session={self.session}", "POST", body, {"Content-Type": kind})

    async def recv(self, timeout: float = 5.0) -> str | bytes:
        """The next message; raises :class:`ConnectionError` once closed (``close_code`` set)."""
        with anyio.fail_after(timeout):
            while True:
                reply = await http_call(f"{self.url}?session={self.session}", timeout=timeout + 30)
                if reply.status == 200:
                    binary = reply.headers.get("content-type", "").startswith("application/octet-stream")
                    return reply.content if binary else reply.content.decode()
                if reply.status == 410:
                    self.close_code = json.loads(reply.content)["code"]
                    raise ConnectionError(f"closed with {self.close_code}")
                if reply.status != 204:
                    raise ConnectionError(f"poll failed: {reply.status}")

    async def close(self) -> None:
        await http_call(f"{self.url}?session={self.session}", "DELETE")


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out
