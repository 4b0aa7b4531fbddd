"""The real wasimoff example binaries (../shared/data/wasimoff: tsp.wasm, gaussian_sleeper.wasm,
hello.zip) on our broker and our wasmtime providers, driven the way the original clients do.

These files are not in the repository; CI has them beside the clone. Without them (a plain
clone) the tests skip locally; under CI a missing folder is a failure.
"""

from __future__ import annotations

import base64
import io
import pathlib
import zipfile

import anyio
import httpx
import pytest

from rendezvous.testing import serve
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.peer import Provider

from .conftest import require

pytestmark = [pytest.mark.anyio, pytest.mark.interop]
DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "wasimoff"
PROTO = {"content-type": "application/proto"}


@pytest.fixture
def data():
    require((DATA / "tsp.wasm").is_file(), f"the wasimoff example binaries in {DATA}")
    return {name: (DATA / name).read_bytes() for name in ("tsp.wasm", "gaussian_sleeper.wasm", "hello.zip")}


async def run_wasip1(http, url, ref, args, **params):
    """Exactly the client_tsp.py flow: ConnectRPC RunWasip1, body = serialized Task.Wasip1.Request."""
    request = schema.Wasip1Request()
    request.params.binary.ref = ref
    request.params.args.extend(args)
    for key, value in params.items():
        setattr(request.params, key, value)
    reply = await http.post(url + "/api/client/wasimoff.v1.Tasks/RunWasip1", content=request.SerializeToString(), headers=PROTO)
    assert reply.status_code == 200, reply.text
    response = schema.Wasip1Response()
    response.ParseFromString(reply.content)
    return response


async def upload_all(http, url, data):
    for name, blob in data.items():
        r = await http.post(f"{url}/api/storage/upload?name={name}", content=blob)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("http_server", ["hypercorn", "native"])
async def test_client_tsp_flow(data, http_server):
    async with serve("wasimoff", {"static_files": None}, http_server=http_server) as srv, httpx.AsyncClient(timeout=60) as http:
        await upload_all(http, srv.url, data)
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, name="tsp-runner", workers=2).run)
            response = await run_wasip1(http, srv.url, "tsp.wasm", ["tsp.wasm", "rand", "8"])
            assert response.WhichOneof("result") == "ok" and response.ok.status == 0
            assert response.ok.stdout.startswith(b"distance = ") and response.ok.stderr.startswith(b"path = [")
            assert response.info.provider == "tsp-runner"
            tg.cancel_scope.cancel()


async def test_several_providers_share_gaussian_sleepers(data):
    async with serve("wasimoff", {"static_files": None}) as srv, httpx.AsyncClient(timeout=60) as http:
        await upload_all(http, srv.url, data)
        async with anyio.create_task_group() as tg:
            for i in range(3):
                await tg.start(Provider(srv.url, name=f"p{i}", workers=2).run)
            providers = []

            async def one():
                response = await run_wasip1(http, srv.url, "gaussian_sleeper.wasm", ["gaussian_sleeper.wasm", "200", "50"])
                assert response.ok.status == 0, response
                providers.append(response.info.provider)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as clients:
                    for _ in range(12):
                        clients.start_soon(one)
            assert len(providers) == 12 and len(set(providers)) == 3
            tg.cancel_scope.cancel()


async def test_provider_killed_mid_task_and_client_cancel(data):
    async with serve("wasimoff", {"static_files": None}) as srv, httpx.AsyncClient(timeout=60) as http:
        await upload_all(http, srv.url, data)
        async with anyio.create_task_group() as tg:
            result = {}

            async def submit():
                result["r"] = await run_wasip1(http, srv.url, "gaussian_sleeper.wasm", ["gaussian_sleeper.wasm", "1500", "1"])

            async with anyio.create_task_group() as doomed_scope:
                doomed = await doomed_scope.start(Provider(srv.url, name="doomed", workers=1).run)
                tg.start_soon(submit)
                with anyio.fail_after(10):
                    while doomed.slots[0].task_id is None:
                        await anyio.sleep(0.02)
                doomed_scope.cancel_scope.cancel()  # the provider dies with the task running
            doomed.slots[0].cancel()  # (stop its orphaned wasm thread)
            await tg.start(Provider(srv.url, name="rescuer", workers=1).run)
            with anyio.fail_after(30):
                while "r" not in result:
                    await anyio.sleep(0.05)
            assert result["r"].ok.status == 0 and result["r"].info.provider == "rescuer"

            # a client that gives up: the provider's slot is freed, the next task runs at once
            async with anyio.create_task_group() as clients:
                clients.start_soon(run_wasip1, http, srv.url, "gaussian_sleeper.wasm", ["gaussian_sleeper.wasm", "60000", "1"])
                await anyio.sleep(1.0)
                clients.cancel_scope.cancel()
            with anyio.fail_after(20):
                response = await run_wasip1(http, srv.url, "tsp.wasm", ["tsp.wasm", "rand", "5"])
            assert response.ok.status == 0 and response.info.provider == "rescuer"
            tg.cancel_scope.cancel()


async def test_rootfs_and_artifacts_over_http_exec(data):
    async with serve("wasimoff", {"static_files": None}) as srv, httpx.AsyncClient(timeout=60) as http:
        await upload_all(http, srv.url, data)
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, workers=1).run)
            r = await http.post(srv.url + "/api/client/run/tsp.wasm",
                                headers={"X-Args": "rand 4", "X-RootFS-Ref": "hello.zip", "X-Artifact": "hello.txt"})
            assert r.status_code == 200 and r.headers["x-wasimoff-result"] == "Ok", r.text
            assert b"distance = " in r.content
            artifacts = zipfile.ZipFile(io.BytesIO(base64.b64decode(r.headers["x-wasimoff-artifacts"])))
            assert artifacts.read("hello.txt").startswith(b"Hello, DOS!")
            tg.cancel_scope.cancel()
