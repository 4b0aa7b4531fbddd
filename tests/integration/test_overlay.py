"""webrtc-bootstrap 4.4.1 behaviours (spec §2), against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import time

import anyio
import httpx
import pytest
from websockets.exceptions import InvalidHandshake

from rendezvous.testing import assert_silent, closed_code, recv_frame, recv_json, serve, ws_connect

from .conftest import SECRET

pytestmark = pytest.mark.anyio
HEX32 = re.compile(r"[0-9a-f]{32}")


def overlay(http_server, **settings):
    return serve("overlay", {"secret": SECRET, **settings}, http_server=http_server)


def root_url(srv, secret=SECRET):
    return f"{srv.ws_url}/{secret}/webrtc-bootstrap-root"




async def prospect_id(root, ws):
    await ws.send(json.dumps({"destination": None, "signal": "id?"}))
    return (await recv_json(root))["origin"]


# 1, 2
async def test_static_public_dir(http_server, tmp_path):
    (tmp_path / "index.html").write_text("<h1>WebRTC Bootstrap</h1>")
    async with overlay(http_server, public=str(tmp_path)) as srv, httpx.AsyncClient() as http:
        r = await http.get(srv.url + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "WebRTC Bootstrap" in r.text
        assert (await http.get(srv.url + "/no-such-file")).status_code == 404


# 3, 4, 5, 6
@pytest.mark.parametrize("path", ["/nope", "/wrong/webrtc-bootstrap-root", "/join/", "/webrtc-bootstrap-root", "//webrtc-bootstrap-root"])
async def test_bad_upgrade_paths_are_refused(http_server, path):
    async with overlay(http_server) as srv:
        with pytest.raises(InvalidHandshake):
            async with ws_connect(srv.ws_url + path):
                pass
        async with ws_connect(srv.ws_url + "/join?x=1") as ws:  # query ignored
            await assert_silent(ws, 0.1)


# 7, 8
async def test_no_root_drops_and_late_root_gets_nothing(http_server):
    async with overlay(http_server) as srv, ws_connect(srv.ws_url + "/join") as p:
        await p.send(json.dumps({"destination": None, "signal": "lost"}))
        await assert_silent(p, 0.2)
        async with ws_connect(root_url(srv)) as root:
            await assert_silent(root, 0.3)
            await p.send(json.dumps({"destination": None, "signal": "found"}))
            assert (await recv_json(root))["signal"] == "found"


# 9, 10, 11, 12
async def test_to_root_with_origin_stamped(http_server):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as p:
        await p.send('{"origin":"spoofed","destination":null,"signal":{"type":"offer","sdp":"v=0"},"rank":0}')
        frame = await recv_frame(root)
        assert isinstance(frame, str)
        msg = json.loads(frame)
        assert msg["signal"] == {"type": "offer", "sdp": "v=0"} and msg["rank"] == 0 and msg["destination"] is None
        assert HEX32.fullmatch(msg["origin"])
        first = msg["origin"]
        await p.send('{"signal":1}')
        msg = await recv_json(root)
        assert msg == {"signal": 1, "origin": first}  # same socket, same id; origin appended
        for falsy in ('""', "0", "false"):
            await p.send('{"destination":%s,"n":1}' % falsy)
            assert (await recv_json(root))["destination"] == json.loads(falsy)


# 13, 14, 15, 16
async def test_destination_routing(http_server):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root:
        async with ws_connect(srv.ws_url + "/join") as joiner, ws_connect(srv.ws_url + "/join") as answerer:
            joiner_id = await prospect_id(root, joiner)
            answerer_id = await prospect_id(root, answerer)
            assert joiner_id != answerer_id
            await answerer.send(json.dumps({"destination": joiner_id, "signal": {"type": "answer"}}))
            got = await recv_json(joiner)
            assert got == {"destination": joiner_id, "signal": {"type": "answer"}, "origin": answerer_id}
            await assert_silent(root, 0.2)
            await joiner.send(json.dumps({"destination": answerer_id, "signal": "trickle"}))
            assert (await recv_json(answerer))["origin"] == joiner_id
            await joiner.send(json.dumps({"destination": joiner_id, "signal": "me"}))
            assert (await recv_json(joiner))["origin"] == joiner_id


# 17, 24
async def test_unknown_and_closed_destinations_are_dropped_silently(http_server):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as p:
        for dest in ("hasOwnProperty", "f" * 32, "__proto__"):
            await p.send(json.dumps({"destination": dest, "signal": "x"}))
        async with ws_connect(srv.ws_url + "/join") as gone:
            gone_id = await prospect_id(root, gone)
        await p.send(json.dumps({"destination": gone_id, "signal": "x"}))
        await assert_silent(p, 0.2)
        await assert_silent(root, 0.1)
        await p.send(json.dumps({"signal": "still open"}))
        assert (await recv_json(root))["signal"] == "still open"


# 18
async def test_order_to_root_preserved(http_server):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as p:
        for i in range(50):
            await p.send(json.dumps({"destination": None, "rank": i}))
        assert [(await recv_json(root))["rank"] for _ in range(50)] == list(range(50))


# 19, 20, 21
async def test_extra_fields_binary_frames_and_primitives(http_server):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as p:
        await p.send('{"type":"JOIN-REQUEST","destination":null,"x":[1,{"y":2}]}')
        msg = await recv_json(root)
        assert list(msg) == ["type", "destination", "x", "origin"] and msg["x"] == [1, {"y": 2}]
        await p.send(b'{"destination":null,"bin":true}')
        frame = await recv_frame(root)
        assert isinstance(frame, str) and json.loads(frame)["bin"] is True
        await p.send("5")
        assert await recv_frame(root) == "5"
        await p.send('"str"')
        assert await recv_frame(root) == '"str"'


# 22, 33
async def test_root_frames_are_ignored_and_root_survives(http_server):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as p:
        pid = await prospect_id(root, p)
        for frame in ("heartbeat", '"heartbeat"', "garbage{", json.dumps({"destination": pid, "x": 1}), b"\x00\xff"):
            await root.send(frame)
        await assert_silent(p, 0.2)
        await p.send(json.dumps({"alive": True}))
        assert (await recv_json(root))["alive"] is True


# 23
async def test_concurrent_joins_get_distinct_ids(http_server):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root:
        async with anyio.create_task_group() as tg:
            sockets = []

            async def join():
                ws = await ws_connect(srv.ws_url + "/join").__aenter__()
                sockets.append(ws)
                await ws.send("{}")

            for _ in range(20):
                tg.start_soon(join)
        ids = {(await recv_json(root))["origin"] for _ in range(20)}
        assert len(ids) == 20 and all(HEX32.fullmatch(i) for i in ids)
        for ws in sockets:
            await ws.close()


# 25, 26
async def test_latest_root_wins_and_no_fallback(http_server):
    async with overlay(http_server, heartbeat_interval=0.3) as srv, ws_connect(srv.ws_url + "/join") as p:
        async with ws_connect(root_url(srv)) as old:
            async with ws_connect(root_url(srv)) as new:
                await p.send('{"n":1}')
                assert (await recv_json(new))["n"] == 1
                assert await recv_frame(old, 2) == '"heartbeat"'  # old stays open, still heartbeated
            await p.send('{"n":2}')
            with anyio.move_on_after(0.25):
                frame = await old.recv()
                assert frame == '"heartbeat"', frame  # only heartbeats, never the message


async def test_failover_policy_uses_older_open_root(http_server):
    async with overlay(http_server, root_policy="failover") as srv, ws_connect(srv.ws_url + "/join") as p:
        async with ws_connect(root_url(srv)) as old:
            async with ws_connect(root_url(srv)):
                pass
            await anyio.sleep(0.05)
            await p.send('{"n":2}')
            assert (await recv_json(old))["n"] == 2


async def test_reject_policy_closes_second_root(http_server):
    async with overlay(http_server, root_policy="reject") as srv, ws_connect(root_url(srv)) as first:
        async with ws_connect(root_url(srv)) as second:
            assert await closed_code(second) == 1008
        async with ws_connect(srv.ws_url + "/join") as p:
            await p.send('{"n":3}')
            assert (await recv_json(first))["n"] == 3


# 27
async def test_origin_not_checked_and_first_subprotocol_echoed(http_server):
    async with overlay(http_server) as srv:
        async with ws_connect(srv.ws_url + "/join", origin="http://evil.example", subprotocols=["foo", "bar"]) as ws:
            assert ws.subprotocol == "foo"


# 28, 29, 30 with short timers (the same code paths as the 15 s / 30 s defaults; see the slow test)
async def test_heartbeats_and_prospect_lifetime(http_server):
    async with overlay(http_server, heartbeat_interval=0.4, timeout=0.6) as srv:
        async with ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as p:
            start = time.monotonic()
            await p.send('{"keep":"busy"}')  # activity does not extend the lifetime
            assert (await recv_json(root))["keep"] == "busy"
            assert await recv_frame(root, 2) == '"heartbeat"'
            assert 0.35 < time.monotonic() - start < 0.6
            code = await closed_code(p, 2)
            assert 0.55 < time.monotonic() - start < 1.2
            assert code == 1000
            assert await recv_frame(root, 2) == '"heartbeat"'  # the root is never timed out
            assert await recv_frame(root, 2) == '"heartbeat"'


# 31, 32: robustness
@pytest.mark.parametrize("frame", ["not json", "null", "{", "NaN", "[" * 50000, b"\xff\xfe", ""])
async def test_malformed_prospect_frames_do_not_hurt_anyone(http_server, frame):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as bad:
        async with ws_connect(srv.ws_url + "/join") as good:
            await bad.send(frame)
            await bad.send('{"after":"bad"}')
            assert (await recv_json(root))["after"] == "bad"  # the bad sender is still served
            await good.send('{"good":1}')
            assert (await recv_json(root))["good"] == 1


async def test_bad_message_close_policy(http_server):
    async with overlay(http_server, bad_message="close") as srv, ws_connect(srv.ws_url + "/join") as bad:
        await bad.send("not json")
        assert await closed_code(bad) == 1007


async def test_oversized_frame_closes_1009_and_others_carry_on(http_server):
    async with overlay(http_server) as srv, ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as big:
        await big.send(json.dumps({"pad": "x" * (64 * 1024)}))
        assert await closed_code(big) == 1009
        async with ws_connect(srv.ws_url + "/join") as p:
            await p.send(json.dumps({"pad": "x" * 60000}))  # under the cap
            assert len((await recv_json(root))["pad"]) == 60000


async def test_custom_cap(http_server):
    async with overlay(http_server, max_message_size=1000) as srv, ws_connect(srv.ws_url + "/join") as big:
        await big.send("x" * 1001)
        assert await closed_code(big) == 1009


# 34
async def test_seeded_ids_per_instance(http_server):
    async with overlay(http_server, seed=42) as srv, ws_connect(root_url(srv)) as root:
        got = []
        for _ in range(3):
            async with ws_connect(srv.ws_url + "/join") as p:
                got.append(await prospect_id(root, p))
        assert got == ["334d3ecc3fcf32317545eaff0e1be0c8", "ccffd39004a11d7b7d1a1ef62e09e23c", "4190fe01a4cab1da209b44504757f903"]
    async with overlay(http_server, seed=42) as srv, ws_connect(root_url(srv)) as root:
        async with ws_connect(srv.ws_url + "/join") as p:
            assert await prospect_id(root, p) == "334d3ecc3fcf32317545eaff0e1be0c8"  # not process-global


# beyond the original
async def test_max_prospects_accepts_then_closes_1013(http_server):
    async with overlay(http_server, max_prospects=2) as srv:
        async with ws_connect(srv.ws_url + "/join"), ws_connect(srv.ws_url + "/join"):
            async with ws_connect(srv.ws_url + "/join") as third:
                assert await closed_code(third) == 1013
        async with ws_connect(srv.ws_url + "/join") as again:
            await assert_silent(again, 0.1)


async def test_join_rate_limit_accepts_then_closes_1013(http_server):
    async with overlay(http_server, join_rate=0.5, join_burst=2) as srv:
        async with ws_connect(srv.ws_url + "/join") as a, ws_connect(srv.ws_url + "/join") as b:
            async with ws_connect(srv.ws_url + "/join") as c:
                assert await closed_code(c) == 1013
            await assert_silent(a, 0.05)
            await assert_silent(b, 0.05)


async def test_metrics_and_healthz(http_server):
    async with overlay(http_server) as srv, httpx.AsyncClient() as http:
        async with ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as j, ws_connect(srv.ws_url + "/join") as a:
            jid = await prospect_id(root, j)
            await a.send(json.dumps({"destination": jid, "signal": "answer"}))
            await recv_json(j)
            await j.send("nope")
            await a.send(json.dumps({"destination": "unknown"}))
            await anyio.sleep(0.05)
            text = (await http.get(srv.url + "/metrics")).text
            expected = [
                "rendezvous_overlay_joins_total 2.0", "rendezvous_overlay_prospects 2.0",
                "rendezvous_overlay_root_connected 1.0", 'rendezvous_overlay_routed_messages_total{to="root"} 1.0',
                'rendezvous_overlay_routed_messages_total{to="prospect"} 1.0',
                'rendezvous_overlay_dropped_total{reason="bad_json"} 1.0',
                'rendezvous_overlay_dropped_total{reason="unknown_destination"} 1.0',
            ]
            assert [line for line in expected if line not in text] == []
            assert "rendezvous_overlay_join_answer_latency_seconds_count 1.0" in text
        r = await http.get(srv.url + "/healthz")
        assert r.status_code == 200 and r.text == "ok\n"


async def test_shutdown_closes_sockets_with_1001(http_server):
    async with overlay(http_server) as srv:
        root = await ws_connect(root_url(srv)).__aenter__()
        p = await ws_connect(srv.ws_url + "/join").__aenter__()
    assert await closed_code(root) == 1001
    assert await closed_code(p) == 1001


# 28, 29, 30 with the original's real timers (about 31 s; one server plugin is enough here)
@pytest.mark.slow
async def test_real_timers_heartbeat_15s_and_prospect_close_30s():
    async with overlay("hypercorn") as srv, ws_connect(root_url(srv)) as root, ws_connect(srv.ws_url + "/join") as p:
        start = time.monotonic()
        assert await recv_frame(root, 16) == '"heartbeat"'
        assert 14.8 < time.monotonic() - start < 15.6
        assert await closed_code(p, 16) == 1000
        assert 29.8 < time.monotonic() - start < 30.6
        assert await recv_frame(root, 2) == '"heartbeat"'  # at 30 s; the root stays
