"""Hostile JSON and requests (issue 14) on every HTTP server: lone surrogates, 5 000-digit
integers, ``1e999``, ``NaN``; a failing handler behind the WebSocket bridge; a gen-A provider
whose ``fs:list`` is a scalar; a POST without a length.

Where the original is Go, the replies are the Go broker's (v2.5.1, run side by side); where it is
node (the overlay), what node forwards.
"""

from __future__ import annotations

import json

import anyio
import msgpack
import pytest
import structlog.testing

from rendezvous.testing import (
    WebTransportSessionClient,
    http_call,
    recv_frame,
    recv_json,
    serve,
    wait_until,
    ws_connect,
    ws_exchange,
)
from rendezvous_overlay.codec import HEARTBEAT
from rendezvous_snowflake import messages
from rendezvous_wasimoff.programs import tool_wasm

from .conftest import SECRET
from .test_snowflake import wait_known
from .wasimoff_peers import GenAPeer

pytestmark = pytest.mark.anyio
BIG = "1" * 5000
PATTERN = "snowflake.torproject.net"
ANSWER = '{"type":"answer","sdp":"v=0\\r\\na=candidate:1 1 udp 1 10.0.0.2 6000 typ host\\r\\n"}'
BAD_RELAY = b'{"Status":"incorrect relay pattern","Offer":"","NAT":"","RelayURL":""}'


def snowflake(http_server):
    return serve("snowflake", {"disable_tls": True, "disable_geoip": True, "allowed_relay_pattern": PATTERN,
                               "proxy_timeout": 2.0, "client_timeout": 2.0, "metrics_interval": 3600.0},
                 http_server=http_server)


def poll(fields: str, pattern: str = "elsewhere.example") -> bytes:
    """A proxy poll with extra raw JSON ``fields``; a relay pattern the broker refuses answers at once."""
    return ('{"Sid":"s","Version":"1.3","Type":"standalone","NAT":"unrestricted",%s"AcceptedRelayPattern":"%s"}'
            % (fields, pattern)).encode()


# -- item 1: Snowflake decides as the Go broker --------------------------------------------------------
async def test_snowflake_answers_hostile_json_as_the_go_broker(http_server):
    async with snowflake(http_server) as srv:
        for clients in ("1e999", BIG, "1.5"):  # an int field: Go's type error, a 400
            reply = await http_call(srv.url + "/proxy", "POST", poll(f'"Clients":{clients},'))
            assert (reply.status, reply.content) == (400, b""), clients
        for extra in (BIG, "1e999", '"\\ud800"'):  # an unknown field: ignored
            reply = await http_call(srv.url + "/proxy", "POST", poll(f'"Clients":1,"x":{extra},'))
            assert (reply.status, reply.content) == (200, BAD_RELAY), extra
        for body, expected in (
            (b'{"offer":"o","nat":"unknown","x":%s}' % BIG.encode(), b'{"error":"no snowflake proxies currently available"}'),
            (b'{"offer":1e999,"nat":"unknown"}',
             b'{"error":"json: cannot unmarshal number into Go struct field ClientPollRequest.offer of type string"}'),
            (b'{"offer":"o","x":NaN}', b'{"error":"invalid character \'N\' looking for beginning of value"}'),
            (b'{"offer":"o","x":-Infinity}', b'{"error":"invalid character \'I\' in numeric literal"}'),
        ):
            reply = await http_call(srv.url + "/client", "POST", b"1.0\n" + body)
            assert (reply.status, reply.content) == (200, expected), body
        reply = await http_call(srv.url + "/answer", "POST",
                                b'{"Version":"1.0","Sid":"\\ud800","Answer":"a=candidate","z":%s}' % BIG.encode())
        assert (reply.status, reply.content) == (200, b'{"Status":"client gone"}')


async def test_an_offer_with_lone_surrogates_reaches_the_proxy_as_go_decodes_it(http_server):
    async with snowflake(http_server) as srv, anyio.create_task_group() as tg:
        result = {}

        async def client():
            body = b'1.0\n{"offer":"sdp \\ud800 \\udfff\\ud83d\\ude00","nat":"unknown"}'
            result["client"] = await http_call(srv.url + "/client", "POST", body)

        async def proxy():
            polled = await http_call(srv.url + "/proxy", "POST", poll('"Clients":0,', PATTERN))
            result["poll"] = polled
            answer = json.dumps({"Version": "1.3", "Sid": "s", "Answer": ANSWER}).encode()
            result["answer"] = await http_call(srv.url + "/answer", "POST", answer)

        tg.start_soon(proxy)
        await wait_known(srv, lambda proxies: proxies)
        tg.start_soon(client)
    assert result["poll"].status == 200
    assert json.loads(result["poll"].content)["Offer"] == "sdp \ufffd \ufffd\U0001f600"  # Go: U+FFFD per lone one
    assert result["answer"].content == b'{"Status":"success"}'
    assert result["client"].status == 200 and json.loads(result["client"].content) == {"answer": ANSWER}


# -- items 1 and 4: the WebSocket bridge always answers --------------------------------------------------
async def test_hostile_json_over_the_websocket_bridge(http_server):
    async with snowflake(http_server) as srv, ws_connect(srv.ws_url + "/proxy") as ws:
        reply = await ws_exchange(ws, poll(f'"Clients":{BIG},').decode(), request_id=1, timeout=5)
        assert reply["status"] == 400
        # A lone surrogate in the request text becomes U+FFFD, as fetch() sends a string.
        reply = await ws_exchange(ws, poll('"Clients":0,').decode().replace('"s"', '"\ud800"'), request_id=2, timeout=5)
        assert (reply["status"], reply["body"]) == (200, BAD_RELAY.decode())
        # Ids come back as sent, even those Python cannot hold.
        for request_id in ("1e999", BIG):
            await ws.send('{"id":%s,"body":"{}"}' % request_id)
            with anyio.fail_after(5):
                text = await ws.recv()
            assert text.startswith('{"id": %s, "status": 400' % request_id)
        await ws.send('{"id":NaN,"body":"{}"}')  # not JSON: the channel closes 1007, as for any non-JSON
        with pytest.raises(Exception):
            with anyio.fail_after(5):
                await ws.recv()
        assert ws.close_code == 1007


async def test_a_failing_handler_over_the_bridge_is_a_500_and_the_channel_serves_on(http_server, monkeypatch):
    decode = messages.decode_proxy_poll

    def failing(body):
        if body == b"boom":
            raise RuntimeError("handler bug")
        return decode(body)

    monkeypatch.setattr(messages, "decode_proxy_poll", failing)
    with structlog.testing.capture_logs() as logs:
        async with snowflake(http_server) as srv, ws_connect(srv.ws_url + "/proxy") as ws:
            failed = await ws_exchange(ws, "boom", request_id="a", timeout=5)
            reply = await ws_exchange(ws, poll('"Clients":0,').decode(), request_id="b", timeout=5)
            assert (reply["status"], reply["body"]) == (200, BAD_RELAY.decode())
    failures = [e for e in logs if e["event"] == "handler failed"]
    assert len(failures) == 1 and failures[0]["path"] == "/proxy" and failures[0]["exc_info"] is True
    # The same 500 as over HTTP (rendezvous.transports.handlers), quoting the logged request id.
    assert (failed["status"], failed["body"]) == (500, f"internal server error (request {failures[0]['request_id']})\n")


# -- item 1: the overlay forwards what node forwards -------------------------------------------------------
async def test_overlay_forwards_hostile_numbers_and_surrogates_as_node_does(http_server):
    async with serve("overlay", {"secret": SECRET}, http_server=http_server) as srv:
        async with ws_connect(f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root") as root, \
                ws_connect(srv.ws_url + "/join") as prospect:
            await prospect.send('{"destination":null,"x":1e999,"y":%s,"z":1.0,"s":"\\ud800"}' % BIG)
            frame = await recv_frame(root)
            origin = json.loads(frame)["origin"]
            # node 20: JSON.stringify(Infinity) is null, a lone surrogate is written back escaped.
            assert frame == '{"destination":null,"x":null,"y":null,"z":1,"s":"\\ud800","origin":"%s"}' % origin
            await prospect.send("1e999")  # a primitive: forwarded without an origin
            assert await recv_frame(root) == "null"
            await prospect.send('{"destination":null,"still":"open"}')
            assert (await recv_json(root))["still"] == "open"
            await root.send(HEARTBEAT)


# -- items 1 and 3: wasimoff generation A --------------------------------------------------------------------
API = "/api/broker/v1"
JSON = {"Content-Type": "application/json"}


def gen_a(http_server):
    return serve("wasimoff", {"static_files": None, "listing_timeout": 3}, http_server=http_server,
                 server={"webtransport_port": 0})


async def test_gen_a_run_decodes_hostile_json_as_go(http_server):
    async with gen_a(http_server) as srv:
        run = srv.url + API + "/run"
        config = b'{"bin":"tool.wasm","exec":[{"args":["echo","x"]}],"n":%s,"m":1e999}' % BIG.encode()
        reply = await http_call(run, "POST", config, JSON)
        assert (reply.status, reply.content) == (503, b"provider store is empty\n")  # decoded; nobody to run it
        reply = await http_call(run, "POST", b'{"bin":"tool.wasm","exec":[{"args":["a"]}],"n":NaN}', JSON)
        assert (reply.status, reply.content) == (
            400, b"failed to validate run configuration: invalid character 'N' looking for beginning of value\n")
        await http_call(srv.url + API + "/upload?name=tool.wasm", "POST", bytes(tool_wasm()))
        async with GenAPeer(srv, pool=1):
            await wait_until(lambda: srv.runtimes["wasimoff"].gen_a.providers)
            config = b'{"bin":"tool.wasm","exec":[{"args":["echo","\\ud800x"],"stdin":"\\udc00"}]}'
            reply = await http_call(run, "POST", config, JSON)
            assert reply.status == 200
            assert json.loads(reply.content) == [{"result": {"status": 0, "stdout": "\ufffdx\n", "stderr": ""}}]


async def _provider_answering_fs_list(srv, listing, done):
    """A gen-A provider that answers ping, then ``fs:list`` with ``listing``; ``done`` gets its close code."""
    async with WebTransportSessionClient(srv.webtransport_url + "/transport") as wt:
        wt.open_stream()
        rpc = await wt.accept_stream()
        unpacker = msgpack.Unpacker(raw=False)
        for body in ("pong", listing):
            values = []
            while len(values) < 2:
                unpacker.feed(await wt.receive_stream(rpc))
                values.extend(unpacker)
            header = values[0]
            reply = {"ServiceMethod": header["ServiceMethod"], "Seq": header["Seq"], "Error": None}
            wt.send_stream(rpc, msgpack.packb(reply) + msgpack.packb(body))
        done.append((header["ServiceMethod"], await wt.wait_closed()))


@pytest.mark.parametrize("listing", [5, 1.5, True, "files"])
async def test_gen_a_provider_answering_fs_list_with_a_scalar_is_closed_alone(listing):
    async with gen_a("native") as srv:
        runtime = srv.runtimes["wasimoff"]
        async with GenAPeer(srv, pool=1):
            await wait_until(lambda: runtime.gen_a.providers)
            with structlog.testing.capture_logs() as logs:
                done = []
                await _provider_answering_fs_list(srv, listing, done)
            assert done == [("fs:list", 1007)]
            assert len(runtime.gen_a.providers) == 1  # the good provider is still served
            assert any(e["event"] == "provider failed to register" and "fs:list" in e["error"] for e in logs)
            assert not [e for e in logs if e.get("log_level") in ("error", "critical")]


# -- item 2: a POST without a length -------------------------------------------------------------------------
async def test_a_post_without_content_length_or_chunks_is_a_bad_request(http_server):
    async with snowflake(http_server) as srv:
        for path in ("/proxy", "/answer"):
            async with await anyio.connect_tcp("127.0.0.1", srv.port) as stream:
                await stream.send(b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
                data = b""
                with anyio.fail_after(5):
                    try:
                        while b"\r\n\r\n" not in data:
                            data += await stream.receive()
                    except anyio.EndOfStream:
                        pass
            assert data.startswith(b"HTTP/1.1 400"), (path, data)
