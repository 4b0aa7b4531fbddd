"""The real Debian snowflake-proxy and snowflake-client 2.5.1 rendezvous through our broker:
one node, and two nodes sharing a redis-server (the proxy polls one, the client asks the other).

Everything runs inside a network namespace made for the test (spec §3.1, §3.1b): a veth
pair carries the WebRTC candidates (pion ignores loopback), a local coturn answers STUN
(RFC 5780, two addresses) so the client's NAT test reports "unrestricted", and the bridge
list points the relay at a local address the proxy accepts. The test passes when the proxy
logs "Connection successful." and the client logs "DataChannel.OnOpen": a WebRTC data
channel opened after a rendezvous through us.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from .conftest import require

pytestmark = pytest.mark.interop
ROOT = pathlib.Path(__file__).resolve().parents[2]
FINGERPRINT = "2B280B23E1107BB62ABFC40DDCC8824814F80A72"


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen] = []

    def run(self, *cmd: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True, capture_output=True, timeout=30)

    def output(self, *cmd: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True, capture_output=True, text=True,
                              timeout=30).stdout

    def start(self, cmd: list[str], log: pathlib.Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=30)
        self.run("ip", "link", "set", "lo", "up")
        self.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        for addr, dev in (("10.99.0.1/24", "veth0"), ("10.99.0.3/24", "veth0"), ("10.99.0.2/24", "veth1")):
            self.run("ip", "addr", "add", addr, "dev", dev)
        self.run("ip", "link", "set", "veth0", "up")
        self.run("ip", "link", "set", "veth1", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


def wait_for(path: pathlib.Path, needle: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"

SOCKS_CONNECT = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60)
s.sendall(b"\x05\x01\x00")
assert s.recv(2) == b"\x05\x00"
s.sendall(b"\x05\x01\x00\x01" + bytes([10, 99, 0, 9]) + (443).to_bytes(2, "big"))
print("socks reply", s.recv(10), flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("http_server", ["hypercorn", "native"])
def test_real_proxy_and_client_open_a_data_channel(tmp_path, http_server):
    rendezvous_through(tmp_path, http_server, nodes=1)


def test_real_proxy_and_client_rendezvous_across_two_nodes(tmp_path):
    """Two brokers on the redis backend: the proxy polls node 1, the client asks node 2, and
    the proxy's answer goes back to node 1; the data channel opens as with one broker."""
    rendezvous_through(tmp_path, "native", nodes=2)


def rendezvous_through(tmp_path: pathlib.Path, http_server: str, nodes: int) -> None:
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2 (network namespaces)")
    for tool in ("snowflake-proxy", "snowflake-client", "turnserver") + (("redis-server",) if nodes > 1 else ()):
        require(shutil.which(tool) is not None, f"Debian {tool}")
    bridges = tmp_path / "bridges.jsonl"
    bridges.write_text(json.dumps({"displayName": "local", "webSocketAddress": "ws://10.99.0.1:9999/", "fingerprint": FINGERPRINT}) + "\n")
    state = tmp_path / "state"
    state.mkdir()
    brokers = [f"broker{i}" if nodes > 1 else "broker" for i in range(1, nodes + 1)]
    logs = {name: tmp_path / f"{name}.log" for name in ("stun", *brokers, "redis", "proxy", "proxy.out", "client", "client.out",
                                                        "socks")}
    with Namespace(f"rdv-sf-{os.getpid()}") as ns:
        ns.start(["turnserver", "-n", "-S", "-L", "10.99.0.1", "-L", "10.99.0.3", "--listening-port", "3478",
                  "--alt-listening-port", "3479", "--no-cli", "--log-file", "stdout", "--simple-log"], logs["stun"])
        cluster: list[str] = []
        if nodes > 1:  # the namespace's own redis-server on its loopback
            ns.start(["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", str(state)], logs["redis"])
            cluster = ["--backend", "redis", "--backend-url", "redis://127.0.0.1:6379/0", "--node-ttl", "3"]
        for i, name in enumerate(brokers):
            ns.start([sys.executable, "-m", "rendezvous", "serve", "--profile", "snowflake", "--addr", f"127.0.0.1:{8080 + i}",
                      "--disable-tls", "--disable-geoip", "--allowed-relay-pattern", "10.99.0.1$",
                      "--bridge-list-path", str(bridges), "--http-server", http_server, "--log-format", "json", *cluster],
                     logs[name])
        for name in brokers:
            assert wait_for(logs[name], '"serving"', 20), logs[name].read_text()
        client_port = 8080 + nodes - 1  # with two nodes, not the proxy's
        ns.start(["snowflake-proxy", "-broker", "http://127.0.0.1:8080/", "-relay", "ws://10.99.0.1:9999/",
                  "-allowed-relay-hostname-pattern", "10.99.0.1$", "-allow-non-tls-relay", "-stun", "stun:10.99.0.1:3478",
                  "-keep-local-addresses", "-nat-retest-interval", "0s", "-unsafe-logging", "-verbose",
                  "-log", str(logs["proxy"])], logs["proxy.out"])
        ns.start(["snowflake-client", "-url", f"http://127.0.0.1:{client_port}/", "-ice", "stun:10.99.0.1:3478",
                  "-keep-local-addresses", "-unsafe-logging", "-log", str(logs["client"])], logs["client.out"],
                 env={"TOR_PT_MANAGED_TRANSPORT_VER": "1", "TOR_PT_CLIENT_TRANSPORTS": "snowflake",
                      "TOR_PT_STATE_LOCATION": str(state)})
        assert wait_for(logs["client.out"], "CMETHODS DONE", 20), logs["client.out"].read_text()
        port = next(line.split()[-1].rsplit(":", 1)[1] for line in logs["client.out"].read_text().splitlines()
                    if line.startswith("CMETHOD snowflake"))
        # The proxy must be polling before the client asks (the proxy polls every 5 s).
        assert wait_for(logs["proxy"], "NAT type", 30), logs["proxy"].read_text()
        ns.start([sys.executable, "-c", SOCKS_CONNECT, port, "90"], logs["socks"])
        opened = wait_for(logs["client"], "DataChannel.OnOpen", 75)
        connected = wait_for(logs["proxy"], "Connection successful.", 10)
        report = "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}" for name, path in logs.items() if path.exists())
        assert opened and connected, report
        assert "sdp offer successfully received" in logs["proxy"].read_text()
        if nodes > 1:  # each node counted its side: the proxy's poll and answer on 1, the client on 2
            def lines(port: int, name: str) -> list[str]:
                text = ns.output(sys.executable, "-c", FETCH, f"http://127.0.0.1:{port}/prometheus")
                return [line for line in text.splitlines() if line.startswith(name + "{")]

            assert any('status="matched"' in line for line in lines(8080, "snowflake_rounded_proxy_poll_total")), report
            assert any('status="success"' in line for line in lines(8080, "snowflake_rounded_proxy_answer_total")), report
            assert any('status="matched"' in line for line in lines(8081, "snowflake_rounded_client_poll_total")), report
            assert not lines(8081, "snowflake_rounded_proxy_answer_total") and not lines(8080, "snowflake_rounded_client_poll_total")
