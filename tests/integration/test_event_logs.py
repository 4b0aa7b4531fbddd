"""What the operator sees in the log: lifecycle events at info (roots, joins answered, providers,
tasks), every refused input at debug with its reason; client addresses scrubbed by default."""

from __future__ import annotations

import io
import json

import httpx
import pytest
import structlog

from rendezvous.observe import logging as rlog
from rendezvous.testing import recv_json, serve, wait_until, ws_connect

pytestmark = pytest.mark.anyio


@pytest.fixture
def log_at():
    streams = []

    def configure(level: str):
        stream = io.StringIO()
        streams.append(stream)
        rlog.configure(log_format="json", level=level, stream=stream)
        return lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]

    yield configure
    structlog.reset_defaults()


async def test_overlay_lifecycle_and_refusals(log_at):
    lines = log_at("debug")
    async with serve("overlay", {"secret": "s"}) as srv, ws_connect(srv.ws_url + "/s/webrtc-bootstrap-root") as root:
        async with ws_connect(srv.ws_url + "/join") as joiner:
            await joiner.send('{"signal":{"type":"offer"}}')
            joiner_id = (await recv_json(root))["origin"]
            async with ws_connect(srv.ws_url + "/join") as answerer:
                await answerer.send(json.dumps({"destination": joiner_id, "signal": {"type": "answer"}}))
                await recv_json(joiner)
                await answerer.send("not json")
                await wait_until(lambda: any(r["event"] == "bad frame from a prospect" for r in lines()))
        with pytest.raises(Exception):
            async with ws_connect(srv.ws_url + "/wrong/webrtc-bootstrap-root"):
                pass
    events = {r["event"]: r for r in lines()}
    assert events["root connected"]["level"] == "info" and events["root connected"]["client"] == "[scrubbed]"
    assert events["join answered"]["level"] == "info" and events["join answered"]["latency_ms"] >= 0
    assert events["prospect connected"]["level"] == "debug" and events["prospect closed"]["level"] == "debug"
    assert events["bad frame from a prospect"]["reason"]
    assert events["root refused: wrong secret"]["level"] == "info"


async def test_debug_lines_stay_out_at_info(log_at):
    lines = log_at("info")
    async with serve("overlay", {"secret": "s"}) as srv, ws_connect(srv.ws_url + "/join") as joiner:
        await joiner.send("not json")
    assert not [r for r in lines() if r["level"] == "debug"]


async def test_wasimoff_task_outcomes_and_refusals(log_at):
    from tests.integration.test_wasimoff import TOOL
    from rendezvous_wasimoff.peer import Provider

    import anyio

    lines = log_at("debug")
    async with serve("wasimoff", {"static_files": None}) as srv, httpx.AsyncClient(timeout=30) as http:
        async with anyio.create_task_group() as tg:
            await tg.start(Provider(srv.url, workers=1).run)
            await http.post(srv.url + "/api/storage/upload?name=tool.wasm", content=TOOL)
            assert (await http.post(srv.url + "/api/client/run/tool.wasm", headers={"X-Args": "echo hi"})).status_code == 200
            assert (await http.post(srv.url + "/api/client/run/nothing.wasm")).status_code == 400
            tg.cancel_scope.cancel()
    events = {r["event"]: r for r in lines()}
    assert events["provider connected"]["level"] == "info"
    assert events["task done"]["result"] == "ok" and events["task done"]["ms"] >= 0
    assert events["request refused"]["level"] == "debug" and "Ref not found" in events["request refused"]["reason"]


async def test_snowflake_rendezvous_outcomes_and_refusals(log_at):
    from tests.integration.test_snowflake import answer, broker, client, offer, poll, wait_polling

    import anyio

    lines = log_at("debug")
    async with broker("native", client_timeout=0.5) as srv, client() as http:
        assert (await offer(http, srv)).json()["error"] == "no snowflake proxies currently available"
        async with anyio.create_task_group() as tg:
            async def proxy():
                await poll(http, srv, "logsid", "unrestricted")
                await answer(http, srv, "logsid")

            tg.start_soon(proxy)
            await wait_polling(srv)
            assert "answer" in (await offer(http, srv)).json()
        assert (await http.post(srv.url + "/proxy", content=b"{nope")).status_code == 400
    events = {r["event"]: r for r in lines()}
    assert events["client denied: no proxies"]["level"] == "info"
    assert events["client matched"]["level"] == "info" and events["client matched"]["ms"] >= 0
    assert events["proxy poll refused"]["level"] == "debug" and "invalid character" in events["proxy poll refused"]["reason"]
