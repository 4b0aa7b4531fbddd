"""A lean WebSocket client for load generation: asyncio protocol, fixed handshake, tiny framing.

A load generator written with a full client library spends more CPU per connection than the
server under test, which would make the generator the bottleneck. This one does only what
the benchmarks need: text frames under 64 KiB, masking with a zero key (valid framing; XOR
with zero leaves the payload as is), and a close on request.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable


class WSClient(asyncio.Protocol):
    def __init__(self, host: str, path: str, on_message: Callable[[WSClient, bytes], None] | None = None,
                 extra_headers: str = "") -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra_headers}\r\n"
        ).encode()
        self.on_message = on_message
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.messages: asyncio.Queue[bytes] | None = None if on_message else asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer[: self.buffer.find(b"\r\n")]
            self.buffer = self.buffer[end + 4 :]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            self.upgraded = True
            self.opened.set_result(None)
        buf = self.buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            length = buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length = struct.unpack_from("!H", buf, 2)[0]
                offset = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length = struct.unpack_from("!Q", buf, 2)[0]
                offset = 10
            if len(buf) < offset + length:
                break
            payload = buf[offset : offset + length]
            buf = buf[offset + length :]
            if opcode == 0x8:
                self.transport.close()
                break
            if opcode in (0x1, 0x2):
                if self.on_message is not None:
                    self.on_message(self, payload)
                else:
                    self.messages.put_nowait(payload)
        self.buffer = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, text: str | bytes, binary: bool = False) -> None:
        data = text.encode() if isinstance(text, str) else text
        n = len(data)
        first = 0x82 if binary else 0x81
        if n < 126:
            header = struct.pack("!BB", first, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, n)
        self.transport.write(header + b"\x00\x00\x00\x00" + data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
            self.transport.close()


async def connect(host: str, port: int, path: str, on_message=None, extra_headers: str = "") -> WSClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: WSClient(f"{host}:{port}", path, on_message, extra_headers), host, port)
    await client.opened
    return client
