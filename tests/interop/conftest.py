"""Interop tests run real third-party peers. Locally they skip when a peer is missing;
under CI (CI=true) a missing peer is a failure, never a skip."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

JS = pathlib.Path(__file__).parent / "js"


def require(condition: bool, what: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"interop peer missing in CI: {what} (.ci/run installs it)")
    pytest.skip(f"{what} not installed (run .ci/run to install the real peers)")


@pytest.fixture(scope="session")
def bootstrap_bundle() -> pathlib.Path:
    """The real webrtc-bootstrap 4.4.1 client bundled for the browser, as the spec's §0.2 says."""
    require(shutil.which("node") is not None, "node")
    require((JS / "node_modules" / "webrtc-bootstrap" / "src" / "client.js").is_file(), "npm packages in tests/interop/js")
    require(os.path.exists(os.environ.get("CHROMIUM", "/usr/bin/chromium")), "Debian chromium")
    bundle = JS / "bundle.js"
    subprocess.run(
        ["node", str(JS / "node_modules" / "browserify" / "bin" / "cmd.js"),
         str(JS / "node_modules" / "webrtc-bootstrap" / "src" / "client.js"), "-s", "BootstrapClient", "-o", str(bundle)],
        check=True, cwd=JS, timeout=120,
    )
    return bundle
