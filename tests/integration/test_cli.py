"""The `rendezvous` command as an operator runs it: env, flags, config files, signals, exit codes."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import anyio
import pytest

from rendezvous.testing import closed_code, recv_json, ws_connect

pytestmark = pytest.mark.anyio
ROOT = pathlib.Path(__file__).resolve().parents[2]
RENDEZVOUS = [sys.executable, "-m", "rendezvous"]


def env(**extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RENDEZVOUS_") and k not in ("SECRET", "PORT")}
    e.update(extra)
    return e


class Serving:
    """A `rendezvous serve` subprocess; its JSON log lines are read from stderr by a thread."""

    def __init__(self, args, environ):
        self.proc = subprocess.Popen([*RENDEZVOUS, "serve", *args], env=environ, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"raw": line}
            self._queue.put(record)
        self._queue.put(None)

    def wait_for(self, event, timeout=15.0):
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                record = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if record is None:
                break
            self.lines.append(record)
            if record.get("event") == event:
                return record
        raise AssertionError(f"no {event!r} log line; got {self.lines}")

    def stop(self, sig=signal.SIGTERM, already_signalled=False):
        if already_signalled:
            try:  # a second signal while it finishes would only race its exit
                return self._finish(self.proc.wait(timeout=15))
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self._finish(self.proc.wait(timeout=15))

    def _finish(self, rc):
        self._reader.join(5)
        while not self._queue.empty():
            record = self._queue.get()
            if record is not None:
                self.lines.append(record)
        return rc


def run(*args, environ=None):
    return subprocess.run(RENDEZVOUS + list(args), env=environ or env(), capture_output=True, text=True, timeout=60)


def test_profiles_lists_overlay():
    out = run("profiles")
    assert out.returncode == 0 and out.stdout.startswith("overlay")


@pytest.mark.parametrize(
    "args,message",
    [
        (["serve", "--profile", "overlay", "--timeout", "soon"], "overlay.timeout (from command line): expected a number"),
        (["serve", "--profile", "overlay", "--root-policy", "coin"], "expected one of"),
        (["serve", "--profile", "nope"], "no profile named 'nope'"),
        (["serve", "--profile", "overlay", "--config", "/no/such.toml"], "not found"),
        (["serve", "--profile", "overlay", "--frobnicate"], "unrecognized arguments"),
        (["serve", "--profile", "overlay", "/no/such/config.json"], "No such file"),
        (["serve"], "no profile given"),
        (["serve", "--profile", "overlay", "--http-server", "tomcat"], "no server named 'tomcat'"),
    ],
)
def test_invalid_configuration_is_one_line_and_exit_2(args, message):
    out = run(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_port_in_use_is_a_clear_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = run("serve", "--profile", "overlay", "--host", "127.0.0.1", "--port", str(s.getsockname()[1]))
    assert out.returncode == 2 and "cannot listen" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("http_server", ["hypercorn", "uvicorn", "native"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_secret_and_port_env_and_graceful_signal(http_server, sig):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = Serving(["--profile", "overlay", "--host", "127.0.0.1", "--http-server", http_server],
                  env(SECRET="envsecret", PORT=str(port)))
    try:
        url = srv.wait_for("serving")["url"]
        assert url == f"http://127.0.0.1:{port}"
        base = f"ws://127.0.0.1:{port}"
        async with ws_connect(f"{base}/envsecret/webrtc-bootstrap-root") as root, ws_connect(f"{base}/join") as p:
            await p.send('{"hello":1}')
            assert (await recv_json(root))["hello"] == 1
            srv.proc.send_signal(sig)
            assert await closed_code(root) == 1001
            assert await closed_code(p) == 1001
        assert srv.stop(already_signalled=True) == 0
        assert any(r.get("event") == "stopped" for r in srv.lines)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


async def test_json_config_file_and_ip_scrubbing(tmp_path):
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps({"secret": "fromjson"}))
    for unsafe in (False, True):
        args = ["--profile", "overlay", "--host", "127.0.0.1", "--port", "0", str(conf)] + (["--unsafe-logging"] if unsafe else [])
        srv = Serving(args, env(SECRET="ignored"))
        try:
            base = "ws" + srv.wait_for("serving")["url"][4:]
            async with ws_connect(f"{base}/fromjson/webrtc-bootstrap-root"):
                record = srv.wait_for("root connected")
            assert record["client"] == ("127.0.0.1" if unsafe else "[scrubbed]")
        finally:
            srv.stop()


async def test_toml_config_as_shipped(tmp_path):
    srv = Serving(["--config", str(ROOT / "configs" / "overlay.toml"), "--host", "127.0.0.1", "--port", "0"], env())
    try:
        record = srv.wait_for("root connects")
        assert record["url"].endswith("/webrtc-bootstrap-root")
        async with ws_connect(record["url"]) as root:
            base = record["url"].rsplit("/", 2)[0]
            async with ws_connect(base + "/join") as p:
                await p.send("{}")
                assert "origin" in await recv_json(root)
    finally:
        assert srv.stop() == 0


def test_example_plugin_installs_and_serves(tmp_path):
    target = tmp_path / "site"
    source = tmp_path / "example_plugin"  # build from a copy: keep build junk out of the tree
    shutil.copytree(ROOT / "tests" / "example_plugin", source)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(source)],
        check=True, timeout=300,
    )
    environ = env(PYTHONPATH=str(target), ECHO_PREFIX="> ")
    listed = run("profiles", environ=environ)
    assert "echo" in listed.stdout and "overlay" in listed.stdout

    async def talk():
        srv = Serving(["--profile", "echo", "--host", "127.0.0.1", "--port", "0"], environ)
        try:
            base = "ws" + srv.wait_for("serving")["url"][4:]
            async with ws_connect(base + "/echo") as ws:
                await ws.send("hi")
                with anyio.fail_after(5):
                    assert await ws.recv() == "> hi"
                await ws.send("x" * 2000)  # over the plugin's own 1 KiB cap
                assert await closed_code(ws) == 1009
        finally:
            assert srv.stop() == 0

    anyio.run(talk)


async def test_several_profiles_from_the_shipped_config():
    srv = Serving(["--config", str(ROOT / "configs" / "several.toml"), "--host", "127.0.0.1", "--port", "0"], env())
    try:
        record = srv.wait_for("root connects")
        assert "/overlay/" in record["url"]
        async with ws_connect(record["url"]) as root:
            base = record["url"].rsplit("/", 2)[0]  # .../overlay
            async with ws_connect(base + "/join") as p:
                await p.send("{}")
                assert "origin" in await recv_json(root)
        http = base.replace("ws://", "http://").rsplit("/", 1)[0]
        from rendezvous.testing import http_call

        assert (await http_call(http + "/wasimoff/healthz")).content == b"OK\n"
        assert (await http_call(http + "/snowflake/debug")).status == 200
        metrics = (await http_call(http + "/metrics")).content.decode()
        assert 'rendezvous_overlay_joins_total{profile="overlay"} 1.0' in metrics
    finally:
        assert srv.stop() == 0


def test_several_profiles_on_the_command_line_clash_without_prefixes():
    out = run("serve", "--profile", "overlay", "--profile", "wasimoff", "--profile", "snowflake", "--disable-tls", "--disable-geoip",
              "--host", "127.0.0.1", "--port", "0")
    assert out.returncode == 2 and "two routes claim" in out.stderr and "--mount" in out.stderr


def test_sighup_reloads_and_keeps_serving(tmp_path):
    geoip = tmp_path / "geoip"
    geoip.write_text("")
    (tmp_path / "geoip6").write_text("")
    srv = Serving(["--profile", "snowflake", "--disable-tls", "--geoipdb", str(geoip), "--geoip6db", str(tmp_path / "geoip6"),
                   "--host", "127.0.0.1", "--port", "0"], env())
    try:
        srv.wait_for("serving")
        srv.proc.send_signal(signal.SIGHUP)
        assert srv.wait_for("geoip reloaded")["geoipdb"] == str(geoip)
        assert srv.wait_for("reloaded")["signal"] == "SIGHUP"
        assert srv.proc.poll() is None  # still serving
    finally:
        assert srv.stop() == 0


def test_a_flag_several_profiles_share_is_spelled_per_profile():
    both = ["serve", "--profile", "overlay", "--profile", "wasimoff"]
    out = run(*both, "--wasimoff-max-message-size", "soon")
    assert out.returncode == 2 and "wasimoff.max_message_size (from command line): expected an integer" in out.stderr
    out = run(*both, "--max-message-size", "5")  # ambiguous: the error says how to spell it
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--overlay-max-message-size or --wasimoff-max-message-size" in out.stderr


def test_help_shows_the_defaults_and_every_http_server():
    out = run("serve", "--profile", "snowflake", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    servers = text.split("--http-server {", 1)[1].split("}", 1)[0].split(",")
    assert sorted(servers) == ["hypercorn", "native", "uvicorn"]
    assert "native (HTTP/1.1 + WebSocket, fastest), hypercorn (adds HTTP/2) or uvicorn (default: native)" in text
    assert "--log-level {debug,info,warning,error}" in text and "(default: info)" in text
    assert "seconds to let connections finish on shutdown (default: 5)" in text
    # the profile's own defaults for server settings, and where they come from
    assert "(default: /prometheus, from snowflake's default)" in text
    assert "(default: 443, from snowflake.addr)" in text
    assert "--matching {current,2.5.1}" in text and "(default: current)" in text


def test_shipped_configs_name_every_http_server():
    for path in (ROOT / "configs").glob("*.toml"):
        [line] = [line for line in path.read_text().splitlines() if line.startswith("http_server")]
        assert all(name in line for name in ("native", "hypercorn", "uvicorn")), (path, line)
