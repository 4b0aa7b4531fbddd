"""wasimoff broker behaviours (spec §3, 1–24), against a real server on 127.0.0.1, with scripted
providers and with our wasmtime provider running real WASI programs."""

from __future__ import annotations

import base64
import gc
import hashlib
import zipfile
import io

import anyio
import httpx
import pytest
from websockets.exceptions import InvalidStatus

from rendezvous.testing import closed_code, serve, wait_until
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import SUBPROTOCOL_PROTOBUF, Codec, pack, unpack
from rendezvous_wasimoff.programs import tool_wasm
from rendezvous_wasimoff.peer import Provider
from rendezvous_wasimoff.tasks import TaskHandle

from .wasimoff_peers import PROTO, RawProvider, ok_response, run_rpc, wasip1

pytestmark = pytest.mark.anyio
TOOL = bytes(tool_wasm())
TOOL_REF = "sha256:" + hashlib.sha256(TOOL).hexdigest()


def broker(http_server="native", **settings):
    return serve("wasimoff", {"static_files": None, "ping_interval": 5.0, **settings}, http_server=http_server)


def client():
    return httpx.AsyncClient(timeout=30)


async def upload(http, srv, data=TOOL, name="tool.wasm"):
    r = await http.post(srv.url + "/api/storage/upload" + (f"?name={name}" if name else ""), content=data)
    return r


# 1
async def test_healthz_and_version():
    async with broker() as srv, client() as http:
        r = await http.get(srv.url + "/healthz")
        assert r.status_code == 200 and r.text == "OK\n"
        assert "version" in (await http.get(srv.url + "/api/version")).json()


# 2, 3, 4, 5
async def test_provider_handshake(http_server):
    async with broker(http_server) as srv:
        async with RawProvider(srv, auto=False) as p:
            assert p.ws.subprotocol == SUBPROTOCOL_PROTOBUF
            raw = p.codec.decode(await p.ws.recv())
            assert raw.type == schema.REQUEST and raw.sequence >= 1
            assert raw.payload.type_url == "wasimoff/wasimoff.v1.Filesystem.Listing.Request"
            await p.respond(raw.sequence, schema.ListingResponse(files=[]))
            envelope, payload = await p.recv()
            assert envelope.type == schema.EVENT and isinstance(payload, schema.ClusterInfo) and payload.providers == 1
        async with RawProvider(srv, subprotocols=["nonsense"]) as p:
            assert await closed_code(p.ws) == 1002
        with pytest.raises(InvalidStatus) as info:
            async with RawProvider(srv, headers={"User-Agent": ""}) as p:
                pass
        assert info.value.response.status_code == 400


async def test_json_subprotocol_provider():
    async with broker() as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, name="jsonp", workers=1, json=True).run)
            reply, response = await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "echo", "json"]))
            assert response.ok.stdout == b"json\n" and response.info.provider == "jsonp"
            tg.cancel_scope.cancel()


# 6, 7
async def test_capacity_gates_tasks():
    async with broker() as srv, client() as http:
        await upload(http, srv)
        async with RawProvider(srv) as p, anyio.create_task_group() as tg:
            await p.recv()  # ClusterInfo
            results = []

            async def submit(i):
                results.append((await run_rpc(http, srv, wasip1("tool.wasm", [str(i)])))[1])

            for i in range(3):
                tg.start_soon(submit, i)
            with pytest.raises(TimeoutError):
                await p.recv_request(schema.Wasip1Request, timeout=0.5)  # capacity 0: nothing
            await p.event(schema.ProviderResources(concurrency=2))
            first = [await p.recv_request(schema.Wasip1Request) for _ in range(2)]
            with pytest.raises(TimeoutError):
                await p.recv_request(schema.Wasip1Request, timeout=0.3)  # at most 2 in flight
            await p.respond(first[0][0].sequence, ok_response(first[0][1]))
            third = await p.recv_request(schema.Wasip1Request)  # queued, not rejected
            await p.respond(first[1][0].sequence, ok_response(first[1][1]))
            await p.respond(third[0].sequence, ok_response(third[1]))
        assert len(results) == 3 and all(r.WhichOneof("result") == "ok" for r in results)


# 8
async def test_pings_and_a_provider_that_stops_answering_is_dropped():
    async with broker(ping_interval=0.2, ping_misses=2) as srv:
        async with RawProvider(srv) as p:
            envelope, payload = await p.recv()  # ClusterInfo; pings answered inside recv
            with anyio.move_on_after(1.0):
                while True:
                    await p.recv()
            assert p.ws.close_code is None  # still connected after ~5 answered pings
        async with RawProvider(srv, auto=False) as mute:
            listing = mute.codec.decode(await mute.ws.recv())
            await mute.respond(listing.sequence, schema.ListingResponse())
            assert await closed_code(mute.ws, timeout=5) == 1011


# 9
async def test_provider_requests_are_refused():
    async with broker() as srv, RawProvider(srv) as p:
        await p.request(schema.Ping())
        while True:
            envelope, _ = await p.recv()
            if envelope.type == schema.RESPONSE:
                break
        assert envelope.error == "requests not supported on provider socket" and envelope.sequence == 100


# 10
async def test_cluster_info_and_throughput_events():
    async with broker() as srv, RawProvider(srv, name="a") as a:
        _, info = await a.recv()
        assert info.providers == 1
        async with RawProvider(srv, name="b") as b:
            await b.recv()  # b answers its Listing and is added
            with anyio.fail_after(5):
                while True:
                    _, payload = await a.recv()
                    if isinstance(payload, schema.ClusterInfo):
                        assert payload.providers == 2
                        break
        with anyio.fail_after(5):
            while True:
                _, payload = await a.recv()
                if isinstance(payload, schema.ClusterInfo):
                    assert payload.providers == 1
                    break
        with anyio.fail_after(3):
            while not isinstance((await a.recv())[1], schema.Throughput):
                pass


# 11, 12, 13
async def test_storage():
    async with broker() as srv, client() as http:
        r = await upload(http, srv)
        assert r.status_code == 200 and r.text == TOOL_REF + "\n"
        assert (await upload(http, srv, name=None)).text == TOOL_REF + "\n"  # idempotent
        assert (await upload(http, srv, b"#!/bin/sh\necho nope")).status_code == 415
        for key in (TOOL_REF, "tool.wasm"):
            r = await http.get(srv.url + "/api/storage/" + key)
            assert r.status_code == 200 and r.content == TOOL
            assert r.headers["x-wasimoff-ref"] == TOOL_REF and r.headers["content-type"] == "application/wasm"
            assert r.headers["access-control-allow-origin"] == "*"
        r = await http.get(srv.url + "/api/storage/tool.wasm", headers={"Range": "bytes=0-3"})
        assert r.status_code == 206 and r.content == b"\x00asm"
        assert (await http.get(srv.url + "/api/storage/nope")).status_code == 404
        zip_buffer = io.BytesIO()
        with zipfile.ZipFile(zip_buffer, "w") as z:
            z.writestr("hello.txt", "hi")
        r = await upload(http, srv, zip_buffer.getvalue(), "root.zip")
        assert r.status_code == 200
        assert (await http.get(srv.url + "/api/storage/root.zip")).headers["content-type"] == "application/zip"


async def test_upload_cap_and_persistent_directory_storage(tmp_path):
    async with broker(filestorage=f"dirfs://{tmp_path}", max_upload=5000) as srv, client() as http:
        assert (await upload(http, srv)).status_code == 200
        assert (await upload(http, srv, b"\x00asm" + b"x" * 6000, "big")).status_code == 413
    async with broker(filestorage=str(tmp_path)) as srv, client() as http:  # a restart keeps uploads
        r = await http.get(srv.url + "/api/storage/tool.wasm")
        assert r.status_code == 200 and r.content == TOOL


# 14, 15
async def test_file_resolution_errors_never_reach_a_provider():
    async with broker() as srv, client() as http, RawProvider(srv) as p:
        await p.recv()
        await p.event(schema.ProviderResources(concurrency=1))
        reply, _ = await run_rpc(http, srv, wasip1("no-such-name"))
        assert reply.status_code == 400 and "Ref not found in storage" in reply.json()["message"]
        both = wasip1("x", blob=TOOL)
        reply, _ = await run_rpc(http, srv, both)
        assert "don't use both Blob and Ref together" in reply.json()["message"]
        reply, _ = await run_rpc(http, srv, schema.Wasip1Request())
        assert "both Blob and Ref are nil" in reply.json()["message"]
        # HTTP exec: the request's fault is a 400 too (the original answers 500 for every error)
        reply = await http.post(srv.url + "/api/client/run/no-such-name", content=b"")
        assert reply.status_code == 400 and reply.text == "binary: Ref not found in storage\n"
        with pytest.raises(TimeoutError):
            await p.recv_request(schema.Wasip1Request, timeout=0.3)


# 15, 16, 20, 21 with real WASI execution
async def test_real_execution_through_every_client_api(http_server):
    async with broker(http_server) as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            provider = await tg.start(Provider(srv.url, name="py1", workers=2).run)
            reply, response = await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "echo", "a", "b"], reference="ref-7"))
            assert reply.headers["content-type"] == "application/proto"
            assert response.ok.status == 0 and response.ok.stdout == b"a b\n"
            assert response.info.provider == "py1" and response.info.id.isdigit() and response.info.reference == "ref-7"
            _, response = await run_rpc(http, srv, wasip1(blob=TOOL, args=["tool", "echo", "inline"]))
            assert response.ok.stdout == b"inline\n"  # a blob needs no upload
            _, response = await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "quit", "7"]))
            assert response.WhichOneof("result") == "ok" and response.ok.status == 7 and response.ok.stderr == b"bye"
            _, response = await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "trap"]))
            assert response.WhichOneof("result") == "error" and "unreachable" in response.error.lower()
            # ConnectRPC with JSON
            r = await http.post(srv.url + "/api/client/wasimoff.v1.Tasks/RunWasip1",
                                json={"params": {"binary": {"ref": "tool.wasm"}, "args": ["tool", "echo", "js"]}})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            assert base64.b64decode(r.json()["ok"]["stdout"]) == b"js\n" and r.json()["info"]["provider"] == "py1"
            # HTTP exec
            r = await http.post(srv.url + "/api/client/run/tool.wasm", headers={"X-Args": "cat", "X-Env-Who": "me"}, content=b"in")
            assert r.status_code == 200 and r.headers["x-wasimoff-result"] == "Ok" and r.headers["x-wasimoff-status"] == "0"
            assert r.content == b"WHO=me\nCONTENT_LENGTH=2\nin" and r.headers["x-wasimoff-provider"] == "py1"
            r = await http.post(srv.url + "/api/client/run/tool.wasm", headers={"X-Args": "quit 3"})
            assert r.status_code == 200 and r.headers["x-wasimoff-status"] == "3"
            r = await http.post(srv.url + "/api/client/run/tool.wasm", headers={"X-Args": "trap"})
            assert r.status_code == 200 and r.headers["x-wasimoff-result"] == "Error"
            assert (await http.get(srv.url + "/api/client/run/tool.wasm")).status_code == 405
            assert provider.tasks_run == 8
            tg.cancel_scope.cancel()


# 16, 24
async def test_provider_gets_canonical_ref_fetches_it_and_is_preferred_after():
    async with broker() as srv, client() as http:
        await upload(http, srv)
        async with RawProvider(srv, name="fresh") as p, anyio.create_task_group() as tg:
            await p.recv()
            await p.event(schema.ProviderResources(concurrency=1))
            tg.start_soon(run_rpc, http, srv, wasip1("tool.wasm", ["tool", "echo"]))
            envelope, task = await p.recv_request(schema.Wasip1Request)
            assert task.params.binary.ref == TOOL_REF and task.info.provider == "fresh" and task.info.id
            fetched = await http.get(srv.url + "/api/storage/" + task.params.binary.ref)
            assert fetched.content == TOOL
            await p.event(schema.FileSystemUpdate(added=[TOOL_REF]))
            await p.respond(envelope.sequence, ok_response(task))
            # another provider with free slots and no files: the file holder still gets the task
            async with RawProvider(srv, name="empty") as q:
                await q.recv()
                await q.event(schema.ProviderResources(concurrency=4))
                await anyio.sleep(0.1)
                tg.start_soon(run_rpc, http, srv, wasip1("tool.wasm", ["tool", "echo"]))
                envelope, task = await p.recv_request(schema.Wasip1Request)
                await p.respond(envelope.sequence, ok_response(task))
            tg.cancel_scope.cancel()


# 17
def submit_later(tg, http, srv, request):
    """Submit ``request`` over ConnectRPC in ``tg``; the returned dict gets ``"r"`` when it is answered."""
    result = {}

    async def submit():
        result["r"] = await run_rpc(http, srv, request)

    tg.start_soon(submit)
    return result


async def test_task_waits_for_a_provider():
    async with broker() as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            done = submit_later(tg, http, srv, wasip1("tool.wasm", ["tool", "echo", "late"]))
            await anyio.sleep(0.5)
            assert "r" not in done
            await tg.start(Provider(srv.url, workers=1).run)
            await wait_until(lambda: "r" in done, timeout=10)
            assert done["r"][1].ok.stdout == b"late\n"
            tg.cancel_scope.cancel()


# 18
async def test_provider_dies_mid_task_and_the_task_is_retried_elsewhere():
    async with broker() as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            async with RawProvider(srv, name="doomed") as doomed:
                await doomed.recv()
                await doomed.event(schema.ProviderResources(concurrency=1))
                result = submit_later(tg, http, srv, wasip1("tool.wasm", ["tool", "echo", "survived"]))
                await doomed.recv_request(schema.Wasip1Request)
            # the doomed provider's socket is closed while it holds the task
            await tg.start(Provider(srv.url, name="rescuer", workers=1).run)
            await wait_until(lambda: "r" in result, timeout=10)
            response = result["r"][1]
            assert response.ok.stdout == b"survived\n" and response.info.provider == "rescuer"
            tg.cancel_scope.cancel()


# 19
async def test_envelope_error_retries_but_application_error_does_not():
    async with broker(max_attempts=3) as srv, client() as http, RawProvider(srv) as p:
        await upload(http, srv)
        await p.recv()
        await p.event(schema.ProviderResources(concurrency=1))
        async with anyio.create_task_group() as tg:
            result = {}

            async def submit():
                result["r"] = await run_rpc(http, srv, wasip1("tool.wasm"))

            tg.start_soon(submit)
            ids = []
            for attempt in range(3):
                envelope, task = await p.recv_request(schema.Wasip1Request)
                ids.append(task.info.id)
                await p.respond(envelope.sequence, error=f"flaky {attempt}")
            with anyio.fail_after(5):
                while "r" not in result:
                    await anyio.sleep(0.02)
        assert len(set(ids)) == 1  # the same task each time
        reply = result["r"][0]
        assert reply.status_code == 500 and reply.json() == {"code": "unknown", "message": "flaky 0\nflaky 1\nflaky 2"}
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            envelope, task = await p.recv_request(schema.Wasip1Request)
            response = schema.Wasip1Response(error="application says no")
            response.info.CopyFrom(task.info)
            await p.respond(envelope.sequence, response)
        assert result["r"][1].error == "application says no"
        with pytest.raises(TimeoutError):
            await p.recv_request(schema.Wasip1Request, timeout=0.3)  # no retry


# 22
async def test_client_disconnect_cancels_on_the_provider():
    async with broker() as srv, client() as http, RawProvider(srv) as p:
        await upload(http, srv)
        await p.recv()
        await p.event(schema.ProviderResources(concurrency=1))
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_rpc, http, srv, wasip1("tool.wasm", ["tool", "sleep", "10000"]))
            _, task = await p.recv_request(schema.Wasip1Request)
            tg.cancel_scope.cancel()  # the client hangs up
        envelope, cancel = await p.recv_request(schema.Cancel)
        assert cancel.id == task.info.id


async def test_a_cancelled_running_task_keeps_no_payload_until_its_provider_answers():
    stdin = b"x" * (1 << 20)
    async with broker() as srv, client() as http, RawProvider(srv) as p:
        await upload(http, srv)
        await p.recv()
        await p.event(schema.ProviderResources(concurrency=1))
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_rpc, http, srv, wasip1("tool.wasm", ["tool", "cat"], stdin=stdin))
            _, task = await p.recv_request(schema.Wasip1Request)
            assert task.params.stdin == stdin
            tg.cancel_scope.cancel()  # the client hangs up
        await p.recv_request(schema.Cancel)  # (and the provider does not answer)
        gc.collect()
        handles = [o for o in gc.get_objects() if isinstance(o, TaskHandle)]
        assert len(handles) == 1  # still pending on the provider socket: its slot is busy
        assert handles[0].request.info.id == task.info.id and not handles[0].request.HasField("params")


async def test_cancel_really_stops_the_wasm_and_frees_the_slot():
    async with broker() as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            provider = await tg.start(Provider(srv.url, workers=1).run)
            async with anyio.create_task_group() as clients:
                clients.start_soon(run_rpc, http, srv, wasip1("tool.wasm", ["tool", "sleep", "60000"]))
                with anyio.fail_after(5):
                    while provider.slots[0].task_id is None:
                        await anyio.sleep(0.02)
                clients.cancel_scope.cancel()
            with anyio.fail_after(5):
                while provider.slots[0].task_id is not None:
                    await anyio.sleep(0.02)
            _, response = await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "echo", "next"]))
            assert response.ok.stdout == b"next\n"
            tg.cancel_scope.cancel()


# 23
async def test_client_websocket_pipelined_out_of_order():
    from websockets.asyncio.client import connect

    async with broker() as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, workers=3).run)
            codec = Codec(SUBPROTOCOL_PROTOBUF)
            async with connect(srv.ws_url + "/api/client/ws", subprotocols=[SUBPROTOCOL_PROTOBUF], max_size=None) as ws:
                for seq, ms in ((1, 600), (2, 10), (3, 300)):
                    envelope = schema.Envelope(sequence=seq, type=schema.REQUEST)
                    pack(envelope, wasip1("tool.wasm", ["tool", "sleep", str(ms)]))
                    await ws.send(codec.encode(envelope))
                bad = schema.Envelope(sequence=4, type=schema.REQUEST)
                pack(bad, schema.Ping())
                await ws.send(codec.encode(bad))
                order = []
                with anyio.fail_after(10):
                    while len(order) < 4:
                        envelope = codec.decode(await ws.recv())
                        order.append(envelope.sequence)
                        if envelope.sequence == 4:
                            assert envelope.error == "expecting only Task_Request/Upload messages on this socket"
                        else:
                            assert unpack(envelope).ok.stdout == b"slept\n"
                assert order == [4, 2, 3, 1]
            tg.cancel_scope.cancel()


async def test_queue_full_is_429():
    async with broker(queue_limit=2) as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(run_rpc, http, srv, wasip1("tool.wasm"))
            await anyio.sleep(0.3)
            reply, _ = await run_rpc(http, srv, wasip1("tool.wasm"))
            assert reply.status_code == 429 and reply.json() == {"code": "resource_exhausted", "message": "Queue Full"}
            tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    "frame,code",
    [(b"\xff\xff\xff", 1007), ("text on a binary socket", 1003)],
)
async def test_malformed_provider_frames_close_that_provider_only(frame, code):
    async with broker() as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, name="good", workers=1).run)
            async with RawProvider(srv, name="bad") as bad:
                await bad.recv()
                await bad.ws.send(frame)
                assert await closed_code(bad.ws) == code
            _, response = await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "echo", "fine"]))
            assert response.ok.stdout == b"fine\n"
            tg.cancel_scope.cancel()


async def test_unknown_any_types_and_bad_rpc_bodies():
    async with broker() as srv, client() as http, RawProvider(srv) as p:
        await p.recv()
        envelope = schema.Envelope(sequence=9, type=schema.EVENT)
        envelope.payload.type_url = "wasimoff/wasimoff.v1.Nope"
        envelope.payload.value = b"\x01\x02"
        await p.ws.send(envelope.SerializeToString())  # ignored, connection kept
        await p.event(schema.ProviderResources(concurrency=1))
        r = await http.post(srv.url + "/api/client/wasimoff.v1.Tasks/RunWasip1", content=b"\xff\xff", headers=PROTO)
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
        r = await http.post(srv.url + "/api/client/wasimoff.v1.Tasks/RunWasip1", content=b"{}", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = await http.post(srv.url + "/api/client/wasimoff.v1.Tasks/RunWasip1", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert p.ws.close_code is None


async def test_upload_rpc():
    async with broker() as srv, client() as http:
        request = schema.UploadRequest()
        request.upload.ref = "via-rpc.wasm"
        request.upload.media = "application/wasm"
        request.upload.blob = TOOL
        r = await http.post(srv.url + "/api/client/wasimoff.v1.Tasks/Upload", content=request.SerializeToString(), headers=PROTO)
        response = schema.UploadResponse()
        response.ParseFromString(r.content)
        assert response.ref == TOOL_REF
        assert (await http.get(srv.url + "/api/storage/via-rpc.wasm")).content == TOOL


async def test_metrics_opt_in():
    async with broker(metrics=True) as srv, client() as http:
        await upload(http, srv)
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, workers=1).run)
            await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "echo"]))
            text = (await http.get(srv.url + "/metrics")).text
            tg.cancel_scope.cancel()
        assert "wasimoff_connected_providers 1.0" in text and "wasimoff_tasks_queued 0.0" in text
        assert "\nwasimoff_tasks_completed 1.0\n" in text and "_total" not in text  # the original's names
        assert "wasimoff_tasks_scheduled 1.0" in text
        # one sample per attempt number, as the original; none before any retry
        assert "# TYPE wasimoff_task_retries_count" in text and "wasimoff_task_retries_count{" not in text
        assert "wasimoff_tasks_execution_count 1.0" in text
    async with broker() as srv, client() as http:
        assert (await http.get(srv.url + "/metrics")).status_code == 404


def test_env_vars_configure_it():
    from rendezvous.config import load_config

    c = load_config(["wasimoff"], environ={"WASIMOFF_HTTP_LISTEN": ":5999", "WASIMOFF_FILESTORAGE": "/tmp/x",
                                           "WASIMOFF_METRICS": "true", "WASIMOFF_ALLOWED_ORIGINS": "a.example,*.b.example"})
    assert (c.server.host, c.server.port, c.server.metrics_path) == ("::", 5999, "/metrics")
    assert c.profiles["wasimoff"].allowed_origins == ("a.example", "*.b.example")
    assert c.profiles["wasimoff"].filestorage == "/tmp/x"


async def test_static_files_serve_a_provider_app(tmp_path):
    (tmp_path / "index.html").write_text("<title>wasimoff provider</title>")
    async with broker(static_files=str(tmp_path)) as srv, client() as http:
        r = await http.get(srv.url + "/")
        assert r.status_code == 200 and "wasimoff provider" in r.text
        assert (await http.get(srv.url + "/healthz")).text == "OK\n"  # routes still win over static files


async def test_allowed_origins():
    async with broker(allowed_origins="*.good.example") as srv:
        for origin, allowed in (("https://app.good.example", True), ("https://evil.example", False), (None, True)):
            headers = {"Origin": origin} if origin else None
            if allowed:
                async with RawProvider(srv, headers=headers) as p:
                    assert isinstance((await p.recv())[1], schema.ClusterInfo)
            else:
                with pytest.raises(InvalidStatus) as info:
                    async with RawProvider(srv, headers=headers):
                        pass
                assert info.value.response.status_code == 403


async def test_a_provider_that_lies_about_capacity_loses_no_task():
    """It announces 8 slots but fails every task; an honest provider ends up running them all."""
    async with broker(max_attempts=10) as srv, client() as http:
        await upload(http, srv)
        async with RawProvider(srv, name="liar") as liar, anyio.create_task_group() as tg:
            await liar.recv()
            await liar.event(schema.ProviderResources(concurrency=8))

            async def refuse_everything():
                while True:
                    envelope, _ = await liar.recv_request(schema.Wasip1Request, timeout=30)
                    await liar.respond(envelope.sequence, error="no idle workers")

            tg.start_soon(refuse_everything)
            honest = await tg.start(Provider(srv.url, name="honest", workers=2).run)
            results = []

            async def one(i):
                results.append((await run_rpc(http, srv, wasip1("tool.wasm", ["tool", "echo", str(i)])))[1])

            with anyio.fail_after(30):
                async with anyio.create_task_group() as clients:
                    for i in range(6):
                        clients.start_soon(one, i)
            assert sorted(r.ok.stdout for r in results) == [f"{i}\n".encode() for i in range(6)]
            assert {r.info.provider for r in results} == {"honest"} and honest.tasks_run == 6
            tg.cancel_scope.cancel()
