"""Headless Chromium as a generation-A wasimoff provider over WebTransport (issue: WebTransport
browser test): the page takes the transport URL and certificate hash from
/api/broker/v1/config, pins the certificate with serverCertificateHashes, and runs real tasks
submitted through both client APIs."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil

import anyio
import pytest

from rendezvous.testing import serve
from rendezvous_wasimoff.programs import tool_wasm

from .conftest import JS, require

pytestmark = [pytest.mark.anyio, pytest.mark.interop]
PAGE = pathlib.Path(__file__).parent / "wasimoff_page"


async def test_chromium_gen_a_provider_over_webtransport(tmp_path):
    require(shutil.which("node") is not None, "node")
    require((JS / "node_modules" / "@msgpack" / "msgpack").is_dir(), "npm packages in tests/interop/js")
    require(os.path.exists(os.environ.get("CHROMIUM", "/usr/bin/chromium")), "Debian chromium")
    static = tmp_path / "static"
    shutil.copytree(PAGE, static)
    shutil.copy(JS / "node_modules" / "@msgpack" / "msgpack" / "dist.umd" / "msgpack.min.js", static)
    tool = tmp_path / "tool.wasm"
    tool.write_bytes(bytes(tool_wasm()))
    async with serve("wasimoff", {"static_files": str(static)}, http_server="native",
                     server={"webtransport_port": 0}) as srv:
        runtime = srv.runtimes["wasimoff"]
        result = await anyio.run_process(["node", str(JS / "wasimoff_wt_e2e.js"), srv.url, str(tool)],
                                         check=False, cwd=JS, env={**os.environ})
        certhash = srv.webtransport.certificate.sha256
        with anyio.fail_after(5):
            while runtime.gen_a.providers:  # the page closed its session
                await anyio.sleep(0.05)
    stdout = result.stdout.decode()
    assert result.returncode == 0, stdout + result.stderr.decode()[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    page = out["page"]
    assert page["errors"] == [] and page["config"]["certhash"] == certhash
    assert page["calls"][:2] == ["ping", "fs:list"]  # the broker's connect sequence
    assert out["upload"] == [200, f"Upload OK, {tool.stat().st_size} bytes"]
    status, items = out["run"]
    assert status == 200
    assert items[0] == {"result": {"status": 0, "stdout": "hello from the browser\n", "stderr": ""}}
    assert items[1]["result"]["stdout"] == "piped in" and "WHO=chromium" in items[1]["result"]["stderr"]
    assert items[2]["result"]["status"] == 7
    status, reply = out["rpc"]
    assert status == 200 and base64.b64decode(reply["ok"]["stdout"]) == b"gen C client\n"
    assert page["calls"].count("run") == 4
