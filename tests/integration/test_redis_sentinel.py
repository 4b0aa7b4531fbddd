"""Redis found through Sentinel, with real servers (a primary, its replica and ``redis-server
--sentinel``): nodes reach the primary the Sentinel names, follow a failover by themselves, and a
connection that finds itself on a replica is dropped and made again."""

from __future__ import annotations

import time

import anyio
import pytest

from rendezvous.backends import BackendSettings, create_backend
from rendezvous.backends.base import BackendUnavailable
from rendezvous.backends.redis.mux import Mux, connection_factory
from rendezvous.testing import wait_until

from .redis_fixture import RedisSentinel, RedisServer, redis_nodes, rendezvous_across

pytestmark = pytest.mark.anyio


@pytest.fixture
def sentinel_set(tmp_path, redis_server):  # (redis_server: skipped or failed as the other Redis tests are)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quick = ("--repl-diskless-sync-delay", "0")  # (a full sync waits 5 s by default for more replicas)
    primary = RedisServer(str(tmp_path / "a"), *quick)
    primary.start()
    replica = RedisServer(str(tmp_path / "b"), *quick, "--replicaof", "127.0.0.1", str(primary.port))
    sentinel = RedisSentinel(str(tmp_path), primary.port)
    try:
        replica.start()
        # (the Sentinel learns of replicas from the primary's INFO, every 10 s: one linked before
        # it starts is known at once)
        deadline = time.monotonic() + 10
        while b"master_link_status:up" not in replica.command("INFO", "replication"):
            assert time.monotonic() < deadline, "the replica did not link to its primary"
            time.sleep(0.05)
        sentinel.start()
        yield primary, replica, sentinel
    finally:
        for server in (sentinel, replica, primary):
            server.stop()


def _replica_known(sentinel: RedisSentinel, replica: RedisServer) -> bool:
    """The Sentinel lists the replica as a healthy one (it learns of replicas from the primary's INFO)."""
    reply = sentinel.command("SENTINEL", "REPLICAS", sentinel.service)
    return f"127.0.0.1:{replica.port}".encode() in reply and b"s_down" not in reply and b"disconnected" not in reply


async def test_nodes_reach_the_primary_and_follow_a_forced_failover(sentinel_set, redis_prefix):
    primary, replica, sentinel = sentinel_set
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}"
    async with redis_nodes(url, redis_prefix, 2) as (a, b):
        await rendezvous_across(a, b, "before")
        node_key = f"{redis_prefix}:node:{a.backend.node_id}"
        assert primary.command("EXISTS", node_key) == b":1\r\n"

        await wait_until(lambda: _replica_known(sentinel, replica), timeout=15)
        assert sentinel.command("SENTINEL", "FAILOVER", sentinel.service).startswith(b"+OK")
        await wait_until(lambda: sentinel.primary() == replica.port, timeout=15)
        await wait_until(lambda: b"role:slave" in primary.command("INFO", "replication"), timeout=15)
        # Nobody tells the nodes: the Sentinel drops the clients of the demoted primary (a write
        # there is refused, READONLY, and drops the connection too), and each node's next
        # connection asks the Sentinel again. What went to the old primary in the meantime is
        # lost with it (replication is asynchronous): a node whose key went fences itself once.
        await rendezvous_across(a, b, "after")
        await wait_until(lambda: replica.command("EXISTS", node_key) == b":1\r\n", timeout=5)


async def test_nodes_follow_a_failover_after_the_primary_died(sentinel_set, redis_prefix):
    primary, replica, sentinel = sentinel_set
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}"
    async with redis_nodes(url, redis_prefix, 2) as (a, b):
        await rendezvous_across(a, b, "before")
        await wait_until(lambda: _replica_known(sentinel, replica), timeout=15)
        primary.process.kill()  # SIGKILL: the Sentinel sees it down after 300 ms and promotes the replica
        primary.process.wait()
        await wait_until(lambda: sentinel.primary() == replica.port, timeout=15)
        await rendezvous_across(a, b, "after")
        await wait_until(lambda: replica.command("EXISTS", f"{redis_prefix}:node:{b.backend.node_id}") == b":1\r\n")


async def test_a_connection_that_finds_a_replica_is_made_again(sentinel_set):
    _, replica, _ = sentinel_set
    connects = []
    mux = Mux(connection_factory(replica.url), [], on_late=lambda late, reply: None, on_connect=connects.append)
    async with anyio.create_task_group() as tg:
        await tg.start(mux.run)
        with pytest.raises(BackendUnavailable):
            await mux.call("SET", "k", "v")  # READONLY: the call did not run
        await wait_until(lambda: len(connects) == 2 and mux.connected)
        assert await mux.call("GET", "k") is None  # (reads work on a replica)
        tg.cancel_scope.cancel()


async def test_no_sentinel_reachable_or_none_that_knows_the_service_is_refused_at_start(sentinel_set):
    sentinel = sentinel_set[2]
    for url, says in ((f"redis+sentinel://:secret@127.0.0.1:1/{sentinel.service}",
                       "cannot connect to redis at redis+sentinel://…@127.0.0.1:1/mymaster: no Sentinel names a "
                       "primary 'mymaster' (127.0.0.1:1: Error 111 connecting to 127.0.0.1:1."),
                      (f"redis+sentinel://127.0.0.1:{sentinel.port}/other",
                       f"no Sentinel names a primary 'other' (127.0.0.1:{sentinel.port}: no primary named 'other')")):
        backend = create_backend("redis", BackendSettings(url=url, prefix="x"))
        with pytest.raises(BackendUnavailable) as error:
            await backend.run()
        assert says in str(error.value) and "secret" not in str(error.value) and "\n" not in str(error.value)
