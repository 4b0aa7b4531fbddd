"""The overlay on the redis backend: several nodes share one overlay. In-process servers on one
real redis-server, reached over real WebSockets (the root on node A, joiners on node B; the
frames and their stamping are the ones a single node sends), then ``rendezvous serve``
processes for what needs a process to die (kill -9 of the node holding the root)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from rendezvous.errors import ConfigError
from rendezvous.testing import assert_silent, closed_code, recv_frame, recv_json, serve, wait_until, ws_connect

from .conftest import SECRET
from .redis_fixture import RedisServer
from .test_snowflake_chaos import Node as _ChaosNode
from .test_snowflake_chaos import _free_port, all_ready, stopped_after

pytestmark = pytest.mark.anyio
HEX32 = re.compile(r"[0-9a-f]{32}")
TTL = 1.0


def redis_settings(url: str, prefix: str, **more: Any) -> dict:
    return {"backend": "redis", "backend_url": url, "backend_prefix": prefix, "node_ttl": TTL, **more}


@contextlib.asynccontextmanager
async def cluster(url: str, prefix: str, n: int = 2, **settings: Any) -> AsyncIterator[list]:
    """``n`` overlay servers (one secret) on ``url``'s Redis under ``prefix``."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for _ in range(n):
            own = {"secret": SECRET, **settings}
            nodes.append(await stack.enter_async_context(serve("overlay", own, server=redis_settings(url, prefix))))
        yield nodes


def root_url(srv: Any) -> str:
    return f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root"


def router(srv: Any) -> Any:
    return srv.runtimes["overlay"].router


async def knows_root(*nodes: Any, present: bool = True) -> None:
    """Until every node knows of a current root (or of none)."""
    await wait_until(lambda: all((router(n).current_root is not None) == present for n in nodes), timeout=5)


def keys(server: RedisServer, prefix: str) -> list[bytes]:
    reply = server.command("KEYS", prefix + ":*")
    return sorted(line for line in reply.split(b"\r\n")[1:] if line and not line.startswith(b"$"))


async def test_root_on_a_joiners_on_b_frames_both_ways_stamped_as_one_node_does(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix) as (a, b), ws_connect(root_url(a)) as root:
        await knows_root(a, b)
        async with ws_connect(b.ws_url + "/join") as joiner, ws_connect(a.ws_url + "/join") as answerer:
            # the joiner's offer crosses to the root, stamped with the joiner's id, keys in order
            await joiner.send('{"origin":"spoofed","destination":null,"signal":{"type":"offer","sdp":"v=0"},"x":1e999}')
            frame = await recv_frame(root)
            joiner_id = json.loads(frame)["origin"]
            assert frame == ('{"origin":"%s","destination":null,"signal":{"type":"offer","sdp":"v=0"},"x":null}' % joiner_id)
            assert HEX32.fullmatch(joiner_id)
            await answerer.send('{"n":0}')
            answerer_id = (await recv_json(root))["origin"]
            assert joiner_id[:4] != answerer_id[:4]  # ids name their node
            # the root's answer (through its own /join socket on A) crosses back to the joiner on B
            await answerer.send(json.dumps({"destination": joiner_id, "signal": {"type": "answer"}}))
            assert await recv_frame(joiner) == ('{"destination":"%s","signal":{"type":"answer"},"origin":"%s"}'
                                                % (joiner_id, answerer_id))
            await joiner.send(json.dumps({"destination": answerer_id, "signal": "trickle"}))
            assert await recv_json(answerer) == {"destination": answerer_id, "signal": "trickle", "origin": joiner_id}
            # primitives and arrays go to the root verbatim, across nodes too
            await joiner.send("[1,2]")
            assert await recv_frame(root) == "[1,2]"
            # unknown ids (on no node, and a closed one on A) are dropped silently; the sender stays
            async with ws_connect(a.ws_url + "/join") as gone:
                await gone.send("{}")
                gone_id = (await recv_json(root))["origin"]
            for dest in (gone_id, "f" * 32, "hasOwnProperty"):
                await joiner.send(json.dumps({"destination": dest, "x": 1}))
            await assert_silent(answerer, 0.2)
            await assert_silent(root, 0.1)
            await joiner.send('{"still":"open"}')
            assert (await recv_json(root))["still"] == "open"
        async with httpx.AsyncClient() as http:  # each node counts what it delivered
            text_a = (await http.get(a.url + "/metrics")).text
            text_b = (await http.get(b.url + "/metrics")).text
        assert 'rendezvous_overlay_routed_messages_total{to="root"} 5.0' in text_a
        assert 'rendezvous_overlay_routed_messages_total{to="prospect"} 1.0' in text_a  # the trickle
        assert 'rendezvous_overlay_routed_messages_total{to="prospect"} 1.0' in text_b  # the answer
        assert "rendezvous_overlay_join_answer_latency_seconds_count 1.0" in text_b  # measured where the joiner is
        assert "rendezvous_overlay_root_connected 1.0" in text_b  # B knows of A's root
        assert 'rendezvous_overlay_dropped_total{reason="unknown_destination"} 2.0' in text_b
        assert 'rendezvous_overlay_dropped_total{reason="unknown_destination"} 1.0' in text_a  # the closed id, dropped on A


async def test_order_per_sender_is_kept_across_nodes(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix) as (a, b), ws_connect(root_url(a)) as root:
        await knows_root(a, b)
        async with ws_connect(a.ws_url + "/join") as target:
            await target.send("{}")
            target_id = (await recv_json(root))["origin"]
            senders = [await ws_connect(b.ws_url + "/join").__aenter__() for _ in range(3)]
            try:
                for ws in senders:
                    for k in range(100):
                        await ws.send(json.dumps({"k": k}))
                        await ws.send(json.dumps({"destination": target_id, "k": k}))
                got_root: dict[str, list[int]] = {}
                for _ in range(300):
                    msg = await recv_json(root)
                    got_root.setdefault(msg["origin"], []).append(msg["k"])
                got_target: dict[str, list[int]] = {}
                for _ in range(300):
                    msg = await recv_json(target)
                    got_target.setdefault(msg["origin"], []).append(msg["k"])
                assert len(got_root) == 3 and all(ks == list(range(100)) for ks in got_root.values())
                assert got_target == got_root
            finally:
                for ws in senders:
                    await ws.close()


async def test_a_root_is_registered_before_its_handshake_is_out(redis_server, redis_prefix):
    """A join that follows the root's open, on another node, finds it: with Redis paused, the
    root's handshake waits for its registration (it used to complete first, and a join in that
    window was dropped as "no root")."""
    async with cluster(redis_server.url, redis_prefix) as (a, b):
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            with anyio.move_on_after(0.3) as pending:
                async with ws_connect(root_url(a)):
                    pass
            assert pending.cancelled_caught  # not open while Redis does not answer
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        await knows_root(a, b, present=False)  # the one that gave up is not left registered
        async with ws_connect(root_url(a)) as root, ws_connect(b.ws_url + "/join") as joiner:
            await joiner.send('{"n":1}')  # at once: no waiting for the nodes to know of the root
            assert (await recv_json(root))["n"] == 1


async def test_latest_policy_across_nodes(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, heartbeat_interval=0.3) as (a, b):
        async with ws_connect(b.ws_url + "/join") as p, ws_connect(root_url(a)) as old:
            await knows_root(a, b)
            async with ws_connect(root_url(b)) as new:
                await wait_until(lambda: router(a).current_root is not None and not router(a).is_root(router(a).current_root))
                await p.send('{"n":1}')
                assert (await recv_json(new))["n"] == 1
                assert await recv_frame(old, 2) == '"heartbeat"'  # the old one stays open, heartbeated by its node
            await knows_root(a, b, present=False)  # the newest closed: no fallback to the older one
            await p.send('{"n":2}')
            with anyio.move_on_after(0.4):
                assert await old.recv() == '"heartbeat"'  # only heartbeats, never the message


async def test_failover_policy_across_nodes(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, root_policy="failover") as (a, b):
        async with ws_connect(b.ws_url + "/join") as p, ws_connect(root_url(a)) as first:
            await knows_root(a, b)
            async with ws_connect(root_url(b)):
                await wait_until(lambda: router(b).is_root(router(b).current_root))
            await wait_until(lambda: router(a).is_root(router(a).current_root))  # back to the open one on A
            await p.send('{"n":2}')
            assert (await recv_json(first))["n"] == 2


async def test_reject_policy_across_nodes(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, root_policy="reject") as (a, b):
        async with ws_connect(root_url(a)) as first:
            await knows_root(a, b)
            async with ws_connect(root_url(b)) as second:
                assert await closed_code(second) == 1008
            async with ws_connect(b.ws_url + "/join") as p:
                await p.send('{"n":3}')
                assert (await recv_json(first))["n"] == 3
        await knows_root(a, b, present=False)
        async with ws_connect(root_url(b)) as third:  # the first one closed: a root may connect anywhere
            await assert_silent(third, 0.2)


async def test_heartbeats_and_lifetimes_stay_the_nodes_own(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, heartbeat_interval=0.4, timeout=0.6) as (a, b):
        async with ws_connect(root_url(a)) as root, ws_connect(b.ws_url + "/join") as p:
            await knows_root(a, b)
            start = anyio.current_time()
            await p.send('{"keep":"busy"}')
            assert (await recv_json(root))["keep"] == "busy"
            assert await recv_frame(root, 2) == '"heartbeat"'
            assert await closed_code(p, 2) == 1000
            assert 0.5 < anyio.current_time() - start < 1.3
            assert await recv_frame(root, 2) == '"heartbeat"'


async def test_seed_and_a_generated_secret_are_refused_on_redis_in_one_line(redis_server):
    server = redis_settings(redis_server.url, "x")
    with pytest.raises(ConfigError, match=r"^overlay.seed: seeded ids cannot work on the redis backend"):
        async with serve("overlay", {"secret": SECRET, "seed": 42}, server=server):
            pass
    with pytest.raises(ConfigError, match=r"^overlay.secret: the nodes of a cluster \(redis backend\) must share one"):
        async with serve("overlay", {}, server=server):
            pass
    result = subprocess.run([sys.executable, "-m", "rendezvous", "serve", "--profile", "overlay", "--port", "0",
                             "--secret", SECRET, "--seed", "42", "--backend", "redis", "--backend-url", redis_server.url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("rendezvous: error: overlay.seed: seeded ids cannot work on the redis backend (its ids name "
                             "the node that holds them); unset seed, or serve one node with backend = \"memory\"\n")


async def test_no_keys_are_left_after_everyone_leaves(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, 3, root_policy="failover") as nodes:
        async with ws_connect(root_url(nodes[0])) as root, ws_connect(nodes[1].ws_url + "/join") as p:
            await knows_root(*nodes)
            await p.send("{}")
            await recv_json(root)
            assert keys(redis_server, redis_prefix)
    await wait_until(lambda: keys(redis_server, redis_prefix) == [], timeout=3)


# -- nodes as processes --------------------------------------------------------------------------------
class Node(_ChaosNode):
    """One ``rendezvous serve --profile overlay --backend redis`` process."""

    def __init__(self, index: int, redis_url: str, prefix: str, log_dir: Any, policy: str) -> None:
        port = _free_port()
        self.start(f"n{index}", port, log_dir, redis_url, prefix, TTL, "info", [
            "--profile", "overlay", "--host", "127.0.0.1", "--port", str(port), "--secret", SECRET,
            "--root-policy", policy])


def processes(redis_url: str, prefix: str, n: int, log_dir: Any, policy: str) -> contextlib.AbstractContextManager[list[Node]]:
    return stopped_after([Node(i, redis_url, prefix, log_dir, policy) for i in range(n)])


async def reaches(sender: Any, root: Any, timeout: float = 5.0) -> float:
    """Send to the root every 50 ms until one arrives; the seconds it took."""
    start = anyio.current_time()
    with anyio.fail_after(timeout):
        k = 0
        while True:
            k += 1
            await sender.send(json.dumps({"probe": k}))
            with anyio.move_on_after(0.05):
                while True:
                    frame = await root.recv()
                    if frame != '"heartbeat"' and "probe" in json.loads(frame):
                        return anyio.current_time() - start


@pytest.mark.parametrize("policy", ["failover", "latest"])
async def test_kill_9_of_the_node_holding_the_root(redis_server, redis_prefix, tmp_path, policy):
    """Three nodes; the older root on A, the newest (current) on B, a joiner on C. B is killed
    with SIGKILL: within about node_ttl its root is gone for the whole cluster (failover: A's
    takes over; latest: no root, until a new one connects anywhere). Then every node stops
    cleanly, and nothing is left in Redis."""
    with processes(redis_server.url, redis_prefix, 3, tmp_path, policy) as (a, b, c):
        await all_ready([a, b, c])
        async with ws_connect(root_url(a)) as older, ws_connect(c.ws_url + "/join") as joiner:
            await reaches(joiner, older)
            async with ws_connect(root_url(b)) as newest:
                await reaches(joiner, newest)
                b.signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await newest.close()
                if policy == "failover":
                    took = await reaches(joiner, older, timeout=2 * TTL + 3)
                    assert took < 2 * TTL + 1.5, took
                else:
                    await anyio.sleep(2 * TTL + 1)  # B's key has run out and its root has left
                    await joiner.send('{"lost":1}')
                    with anyio.move_on_after(0.5):
                        while True:
                            # Never the message. (A probe sent while B's root was becoming current
                            # may have reached A's root before the change did: that one may come.)
                            assert "lost" not in await older.recv()
                    async with ws_connect(root_url(c)) as fresh:
                        await reaches(joiner, fresh)
            # B's slot and root are gone from Redis
            slots = redis_server.command("HVALS", f"{redis_prefix}:{{ov:{_digest()}}}:slots")
            assert b"n1" not in slots and b"n0" in slots and b"n2" in slots
        for node in (a, c):
            node.stop()
        await wait_until(lambda: keys(redis_server, redis_prefix) == [], timeout=2 * TTL + 2)


def _digest() -> str:
    import hashlib

    return hashlib.sha256(SECRET.encode()).hexdigest()[:16]


async def test_chaos_order_kept_nothing_misdelivered(redis_server, redis_prefix, tmp_path):
    """Three node processes, ``failover``: the older root on n0, the current one on n1, four joiners
    on each node, each sending numbered messages to the root and to a partner on another node while
    Redis's Pub/Sub connections are killed and then n1 is killed with SIGKILL. Checked: every message
    reaches only the receiver it names, stamped with its sender's id, in the order sent (messages
    may be lost while a bus reconnects, never reordered or duplicated); after the kill the older
    root takes over; once every node has stopped, no key is left."""
    with processes(redis_server.url, redis_prefix, 3, tmp_path, "failover") as nodes:
        await all_ready(nodes)
        n0, n1, n2 = nodes
        got: dict[str, list[dict]] = {}  # receiver name -> messages, in arrival order

        async def listen(name: str, ws: Any) -> None:
            with contextlib.suppress(Exception):
                async for frame in ws:
                    if frame != '"heartbeat"':
                        got.setdefault(name, []).append(json.loads(frame))

        async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
            older = await stack.enter_async_context(ws_connect(root_url(n0)))
            probe = await stack.enter_async_context(ws_connect(n2.ws_url + "/join"))
            await reaches(probe, older)
            newest = await stack.enter_async_context(ws_connect(root_url(n1)))
            await reaches(probe, newest)
            joiners: dict[str, Any] = {}
            ids: dict[str, str] = {}
            for i in range(12):
                node = nodes[i % 3]
                ws = joiners[f"j{i}"] = await stack.enter_async_context(ws_connect(node.ws_url + "/join"))
                await ws.send(json.dumps({"hello": f"j{i}"}))
                while True:
                    msg = json.loads(await recv_frame(newest))
                    if msg.get("hello") == f"j{i}":
                        ids[f"j{i}"] = msg["origin"]
                        break
            for name, ws in joiners.items():
                tg.start_soon(listen, name, ws)
            tg.start_soon(listen, "older", older)
            tg.start_soon(listen, "newest", newest)
            partner = {f"j{i}": f"j{(i + 1) % 12}" for i in range(12)}  # i+1 is always on another node
            sending = True

            async def send(name: str) -> None:
                k = 0
                with contextlib.suppress(Exception):
                    while sending:
                        k += 1
                        await joiners[name].send(json.dumps({"from": name, "k": k, "to": "root"}))
                        await joiners[name].send(json.dumps({"destination": ids[partner[name]], "from": name, "k": k,
                                                             "to": partner[name]}))
                        await anyio.sleep(0.02)

            for name in joiners:
                tg.start_soon(send, name)
            await anyio.sleep(0.5)
            for _ in range(2):
                redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
                await anyio.sleep(0.5)
            n1.signal(signal.SIGKILL)
            killed_at = anyio.current_time()
            await wait_until(lambda: any(m.get("from") in ("j0", "j2") for m in got.get("older", [])), timeout=2 * TTL + 3)
            took = anyio.current_time() - killed_at
            await anyio.sleep(0.5)
            sending = False
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
        assert took < 2 * TTL + 1.5, took
        by_name = {eid: name for name, eid in ids.items()}
        for receiver, messages in got.items():
            for m in messages:
                if "k" not in m:
                    continue
                assert m["to"] == ("root" if receiver in ("older", "newest") else receiver), (receiver, m)
                assert by_name[m["origin"]] == m["from"], (receiver, m)  # stamped with its sender's id
            for sender in {m["from"] for m in messages if "k" in m}:
                ks = [m["k"] for m in messages if m.get("from") == sender]
                assert ks == sorted(set(ks)), (receiver, sender)  # in order, no duplicates
        # every joiner on a surviving node heard from its sender when that one survived too
        for i in range(12):
            sender, receiver = f"j{i}", partner[f"j{i}"]
            if i % 3 != 1 and (i + 1) % 3 != 1:
                assert sum(m.get("from") == sender for m in got.get(receiver, [])) > 20, (sender, receiver)
        # the current root heard every joiner before the kill, the older one the survivors after it
        assert {m["from"] for m in got["newest"] if "k" in m} == set(joiners)
        assert {m["from"] for m in got["older"] if "k" in m} == {f"j{i}" for i in range(12) if i % 3 != 1}
        for node in (n0, n2):
            node.stop()
        await wait_until(lambda: keys(redis_server, redis_prefix) == [], timeout=2 * TTL + 2)
