"""wasimoff generation A (WebTransport era, spec wasimoff.md §1 and §7) on the one dispatcher."""

from __future__ import annotations

import json

import anyio
import httpx
import msgpack
import pytest

from rendezvous.config import load_config
from rendezvous.errors import ConfigError
from rendezvous.testing import WebTransportSessionClient, http_call, self_signed_certificate, serve, wait_until
from rendezvous_wasimoff.programs import tool_wasm
from rendezvous_wasimoff.peer import Provider

from .wasimoff_peers import GenAPeer, run_rpc, wasip1

pytestmark = pytest.mark.anyio
TOOL = bytes(tool_wasm())
JSON = {"Content-Type": "application/json"}
API = "/api/broker/v1"


def broker(**settings):
    return serve("wasimoff", {"static_files": None, **settings}, http_server="native", server={"webtransport_port": 0})


async def run(srv, config, timeout=20):
    return await http_call(srv.url + API + "/run", "POST", json.dumps(config).encode(), JSON, timeout=timeout)


async def test_config_healthz_and_alt_svc():
    async with broker() as srv:
        reply = await http_call(srv.url + API + "/config")
        assert reply.status == 200 and reply.headers["access-control-allow-origin"] == "*"
        config = json.loads(reply.content)
        wt = srv.webtransport
        assert config == {"transport": f"https://127.0.0.1:{wt.port}/transport", "certhash": wt.certificate.sha256}
        assert reply.headers["alt-svc"] == f'h3=":{wt.port}"; ma=2592000'
        health = await http_call(srv.url + API + "/healthz")
        assert (health.status, health.content) == (200, b"OK\n")


async def test_config_with_file_certificates_has_no_certhash_and_a_set_transport_url(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    async with broker(quic_cert=str(cert), quic_key=str(key), transport_url="https://broker.example:4443/transport") as srv:
        config = json.loads((await http_call(srv.url + API + "/config")).content)
        assert config == {"transport": "https://broker.example:4443/transport"}
        assert not srv.webtransport.certificate.ephemeral


async def test_client_api_errors_without_providers():
    async with broker() as srv:
        reply = await http_call(srv.url + API + "/upload", "POST", TOOL)
        assert (reply.status, reply.content) == (400, b"need a name in query parameter\n")
        reply = await http_call(srv.url + API + "/upload?name=tool.wasm", "POST", TOOL)
        assert (reply.status, reply.content) == (503, b"provider list is empty\n")
        assert srv.runtimes["wasimoff"].storage.resolve("tool.wasm")  # stored all the same
        good = {"bin": "tool.wasm", "exec": [{"args": ["echo", "hi"]}]}
        reply = await run(srv, good)
        assert (reply.status, reply.content) == (503, b"provider store is empty\n")
        reply = await http_call(srv.url + API + "/run", "POST", json.dumps(good).encode(), {"Content-Type": "text/plain"})
        assert reply.status == 400
        reply = await run(srv, {"bin": "tool.wasm", "trace": True, "exec": [{"args": ["a"]}, {"args": ["b"]}]})
        assert (reply.status, reply.content) == (400, b"trace is only supported for a single task\n")
        for bad in ({"exec": [{"args": ["x"]}]}, {"bin": "tool.wasm", "exec": []}, {"bin": "tool.wasm", "exec": [{}]},
                    {"bin": "tool.wasm", "exec": [{"envs": ["NOEQUALS"]}]}, [], "null"):
            reply = await run(srv, bad)
            assert reply.status == 400 and reply.content.startswith(b"failed to validate run configuration"), bad
        for body in (b"{nope", b"[" * 100_000, b"\xff\xfe"):
            reply = await http_call(srv.url + API + "/run", "POST", body, JSON)
            assert reply.status == 400 and reply.content.startswith(b"failed to validate run configuration")


async def test_gen_a_provider_connects_gets_files_and_runs_tasks():
    async with broker() as srv:
        runtime = srv.runtimes["wasimoff"]
        await http_call(srv.url + API + "/upload?name=tool.wasm", "POST", TOOL)  # before the provider comes
        async with GenAPeer(srv, pool=2) as peer:
            await wait_until(lambda: runtime.gen_a.providers)
            # The broker's connect sequence: ping, fs:list, then probe + upload of every stored file.
            assert peer.calls[:4] == ["ping", "fs:list", "fs:probe", "fs:upload"]
            assert peer.files["tool.wasm"] == TOOL
            assert runtime.dispatch.free_slots() == 2  # poolinfo.pool is the capacity
            reply = await run(srv, {"bin": "tool.wasm", "envs": ["GLOBAL=1"], "exec": [
                {"args": ["echo", "hello", "gen", "A"]},
                {"args": ["quit", "3"]},
                {"args": ["cat"], "stdin": "from stdin", "envs": ["LOCAL=2"]},
            ]})
            assert reply.status == 200 and reply.headers["content-type"] == "application/json"
            echo, quit_, cat = json.loads(reply.content)
            assert echo == {"result": {"status": 0, "stdout": "hello gen A\n", "stderr": ""}}
            assert quit_["result"]["status"] == 3 and quit_["result"]["stderr"] == "bye"
            assert cat["result"]["stdout"] == "from stdin"
            assert "LOCAL=2\nGLOBAL=1" in cat["result"]["stderr"]  # entry envs, then the global ones
            run_body = peer.runs[0]
            assert run_body["binary"] == "tool.wasm" and run_body["args"] == ["echo", "hello", "gen", "A"]
            assert run_body["id"].endswith("/0000")
            # A file the program does not write: the provider's error is the item's error.
            reply = await run(srv, {"bin": "tool.wasm", "exec": [{"args": ["echo"], "datafile": "out.txt"}]})
            assert json.loads(reply.content) == [{"error": 'Error: requested datafile "out.txt" not found!'}]
            # A traced task: the broker's events around the provider's, as the original concatenates them.
            reply = await run(srv, {"bin": "tool.wasm", "trace": True, "exec": [{"args": ["echo", "t"]}]})
            assert reply.content.endswith(b"\n") and b'"result":{"status":0' in reply.content  # Go's compact encoding
            traced = json.loads(reply.content)[0]["result"]
            assert [e["label"] for e in traced["trace"]] == [
                "broker: request received", "broker: configuration decoded", "broker: task queued",
                "broker: task scheduled", "provider: worker: start", "provider: worker: done",
                "broker: task rpc completed"]
            assert peer.runs[-1]["trace"] is True
            # Later uploads are pushed to connected providers.
            reply = await http_call(srv.url + API + "/upload?name=data.txt", "POST", b"some data")
            assert (reply.status, reply.content) == (200, b"Upload OK, 9 bytes")
            assert peer.files["data.txt"] == b"some data"
            reply = await run(srv, {"bin": "tool.wasm", "exec": [{"args": ["echo", "x"], "loadfs": ["data.txt"]}]})
            assert json.loads(reply.content)[0]["result"]["stdout"] == "x\n"
            assert peer.runs[-1]["loadfs"] == ["data.txt"]
        await wait_until(lambda: not runtime.gen_a.providers)
        assert runtime.dispatch.workers == 0


async def test_one_dispatcher_for_both_generations():
    async with broker() as srv, httpx.AsyncClient(timeout=30) as http:
        runtime = srv.runtimes["wasimoff"]
        await http_call(srv.url + API + "/upload?name=tool.wasm", "POST", TOOL)
        # A gen-C client task (ConnectRPC) runs on a gen-A provider...
        async with GenAPeer(srv, pool=1) as peer:
            await wait_until(lambda: runtime.gen_a.providers)
            reply, response = await run_rpc(http, srv, wasip1(ref="tool.wasm", args=["tool.wasm", "echo", "via", "C"]))
            assert reply.status_code == 200 and response.ok.stdout == b"via C\n"
            assert peer.runs and peer.runs[-1]["args"] == ["echo", "via", "C"]
            # ...and an inline binary is uploaded to it under its hash first.
            reply, response = await run_rpc(http, srv, wasip1(blob=TOOL, args=["x", "echo", "blob"]))
            assert response.ok.stdout == b"blob\n" and peer.runs[-1]["binary"].startswith("sha256-")
        await wait_until(lambda: not runtime.gen_a.providers)
        # A gen-A client task runs on a gen-C provider (WebSocket + protobuf), datafile included.
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, name="gen-c", workers=1).run)
            reply = await run(srv, {"bin": "tool.wasm", "exec": [{"args": ["echo", "via", "A"]}]})
            assert json.loads(reply.content) == [{"result": {"status": 0, "stdout": "via A\n", "stderr": ""}}]
            tg.cancel_scope.cancel()


async def test_poolinfo_updates_capacity_and_a_dead_provider_retries_elsewhere():
    async with broker() as srv:
        runtime = srv.runtimes["wasimoff"]
        await http_call(srv.url + API + "/upload?name=tool.wasm", "POST", TOOL)
        async with GenAPeer(srv, pool=0) as idle:
            await wait_until(lambda: runtime.gen_a.providers)
            assert runtime.dispatch.free_slots() == 0  # a pool of 0 never gets tasks (b23f335 in Chromium)
            async with anyio.create_task_group() as tg:
                results = {}

                async def submit():
                    results["reply"] = await run(srv, {"bin": "tool.wasm", "exec": [{"args": ["sleep", "300"]}]})

                tg.start_soon(submit)
                await wait_until(lambda: runtime.dispatch.queued == 1)
                idle.send_control("poolinfo", {"nmax": 2, "pool": 1})
                await wait_until(lambda: idle.runs)
                # The provider vanishes mid-task: gen-C semantics, the task retries on another one.
                async with GenAPeer(srv, pool=1) as other:
                    await wait_until(lambda: len(runtime.gen_a.providers) == 2)
                    idle.session.close(0)
                    await wait_until(lambda: "reply" in results, timeout=20)
                    assert other.runs
            assert json.loads(results["reply"].content)[0]["result"]["stdout"] == "slept\n"


async def test_hostile_sessions_on_transport_keep_the_broker_serving():
    async with broker(listing_timeout=0.5) as srv:
        runtime = srv.runtimes["wasimoff"]
        # Garbage on the control stream: the session is closed, nothing registered.
        async with WebTransportSessionClient(srv.webtransport_url + "/transport") as wt:
            control = wt.open_stream()
            rpc = await wt.accept_stream()
            wt.send_stream(control, b"\xc1" * 16)  # 0xc1 is never valid MessagePack
            assert await wt.wait_closed() == 1007
        # A provider that answers ping wrongly is not registered.
        async with GenAPeer(srv, answer_ping="nope") as peer:
            await anyio.sleep(0.3)
            assert peer.calls == ["ping"] and not runtime.gen_a.providers
        # Unknown control types, non-map values and a huge pool are taken in stride.
        async with GenAPeer(srv, pool=1) as peer:
            peer.send_control("mystery", {"x": 1})
            peer.session.send_stream(peer.control, msgpack.packb([1, 2, 3]) + msgpack.packb("str"))
            await wait_until(lambda: runtime.gen_a.providers)
            assert runtime.dispatch.free_slots() == 1
        # A client that never opens its control stream is closed after the listing timeout.
        async with WebTransportSessionClient(srv.webtransport_url + "/transport") as silent:
            assert await silent.wait_closed(3) == 1002
        # And an unknown WebTransport path is refused.
        with pytest.raises(ConnectionError):
            async with WebTransportSessionClient(srv.webtransport_url + "/nowhere"):
                pass
        assert (await http_call(srv.url + API + "/healthz")).status == 200
        del rpc


def test_wasimoff_gen_a_env_vars(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    config = load_config(["wasimoff"], environ={"WASIMOFF_QUIC_LISTEN": ":5443"})
    assert config.server.webtransport_port == 5443
    assert load_config(["wasimoff"], environ={}).server.webtransport_port == 4443  # the seed's default
    assert load_config(["wasimoff"], environ={"WASIMOFF_QUIC_LISTEN": ""}).server.webtransport_port is None
    config = load_config(["wasimoff"], environ={"WASIMOFF_QUIC_CERT": str(cert), "WASIMOFF_QUIC_KEY": str(key),
                                                "WASIMOFF_HTTPS": "true"})
    assert config.server.webtransport_cert == cert and config.server.cert == cert
    with pytest.raises(ConfigError, match="give both or neither"):
        load_config(["wasimoff"], environ={"WASIMOFF_QUIC_CERT": str(cert)})
    with pytest.raises(ConfigError, match="WASIMOFF_HTTPS needs"):
        load_config(["wasimoff"], environ={"WASIMOFF_HTTPS": "1"})
    with pytest.raises(ConfigError, match="WASIMOFF_QUIC_LISTEN"):
        load_config(["wasimoff"], environ={"WASIMOFF_QUIC_LISTEN": "nonsense"})


async def test_every_http_route_also_answers_over_http3():
    # As the original: both listeners share one mux, so the API answers on the QUIC port too.
    from rendezvous.testing import h3_call

    async with broker(max_upload=100_000) as srv:
        base = srv.webtransport_url
        reply = await h3_call(base + API + "/healthz")
        assert (reply.status, reply.content) == (200, b"OK\n")
        reply = await h3_call(base + API + "/upload", "POST", TOOL)
        assert reply.status == 400
        reply = await h3_call(base + "/api/storage/upload?name=t.wasm", "POST", TOOL)
        assert reply.status == 200 and reply.content.startswith(b"sha256:")
        assert (await h3_call(base + "/api/storage/t.wasm")).content == TOOL
        assert (await h3_call(base + "/nowhere")).status == 404
        assert (await h3_call(base + "/api/storage/upload", "PUT")).status == 405
        reply = await h3_call(base + "/api/storage/upload", "POST", b"\0asm" + b"x" * 100_000)
        assert reply.status == 413


async def test_hostile_rpc_answers_close_only_that_session():
    async with broker(listing_timeout=2) as srv:
        runtime = srv.runtimes["wasimoff"]
        for garbage in (msgpack.packb({(1, 2): 1}, use_bin_type=True),  # an unhashable map key
                        msgpack.packb({"Seq": [1], "Error": None}) + msgpack.packb("pong"),  # an unhashable Seq
                        b"\xc1\xc1"):
            async with WebTransportSessionClient(srv.webtransport_url + "/transport") as wt:
                wt.open_stream()
                rpc = await wt.accept_stream()
                await wt.receive_stream(rpc)  # the broker's ping
                wt.send_stream(rpc, garbage)
                assert await wt.wait_closed() == 1007
        assert not runtime.gen_a.providers
        async with GenAPeer(srv) as peer:  # and the next provider is served
            await wait_until(lambda: runtime.gen_a.providers)
            assert peer.calls[:2] == ["ping", "fs:list"]


class TraceLiar(GenAPeer):
    """Answers a traced run with a ``trace`` that is not a list of events."""

    async def _run(self, body):
        result = await super()._run(body)
        result["trace"] = 5
        return result


async def test_a_run_answer_with_a_malformed_trace_is_still_a_result():
    async with broker() as srv:
        await http_call(srv.url + API + "/upload?name=tool.wasm", "POST", TOOL)
        async with TraceLiar(srv, pool=1) as peer:
            await wait_until(lambda: srv.runtimes["wasimoff"].gen_a.providers)
            await wait_until(lambda: "tool.wasm" in peer.files)
            reply = await run(srv, {"bin": "tool.wasm", "trace": True, "exec": [{"args": ["echo", "t"]}]}, timeout=10)
            assert reply.status == 200
            traced = json.loads(reply.content)[0]["result"]
            assert traced["stdout"] == "t\n"
            assert [e["label"] for e in traced["trace"]][-1] == "broker: task rpc completed"
        reply = await http_call(srv.url + "/healthz")  # and the broker still serves
        assert reply.status == 200
