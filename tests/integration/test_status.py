"""The status page (``/status``, ``/status.json``) on a real server, while tests drive traffic."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from rendezvous.config import load_config
from rendezvous.errors import ConfigError
from rendezvous.observe.logging import scrub
from rendezvous.testing import http_call, recv_json, serve, ws_connect
from rendezvous_snowflake.messages import encode_client_request
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.programs import tool_wasm

from .conftest import SECRET
from .wasimoff_peers import RawProvider, ok_response, run_rpc, wasip1

pytestmark = pytest.mark.anyio

PATTERN = "snowflake.torproject.net"
SNOWFLAKE = {"disable_tls": True, "disable_geoip": True, "allowed_relay_pattern": PATTERN, "proxy_timeout": 3.0,
             "client_timeout": 1.0, "metrics_interval": 3600.0}
# Addresses in the SDPs: none of them may reach the page.
SDP_OFFER = json.dumps({"type": "offer", "sdp": "v=0\r\na=candidate:1 1 udp 2122260223 129.97.208.23 5000 typ host\r\n"})
ANSWER = json.dumps({"type": "answer", "sdp": "v=0\r\na=candidate:1 1 udp 1 10.0.0.2 6000 typ host\r\n"})


async def status(srv, path="/status.json"):
    reply = await http_call(srv.url + path)
    assert reply.status == 200, reply
    assert scrub(reply.content.decode()) == reply.content.decode(), reply.content  # no address, anywhere
    return json.loads(reply.content)


async def status_until(srv, predicate, timeout=8.0, path="/status.json"):
    """The status document once ``predicate(doc)`` holds (the sampler runs once a second)."""
    with anyio.fail_after(timeout):
        while True:
            doc = await status(srv, path)
            if doc["time"] is not None and predicate(doc):
                return doc
            await anyio.sleep(0.2)


def value(doc, profile, metric):
    return doc["profiles"][profile]["metrics"][metric]["value"]


async def proxy_poll(srv, sid, nat="unrestricted", prefix=""):
    body = {"Sid": sid, "Version": "1.3", "Type": "standalone", "NAT": nat, "Clients": 0, "AcceptedRelayPattern": PATTERN}
    return await http_call(srv.url + prefix + "/proxy", "POST", json.dumps(body).encode())


async def client_offer(srv, nat="unknown", prefix=""):
    return await http_call(srv.url + prefix + "/client", "POST", encode_client_request(SDP_OFFER, nat))


async def rendezvous(srv, sid, answer=True, prefix=""):
    """A proxy polls, a client is matched with it, the proxy answers (or not: the client times out)."""
    async with anyio.create_task_group() as tg:
        async def proxy():
            reply = await proxy_poll(srv, sid, prefix=prefix)
            assert json.loads(reply.content)["Status"] == "client match"
            if answer:
                await anyio.sleep(0.05)
                body = {"Version": "1.3", "Sid": sid, "Answer": ANSWER}
                await http_call(srv.url + prefix + "/answer", "POST", json.dumps(body).encode())

        tg.start_soon(proxy)
        await wait_waiting(srv, 1, prefix)
        reply = await client_offer(srv, prefix=prefix)
    return json.loads(reply.content)


async def wait_waiting(srv, n, prefix=""):
    with anyio.fail_after(5):
        while True:
            debug = (await http_call(srv.url + prefix + "/debug")).content.decode()
            if f"current snowflakes available: {n}" in debug:
                return
            await anyio.sleep(0.01)


async def test_snowflake_numbers_follow_the_traffic(http_server):
    async with serve("snowflake", SNOWFLAKE, http_server=http_server) as srv:
        doc = await status_until(srv, lambda d: True)
        metrics = doc["profiles"]["snowflake"]["metrics"]
        assert list(metrics) == ["proxies_restricted", "proxies_unrestricted", "clients_matched", "clients_denied",
                                 "clients_timed_out", "rendezvous_latency"]
        assert metrics["clients_matched"]["unit"] == "/min" and metrics["rendezvous_latency"]["unit"] == "s"
        assert value(doc, "snowflake", "rendezvous_latency") is None

        # Two matched, one timed out (the proxy never answers), one denied (no proxy).
        assert "answer" in await rendezvous(srv, "sid-1")
        assert "answer" in await rendezvous(srv, "sid-2")
        assert (await rendezvous(srv, "sid-3", answer=False))["error"] == "timed out waiting for answer!"
        assert json.loads((await client_offer(srv)).content)["error"] == "no snowflake proxies currently available"
        doc = await status_until(srv, lambda d: value(d, "snowflake", "clients_timed_out"))
        # Exact counts, per minute (the Prometheus counters would say 8 for each).
        assert value(doc, "snowflake", "clients_matched") == 2
        assert value(doc, "snowflake", "clients_denied") == 1
        assert value(doc, "snowflake", "clients_timed_out") == 1
        latency = doc["profiles"]["snowflake"]["metrics"]["rendezvous_latency"]
        assert latency["count"] == 2 and 0.03 < latency["value"] < 2.0

        # Proxies waiting, by pool (a restricted and an unknown NAT share the restricted pool).
        async with anyio.create_task_group() as tg:
            for sid, nat in (("w1", "unrestricted"), ("w2", "restricted"), ("w3", "unknown")):
                tg.start_soon(proxy_poll, srv, sid, nat)
            await wait_waiting(srv, 3)
            doc = await status_until(srv, lambda d: value(d, "snowflake", "proxies_restricted") == 2)
            assert value(doc, "snowflake", "proxies_unrestricted") == 1
            series = doc["profiles"]["snowflake"]["metrics"]["proxies_restricted"]["series"]
            assert series[-1] == 2 and len(series) == len(doc["profiles"]["snowflake"]["times"])
        doc = await status_until(srv, lambda d: value(d, "snowflake", "proxies_restricted") == 0)


async def test_overlay_numbers_follow_the_traffic():
    async with serve("overlay", {"secret": SECRET}) as srv:
        doc = await status_until(srv, lambda d: True)
        assert value(doc, "overlay", "roots") == 0 and value(doc, "overlay", "joins") == 0
        # A joiner's offer reaches the root; a node of the tree (another /join socket) answers it.
        async with ws_connect(f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root") as root, \
                ws_connect(f"{srv.ws_url}/join") as joiner, ws_connect(f"{srv.ws_url}/join") as answerer:
            await joiner.send(json.dumps({"destination": None, "signal": "offer"}))
            origin = (await recv_json(root))["origin"]
            await answerer.send(json.dumps({"destination": origin, "signal": "answer"}))
            assert (await recv_json(joiner))["signal"] == "answer"
            doc = await status_until(srv, lambda d: value(d, "overlay", "prospects") == 2)
            assert value(doc, "overlay", "roots") == 1
            assert value(doc, "overlay", "joins") == pytest.approx(0.2)  # 2 /join sockets in the last 10 s
            latency = doc["profiles"]["overlay"]["metrics"]["join_answer_latency"]
            assert latency["count"] == 1 and 0 < latency["value"] <= 0.005  # the first bucket: 0-5 ms
        doc = await status_until(srv, lambda d: value(d, "overlay", "roots") == 0 and value(d, "overlay", "prospects") == 0)
        # The root's secret is nowhere on the page or in the JSON.
        for path in ("/status", "/status.json"):
            assert SECRET.encode() not in (await http_call(srv.url + path)).content


async def test_wasimoff_numbers_follow_the_traffic():
    async with serve("wasimoff", {"static_files": None, "ping_interval": 5.0, "max_attempts": 2}) as srv, \
            httpx.AsyncClient(timeout=30) as http, RawProvider(srv) as provider:
        assert (await http.post(srv.url + "/api/storage/upload?name=tool.wasm", content=bytes(tool_wasm()))).is_success
        await provider.recv()  # ClusterInfo
        doc = await status_until(srv, lambda d: value(d, "wasimoff", "providers") == 1)
        assert list(doc["profiles"]["wasimoff"]["metrics"]) == ["providers", "free_slots", "queued", "running", "tasks",
                                                              "failed", "retries", "task_time"]
        assert value(doc, "wasimoff", "free_slots") == 0 and doc["profiles"]["wasimoff"]["metrics"]["tasks"]["unit"] == "/s"
        async with anyio.create_task_group() as tg:
            # No slot offered yet: the task waits in the queue.
            tg.start_soon(run_rpc, http, srv, wasip1("tool.wasm"))
            await status_until(srv, lambda d: value(d, "wasimoff", "queued") == 1)
            await provider.event(schema.ProviderResources(concurrency=2))
            envelope, task = await provider.recv_request(schema.Wasip1Request)
            doc = await status_until(srv, lambda d: value(d, "wasimoff", "running") == 1)
            assert (value(doc, "wasimoff", "queued"), value(doc, "wasimoff", "free_slots")) == (0, 1)
            await provider.respond(envelope.sequence, ok_response(task))
        doc = await status_until(srv, lambda d: value(d, "wasimoff", "tasks") == 0.1)  # 1 in the last 10 s
        assert doc["profiles"]["wasimoff"]["metrics"]["task_time"]["count"] == 1
        async with anyio.create_task_group() as tg:
            # Then one that fails on both its attempts.
            tg.start_soon(run_rpc, http, srv, wasip1("tool.wasm"))
            for attempt in range(2):
                envelope, task = await provider.recv_request(schema.Wasip1Request)
                await provider.respond(envelope.sequence, error=f"flaky {attempt}")
        doc = await status_until(srv, lambda d: value(d, "wasimoff", "failed") == 1)
        assert value(doc, "wasimoff", "retries") == 1 and value(doc, "wasimoff", "free_slots") == 2


async def test_every_mounted_profile_gets_its_panel():
    mounts = ["overlay=/ov", "snowflake=/sf", "wasimoff=/wm"]
    async with serve(["overlay", "snowflake", "wasimoff"],
                     {"overlay": {"secret": SECRET}, "snowflake": SNOWFLAKE, "wasimoff": {"static_files": None}},
                     server={"mount": mounts}) as srv:
        assert "answer" in await rendezvous(srv, "sid-m", prefix="/sf")
        doc = await status_until(srv, lambda d: value(d, "snowflake", "clients_matched") == 1)
        assert list(doc["profiles"]) == ["overlay", "snowflake", "wasimoff"]
        assert doc["profiles"]["overlay"]["metrics"]["roots"]["value"] == 0
        # The page is the server's, beside /metrics: not under a profile's prefix.
        assert (await http_call(srv.url + "/sf/status")).status == 404
        page = await http_call(srv.url + "/status")
        assert page.status == 200 and b'data-json="status.json"' in page.content


async def test_path_is_configurable_and_the_page_fetches_beside_itself(http_server):
    async with serve("overlay", {"secret": SECRET}, http_server=http_server, server={"status_path": "/ops/state"}) as srv:
        page = await http_call(srv.url + "/ops/state")
        assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert b'data-json="state.json"' in page.content  # relative: /ops/state.json, or under a proxy's prefix
        doc = await status_until(srv, lambda d: "overlay" in d["profiles"], path="/ops/state.json")
        assert doc["interval"] == 1.0
        assert (await http_call(srv.url + "/status")).status == 404
        head = await http_call(srv.url + "/ops/state.json", "HEAD")
        assert head.status == 200 and head.content == b""
        assert (await http_call(srv.url + "/ops/state.json", "POST", b"x")).status == 405


async def test_an_empty_path_disables_it():
    async with serve("overlay", {"secret": SECRET}, server={"status_path": ""}) as srv:
        assert (await http_call(srv.url + "/status")).status == 404
        assert (await http_call(srv.url + "/status.json")).status == 404


def test_a_path_must_start_with_a_slash():
    with pytest.raises(ConfigError, match="status_path: must start with '/'"):
        load_config(["overlay"], None, environ={"RENDEZVOUS_STATUS_PATH": "status"})
