"""The redis backend's connections: calls of one loop step leave as one write, a cancelled caller
leaves the connection in step (and its script's outcome still counts), a lost connection fails
what was pending and comes back, a lost inbox is made good by re-reading the records."""

from __future__ import annotations

import anyio
import pytest

from rendezvous.backends import BackendSettings, BackendUnavailable, create_backend
from rendezvous.core import Deliver, Dropped
from rendezvous.testing import wait_until

from .redis_fixture import redis_nodes

pytestmark = pytest.mark.anyio


async def test_calls_of_one_loop_step_leave_as_one_write(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 1) as (a,):
        mux = a.backend.mux
        batches = mux.batches
        futures = [mux.call("ECHO", str(i)) for i in range(300)]
        assert [await f for f in futures] == [str(i).encode() for i in range(300)]
        assert mux.batches == batches + 1
        # concurrent handlers, each awaiting its own call, share writes too
        batches, calls = mux.batches, mux.calls
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(a.wait, 0.0, f"s{i}", f"p{i}")
        assert mux.calls - calls == 200 and mux.batches - batches <= 3


async def test_cancelled_callers_leave_the_connection_in_step(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 1) as (a,):
        mux = a.backend.mux
        replies = {}

        async def echo(i: int) -> None:
            replies[i] = await mux.call("ECHO", str(i))

        async with anyio.create_task_group() as tg:
            scopes = []
            for i in range(100):
                scope = anyio.CancelScope()
                scopes.append(scope)

                async def run(i: int = i, scope: anyio.CancelScope = scope) -> None:
                    with scope:
                        await echo(i)

                tg.start_soon(run)
            await anyio.sleep(0)  # every call is on the wire
            for scope in scopes[::3]:
                scope.cancel()
        assert set(replies) == {i for i in range(100) if i % 3}
        assert all(reply == str(i).encode() for i, reply in replies.items())
        assert await mux.call("PING") == b"PONG"


async def test_a_client_that_hangs_up_mid_claim_ends_the_match_it_made(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 2) as (a, b):
        await a.wait(0.0, "s", "proxy")
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled at its first suspension: the claim is already on the wire
            await b.store.ask(0.0, "client", ["pool"], "offer")
        await wait_until(lambda: a.got("proxy"))
        assert a.got("proxy") == [Deliver("proxy", "offer")]  # the claim happened: the proxy has the offer
        await wait_until(lambda: redis_server.command("HGET", f"{redis_prefix}:{{sf}}:w:s", "state") == b"$4\r\ndone\r\n")
        assert await a.answer(0.5, "s", "answer") == (None, [Dropped("asker_gone")])  # ... and the match is over
        assert b.store.next_deadline() is None


async def test_a_lost_connection_fails_pending_calls_and_comes_back(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 2) as (a, b):
        mux = a.backend.mux
        pending = mux.call("BLPOP", f"{redis_prefix}:never", 0)  # held by the server until the connection dies
        await anyio.sleep(0.05)
        redis_server.command("CLIENT", "KILL", "TYPE", "normal")
        with pytest.raises(BackendUnavailable):
            await pending
        await wait_until(lambda: a.backend.ready and b.backend.ready)
        await a.wait(0.0, "s", "proxy")
        assert (await b.ask(0.0, "client"))[0] is None
        await wait_until(lambda: a.got("proxy"))
        assert a.got("proxy") == [Deliver("proxy", "o")]


async def test_frames_lost_while_the_inbox_was_away_are_read_from_the_records(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 2) as (a, b):
        await b.wait(0.0, "s", "proxy")
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")  # both inboxes drop...
        await a.ask(0.0, "client", offer="offer")  # ... so the offer frame to B is lost
        await wait_until(lambda: b.got("proxy"))  # B re-read its record after subscribing again
        assert b.got("proxy") == [Deliver("proxy", "offer")]
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await b.answer(0.1, "s", "answer")  # the answer frame to A is lost too
        await wait_until(lambda: a.got("client"))
        assert a.got("client") == [Deliver("client", "answer")]


async def test_a_flushed_script_cache_is_refilled_by_the_call_that_finds_it_empty(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 1) as (a,):
        redis_server.command("SCRIPT", "FLUSH")
        await a.wait(0.0, "s", "proxy")
        assert (await a.ask(0.0, "client"))[1] == [Deliver("proxy", "o")]


async def test_a_node_that_cannot_reach_redis_at_start_does_not_start():
    backend = create_backend("redis", BackendSettings(url="redis://127.0.0.1:1/0"))
    with pytest.raises(BackendUnavailable, match="cannot connect to redis at redis://127.0.0.1:1/0"):
        await backend.run()
    assert not backend.ready
