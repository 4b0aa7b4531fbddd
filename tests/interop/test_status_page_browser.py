"""The status page in real headless Chromium: it loads, and its numbers and charts change while
the test drives traffic through three mounted profiles. The screenshot is kept as a test
artifact (``test-artifacts/status_page.png``, ignored by git)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import types

import anyio
import httpx
import pytest

from rendezvous.testing import recv_json, serve, ws_connect
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.programs import tool_wasm

from ..integration.test_status import SECRET, SNOWFLAKE, client_offer, rendezvous
from ..integration.wasimoff_peers import RawProvider, ok_response, run_rpc, wasip1
from .conftest import JS, require

pytestmark = [pytest.mark.anyio, pytest.mark.interop]
ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "test-artifacts"
WATCH = [["snowflake", "clients_matched"], ["snowflake", "clients_denied"], ["snowflake", "rendezvous_latency"],
         ["overlay", "joins"], ["overlay", "join_answer_latency"], ["wasimoff", "providers"], ["wasimoff", "tasks"]]


async def drive_traffic(srv, stop: anyio.Event) -> None:
    """Traffic through every profile until ``stop``: Snowflake rendezvous (matched and denied),
    overlay joins, wasimoff tasks run by a provider."""
    async def snowflake() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            assert "answer" in await rendezvous(srv, f"sid-{n}", prefix="/sf")
            if n % 3 == 0:
                await client_offer(srv, prefix="/sf")  # no proxy: denied
            await anyio.sleep(0.3)

    async def overlay() -> None:
        async with ws_connect(f"{srv.ws_url}/ov/{SECRET}/webrtc-bootstrap-root") as root:
            n = 0
            while not stop.is_set():
                n += 1
                async with ws_connect(f"{srv.ws_url}/ov/join") as joiner, ws_connect(f"{srv.ws_url}/ov/join") as answerer:
                    await joiner.send(json.dumps({"destination": None, "signal": "offer"}))
                    origin = (await recv_json(root))["origin"]
                    await anyio.sleep(0.01 * (n % 5))  # latencies that vary
                    await answerer.send(json.dumps({"destination": origin, "signal": "answer"}))
                    await recv_json(joiner)
                await anyio.sleep(0.3)

    async def wasimoff() -> None:
        mounted = types.SimpleNamespace(url=srv.url + "/wm", ws_url=srv.ws_url + "/wm")
        async with httpx.AsyncClient(timeout=30) as http, RawProvider(mounted) as provider, \
                anyio.create_task_group() as tg:
            await http.post(mounted.url + "/api/storage/upload?name=tool.wasm", content=bytes(tool_wasm()))
            await provider.recv()  # ClusterInfo
            await provider.event(schema.ProviderResources(concurrency=2))

            async def run_tasks() -> None:
                while True:
                    envelope, task = await provider.recv_request(schema.Wasip1Request, timeout=120)
                    await provider.respond(envelope.sequence, ok_response(task))

            tg.start_soon(run_tasks)
            while not stop.is_set():
                await run_rpc(http, mounted, wasip1("tool.wasm"))
                await anyio.sleep(0.2)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for traffic in (snowflake, overlay, wasimoff):
            tg.start_soon(traffic)


def require_browser() -> pathlib.Path:
    """Node, playwright-core and Chromium; the screenshot's path (any older one removed)."""
    require(shutil.which("node") is not None, "node")
    require((JS / "node_modules" / "playwright-core").is_dir(), "npm packages in tests/interop/js")
    require(os.path.exists(os.environ.get("CHROMIUM", "/usr/bin/chromium")), "Debian chromium")
    screenshot = ARTIFACTS / "status_page.png"
    screenshot.unlink(missing_ok=True)
    return screenshot


async def test_status_page_numbers_and_charts_change_in_chromium():
    screenshot = require_browser()
    async with serve(["overlay", "snowflake", "wasimoff"],
                     {"overlay": {"secret": SECRET}, "snowflake": SNOWFLAKE, "wasimoff": {"static_files": None}},
                     server={"mount": ["overlay=/ov", "snowflake=/sf", "wasimoff=/wm"]}) as srv, \
            await anyio.open_process(
                ["node", str(JS / "status_page.js"), srv.url + "/status", str(screenshot), json.dumps(WATCH)],
                cwd=JS, env={**os.environ}) as process:
        lines: list[dict] = []
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            async def read_output() -> None:
                buffer = b""
                async for chunk in process.stdout:
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.startswith(b"{"):
                            lines.append(json.loads(line))
                            if lines[-1].get("ready"):
                                tg.start_soon(drive_traffic, srv, stop)  # the page is up: now the traffic
                stop.set()

            async def read_errors() -> None:
                async for chunk in process.stderr:
                    errors.append(chunk)

            errors: list[bytes] = []
            tg.start_soon(read_output)
            tg.start_soon(read_errors)
            with anyio.fail_after(90):
                await process.wait()
        stderr = b"".join(errors).decode(errors="replace")[-3000:]
    ready = next(line for line in lines if line.get("ready"))
    done = next((line for line in lines if line.get("done")), None)
    assert done is not None, (lines, stderr)
    assert ready["panels"] == done["panels"] == ["overlay", "snowflake", "wasimoff"]
    assert done["changed"] and not done["problems"], done
    assert process.returncode == 0, stderr
    for key, before in done["before"].items():
        after = done["out"][key]
        assert after["number"] != before["number"] and after["line"] != before["line"], (key, before, after)
    assert done["out"]["snowflake.rendezvous_latency"]["unit"] == "ms"
    assert done["state"].startswith("live") and done["updates"] > ready["updates"] and done["errors"] == 0
    assert screenshot.stat().st_size > 10_000
