"""Snowflake on the redis backend, every node equal: three servers in one process sharing one
real redis-server, reached over real HTTP. A proxy polls node A, the client POSTs node B, the
proxy's answer reaches node C, and every reply, timeout, ordering rule and error text is the one
a single node gives. Per-node metrics add up; the CollecTor descriptor is written once per period
for the cluster; a node that cannot reach Redis stays up, says it is not ready, answers at once
with the profile's own "no proxies" / "no match", and recovers by itself."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from rendezvous.errors import ConfigError
from rendezvous.server import make_config, running
from rendezvous.testing import http_call, serve

from .redis_fixture import RedisServer
from .test_snowflake import ANSWER, NO_MATCH, PATTERN, SDP_OFFER, answer, descriptor_value, offer, poll

pytestmark = pytest.mark.anyio
BASE = {"disable_tls": True, "disable_geoip": True, "allowed_relay_pattern": PATTERN, "proxy_timeout": 1.0,
        "client_timeout": 1.0, "metrics_interval": 3600.0}


def redis_settings(url: str, prefix: str, **more) -> dict:
    return {"backend": "redis", "backend_url": url, "backend_prefix": prefix, "node_ttl": 1.0, **more}


@contextlib.asynccontextmanager
async def cluster(url: str, prefix: str, n: int = 3, per_node=None, **settings) -> AsyncIterator[list]:
    """``n`` Snowflake servers on ``url``'s Redis under ``prefix`` (``per_node(i)``: settings of node i)."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for i in range(n):
            own = {**BASE, **settings, **(per_node(i) if per_node else {})}
            nodes.append(await stack.enter_async_context(serve("snowflake", own, server=redis_settings(url, prefix))))
        yield nodes


async def debug_count(srv) -> int:
    text = (await http_call(srv.url + "/debug")).text
    return int(text.split("\n", 1)[0].rsplit(" ", 1)[1])


async def wait_count(nodes, n: int, timeout: float = 5.0) -> None:
    """Until the nodes' /debug counts add up to ``n`` proxies (waiting, or matched and unanswered)."""
    with anyio.fail_after(timeout):
        while sum([await debug_count(node) for node in nodes]) != n:
            await anyio.sleep(0.01)


async def rendezvous_across(poll_node, client_node, answer_node, *, nat="restricted") -> dict:
    """A proxy polls one node, the client POSTs another, the proxy answers on a third."""
    got = {}
    async with anyio.create_task_group() as tg:
        async def proxy():
            got["poll"] = await poll(None, poll_node, sid="across", nat="unrestricted")
            got["answer"] = await answer(None, answer_node, "across")

        tg.start_soon(proxy)
        await wait_count([poll_node, client_node, answer_node] if client_node is not poll_node else [poll_node], 1)
        got["client"] = await offer(None, client_node, nat=nat)
    return {k: (v.status, v.content) for k, v in got.items()}


async def test_proxy_client_and_answer_on_three_nodes_reply_as_one_node(redis_server, redis_prefix):
    async with serve("snowflake", {**BASE, "proxy_timeout": 5.0, "client_timeout": 5.0}) as one:
        alone = await rendezvous_across(one, one, one)
    async with cluster(redis_server.url, redis_prefix, proxy_timeout=5.0, client_timeout=5.0) as (a, b, c):
        spread = await rendezvous_across(a, b, c)
        assert [await debug_count(node) for node in (a, b, c)] == [0, 0, 0]
    assert spread == alone
    assert spread["client"] == (200, json.dumps({"answer": ANSWER}, separators=(",", ":")).encode())
    assert json.loads(spread["poll"][1])["Offer"] == SDP_OFFER and spread["answer"] == (200, b'{"Status":"success"}')


async def test_fewest_clients_first_and_the_nat_pools_across_nodes(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, proxy_timeout=5.0, client_timeout=5.0) as nodes:
        a, b, c = nodes
        matched: list[str] = []

        async def proxy(node, sid, clients, nat, answer_node):
            reply = (await poll(None, node, sid=sid, nat=nat, clients=clients)).json()
            if reply["Status"] == "client match":
                matched.append(sid)
                await answer(None, answer_node, sid, json.dumps({"type": "answer", "sdp": sid + " a=candidate"}))

        async with anyio.create_task_group() as tg:
            for node, sid, clients, nat, answer_node in ((a, "u5", 5, "unrestricted", b), (b, "u1", 1, "unrestricted", c),
                                                         (c, "u3", 3, "unrestricted", a), (a, "r0", 0, "restricted", c)):
                tg.start_soon(proxy, node, sid, clients, nat, answer_node)
            await wait_count(nodes, 4)
            got = []
            # restricted clients take unrestricted proxies only, least loaded first; an unrestricted
            # client takes a restricted proxy first (the current rule), then falls back
            for node, nat in ((c, "restricted"), (b, "unrestricted"), (a, "unknown"), (b, "unrestricted"), (c, "restricted")):
                reply = (await offer(None, node, nat=nat)).json()
                got.append(json.loads(reply["answer"])["sdp"].split()[0] if "answer" in reply else reply["error"])
        assert got == ["u1", "r0", "u3", "u5", "no snowflake proxies currently available"]
        assert matched == got[:4]


async def test_timeouts_and_error_texts_across_nodes(redis_server, redis_prefix):
    async with cluster(redis_server.url, redis_prefix, client_timeout=0.5) as (a, b, c):
        started = time.monotonic()
        assert (await poll(None, a, sid="idle")).content == NO_MATCH  # nobody asked: "no match" after the hold
        assert 0.9 < time.monotonic() - started < 1.6
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, None, a, "slow", "unrestricted")
            await wait_count([a], 1)
            started = time.monotonic()
            r = await offer(None, b)
            assert r.json() == {"error": "timed out waiting for answer!"} and 0.45 < time.monotonic() - started < 1.0
        assert (await answer(None, c, "slow")).content == b'{"Status":"client gone"}'  # late, on yet another node
        legacy = await http_call(c.url + "/client", "POST", SDP_OFFER.encode(), {"Snowflake-NAT-Type": "restricted"})
        assert legacy.status == 503  # the legacy client's "no proxies"
        assert (await answer(None, b, "never-polled")).content == b'{"Status":"client gone"}'


async def test_metrics_per_node_add_up_and_one_descriptor_per_period_for_the_cluster(redis_server, redis_prefix, tmp_path):
    interval = 2.0
    logs = [tmp_path / f"node{i}.log" for i in range(3)]
    async with cluster(redis_server.url, redis_prefix, proxy_timeout=0.2, metrics_interval=interval,
                       per_node=lambda i: {"metrics_log": str(logs[i])}) as (a, b, c):
        with anyio.fail_after(5):  # start just after a period boundary, so that it all falls in one period
            while time.time() % interval > 0.3:
                await anyio.sleep(0.02)
        first_period = int(time.time() // interval)
        for node, ip in ((a, "129.97.208.1"), (b, "129.97.208.1"), (b, "129.97.208.2")):
            await poll(None, node, sid="s" + ip, nat="restricted", headers={"X-Forwarded-For": ip})
        for _ in range(3):
            await offer(None, c, nat="restricted")
        # /prometheus: what each node handled; they add up
        texts = [(await http_call(node.url + "/prometheus")).text for node in (a, b, c)]
        idle = 'snowflake_rounded_proxy_poll_total{nat="restricted",status="idle",type="standalone"} 8.0'
        assert [idle in text for text in texts] == [True, True, False]
        denied = 'snowflake_rounded_client_poll_total{cc="??",nat="restricted",rendezvous_method="http",status="denied"} 8.0'
        assert [denied in text for text in texts] == [False, False, True]
        end = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime((first_period + 1) * interval))
        header = f"snowflake-stats-end {end} (2 s)\n"

        def written() -> str:
            return "".join(log.read_text() for log in logs if log.exists())

        with anyio.fail_after(interval + 3):
            while header not in written():
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # (no second writer)
        blocks = ["snowflake-stats-end" + block for block in written().split("snowflake-stats-end")[1:]]
        ends = [block.split(" (", 1)[0] for block in blocks]
        assert len(ends) == len(set(ends)), blocks  # each period written once, by one node
        text = next(block for block in blocks if block.startswith(header))
        assert descriptor_value(text, "snowflake-ips-total") == "2"  # one proxy seen by two nodes counts once
        assert descriptor_value(text, "snowflake-ips-nat-restricted") == "2"
        assert descriptor_value(text, "snowflake-idle-count") == "8"
        assert descriptor_value(text, "client-denied-count") == "8"
        assert descriptor_value(text, "client-http-count") == "8"
        for node in (a, b, c):  # every node serves the cluster's descriptors
            assert text in (await http_call(node.url + "/metrics")).text


async def test_unreachable_redis_not_ready_fails_fast_and_recovers(tmp_path):
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        async with cluster(server.url, "r", 2, proxy_timeout=5.0, client_timeout=5.0) as (a, b):
            assert (await http_call(a.url + "/readyz")).content == b"ready\n"
            server.stop()
            with anyio.fail_after(5):
                while (await http_call(a.url + "/readyz")).status != 503:
                    await anyio.sleep(0.05)
            assert (await http_call(a.url + "/healthz")).status == 200  # up: only out of rotation
            with anyio.fail_after(1):  # the profile's own answers, at once
                assert (await poll(None, a, sid="p")).content == NO_MATCH
                assert (await offer(None, b)).json() == {"error": "no snowflake proxies currently available"}
                assert (await answer(None, a, "p")).content == b'{"Status":"client gone"}'
                assert (await debug_count(a)) == 0
            server.start()  # the same port, empty: every node fences itself once and registers again
            with anyio.fail_after(8):
                while any([(await http_call(node.url + "/readyz")).status != 200 for node in (a, b)]):
                    await anyio.sleep(0.05)
            got = await rendezvous_across(a, b, a)
            assert got["client"][0] == 200 and json.loads(got["client"][1]) == {"answer": ANSWER}
    finally:
        server.stop()


async def test_readyz_on_the_memory_backend():
    async with serve("snowflake", BASE) as srv:
        assert (await http_call(srv.url + "/readyz")).content == b"ready\n"


def test_backend_settings_from_env_flags_and_file(tmp_path):
    config = make_config("snowflake", settings={"snowflake": BASE},
                         environ={"RENDEZVOUS_BACKEND": "redis", "RENDEZVOUS_BACKEND_URL": "rediss://:pw@redis.example:6380/2",
                                  "RENDEZVOUS_NODE_ID": "node-a", "RENDEZVOUS_NODE_TTL": "5"})
    server = config.server
    assert (server.backend, server.backend_url, server.node_id, server.node_ttl) == (
        "redis", "rediss://:pw@redis.example:6380/2", "node-a", 5.0)
    assert make_config("snowflake", settings={"snowflake": BASE}).server.backend == "memory"  # the default
    with pytest.raises(ConfigError, match=r"server.backend \(from python\): no backend named 'etcd' is installed"):
        make_config("snowflake", settings={"snowflake": BASE}, server={"backend": "etcd"})


async def _start(profile: str, settings: dict, server: dict) -> None:
    async with running(make_config(profile, settings={profile: settings}, server={"port": 0, "host": "127.0.0.1", **server})):
        pass


class _ThirdParty:
    """A profile that does not declare ``distributed`` (every built-in one does now)."""

    name = "thirdparty"


def test_a_profile_without_distributed_support_is_refused(redis_server):
    from rendezvous.backends import serving
    from rendezvous.config import ServerSettings

    server = ServerSettings(backend="redis", backend_url=redis_server.url)
    with pytest.raises(ConfigError, match="the thirdparty profile does not support a distributed backend"):
        serving.for_server(server, {"thirdparty": _ThirdParty()})
    assert serving.for_server(server, {"wasimoff": _profile("wasimoff")}).distributed  # (wasimoff is distributed now)


def _profile(name: str) -> object:
    from rendezvous import plugins

    return plugins.load("rendezvous.profiles", name)


async def test_bad_sentinel_urls_and_unreachable_redis_are_refused_at_start():
    with pytest.raises(ConfigError, match="names the primary's service after the hosts"):
        await _start("snowflake", BASE, redis_settings("redis+sentinel://127.0.0.1:26379", "x"))
    with pytest.raises(ConfigError, match="server.backend_url: cannot connect to redis at redis\\+sentinel://127.0.0.1:1/m"):
        await _start("snowflake", BASE, redis_settings("redis+sentinel://127.0.0.1:1/m", "x"))
    with pytest.raises(ConfigError, match="server.backend_url: cannot connect to redis at redis://127.0.0.1:1/0"):
        await _start("snowflake", BASE, redis_settings("redis://127.0.0.1:1/0", "x"))


def test_the_cli_refuses_in_one_line(redis_server):
    # Every built-in profile is distributed: the refusal is seen with wasimoff taken for one that is not.
    code = ("import sys, rendezvous.hooks as h; h.is_distributed = lambda p: False; import rendezvous.cli as c; "
            "sys.argv = ['rendezvous'] + sys.argv[1:]; sys.exit(c.main())")
    result = subprocess.run([sys.executable, "-c", code, "serve", "--profile", "wasimoff", "--port", "0",
                             "--backend", "redis", "--backend-url", redis_server.url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("rendezvous: error: server.backend: the wasimoff profile does not support a distributed "
                             "backend (redis); serve it with backend = \"memory\"\n")
