"""Node liveness on the redis backend: a node whose liveness key expires loses its waiters at
once (no client anywhere is matched to them), a node that finds itself declared dead ends
what it held and comes back under a new epoch, and a clean stop leaves at once."""

from __future__ import annotations

import anyio
import pytest

from rendezvous.core import Deliver, Dropped, Expired
from rendezvous.testing import wait_until

from .redis_fixture import RedisServer, redis_nodes

pytestmark = pytest.mark.anyio
TTL = 0.3


def alive(server: RedisServer, prefix: str, node) -> bool:
    return server.command("EXISTS", f"{prefix}:node:{node.backend.node_id}") == b":1\r\n"


async def test_a_node_whose_liveness_key_expires_loses_its_waiters(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 3, node_ttl=TTL) as (a, b, c):
        for i in range(5):
            await a.wait(0.0, f"a{i}", f"proxy-a{i}", order=0)
        await c.wait(0.0, "c0", "proxy-c0", order=9, info="c0")  # the least wanted waiter, on a live node
        a.backend.suspend_heartbeat()  # A stalls: its key runs out
        await wait_until(lambda: not alive(redis_server, redis_prefix, a), timeout=3)
        assert await b.store.known() == ["c0"]
        assert (await b.ask(0.0, "client1", offer="x"))[0] == "c0"
        await wait_until(lambda: c.got("proxy-c0"))
        assert c.got("proxy-c0") == [Deliver("proxy-c0", "x")]  # matched to C's, never to A's
        for i in range(5):
            assert (await b.ask(0.0, f"client{i + 2}"))[1] == [Dropped("no_waiter")]
        # A's polls end as polls do, "no match", and its dead entries are gone from the pools
        assert set(await a.advance(10.0)) == {Expired(f"proxy-a{i}", "hold") for i in range(5)}
        assert [e for e in a.seen if type(e) is Deliver] == []
        for node in (a, b, c):  # every node's part of the pool
            assert redis_server.command("ZCARD", f"{redis_prefix}:{{sf}}:pool:pool:{node.backend.node_id}") == b":0\r\n"


async def test_a_fenced_node_ends_what_it_held_and_serves_again(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 2, node_ttl=TTL) as (a, b):
        await a.wait(0.0, "s1", "proxy1", order=9)
        await b.wait(0.0, "s2", "proxy2", order=0)
        await a.ask(0.0, "client", offer="to proxy2")  # A's client is matched with B's proxy2...
        await wait_until(lambda: b.got("proxy2"))
        a.backend.suspend_heartbeat()
        await wait_until(lambda: not alive(redis_server, redis_prefix, a), timeout=3)
        a.backend.resume_heartbeat()
        # ... and A, finding itself declared dead, ends every party it held, as a restart would
        await wait_until(lambda: a.got("proxy1") and a.got("client"), timeout=3)
        assert a.got("proxy1") == [Expired("proxy1", "hold")] and a.got("client") == [Expired("client", "answer")]
        assert await b.answer(0.5, "s2", "late") == (None, [Dropped("asker_gone")])  # ... so proxy2's answer is refused
        await wait_until(lambda: a.backend.ready and alive(redis_server, redis_prefix, a), timeout=3)
        await a.wait(1.0, "s3", "proxy3")  # under its new epoch A serves again
        assert Dropped("no_waiter") not in (await b.ask(1.0, "client3", offer="again"))[1]
        await wait_until(lambda: a.got("proxy3"))
        assert a.got("proxy3") == [Deliver("proxy3", "again")]


async def test_a_clean_stop_leaves_at_once(redis_server, redis_prefix):
    async with redis_nodes(redis_server.url, redis_prefix, 2, node_ttl=30.0) as (a, b):
        await a.wait(0.0, "s", "proxy")
        a.scope.cancel()  # A stops: it does not wait 30 s for its key to run out
        await wait_until(lambda: not alive(redis_server, redis_prefix, a))
        assert (await b.ask(0.0, "client"))[1] == [Dropped("no_waiter")]


async def test_redis_restarting_empty_fences_every_node_once(tmp_path):
    """Redis comes back without its data (no AOF): every node finds its key gone, ends what it
    held, registers again, and the cluster serves as before."""
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        async with redis_nodes(server.url, "r", 2, node_ttl=TTL) as (a, b):
            await a.wait(0.0, "s1", "proxy1")
            server.stop()
            await wait_until(lambda: not a.backend.ready and not b.backend.ready)
            assert (await b.ask(0.0, "client"))[1] == [Dropped("unavailable")]  # fails fast meanwhile
            server.start()  # the same port
            await wait_until(lambda: a.got("proxy1"), timeout=5)
            assert a.got("proxy1") == [Expired("proxy1", "hold")]
            await wait_until(lambda: a.backend.ready and b.backend.ready, timeout=5)
            await a.wait(1.0, "s2", "proxy2")
            assert Dropped("no_waiter") not in (await b.ask(1.0, "client2", offer="o2"))[1]
            await wait_until(lambda: a.got("proxy2"))
            assert a.got("proxy2") == [Deliver("proxy2", "o2")]
    finally:
        server.stop()


async def test_a_waiter_on_a_node_that_cannot_reach_redis_gets_no_match_at_once(tmp_path):
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        async with redis_nodes(server.url, "r", 1, node_ttl=TTL) as (a,):
            server.stop()
            await wait_until(lambda: not a.backend.ready)
            assert await a.wait(0.0, "s", "proxy") == [Expired("proxy", "unavailable")]
            assert await a.answer(0.0, "s", "answer") == (None, [Dropped("unavailable")])
            with anyio.fail_after(1):
                assert await a.store.known() == []
    finally:
        server.stop()


async def test_what_a_dead_nodes_askers_matched_is_reaped_and_stale_index_members_are_tidied(redis_server, redis_prefix):
    """A node dies while its client waits for a proxy's answer: the match is dropped at the next
    reap (not left to its TTL), and the proxy's late answer is refused as before. Index members
    whose records went another way (a call lost while Redis was away) leave their sets."""
    P = f"{redis_prefix}:{{sf}}"
    async with redis_nodes(redis_server.url, redis_prefix, 2, node_ttl=TTL) as (a, b):
        await b.wait(0.0, "s1", "proxy1")
        await a.ask(0.0, "client", offer="o")  # A's client matched with B's proxy
        await wait_until(lambda: b.got("proxy1"))
        a.backend.suspend_heartbeat()  # A dies (as far as Redis can tell)
        await wait_until(lambda: redis_server.command("EXISTS", f"{P}:w:s1") == b":0\r\n", timeout=3)
        assert redis_server.command("SCARD", f"{P}:n:{b.backend.node_id}") == b":0\r\n"
        assert await b.answer(1.0, "s1", "late") == (None, [Dropped("asker_gone")])
        for index in ("n", "a"):  # members without a record, as a lost call would leave them
            redis_server.command("SADD", f"{P}:{index}:{b.backend.node_id}", "ghost")
        await wait_until(lambda: redis_server.command("EXISTS", f"{P}:n:{b.backend.node_id}") == b":0\r\n"
                         and redis_server.command("EXISTS", f"{P}:a:{b.backend.node_id}") == b":0\r\n", timeout=3)
