"""A lean keep-alive HTTP/1.1 client for load generation (asyncio protocol, one request at a time).

Like the Go clients of the real peers, each simulated peer keeps one connection open and
reuses it. Responses are read by Content-Length (what the servers under test send).
"""

from __future__ import annotations

import asyncio


class HttpConnection(asyncio.Protocol):
    def __init__(self, host: str) -> None:
        self.host = host.encode()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = 0
        lower = head.lower()
        i = lower.find(b"content-length:")
        if i >= 0:
            length = int(lower[i + 15 : lower.find(b"\r\n", i) if lower.find(b"\r\n", i) > 0 else None])
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        status = int(head[9:12])
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (method.encode(), path.encode(), self.host, len(body), body)
        )
        return await self.waiter

    async def request_with_headers(self, method: str, path: str, body: bytes, headers: str) -> tuple[int, bytes]:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s"
            % (method.encode(), path.encode(), self.host, headers.encode(), len(body), body)
        )
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: HttpConnection(f"{host}:{port}"), host, port)
    return conn


class Peer:
    """A simulated peer: one keep-alive connection, reopened when the server closes it (as Go's client does)."""

    def __init__(self, host: str, port: int, conn: HttpConnection) -> None:
        self.host, self.port, self.conn = host, port, conn
        self.reconnects = 0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        for _ in range(3):
            try:
                return await self.conn.request(method, path, body)
            except ConnectionError:
                self.conn.close()
                self.reconnects += 1
                self.conn = await connect(self.host, self.port)
        raise ConnectionError("server keeps closing the connection")

    def close(self) -> None:
        self.conn.close()

    @property
    def transport(self):
        return self.conn.transport
