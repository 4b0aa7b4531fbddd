"""The :class:`rendezvous.transports.base.Channel` over one native WebSocket connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from rendezvous.servers.native.websocket import binary_frame, text_frame
from rendezvous.transports.base import ChannelClosed, ConnectionInfo, Inbox, SendTimeout

if TYPE_CHECKING:
    from rendezvous.servers.native.connection import Connection

#: queued messages before a slow reader's socket stops being read
PAUSE_AT = 64


class NativeChannel:
    __slots__ = ("_accepted", "_conn", "_inbox", "info", "max_message_size")

    def __init__(self, conn: Connection, info: ConnectionInfo, max_message_size: int) -> None:
        self.info = info
        self._conn = conn
        self._inbox = Inbox(conn.server.loop)
        self._accepted = False
        self.max_message_size = max_message_size

    @property
    def closed(self) -> bool:
        return self._inbox.closed

    async def accept(self, subprotocol: str | None = None) -> None:
        if self._inbox.closed:
            raise ChannelClosed(1006, "disconnected before accept")
        self._accepted = True
        self._conn.accept_websocket(subprotocol)

    async def refuse(self, status: int = 403, body: bytes = b"") -> None:
        self._inbox.close(1005)
        self._conn.refuse_websocket(status, body)

    def expect(self, kind: str) -> None:
        self._conn.expect_messages(kind)

    async def receive(self) -> str | bytes:
        message = await self._inbox.get()
        if len(self._inbox.messages) < PAUSE_AT // 2:
            self._conn.inbox_drained()
        return message

    async def send(self, message: str | bytes, timeout: float | None = None) -> None:
        self._inbox.raise_if_closed()
        conn = self._conn
        conn.write(text_frame(message) if isinstance(message, str) else binary_frame(message))
        if conn.write_paused:  # only a peer that is not reading costs a wait
            if timeout is None:
                await conn.drained()
                return
            with anyio.move_on_after(timeout) as scope:
                await conn.drained()
            if scope.cancelled_caught:
                raise SendTimeout()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._inbox.closed:
            return
        self._inbox.close(code, reason)
        if self._accepted:
            self._conn.close_websocket(code, reason)

    # -- called by the connection ---------------------------------------------------------
    def deliver(self, message: str | bytes) -> bool:
        """Queue a received message; False once the inbox is full enough to stop reading."""
        self._inbox.put(message)
        return len(self._inbox.messages) < PAUSE_AT

    def mark_closed(self, code: int, reason: str = "") -> None:
        self._inbox.close(code, reason)
