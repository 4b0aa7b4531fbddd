"""E2E (spec §2 item 35): the real webrtc-bootstrap 4.4.1 client in headless Chromium —
a root page and joiner pages each get a WebRTC data channel through our server and
exchange a message over it."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import anyio
import pytest

from rendezvous.testing import serve

from .conftest import JS

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
