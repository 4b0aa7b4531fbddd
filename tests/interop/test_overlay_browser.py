"""E2E (spec §2 item 35): the real webrtc-bootstrap 4.4.1 client in headless Chromium —
a root page and joiner pages each get a WebRTC data channel through our server and
exchange a message over it; then the same with the root on one node of a cluster and the
joiners on another."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import anyio
import pytest

from rendezvous.testing import serve

from ..integration.redis_fixture import RedisServer
from .conftest import JS, require

pytestmark = [pytest.mark.anyio, pytest.mark.interop]
PAGES = pathlib.Path(__file__).parent / "pages"


@pytest.mark.parametrize("http_server", ["hypercorn", "uvicorn", "native"])
async def test_root_and_three_joiners_open_data_channels(bootstrap_bundle, tmp_path, http_server):
    public = tmp_path / "public"
    shutil.copytree(PAGES, public)
    shutil.copy(bootstrap_bundle, public / "bundle.js")
    async with serve("overlay", {"secret": "interop", "public": str(public)}, http_server=http_server) as srv:
        result = await anyio.run_process(
            ["node", str(JS / "overlay_e2e.js"), srv.url, "interop", "3"],
            check=False, cwd=JS, env={**os.environ},
        )
        metrics = srv.metrics
    out = result.stdout.decode()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    joiners = [line for line in lines if "joiner" in line]
    assert result.returncode == 0, out + result.stderr.decode()[-3000:]
    assert len(joiners) == 3 and all(j["ok"] for j in joiners), out
    assert [j["reply"] for j in joiners] == ["pong:ping:j0", "pong:ping:j1", "pong:ping:j2"]
    root = next(line for line in lines if line.get("root"))
    assert root["channels"] == 3 and root["errors"] == []
    # The rendezvous really went through us: 6 /join sockets (joiner + answerer per join).
    assert metrics.get_sample_value("rendezvous_overlay_joins_total") == 6
    assert metrics.get_sample_value("rendezvous_overlay_join_answer_latency_seconds_count") == 3


async def test_root_on_one_node_joiners_on_another(bootstrap_bundle, tmp_path):
    """Issue #13: two nodes on the redis backend. The root page (and the /join sockets its client
    opens to answer) on node A, the joiner pages on node B: every signal crosses nodes both ways,
    and the data channels open as with one node."""
    require(shutil.which("redis-server") is not None, "redis-server")
    public = tmp_path / "public"
    shutil.copytree(PAGES, public)
    shutil.copy(bootstrap_bundle, public / "bundle.js")
    (tmp_path / "redis").mkdir()
    redis = RedisServer(str(tmp_path / "redis"))
    redis.start()
    try:
        cluster = {"backend": "redis", "backend_url": redis.url, "node_ttl": 1.0}
        settings = {"secret": "interop", "public": str(public)}
        async with serve("overlay", settings, server=cluster) as a, serve("overlay", settings, server=cluster) as b:
            result = await anyio.run_process(
                ["node", str(JS / "overlay_e2e.js"), a.url, "interop", "3", b.url],
                check=False, cwd=JS, env={**os.environ},
            )
            metrics_a, metrics_b = a.metrics, b.metrics
    finally:
        redis.stop()
    out = result.stdout.decode()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    joiners = [line for line in lines if "joiner" in line]
    assert result.returncode == 0, out + result.stderr.decode()[-3000:]
    assert [j["reply"] for j in joiners] == ["pong:ping:j0", "pong:ping:j1", "pong:ping:j2"]
    root = next(line for line in lines if line.get("root"))
    assert root["channels"] == 3 and root["errors"] == []
    # The joiners' sockets were on B, the root's answering sockets on A; B measured the answers.
    assert metrics_b.get_sample_value("rendezvous_overlay_joins_total") == 3
    assert metrics_a.get_sample_value("rendezvous_overlay_joins_total") == 3
    assert metrics_b.get_sample_value("rendezvous_overlay_join_answer_latency_seconds_count") == 3
    assert metrics_a.get_sample_value("rendezvous_overlay_routed_messages_total", {"to": "root"}) >= 3
    assert metrics_b.get_sample_value("rendezvous_overlay_routed_messages_total", {"to": "prospect"}) >= 3
