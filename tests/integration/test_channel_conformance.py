"""Every transport's channel held to one contract (rendezvous.testing.conformance.check_channel):
WebSocket on each HTTP server, the HTTP long-poll bridge, WebTransport."""

from __future__ import annotations

import contextlib

import anyio
import pytest

from rendezvous.testing import LongPoll, serve, wt_connect, ws_connect
from rendezvous.testing.conformance import LongPollPeer, WebSocketPeer, WebTransportPeer, check_channel
from rendezvous_overlay.profile import OverlayRuntime

pytestmark = pytest.mark.anyio


@pytest.fixture
def handed_over(monkeypatch):
    """The overlay's /join hands each accepted channel to the test and holds it open until the
    test is done with it (the channel under test is the transport's, the handler is the test's)."""
    send, receive = anyio.create_memory_object_stream(10)

    async def join(self, channel):
        await channel.accept()
        done = anyio.Event()
        await send.send((channel, done))
        await done.wait()

    monkeypatch.setattr(OverlayRuntime, "join", join)
    return receive


def pair_opener(handed_over, connect):
    @contextlib.asynccontextmanager
    async def open_pair():
        async with connect() as peer:
            with anyio.fail_after(5):
                channel, done = await handed_over.receive()
            try:
                yield channel, peer
            finally:
                done.set()
    return open_pair


async def test_websocket_channel(http_server, handed_over):
    async with serve("overlay", {"secret": "s"}, http_server=http_server) as srv:
        @contextlib.asynccontextmanager
        async def connect():
            async with ws_connect(srv.ws_url + "/join") as ws:
                yield WebSocketPeer(ws)

        # hypercorn tells the app 1000 or 1006 for any client close, never the client's code
        await check_channel(pair_opener(handed_over, connect), client_close_code=http_server != "hypercorn")


async def test_long_poll_channel(handed_over):
    async with serve("overlay", {"secret": "s"}) as srv:
        @contextlib.asynccontextmanager
        async def connect():
            poll = await LongPoll.open(srv.url + "/join")
            yield LongPollPeer(poll)

        await check_channel(pair_opener(handed_over, connect), client_close_code=False)


async def test_webtransport_channel(handed_over):
    async with serve("overlay", {"secret": "s"}, server={"webtransport_port": 0}) as srv:
        @contextlib.asynccontextmanager
        async def connect():
            async with wt_connect(srv.webtransport_url + "/join") as wt:
                yield WebTransportPeer(wt)

        await check_channel(pair_opener(handed_over, connect))
