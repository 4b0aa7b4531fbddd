"""What every transport's :class:`~rendezvous.transports.base.Channel` must do, as one suite
(in the spirit of trio's ``check_two_way_stream``): run :func:`check_channel` with a way to open
a server-side channel and the client on its other end, and every transport is held to the same
contract — WebSocket on each HTTP server, the long-poll bridge, WebTransport.

``open_pair`` is an async context manager factory yielding ``(channel, client)``: ``channel`` the
server side (already accepted), ``client`` a :class:`Peer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import anyio

from rendezvous.transports.base import ChannelClosed


class Peer(Protocol):
    """The client end of a channel, whatever carries it."""

    async def send(self, message: str | bytes) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self, code: int) -> None: ...
    async def closed_code(self) -> int | None:
        """Wait until the server closed; the code it sent (None where the transport has none)."""


OpenPair = Callable[[], AbstractAsyncContextManager[tuple[Any, Peer]]]


class WebSocketPeer:
    """A ``websockets`` client connection as a :class:`Peer`."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, message: str | bytes) -> None:
        await self.ws.send(message)

    async def recv(self) -> str | bytes:
        with anyio.fail_after(5):
            return await self.ws.recv()

    async def close(self, code: int) -> None:
        await self.ws.close(code)

    async def closed_code(self) -> int | None:
        from websockets.exceptions import ConnectionClosed

        with anyio.fail_after(5):
            try:
                while True:
                    await self.ws.recv()
            except ConnectionClosed:
                pass
        return self.ws.close_code


class LongPollPeer:
    """A :class:`rendezvous.testing.LongPoll` as a :class:`Peer` (a close from the client is a
    DELETE, which carries no code)."""

    def __init__(self, poll: Any) -> None:
        self.poll = poll

    async def send(self, message: str | bytes) -> None:
        reply = await self.poll.send(message)
        if reply.status not in (200, 204):
            raise ConnectionError(f"send refused: {reply.status}")

    async def recv(self) -> str | bytes:
        return await self.poll.recv()

    async def close(self, code: int) -> None:
        await self.poll.close()

    async def closed_code(self) -> int | None:
        with anyio.fail_after(10):
            try:
                while True:
                    await self.poll.recv()
            except ConnectionError:
                return self.poll.close_code


class WebTransportPeer:
    """A :func:`rendezvous.testing.wt_connect` client as a :class:`Peer`."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def send(self, message: str | bytes) -> None:
        await self.client.send(message)

    async def recv(self) -> str | bytes:
        with anyio.fail_after(5):
            return await self.client.recv()

    async def close(self, code: int) -> None:
        self.client.close(code)

    async def closed_code(self) -> int | None:
        return await self.client.wait_closed()


async def check_channel(open_pair: OpenPair, *, binary: bool = True, client_close_code: bool = True) -> None:
    """Hold one transport's channel to the contract; raises AssertionError on the first breach.

    ``binary``: the transport carries bytes messages; ``client_close_code``: a client's close
    carries its code to the server (a long-poll DELETE does not).
    """
    # Messages both ways, in order, text and (where carried) binary, kept apart.
    async with open_pair() as (channel, peer):
        for i in range(20):
            await peer.send(json.dumps({"n": i, "text": "héllo ✓"}))
        for i in range(20):
            assert json.loads(await _receive(channel)) == {"n": i, "text": "héllo ✓"}
        for i in range(20):
            await channel.send(f"to client {i} ✓")
        for i in range(20):
            assert await peer.recv() == f"to client {i} ✓"
        if binary:
            await peer.send(b"\x00\xffbinary")
            assert await _receive(channel) == b"\x00\xffbinary"
            await channel.send(b"\x01\xfe")
            assert await peer.recv() == b"\x01\xfe"
        await channel.close(1000)

    # The server's close code reaches the client; after it, send and receive raise ChannelClosed,
    # and closing again is harmless.
    async with open_pair() as (channel, peer):
        await channel.close(4001, "bye")
        assert await peer.closed_code() == 4001
        await channel.close(4002)  # idempotent: the first code stands
        assert channel.closed if hasattr(channel, "closed") else True
        for attempt in (channel.receive(), channel.send("late")):
            try:
                await attempt
            except ChannelClosed as closed:
                assert closed.code == 4001
            else:
                raise AssertionError("a closed channel still sends or receives")

    # The client closing ends a receive that is waiting, with the client's code where carried.
    async with open_pair() as (channel, peer):
        async with anyio.create_task_group() as tg:
            outcome: dict[str, Any] = {}

            async def receive() -> None:
                try:
                    await channel.receive()
                except ChannelClosed as closed:
                    outcome["code"] = closed.code

            tg.start_soon(receive)
            await anyio.sleep(0.05)
            await peer.close(4003)
        assert "code" in outcome, "the client's close did not end the receive"
        if client_close_code:
            assert outcome["code"] == 4003, outcome

    # A close from another task ends a receive that is waiting.
    async with open_pair() as (channel, peer):
        async with anyio.create_task_group() as tg:
            ended: list[int] = []

            async def receive() -> None:
                try:
                    await channel.receive()
                except ChannelClosed as closed:
                    ended.append(closed.code)

            tg.start_soon(receive)
            await anyio.sleep(0.05)
            await channel.close(1001)
        assert ended == [1001]
        assert await peer.closed_code() == 1001


async def _receive(channel: Any) -> str | bytes:
    with anyio.fail_after(5):
        return await channel.receive()
