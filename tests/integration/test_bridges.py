"""Every profile over every transport (docs/transports.md): channels over HTTP long-poll and
WebTransport, request/response routes over WebSocket and WebTransport. No profile knows."""

from __future__ import annotations

import json

import anyio
import pytest

from rendezvous.testing import (
    LongPoll,
    closed_code,
    http_call,
    recv_json,
    serve,
    wait_until,
    ws_connect,
    ws_exchange,
    wt_connect,
)
from rendezvous_snowflake.messages import encode_client_request

from .conftest import SECRET
from .test_snowflake import wait_known

pytestmark = pytest.mark.anyio
PATTERN = "snowflake.torproject.net"
SDP_OFFER = json.dumps({"type": "offer", "sdp": "v=0\r\na=candidate:1 1 udp 2122260223 129.97.208.23 5000 typ host\r\n"})
ANSWER = json.dumps({"type": "answer", "sdp": "v=0\r\na=candidate:1 1 udp 1 10.0.0.2 6000 typ host\r\n"})
WT = {"webtransport_port": 0}


def overlay(http_server="native", **server):
    return serve("overlay", {"secret": SECRET, "timeout": 2.0}, http_server=http_server, server=server)


def snowflake(**server):
    return serve("snowflake", {"disable_tls": True, "disable_geoip": True, "allowed_relay_pattern": PATTERN,
                               "proxy_timeout": 2.0, "client_timeout": 2.0, "metrics_interval": 3600.0},
                 http_server="native", server=server)


def proxy_poll(sid="sid-1"):
    return json.dumps({"Sid": sid, "Version": "1.3", "Type": "standalone", "NAT": "unrestricted", "Clients": 0,
                       "AcceptedRelayPattern": PATTERN})


# -- the overlay's channels over HTTP long-poll ---------------------------------------------------
async def test_overlay_prospect_over_long_poll(http_server):
    async with overlay(http_server) as srv, ws_connect(f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root") as root:
        joiner = await LongPoll.open(srv.url + "/join")
        assert (await joiner.send(json.dumps({"destination": None, "signal": "offer"}))).status == 204
        routed = await recv_json(root)
        assert routed["signal"] == "offer" and len(routed["origin"]) == 32  # stamped by the server, as over WS
        async with ws_connect(f"{srv.ws_url}/join") as answerer:  # the root answers through a new /join
            await answerer.send(json.dumps({"destination": routed["origin"], "signal": "answer"}))
            assert json.loads(await joiner.recv())["signal"] == "answer"
        # The overlay closes prospects after its timeout (2 s here): the poll sees the close code.
        with pytest.raises(ConnectionError):
            await joiner.recv(timeout=5)
        assert joiner.close_code == 1000
        assert (await joiner.send("{}")).status == 410


async def test_overlay_root_over_long_poll_and_pattern_paths():
    async with overlay() as srv:
        root = await LongPoll.open(f"{srv.url}/{SECRET}/webrtc-bootstrap-root")
        async with ws_connect(f"{srv.ws_url}/join") as joiner:
            await joiner.send(json.dumps({"destination": None, "signal": "hello"}))
            assert json.loads(await root.recv())["signal"] == "hello"
        # A wrong secret is refused as over WebSocket (the real client gets no channel).
        reply = await http_call(f"{srv.url}/wrong/webrtc-bootstrap-root", "POST")
        assert reply.status >= 400
        await root.close()
        with pytest.raises(ConnectionError):
            await root.recv()
        assert root.close_code == 1000


async def test_long_poll_bad_input_keeps_serving(http_server):
    async with overlay(http_server) as srv, ws_connect(f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root") as root:
        assert (await http_call(srv.url + "/join?session=nope")).status == 404
        assert (await http_call(srv.url + "/join?session=nope", "POST", b"{}")).status == 404
        assert (await http_call(srv.url + "/join")).status == 404  # GET without a session: static/404 as before
        big = await LongPoll.open(srv.url + "/join")
        reply = await http_call(f"{srv.url}/join?session={big.session}", "POST", b"x" * (64 * 1024 + 1))
        assert reply.status == 413
        with pytest.raises(ConnectionError):
            await big.recv()
        assert big.close_code == 1009
        bad = await LongPoll.open(srv.url + "/join")
        assert (await http_call(f"{srv.url}/join?session={bad.session}", "POST", b"\xff\xfe")).status == 400
        assert (await http_call(f"{srv.url}/join?session={bad.session}", "PUT")).status == 405
        # Everyone else is still served.
        good = await LongPoll.open(srv.url + "/join")
        await good.send(json.dumps({"n": 1}))
        assert (await recv_json(root))["n"] == 1


async def test_long_poll_sessions_close_1001_on_shutdown():
    polled = {}
    async with anyio.create_task_group() as tg:
        async with overlay() as srv:
            joiner = await LongPoll.open(srv.url + "/join")

            async def poll():
                with pytest.raises(ConnectionError):
                    await joiner.recv(timeout=10)
                polled["code"] = joiner.close_code

            tg.start_soon(poll)
            await anyio.sleep(0.3)
        # the server has stopped; the poll that was waiting got the close
    assert polled["code"] == 1001


async def test_long_poll_session_nobody_polls_expires():
    async with serve("overlay", {"secret": SECRET, "timeout": 30.0}, http_server="native",
                     server={"longpoll_idle": 0.3}) as srv, \
            ws_connect(f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root") as root:
        joiner = await LongPoll.open(srv.url + "/join")
        await anyio.sleep(1.2)
        with pytest.raises(ConnectionError):
            await joiner.recv()
        assert joiner.close_code == 1006  # gone without a close, as a dropped WebSocket
        async with ws_connect(f"{srv.ws_url}/join") as other:  # and the others are fine
            await other.send(json.dumps({"n": 2}))
            assert (await recv_json(root))["n"] == 2


# -- the overlay's channels over WebTransport ---------------------------------------------------------
async def test_overlay_prospect_over_webtransport():
    async with overlay(**WT) as srv, ws_connect(f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root") as root:
        async with wt_connect(srv.webtransport_url + "/join") as joiner:
            await joiner.send(json.dumps({"destination": None, "signal": "offer"}))
            routed = await recv_json(root)
            assert routed["signal"] == "offer"
            answerer = await LongPoll.open(srv.url + "/join")  # the root's answer, over long-poll this time
            await answerer.send(json.dumps({"destination": routed["origin"], "signal": "answer"}))
            assert json.loads(await joiner.recv())["signal"] == "answer"


# -- Snowflake's exchanges over WebSocket and WebTransport ----------------------------------------------
async def test_snowflake_rendezvous_over_websocket():
    async with snowflake() as srv:
        async with ws_connect(srv.ws_url + "/proxy") as proxy_ws, ws_connect(srv.ws_url + "/client") as client_ws:
            async with anyio.create_task_group() as tg:
                result = {}

                async def proxy():
                    polled = await ws_exchange(proxy_ws, proxy_poll("ws-proxy"), request_id="p1")
                    assert polled["status"] == 200
                    body = json.loads(polled["body"])
                    assert body["Status"] == "client match" and json.loads(body["Offer"])["type"] == "offer"
                    async with ws_connect(srv.ws_url + "/answer") as answer_ws:  # each route at its own path
                        answered = await ws_exchange(answer_ws, json.dumps({"Version": "1.3", "Sid": "ws-proxy", "Answer": ANSWER}),
                                                     request_id="a1")
                    result["answer"] = json.loads(answered["body"])

                async def client():
                    await anyio.sleep(0.2)
                    reply = await ws_exchange(client_ws, encode_client_request(SDP_OFFER, "unknown").decode(), request_id=7)
                    result["client"] = reply

                tg.start_soon(proxy)
                tg.start_soon(client)
        assert result["answer"] == {"Status": "success"}
        assert result["client"]["status"] == 200 and json.loads(result["client"]["body"])["answer"] == ANSWER


async def test_snowflake_over_webtransport_and_bad_envelopes():
    async with snowflake(**WT) as srv:
        async with wt_connect(srv.webtransport_url + "/proxy") as proxy:
            reply = await ws_exchange(proxy, proxy_poll("wt-proxy"), request_id=1)
            assert reply["status"] == 200 and json.loads(reply["body"])["Status"] == "no match"
            # Bad request envelopes get an HTTP-like status, and the channel stays usable.
            await proxy.send(json.dumps({"id": 2, "body": 5}))
            assert json.loads(await proxy.recv())["status"] == 400
            reply = await ws_exchange(proxy, "x" * 100_001, request_id=3)
            assert reply["status"] == 400  # Go's MaxBytesReader limit, as over HTTP
            reply = await ws_exchange(proxy, "{}", request_id=4, method="GET", headers={"x": "y"})
            assert reply["status"] == 400  # Snowflake accepts any method; an empty poll is a bad request
        async with ws_connect(srv.ws_url + "/proxy") as ws:
            await ws.send("not json")
            assert await closed_code(ws) == 1007
        async with ws_connect(srv.ws_url + "/proxy") as ws:
            await ws.send("[" * 100_000)  # nesting deeper than the decoder's recursion limit
            assert await closed_code(ws) == 1007
        async with ws_connect(srv.ws_url + "/proxy") as ws:
            await ws.send(b"\x00")
            assert await closed_code(ws) == 1003


async def test_snowflake_long_poll_cancelled_when_the_channel_closes():
    async with snowflake() as srv:
        async with ws_connect(srv.ws_url + "/proxy") as ws:
            await ws.send(json.dumps({"id": 1, "body": proxy_poll("gone")}))
            await wait_known(srv, lambda proxies: proxies)
        await wait_known(srv, lambda proxies: not proxies)  # the poll was withdrawn when the socket went


# -- wasimoff providers over WebTransport and long-poll ---------------------------------------------------
async def test_wasimoff_provider_over_webtransport():
    from rendezvous_wasimoff import schema
    from rendezvous_wasimoff.codec import SUBPROTOCOL_PROTOBUF, Codec, pack, unpack

    async with serve("wasimoff", {"static_files": None}, http_server="native", server=WT) as srv:
        runtime = srv.runtimes["wasimoff"]
        codec = Codec(SUBPROTOCOL_PROTOBUF)
        async with wt_connect(srv.webtransport_url + "/api/provider/ws?id=wt-prov", headers={"user-agent": "wt-test"},
                              protocols=[SUBPROTOCOL_PROTOBUF]) as provider:
            assert provider.protocol == SUBPROTOCOL_PROTOBUF
            envelope = codec.decode(await provider.recv())
            assert isinstance(unpack(envelope), schema.ListingRequest)
            reply = schema.Envelope(sequence=envelope.sequence, type=schema.RESPONSE)
            pack(reply, schema.ListingResponse())
            await provider.send(codec.encode(reply))
            event = schema.Envelope(sequence=0, type=schema.EVENT)
            pack(event, schema.ProviderResources(concurrency=2))
            await provider.send(codec.encode(event))
            await wait_until(lambda: runtime.providers)
            assert [s.name for s in runtime.providers] == ["wt-prov"]


async def test_wasimoff_provider_over_long_poll():
    from rendezvous_wasimoff import schema
    from rendezvous_wasimoff.codec import SUBPROTOCOL_JSON, Codec, unpack

    async with serve("wasimoff", {"static_files": None}, http_server="native") as srv:
        provider = await LongPoll.open(srv.url + "/api/provider/ws?id=lp-prov",
                                       {"User-Agent": "lp-test", "Sec-WebSocket-Protocol": SUBPROTOCOL_JSON})
        assert provider.subprotocol == SUBPROTOCOL_JSON
        envelope = Codec(SUBPROTOCOL_JSON).decode(await provider.recv())
        assert isinstance(unpack(envelope), schema.ListingRequest)
        # Without a User-Agent it is refused with the original's 400, before any session exists.
        reply = await http_call(srv.url + "/api/provider/ws", "POST", b"", {"Sec-WebSocket-Protocol": SUBPROTOCOL_JSON})
        assert reply.status == 400 and reply.content == b"no user-agent\n"


async def test_wasimoff_client_apis_over_websocket_exchanges():
    import base64

    from rendezvous_wasimoff.programs import tool_wasm
    from rendezvous_wasimoff.provider import Provider

    async with serve("wasimoff", {"static_files": None}, http_server="native") as srv:
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, name="p", workers=1).run)
            async with ws_connect(srv.ws_url + "/api/storage/upload") as up:
                reply = await ws_exchange(up, "", body_base64=base64.b64encode(bytes(tool_wasm())).decode(),
                                          query="name=tool.wasm")
                assert reply["status"] == 200 and reply["body"].startswith("sha256:")
            async with ws_connect(srv.ws_url + "/api/client/wasimoff.v1.Tasks/RunWasip1") as rpc:
                body = json.dumps({"params": {"binary": {"ref": "tool.wasm"}, "args": ["t", "echo", "over", "ws"]}})
                reply = await ws_exchange(rpc, body, headers={"content-type": "application/json"})
                assert reply["status"] == 200
                assert base64.b64decode(json.loads(reply["body"])["ok"]["stdout"]) == b"over ws\n"
            tg.cancel_scope.cancel()


async def test_long_poll_sessions_are_bounded():
    from rendezvous.transports.bridges import Bridges

    async with overlay() as srv:
        bridges = next(t for t in srv.app.transports if isinstance(t, Bridges))
        bridges.max_sessions = 2
        first = await LongPoll.open(srv.url + "/join")
        await LongPoll.open(srv.url + "/join")
        reply = await http_call(srv.url + "/join", "POST")
        assert (reply.status, reply.content) == (503, b"too many long-poll sessions\n")
        await first.close()


async def test_wasimoff_client_socket_over_webtransport():
    from rendezvous_wasimoff import schema
    from rendezvous_wasimoff.codec import SUBPROTOCOL_PROTOBUF, Codec, pack, unpack
    from rendezvous_wasimoff.programs import tool_wasm
    from rendezvous_wasimoff.provider import Provider

    async with serve("wasimoff", {"static_files": None}, http_server="native", server=WT) as srv:
        await http_call(srv.url + "/api/storage/upload?name=tool.wasm", "POST", bytes(tool_wasm()))
        codec = Codec(SUBPROTOCOL_PROTOBUF)
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, name="p", workers=1).run)
            async with wt_connect(srv.webtransport_url + "/api/client/ws", protocols=[SUBPROTOCOL_PROTOBUF]) as client:
                request = schema.Wasip1Request()
                request.params.binary.ref = "tool.wasm"
                request.params.args.extend(["tool.wasm", "echo", "client", "over", "wt"])
                envelope = schema.Envelope(sequence=5, type=schema.REQUEST)
                pack(envelope, request)
                await client.send(codec.encode(envelope))
                reply = codec.decode(await client.recv(20))
                assert reply.sequence == 5 and unpack(reply).ok.stdout == b"client over wt\n"
            tg.cancel_scope.cancel()
