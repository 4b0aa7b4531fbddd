"""One contract for the overlay's tree-root routing, run against every backend: the rules of
``tests/unit/test_routing.py`` through the store interface, on ``memory`` and on ``redis`` (a
real redis-server), then the same overlay spread over several nodes (the root on A, joiners on
B and C; messages both ways, their order, the root policies across nodes). With ``memory`` the
"nodes" are one store, which is what one node is. Then what only a cluster has: a node's death
(its roots leave, ``failover`` picks the newest live one), a fenced node, a clean leave and
the keys left behind."""

from __future__ import annotations

import contextlib
import re
from typing import Any, AsyncIterator

import anyio
import pytest

from rendezvous.backends import create_backend
from rendezvous.core import Answered, Close, Deliver, Dropped, Keepalive, RootPolicy
from rendezvous.testing import FakeClock, wait_until

from .redis_fixture import RedisServer, running_store_nodes

pytestmark = pytest.mark.anyio
HEX32 = re.compile(r"[0-9a-f]{32}")
TTL = 0.5


class RouteNode:
    """A routing store as one node sees it: what its calls returned and what it was told later
    (timers, other nodes), in order, in ``seen``."""

    def __init__(self, store: Any, backend: Any = None) -> None:
        self.store = store
        self.backend = backend
        self.seen: list = []
        self.scopes: list[anyio.CancelScope] = []

        async def record(effects: Any) -> None:
            self.seen.extend(effects)

        store.attach(record)

    async def join(self, now: float, party: str) -> str:
        endpoint_id, effects = await self.store.open_endpoint(now, party)
        assert endpoint_id is not None and effects == [], effects
        return endpoint_id

    async def root(self, now: float, party: str) -> list:
        effects = await self.store.open_root(now, party)
        self.seen += effects
        return effects

    async def closed(self, now: float, party: str) -> list:
        return await self.store.closed(now, party)

    async def route(self, now: float, sender: str, destination: Any, payload: Any) -> list:
        effects = await self.store.route(now, sender, destination, payload)
        self.seen += effects
        return effects

    async def unstamped(self, now: float, sender: str, payload: Any) -> list:
        effects = await self.store.route_unstamped(now, sender, payload)
        self.seen += effects
        return effects

    async def advance(self, now: float) -> list:
        effects = await self.store.advance(now)
        self.seen += effects
        return effects

    def stop(self) -> None:
        """The node stops (a clean leave)."""
        for scope in self.scopes:
            scope.cancel()

    def got(self, party: str) -> list:
        """``(payload, origin)`` of every message that reached ``party``."""
        return [(e.payload, e.origin) for e in self.seen if type(e) is Deliver and e.to == party]

    def closes(self, party: str) -> list:
        return [(e.code, e.reason) for e in self.seen if type(e) is Close and e.party == party]


@contextlib.asynccontextmanager
async def redis_route_nodes(url: str, prefix: str, n: int, *, node_ttl: float = 3.0, **options: Any) -> AsyncIterator[list]:
    """``n`` redis backends (nodes), each with a routing store (running) of one overlay."""
    options.setdefault("clock", FakeClock(0.0))
    async with running_store_nodes(url, prefix, n, lambda backend: RouteNode(backend.routing("ov:test", **options), backend),
                                   node_ttl=node_ttl) as nodes:
        await wait_until(lambda: all(node.store._slot_live() for node in nodes))
        yield nodes


@pytest.fixture(params=["memory", "redis"])
def cluster(request):
    """``async with cluster(n, ...) as nodes``: n nodes of one backend sharing one overlay."""
    kind = request.param

    @contextlib.asynccontextmanager
    async def make(n: int = 1, *, endpoint_lifetime: float = 30.0, keepalive_interval: float = 15.0,
                   root_policy: RootPolicy = RootPolicy.LATEST, max_endpoints: int | None = None,
                   clock: Any = None) -> AsyncIterator[list[RouteNode]]:
        options = dict(endpoint_lifetime=endpoint_lifetime, keepalive_interval=keepalive_interval,
                       root_policy=root_policy, max_endpoints=max_endpoints, clock=clock or FakeClock(0.0))
        if kind == "memory":
            yield [RouteNode(create_backend("memory").routing("ov:test", **options))] * n
            return
        url = request.getfixturevalue("redis_server").url
        async with redis_route_nodes(url, request.getfixturevalue("redis_prefix"), n, **options) as nodes:
            yield nodes

    make.kind = kind
    return make


async def settled(*nodes: RouteNode, root: Any) -> None:
    """Until every node routes to ``root`` (a root's name, or None): the party itself on the node
    that holds it, a stand-in naming that node and root on the others."""
    def expected(node: RouteNode) -> Any:
        if root is None or node.backend is None:
            return root
        for holder in nodes:
            token = holder.store._root_tokens.get(root)
            if token is not None:
                if holder is node:
                    return root
                return (holder.backend.node_id_b, holder.backend.epoch_b, token)
        return "(not held by any of these nodes)"

    def agree() -> bool:
        for node in nodes:
            current = node.store.router.current_root
            if current is not None and type(current) is not str:
                current = (current.node, current.epoch, current.token)
            if current != expected(node):
                return False
        return True

    await wait_until(agree, timeout=5)


# -- the rules of one node ------------------------------------------------------------------------
async def test_endpoint_gets_id_and_messages_go_to_root(cluster):
    async with cluster() as (n,):
        eid = await n.join(0.0, "p1")
        assert HEX32.fullmatch(eid)
        assert await n.root(0.0, "root") == []
        assert await n.route(1.0, "p1", None, {"x": 1}) == [Deliver("root", {"x": 1}, eid)]


async def test_no_root_drops_and_later_root_does_not_get_old_messages(cluster):
    async with cluster() as (n,):
        await n.join(0.0, "p1")
        assert await n.route(0.0, "p1", None, "m") == [Dropped("no_root")]
        await n.root(1.0, "root")
        assert await n.advance(2.0) == []


async def test_destination_routing_self_echo_and_unknown(cluster):
    async with cluster() as (n,):
        a = await n.join(0.0, "a")
        b = await n.join(0.0, "b")
        assert a != b
        assert await n.route(0.0, "a", b, "m") == [Deliver("b", "m", a)]
        assert await n.route(0.0, "a", a, "m") == [Deliver("a", "m", a)]
        for unknown in ("hasOwnProperty", "f" * 32, a[:31]):
            assert await n.route(0.0, "a", unknown, "m") == [Dropped("unknown_destination")]


async def test_closed_endpoint_is_forgotten(cluster):
    async with cluster() as (n,):
        await n.join(0.0, "a")
        b = await n.join(0.0, "b")
        await n.closed(1.0, "b")
        assert await n.route(1.0, "a", b, "m") == [Dropped("unknown_destination")]
        assert n.store.router.endpoint_count == 1
        assert await n.route(1.0, "b", None, "m") == [Dropped("unknown_sender")]


async def test_endpoint_lifetime_from_connect_not_activity(cluster):
    async with cluster(endpoint_lifetime=30.0) as (n,):
        await n.join(0.0, "a")
        await n.join(10.0, "b")
        assert n.store.next_deadline() == 30.0
        await n.route(29.0, "a", None, "activity does not refresh")
        assert await n.advance(29.9) == []
        assert await n.advance(30.0) == [Dropped("timeout"), Close("a", 1000, "prospect lifetime over")]
        assert n.store.next_deadline() == 40.0
        await n.closed(30.0, "b")
        assert n.store.next_deadline() is None


async def test_roots_get_keepalives_every_interval_and_never_time_out(cluster):
    async with cluster(keepalive_interval=15.0) as (n,):
        await n.root(0.0, "root")
        assert n.store.next_deadline() == 15.0
        assert await n.advance(15.0) == [Keepalive("root")]
        assert await n.advance(29.0) == []
        assert await n.advance(1000.0) == [Keepalive("root")]
        assert n.store.next_deadline() == 1005.0
        await n.closed(1000.0, "root")
        assert n.store.next_deadline() is None


async def test_latest_root_wins_and_no_fallback_when_it_closes(cluster):
    async with cluster() as (n,):
        eid = await n.join(0.0, "p")
        await n.root(0.0, "old")
        await n.root(1.0, "new")
        assert await n.route(2.0, "p", None, "m") == [Deliver("new", "m", eid)]
        assert {e.to for e in await n.advance(16.0)} == {"old", "new"}  # the old one still gets heartbeats
        await n.closed(3.0, "new")
        assert await n.route(3.0, "p", None, "m") == [Dropped("no_root")]


async def test_failover_root_policy_falls_back_to_open_root(cluster):
    async with cluster(root_policy=RootPolicy.FAILOVER) as (n,):
        eid = await n.join(0.0, "p")
        for root in ("r1", "r2", "r3"):
            await n.root(0.0, root)
        await n.closed(1.0, "r3")
        assert await n.route(1.0, "p", None, "m") == [Deliver("r2", "m", eid)]
        await n.closed(1.0, "r1")
        assert await n.route(1.0, "p", None, "m") == [Deliver("r2", "m", eid)]
        await n.closed(1.0, "r2")
        assert await n.route(1.0, "p", None, "m") == [Dropped("no_root")]


async def test_reject_root_policy_closes_second_root(cluster):
    async with cluster(root_policy=RootPolicy.REJECT) as (n,):
        assert await n.root(0.0, "r1") == []
        assert await n.root(0.0, "r2") == [Dropped("root_rejected"), Close("r2", 1008, "root already connected")]
        await n.closed(0.0, "r2")  # the rejected one's close must not unseat the first
        assert n.store.router.root_connected
        await n.closed(0.0, "r1")
        assert await n.root(0.0, "r3") == []


async def test_max_endpoints_bound(cluster):
    async with cluster(max_endpoints=2) as (n,):
        await n.join(0.0, "a")
        await n.join(0.0, "b")
        assert await n.store.open_endpoint(0.0, "c") == (None, [Dropped("endpoints_full"), Close("c", 1013, "too many prospects")])
        await n.closed(0.0, "a")
        assert (await n.store.open_endpoint(0.0, "c"))[0] is not None


async def test_answer_latency_reported_once_when_joiner_first_hears_back(cluster):
    async with cluster() as (n,):
        j = await n.join(0.0, "joiner")
        a = await n.join(0.0, "answerer")
        await n.root(0.0, "root")
        await n.route(1.0, "joiner", None, "offer")
        assert await n.route(1.25, "answerer", j, "answer") == [Deliver("joiner", "answer", a), Answered(0.25)]
        assert await n.route(1.5, "answerer", j, "candidate") == [Deliver("joiner", "candidate", a)]


async def test_unstamped_primitives_go_to_root_without_origin(cluster):
    async with cluster() as (n,):
        await n.join(0.0, "p")
        assert await n.unstamped(0.0, "p", 5) == [Dropped("no_root")]
        await n.root(0.0, "root")
        assert await n.unstamped(0.0, "p", 5) == [Deliver("root", 5, None)]


# -- across nodes ------------------------------------------------------------------------------------
async def test_root_on_a_joiners_on_b_and_c_messages_both_ways(cluster):
    clock = FakeClock(0.0)
    async with cluster(3, clock=clock) as (a, b, c):
        await a.root(0.0, "root")
        await settled(a, b, c, root="root")
        j = await b.join(0.0, "joiner")
        x = await c.join(0.0, "answerer")
        assert (await b.route(1.0, "joiner", None, {"type": "offer"}))[:1] != [Dropped("no_root")]
        await c.unstamped(1.0, "answerer", 7)
        await wait_until(lambda: len(a.got("root")) == 2)
        assert a.got("root") == [({"type": "offer"}, j), (7, None)]
        # the answer goes by destination to another node, and the joiner's node measures the latency
        clock.now = 1.5
        assert await c.route(1.5, "answerer", j, {"type": "answer"}) in ([], [Deliver("joiner", {"type": "answer"}, x),
                                                                           Answered(0.5)])
        await wait_until(lambda: b.got("joiner"))
        assert b.got("joiner") == [({"type": "answer"}, x)]
        assert Answered(0.5) in b.seen
        await b.route(2.0, "joiner", x, "trickle")
        await wait_until(lambda: c.got("answerer"))
        assert c.got("answerer") == [("trickle", j)]


async def test_order_per_sender_and_destination_is_kept_across_nodes(cluster):
    async with cluster(2) as (a, b):
        await a.root(0.0, "root")
        x = await a.join(0.0, "x")
        await settled(a, b, root="root")
        senders = [await b.join(0.0, f"s{i}") for i in range(3)]

        async def send(i: int) -> None:
            for k in range(100):
                await b.route(0.0, f"s{i}", None, {"to": "root", "k": k})
                await b.route(0.0, f"s{i}", x, {"to": "x", "k": k})

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(send, i)
        await wait_until(lambda: len(a.got("root")) == 300 and len(a.got("x")) == 300)
        for who in ("root", "x"):
            for i, sender in enumerate(senders):
                assert [p["k"] for p, origin in a.got(who) if origin == sender] == list(range(100)), (who, i)


async def test_unknown_and_closed_destinations_on_other_nodes_are_dropped_silently(cluster):
    async with cluster(2) as (a, b):
        p = await a.join(0.0, "p")
        gone = await b.join(0.0, "gone")
        await b.closed(0.0, "gone")
        await a.route(0.0, "p", gone, "x")  # dropped where the id was held
        await wait_until(lambda: Dropped("unknown_destination") in b.seen)
        held = {p[:4], gone[:4]}
        nobody = next(f"{k:04x}" for k in range(1 << 16) if f"{k:04x}" not in held) + gone[4:]  # a slot no node holds
        assert await a.route(0.0, "p", nobody, "x") == [Dropped("unknown_destination")]
        assert [e for e in a.seen + b.seen if type(e) is Deliver] == []


async def test_latest_policy_across_nodes(cluster):
    async with cluster(3) as (a, b, c):
        j = await c.join(0.0, "p")
        await a.root(0.0, "old")
        await settled(a, b, c, root="old")
        await b.root(1.0, "new")
        await settled(a, b, c, root="new")
        await c.route(2.0, "p", None, "m")
        await wait_until(lambda: b.got("new"))
        assert b.got("new") == [("m", j)] and a.got("old") == []
        await b.closed(3.0, "new")  # the newest closes: no fallback to the older one on A
        await settled(a, b, c, root=None)
        assert await c.route(3.0, "p", None, "m2") == [Dropped("no_root")]
        assert {e.to for e in await a.advance(16.0)} == {"old"}  # still heartbeated


async def test_failover_policy_across_nodes(cluster):
    async with cluster(3, root_policy=RootPolicy.FAILOVER) as (a, b, c):
        j = await b.join(0.0, "p")
        await a.root(0.0, "r1")
        await settled(a, b, c, root="r1")
        await c.root(0.0, "r2")
        await settled(a, b, c, root="r2")
        await a.root(0.0, "r3")
        await settled(a, b, c, root="r3")
        await a.closed(1.0, "r3")  # the newest open one, on another node, takes over
        await settled(a, b, c, root="r2")
        await b.route(1.0, "p", None, "m")
        await wait_until(lambda: c.got("r2"))
        assert c.got("r2") == [("m", j)]
        await a.closed(1.0, "r1")
        await c.closed(1.0, "r2")
        await settled(a, b, c, root=None)
        assert await b.route(1.0, "p", None, "m") == [Dropped("no_root")]


async def test_reject_policy_across_nodes(cluster):
    async with cluster(2, root_policy=RootPolicy.REJECT) as (a, b):
        assert await a.root(0.0, "r1") == []
        assert await b.root(0.0, "r2") == [Dropped("root_rejected"), Close("r2", 1008, "root already connected")]
        await b.closed(0.0, "r2")
        await a.closed(0.0, "r1")
        await settled(a, b, root=None)
        assert await b.root(0.0, "r3") == []
        assert await a.root(0.0, "r4") == [Dropped("root_rejected"), Close("r4", 1008, "root already connected")]


async def test_many_joiners_on_random_nodes_reach_the_root_and_each_other(cluster):
    import random

    rng = random.Random(7)
    async with cluster(3) as nodes:
        await nodes[0].root(0.0, "root")
        await settled(*nodes, root="root")
        where = {}
        for i in range(60):
            node = rng.choice(nodes)
            where[f"j{i}"] = (node, await node.join(0.0, f"j{i}"))
        for name, (node, _) in where.items():
            await node.route(0.0, name, None, {"from": name})
        await wait_until(lambda: len(nodes[0].got("root")) == 60)
        assert sorted(origin for _, origin in nodes[0].got("root")) == sorted(eid for _, eid in where.values())
        for name, (node, eid) in where.items():  # each answers the next one, wherever it is
            peer = f"j{(int(name[1:]) + 1) % 60}"
            await node.route(0.0, name, where[peer][1], {"to": peer})
        await wait_until(lambda: all(n.got(peer) for peer, (n, _) in where.items()))
        for peer, (n, _) in where.items():
            assert [p["to"] for p, _ in n.got(peer)] == [peer]


# -- what only a cluster has ----------------------------------------------------------------------------
def keys(server: RedisServer, prefix: str) -> list[bytes]:
    reply = server.command("KEYS", prefix + ":*")
    return sorted(line for line in reply.split(b"\r\n")[1:] if line and not line.startswith(b"$"))


async def test_ids_name_their_node_and_the_slots_are_distinct(redis_server, redis_prefix):
    async with redis_route_nodes(redis_server.url, redis_prefix, 3, endpoint_lifetime=30.0, keepalive_interval=15.0) as nodes:
        ids = [[await node.join(0.0, f"{i}-{k}") for k in range(20)] for i, node in enumerate(nodes)]
        slots = [{eid[:4] for eid in node_ids} for node_ids in ids]
        assert all(len(s) == 1 for s in slots) and len(set.union(*slots)) == 3
        assert all(HEX32.fullmatch(eid) for node_ids in ids for eid in node_ids)
        assert len({eid for node_ids in ids for eid in node_ids}) == 60


async def test_a_dead_nodes_roots_leave_and_failover_picks_the_newest_live_one(redis_server, redis_prefix):
    options = dict(endpoint_lifetime=30.0, keepalive_interval=15.0, root_policy=RootPolicy.FAILOVER)
    async with redis_route_nodes(redis_server.url, redis_prefix, 3, node_ttl=TTL, **options) as (a, b, c):
        j = await c.join(0.0, "p")
        await b.root(0.0, "older")
        await a.root(0.0, "newest")
        await settled(a, b, c, root="newest")
        a.backend.suspend_heartbeat()  # A stalls: its key runs out, and with it its root
        await settled(b, c, root="older")
        await c.route(1.0, "p", None, "after")
        await wait_until(lambda: b.got("older"))
        assert b.got("older") == [("after", j)]


async def test_a_dead_nodes_latest_root_leaves_no_root(redis_server, redis_prefix):
    options = dict(endpoint_lifetime=30.0, keepalive_interval=15.0, root_policy=RootPolicy.LATEST)
    async with redis_route_nodes(redis_server.url, redis_prefix, 2, node_ttl=TTL, **options) as (a, b):
        await b.join(0.0, "p")
        await b.root(0.0, "older")
        await a.root(0.0, "newest")
        await settled(a, b, root="newest")
        a.backend.suspend_heartbeat()
        await settled(b, root=None)
        assert await b.route(1.0, "p", None, "m") == [Dropped("no_root")]


async def test_reject_allows_a_new_root_once_the_old_ones_node_is_dead(redis_server, redis_prefix):
    options = dict(endpoint_lifetime=30.0, keepalive_interval=15.0, root_policy=RootPolicy.REJECT)
    async with redis_route_nodes(redis_server.url, redis_prefix, 2, node_ttl=TTL, **options) as (a, b):
        await a.root(0.0, "r1")
        assert (await b.root(0.0, "r2"))[0] == Dropped("root_rejected")
        a.backend.suspend_heartbeat()
        await settled(b, root=None)
        assert await b.root(0.0, "r3") == []


async def test_a_fenced_node_closes_what_it_held_and_serves_again(redis_server, redis_prefix):
    options = dict(endpoint_lifetime=30.0, keepalive_interval=15.0, root_policy=RootPolicy.FAILOVER)
    async with redis_route_nodes(redis_server.url, redis_prefix, 2, node_ttl=TTL, **options) as (a, b):
        old = await a.join(0.0, "p")
        await a.root(0.0, "root-a")
        await b.root(0.0, "root-b")
        await settled(a, b, root="root-b")
        a.backend.suspend_heartbeat()
        await wait_until(lambda: redis_server.command("EXISTS", f"{redis_prefix}:node:{a.backend.node_id}") == b":0\r\n",
                         timeout=3)
        a.backend.resume_heartbeat()
        await wait_until(lambda: a.closes("p") and a.closes("root-a"), timeout=3)
        assert a.closes("p") == a.closes("root-a") == [(1012, "service restart")]
        await a.closed(1.0, "p")
        await a.closed(1.0, "root-a")
        await wait_until(lambda: a.backend.ready and a.store._slot_live(), timeout=5)
        await settled(a, b, root="root-b")
        new = await a.join(2.0, "p2")  # under its new epoch A serves again
        await a.route(2.0, "p2", None, "back")
        await wait_until(lambda: b.got("root-b"))
        assert b.got("root-b") == [("back", new)]
        q = await b.join(2.0, "q")
        await b.route(2.0, "q", old, "to the old life")  # its id died with the fence: dropped
        await b.route(2.0, "q", new, "to the new one")
        await wait_until(lambda: a.got("p2"))
        assert a.got("p2") == [("to the new one", q)] and a.got("p") == []


async def test_no_keys_are_left_after_every_node_leaves(redis_server, redis_prefix):
    options = dict(endpoint_lifetime=30.0, keepalive_interval=15.0, root_policy=RootPolicy.FAILOVER)
    async with redis_route_nodes(redis_server.url, redis_prefix, 3, node_ttl=TTL, **options) as (a, b, c):
        await a.root(0.0, "r-a")
        await b.root(0.0, "r-b")
        await settled(a, b, c, root="r-b")
        j = await c.join(0.0, "p")
        assert keys(redis_server, redis_prefix)
        b.stop()  # a clean stop: its root goes at once, the older one takes over
        await settled(a, c, root="r-a")
        await c.route(0.0, "p", None, "m")
        await wait_until(lambda: a.got("r-a"))
        assert a.got("r-a") == [("m", j)]
        a.stop()
        c.stop()
        await wait_until(lambda: keys(redis_server, redis_prefix) == [], timeout=3)


async def test_a_killed_nodes_keys_go_by_themselves(redis_server, redis_prefix):
    """Every node stops beating (as after kill -9 of all of them): nothing is left after 2 × node_ttl."""
    options = dict(endpoint_lifetime=30.0, keepalive_interval=15.0)
    async with redis_route_nodes(redis_server.url, redis_prefix, 2, node_ttl=TTL, **options) as (a, b):
        await a.root(0.0, "r")
        await b.join(0.0, "p")
        for node in (a, b):
            node.backend.suspend_heartbeat()
        await wait_until(lambda: keys(redis_server, redis_prefix) == [], timeout=4 * TTL + 2)


async def test_a_node_that_cannot_reach_redis_refuses_new_parties_and_drops_cross_node_messages(tmp_path):
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        options = dict(endpoint_lifetime=30.0, keepalive_interval=15.0)
        async with redis_route_nodes(server.url, "r", 2, node_ttl=TTL, **options) as (a, b):
            p = await a.join(0.0, "p")
            q = await b.join(0.0, "q")
            await a.root(0.0, "root")
            await settled(a, b, root="root")
            server.stop()
            await wait_until(lambda: not a.backend.ready and not b.backend.ready)
            assert await b.route(0.0, "q", p, "x") == [Dropped("unavailable")]
            assert await b.route(0.0, "q", None, "x") == [Dropped("unavailable")]
            assert await a.route(0.0, "p", None, "local") == [Deliver("root", "local", p)]  # local routing goes on
            assert await a.store.open_root(0.0, "r2") == [Dropped("unavailable"), Close("r2", 1013, "backend unavailable")]
            server.start()  # empty: every node is fenced once, closes what it held, and serves again
            await wait_until(lambda: a.closes("root") and b.closes("q"), timeout=5)
            for node, party in ((a, "p"), (a, "root"), (b, "q")):
                await node.closed(1.0, party)
            await wait_until(lambda: a.backend.ready and b.backend.ready and a.store._slot_live() and b.store._slot_live(),
                             timeout=5)
            assert await b.root(1.0, "root2") == []
            await settled(a, b, root="root2")
            p2 = await a.join(1.0, "p2")
            await a.route(1.0, "p2", None, "again")
            await wait_until(lambda: b.got("root2"))
            assert b.got("root2") == [("again", p2)]
            assert q not in (p2, p)
    finally:
        server.stop()


async def test_a_lost_root_event_is_made_up_at_the_next_beat(redis_server, redis_prefix):
    options = {"endpoint_lifetime": 30.0, "keepalive_interval": 15.0}
    async with redis_route_nodes(redis_server.url, redis_prefix, 2, node_ttl=TTL, **options) as (a, b):
        await a.root(0.0, "r1")
        await settled(a, b, root="r1")
        hear = b.store.on_message
        b.store.on_message = lambda kind, token, payload: [] if kind == b"e" else hear(kind, token, payload)
        await a.root(0.0, "r2")  # B never hears of it on the bus ...
        await settled(b, a, root="r2")  # ... and knows within a beat (node_ttl / 3)
        b.store.on_message = hear


async def test_a_receiver_that_does_not_read_holds_up_only_its_own_messages(redis_server, redis_prefix):
    options = {"endpoint_lifetime": 30.0, "keepalive_interval": 15.0}
    async with redis_route_nodes(redis_server.url, redis_prefix, 2, **options) as (a, b):
        stuck = anyio.Event()
        record = b.store.execute

        async def execute(effects):  # sending to "slow" blocks, as a full socket buffer does
            if any(type(e) is Deliver and e.to == "slow" for e in effects):
                await stuck.wait()
            await record(effects)

        b.store.attach(execute)
        await a.join(0.0, "sender")
        slow = await b.join(0.0, "slow")
        fast = await b.join(0.0, "fast")
        for k in range(3):
            await a.route(0.0, "sender", slow, k)
            await a.route(0.0, "sender", fast, k)
        await wait_until(lambda: len(b.got("fast")) == 3)
        assert [p for p, _ in b.got("fast")] == [0, 1, 2] and b.got("slow") == []
        stuck.set()
        await wait_until(lambda: len(b.got("slow")) == 3)
        assert [p for p, _ in b.got("slow")] == [0, 1, 2]


async def test_a_root_whose_handler_is_cancelled_while_opening_is_closed_again(redis_server, redis_prefix):
    options = {"endpoint_lifetime": 30.0, "keepalive_interval": 15.0, "root_policy": RootPolicy.REJECT}
    async with redis_route_nodes(redis_server.url, redis_prefix, 2, **options) as (a, b):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await a.store.open_root(0.0, "cancelled")  # its script runs; its reply finds nobody waiting
        assert not a.store.router.is_root("cancelled")

        async def opens() -> bool:
            effects = await b.store.open_root(0.0, "r2")
            return effects == []

        with anyio.fail_after(5):
            while not await opens():  # the cancelled one's record goes: a root may open again
                await anyio.sleep(0.02)
