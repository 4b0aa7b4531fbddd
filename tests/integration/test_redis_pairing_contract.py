"""One contract for offer/answer pairing, run against every backend: the rules of
``tests/unit/test_pairing.py`` through the store interface, on ``memory`` and on ``redis``
(a real redis-server), then the same rendezvous spread over three nodes (wait on A, ask on B,
answer on C). With ``memory`` the three "nodes" are one store, which is what one node is."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from rendezvous.backends import create_backend
from rendezvous.core import Deliver, Dropped, Expired
from rendezvous.testing import FakeClock, wait_until

from .redis_fixture import StoreNode, recorder, redis_nodes

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis", "memory-callbacks", "redis-callbacks"])
def cluster(request):
    """``async with cluster(n, ...) as nodes``: n nodes of one backend sharing one state; the
    ``-callbacks`` variants make the same calls through the stores' callback form (``wait_now``,
    ``ask_now``, ``answer_now``: what Snowflake's handlers call)."""
    kind, _, form = request.param.partition("-")
    return _cluster(request, kind, callbacks=form == "callbacks")


@pytest.fixture(params=["memory", "redis"])
def callback_cluster(request):
    """:func:`cluster` for tests of the callback form itself."""
    return _cluster(request, request.param, callbacks=True)


def _cluster(request, kind: str, *, callbacks: bool):
    @contextlib.asynccontextmanager
    async def make(n: int = 1, *, hold_timeout: float = 10.0, answer_timeout: float = 10.0,
                   clock: Callable[[], float] | None = None) -> AsyncIterator[list[StoreNode]]:
        clock = clock or FakeClock(0.0)
        if kind == "memory":
            store = create_backend("memory").pairing("sf", hold_timeout=hold_timeout, answer_timeout=answer_timeout, clock=clock)
            seen: list = []
            store.attach(recorder(seen))
            yield [StoreNode(store, seen, callbacks=callbacks)] * n
            return
        url = request.getfixturevalue("redis_server").url
        async with redis_nodes(url, request.getfixturevalue("redis_prefix"), n, hold_timeout=hold_timeout,
                               answer_timeout=answer_timeout, clock=clock, callbacks=callbacks) as nodes:
            yield nodes

    return make


# -- the rules of one node ------------------------------------------------------------------------
async def test_no_waiter_means_immediate_drop(cluster):
    async with cluster() as (p,):
        assert await p.ask(0.0, "client") == (None, [Dropped("no_waiter")])


async def test_match_answer_and_late_answer_gets_gone(cluster):
    async with cluster() as (p,):
        await p.wait(0.0, "sid1", "proxy", info={"nat": "unrestricted"})
        assert await p.ask(1.0, "client", offer="offer") == ({"nat": "unrestricted"}, [Deliver("proxy", "offer")])
        assert await p.answer(2.0, "sid1", "answer") == ({"nat": "unrestricted"}, [Deliver("client", "answer")])
        assert await p.answer(2.1, "sid1", "again") == (None, [Dropped("asker_gone")])
        assert p.store.next_deadline() is None


async def test_pools_are_min_heaps_on_order_key_first_come_first_served(cluster):
    async with cluster() as (p,):
        for sid, clients in (("a", 4), ("b", 5), ("c", 3), ("d", 1), ("e", 3), ("f", 0.5)):
            await p.wait(0.0, sid, "proxy-" + sid, order=clients)
        drawn = [(await p.ask(0.0, f"client{i}"))[1][0].to for i in range(6)]
        assert drawn == ["proxy-f", "proxy-d", "proxy-c", "proxy-e", "proxy-a", "proxy-b"]


async def test_pools_tried_in_order(cluster):
    async with cluster() as (p,):
        await p.wait(0.0, "u", "unrestricted-proxy", pool="unrestricted")
        await p.wait(0.0, "r", "restricted-proxy", pool="restricted")
        assert (await p.ask(0.0, "c1", ["restricted", "unrestricted"]))[1] == [Deliver("restricted-proxy", "o")]
        assert (await p.ask(0.0, "c2", ["restricted", "unrestricted"]))[1] == [Deliver("unrestricted-proxy", "o")]
        assert (await p.ask(0.0, "c3", ["restricted"]))[1] == [Dropped("no_waiter")]


async def test_hold_timeout_expires_waiter(cluster):
    async with cluster(hold_timeout=10.0) as (p,):
        await p.wait(0.0, "s", "proxy")
        assert p.store.next_deadline() == 10.0
        assert await p.advance(9.9) == []
        assert await p.advance(10.0) == [Expired("proxy", "hold")]
        assert (await p.ask(10.0, "c"))[1] == [Dropped("no_waiter")]
        assert await p.store.known() == []


async def test_answer_timeout_expires_asker_and_frees_sid(cluster):
    async with cluster(hold_timeout=10.0, answer_timeout=5.0) as (p,):
        await p.wait(0.0, "s", "proxy")
        await p.ask(1.0, "client")
        assert await p.advance(5.9) == []  # the proxy's hold deadline (10 s) no longer counts
        assert await p.advance(6.0) == [Expired("client", "answer")]
        assert await p.answer(6.1, "s", "late") == (None, [Dropped("asker_gone")])
        assert await p.advance(20.0) == []


async def test_waiter_disconnect_leaves_pool(cluster):
    async with cluster() as (p,):
        await p.wait(0.0, "s", "proxy")
        assert await p.gone(1.0, "proxy") == [Dropped("waiter_gone")]
        assert (await p.ask(1.0, "c"))[1] == [Dropped("no_waiter")]
        assert p.store.next_deadline() is None
        assert await p.gone(1.0, "proxy") == []


async def test_asker_disconnect_makes_answer_client_gone(cluster):
    async with cluster() as (p,):
        await p.wait(0.0, "s", "proxy")
        await p.ask(0.0, "client")
        assert await p.gone(1.0, "client") == [Dropped("asker_gone")]
        assert await p.answer(1.0, "s", "a") == (None, [Dropped("asker_gone")])
        assert p.store.next_deadline() is None


async def test_reused_sid_replaces_waiting_entry(cluster):
    async with cluster() as (p,):
        await p.wait(0.0, "s", "poll1")
        assert await p.wait(1.0, "s", "poll2") == [Expired("poll1", "replaced")]
        assert (await p.ask(1.0, "c"))[1] == [Deliver("poll2", "o")]
        assert (await p.ask(1.0, "c2"))[1] == [Dropped("no_waiter")]
        assert len(await p.store.known()) == 1


async def test_reused_sid_while_matched_still_times_out_the_asker(cluster):
    async with cluster(answer_timeout=5.0) as (p,):
        await p.wait(0.0, "s", "poll1")
        await p.ask(0.0, "client")
        await p.wait(1.0, "s", "poll2")
        assert Expired("client", "answer") in await p.advance(5.0)


async def test_one_match_per_poll_and_known_counts_matched_until_finished(cluster):
    async with cluster() as (p,):
        await p.wait(0.0, "s", "proxy", info="standalone")
        await p.ask(0.0, "c1")
        assert (await p.ask(0.0, "c2"))[1] == [Dropped("no_waiter")]
        assert await p.store.known() == ["standalone"]
        await p.answer(0.5, "s", "a")
        assert await p.store.known() == []


async def test_many_waiters_and_askers_at_once(cluster):
    async with cluster() as (p,):
        async with anyio.create_task_group() as tg:  # concurrent calls: one batch on the redis connection
            for i in range(400):
                tg.start_soon(p.wait, 0.0, f"s{i}", f"p{i}", "pool", i % 7, ("standalone", "restricted"))
        results = []

        async def ask(i: int) -> None:
            results.append(await p.ask(0.0, f"c{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(ask, i)
        assert all(info == ("standalone", "restricted") and type(effects[0]) is Deliver for info, effects in results)
        assert len({effects[0].to for _, effects in results}) == 200
        assert len(await p.store.known()) == 400  # 200 waiting, 200 matched and unanswered


async def test_drain_expires_everyone_waiting(cluster):
    async with cluster() as (p,):
        await p.wait(0.0, "s1", "proxy1")
        await p.wait(0.0, "s2", "proxy2")
        await p.ask(0.0, "client")
        effects = await p.store.drain(1.0)
        assert set(effects) == {Expired("proxy2", "hold"), Expired("client", "answer")}
        assert p.store.next_deadline() is None and await p.store.known() == []


async def test_a_waiter_matched_as_its_hold_ends_gets_the_offer_and_no_no_match(cluster):
    async with cluster(hold_timeout=10.0) as (p,):
        await p.wait(0.0, "s", "proxy")
        await p.ask(9.999, "client", offer="late offer")
        await p.advance(10.0)
        assert p.got("proxy") == [Deliver("proxy", "late offer")]


async def test_the_stores_own_timers_end_holds_and_answers(cluster):
    async with cluster(2, hold_timeout=0.2, answer_timeout=0.2, clock=time.monotonic) as (a, b):
        async with anyio.create_task_group() as tg:
            for store in {a.store, b.store}:
                tg.start_soon(store.run)
            await a.wait(time.monotonic(), "s1", "proxy1")
            await a.wait(time.monotonic(), "s2", "proxy2")
            await b.ask(time.monotonic(), "client")  # takes proxy1; nobody answers
            await wait_until(lambda: a.got("proxy2") and b.got("client"))
            tg.cancel_scope.cancel()
        assert a.got("proxy1") == [Deliver("proxy1", "o")]
        assert a.got("proxy2") == [Expired("proxy2", "hold")]
        assert b.got("client") == [Expired("client", "answer")]


# -- the callback form: a caller that leaves before ``then`` ------------------------------------------
def _then(into: list) -> Callable:
    return lambda value, effects: into.append((value, effects))


async def test_a_poll_that_hangs_up_leaves_its_pool_without_waiting_for_the_store(callback_cluster):
    async with callback_cluster() as (p,):
        replies: list = []
        p.store.wait_now(0.0, "s", "proxy", "pool", 0, None, _then(replies))
        p.store.gone_now(0.5, "proxy")  # (on redis: before the wait's own reply came)
        assert (await p.ask(1.0, "client"))[1] == [Dropped("no_waiter")]
        assert p.store.next_deadline() is None
        assert replies == [(None, [])] and p.got("proxy") == []


async def test_a_client_that_hangs_up_before_its_claim_came_back_ends_the_match_it_made(callback_cluster):
    async with callback_cluster(2) as (a, b):
        await a.wait(0.0, "s", "proxy", info="proxy info")
        claimed: list = []
        b.store.ask_now(0.0, "client", ("pool",), "offer", _then(claimed))
        b.store.gone_now(0.1, "client")  # (on redis: the claim is on the wire)
        await wait_until(lambda: claimed)
        info, effects = claimed[0]
        assert info == "proxy info"  # the match was made: its offer still goes to the proxy
        a.seen += effects
        await wait_until(lambda: a.got("proxy"))
        assert a.got("proxy") == [Deliver("proxy", "offer")]
        # the claim's reply sent the asker's end after it: an answer finds no client
        assert await b.answer(0.5, "s", "answer") == (None, [Dropped("asker_gone")])
        assert b.got("client") == [] and b.store.next_deadline() is None


# -- three nodes ----------------------------------------------------------------------------------
async def test_wait_on_a_ask_on_b_answer_on_c(cluster):
    async with cluster(3) as (a, b, c):
        await a.wait(0.0, "sid1", "proxy", info=("standalone", "unrestricted"))
        info, _ = await b.ask(0.0, "client", offer="offer")
        assert info == ("standalone", "unrestricted")
        await wait_until(lambda: a.got("proxy"))
        assert a.got("proxy") == [Deliver("proxy", "offer")]
        assert (await c.answer(0.5, "sid1", "answer"))[0] == ("standalone", "unrestricted")
        await wait_until(lambda: b.got("client"))
        assert b.got("client") == [Deliver("client", "answer")]
        for node in (a, b, c):
            assert await node.answer(0.6, "sid1", "again") == (None, [Dropped("asker_gone")])
            assert await node.store.known() == []


async def test_the_fewest_clients_first_across_nodes(cluster):
    """A proxy with fewer clients is drawn first wherever it polled, before one on the asker's node."""
    async with cluster(3) as (a, b, c):
        await a.wait(0.0, "s5", "proxy-a5", order=5, info="a5")
        await b.wait(0.0, "s1", "proxy-b1", order=1, info="b1")
        await c.wait(0.0, "s3", "proxy-c3", order=3, info="c3")
        drawn = [(await a.ask(0.0, f"client{i}"))[0] for i in range(3)]
        assert drawn == ["b1", "c3", "a5"]


async def test_on_a_tie_the_askers_own_node_first(redis_server, redis_prefix):
    """Among proxies with as few clients (Go's heap orders them in no particular way), one that
    polled the asker's node: the offer and its answer then need no bus frame. (The memory backend
    is one node: first come, first served.)"""
    async with redis_nodes(redis_server.url, redis_prefix, 3) as (a, b, c):
        for node, name in ((a, "a"), (b, "b"), (c, "c")):
            await node.wait(0.0, f"s{name}", f"proxy-{name}", order=0, info=name)
        # each its own node's, whichever came first; delivered from the claim's reply, not through the bus
        for node, name in ((c, "c"), (a, "a"), (b, "b")):
            assert await node.ask(0.0, f"client-{name}") == (name, [Deliver(f"proxy-{name}", "o")])
        parts = f"{redis_prefix}:{{sf}}:pn:pool"
        await a.wait(0.0, "sa2", "proxy-a2", order=0, info="a2")
        await a.wait(0.0, "sa3", "proxy-a3", order=0, info="a3")
        assert await c.ask(0.0, "client-c2") == ("a2", [])  # none on C: the other node's, through the bus
        assert redis_server.command("SCARD", parts) == b":1\r\n"  # A's part still has a3
        assert await c.ask(0.0, "client-c3") == ("a3", [])
        # the claim that empties a part takes it out of the pool's set of parts (not a later scan)
        assert redis_server.command("SCARD", parts) == b":0\r\n"
        await wait_until(lambda: a.got("proxy-a3"))
        assert a.got("proxy-a2") == [Deliver("proxy-a2", "o")]
        assert (await c.ask(0.0, "client-c4"))[1] == [Dropped("no_waiter")]


async def test_an_answer_after_the_remote_asker_timed_out_is_refused(cluster):
    async with cluster(3, answer_timeout=5.0) as (a, b, c):
        await a.wait(0.0, "s", "proxy")
        await b.ask(0.0, "client")
        assert await b.advance(5.0) == [Expired("client", "answer")]
        assert await c.answer(5.1, "s", "late") == (None, [Dropped("asker_gone")])
        await wait_until(lambda: a.got("proxy"))
        assert a.got("proxy") == [Deliver("proxy", "o")]
        assert b.got("client") == [Expired("client", "answer")]


async def test_a_reused_sid_on_another_node_replaces_the_earlier_poll(cluster):
    async with cluster(3) as (a, b, c):
        await a.wait(0.0, "s", "poll1")
        await b.wait(1.0, "s", "poll2")
        await wait_until(lambda: a.got("poll1"))
        assert a.got("poll1") == [Expired("poll1", "replaced")]
        assert Dropped("no_waiter") not in (await c.ask(1.0, "client"))[1]
        await wait_until(lambda: b.got("poll2"))
        assert b.got("poll2") == [Deliver("poll2", "o")]
        assert (await c.ask(1.0, "client2"))[1] == [Dropped("no_waiter")]


async def test_the_hold_race_across_nodes_gives_one_offer_and_no_no_match(cluster):
    async with cluster(3, hold_timeout=10.0) as (a, b, _c):
        for i in range(20):
            await a.wait(0.0, f"s{i}", f"proxy{i}")
        for i in range(20):
            await b.ask(9.99, f"client{i}", offer=f"offer{i}")
        await a.advance(10.0)  # every hold ends now: some offers are still on the bus
        await wait_until(lambda: all(a.got(f"proxy{i}") for i in range(20)))
        got = [a.got(f"proxy{i}") for i in range(20)]
        assert all(len(g) == 1 and type(g[0]) is Deliver for g in got)
        assert sorted(g[0].payload for g in got) == sorted(f"offer{i}" for i in range(20))


async def test_many_rendezvous_spread_over_three_nodes(cluster):
    """Proxies poll random nodes, clients ask random nodes, proxies answer through random nodes:
    no poll gets two offers, every answer reaches exactly its own client."""
    rng = random.Random(7)
    async with cluster(3) as nodes:
        proxies = {}
        for i in range(60):
            node = rng.choice(nodes)
            await node.wait(0.0, f"s{i}", f"proxy{i}", pool=rng.choice(["restricted", "unrestricted"]), order=rng.randrange(5),
                            info=(f"s{i}",))
            proxies[f"proxy{i}"] = node
        clients: dict[str, tuple] = {}

        async def ask(i: int) -> None:
            node = rng.choice(nodes)
            info, _ = await node.ask(0.0, f"client{i}", ("restricted", "unrestricted"), offer=f"offer{i}")
            clients[f"client{i}"] = (node, info)

        async with anyio.create_task_group() as tg:
            for i in range(90):
                tg.start_soon(ask, i)
        matched = {name: (node, info) for name, (node, info) in clients.items() if info is not None}
        assert len(matched) == 60
        await wait_until(lambda: all(node.got(proxy) for proxy, node in proxies.items()))
        offers = {}
        for proxy, node in proxies.items():
            (delivered,) = node.got(proxy)  # one offer per poll
            offers[proxy] = delivered.payload
        assert sorted(offers.values()) == sorted(f"offer{name[6:]}" for name in matched)
        for proxy, offer in offers.items():  # each proxy answers its offer, through any node
            info, _ = await rng.choice(nodes).answer(0.5, "s" + proxy[5:], "answer to " + offer)
            assert info == ("s" + proxy[5:],)
        await wait_until(lambda: all(node.got(name) for name, (node, _) in matched.items()))
        for name, (node, _) in matched.items():
            assert node.got(name) == [Deliver(name, f"answer to offer{name[6:]}")]
        for node in nodes:
            assert await node.store.known() == []
