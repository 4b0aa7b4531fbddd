"""ACME against a real CA: Debian's pebble, started here on loopback ports.

pebble resolves ``broker.test`` through pebble-challtestsrv's mock DNS (every A query answers
127.0.0.1, no AAAA) and validates HTTP-01 on its ``httpPort``, which is our challenge listener's
port. Clients connect to 127.0.0.1 with SNI ``broker.test`` and trust pebble's root, fetched from
its management interface (pebble makes a new root and intermediate at every start).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time

import anyio
import httpx
import pytest
import structlog

from rendezvous.errors import ConfigError
from rendezvous.testing import recv_json, self_signed_certificate, serve, wait_until, ws_connect
from tests.integration.test_cli import Serving, env, run

pytestmark = [
    pytest.mark.anyio,
    # locally a missing pebble skips; under CI (CI=true, .ci/run installs it) it fails
    pytest.mark.skipif(shutil.which("pebble") is None and not os.environ.get("CI"),
                       reason="needs Debian's pebble (apt-get install pebble)"),
]
HOST = "broker.test"
SNOWFLAKE = {"allowed_relay_pattern": "", "disable_geoip": True, "proxy_timeout": 0.2}
PROXY_POLL = b'{"Sid":"x","Version":"1.3","AcceptedRelayPattern":""}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pebble:
    """pebble + pebble-challtestsrv (DNS only) on free loopback ports."""

    def __init__(self, directory, validity: int = 3600, http_port: int | None = None) -> None:
        directory.mkdir(exist_ok=True)
        self.ca_file, key = self_signed_certificate(directory)  # pebble's own HTTPS certificate
        self.http_port = http_port or free_port()  # where pebble validates HTTP-01: our listener
        dns, api, management = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{api}/dir"
        self.management = f"https://127.0.0.1:{management}"
        config = directory / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{api}", "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(self.ca_file), "privateKey": str(key), "httpPort": self.http_port,
            "tlsPort": free_port(), "ocspResponderURL": "", "externalAccountBindingRequired": False,
            "certificateValidityPeriod": validity,
        }}))
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
        self.processes = [subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"127.0.0.1:{free_port()}", "-defaultIPv6", ""], **quiet)]
        self.processes.append(subprocess.Popen(
            ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"], **quiet,
            env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}))
        self.trust = ssl.create_default_context(cafile=str(self.ca_file))
        end = time.monotonic() + 15
        while True:
            try:
                httpx.get(self.url, verify=self.trust).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        self.root = self._get("/roots/0")
        self.intermediate = self._get("/intermediates/0")

    def _get(self, path: str) -> bytes:
        return httpx.get(self.management + path, verify=self.trust).content

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)


@pytest.fixture
def pebble(tmp_path, monkeypatch):
    """Start pebble with ``start(validity=..., http_port=...)``; the CA's certificate is trusted via REQUESTS_CA_BUNDLE."""
    started: list[Pebble] = []

    def start(**kwargs) -> Pebble:
        instance = Pebble(tmp_path / f"pebble{len(started)}", **kwargs)
        started.append(instance)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(instance.ca_file))
        return instance

    yield start
    for instance in started:
        instance.stop()


def acme_settings(ca: Pebble | None, cache, **extra):
    return {"acme_hostnames": [HOST], "acme_email": "ops@broker.test", "acme_cert_cache": str(cache),
            "acme_directory_url": ca.url if ca else f"https://127.0.0.1:{free_port()}/dir",
            "acme_http_addr": f"127.0.0.1:{ca.http_port if ca else 0}", **extra}


def served_chain(port: int) -> list:
    """The certificates the server sends to a client asking for broker.test (unverified)."""
    from OpenSSL import SSL

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(None)  # pyOpenSSL wants a blocking socket
        conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), sock)
        conn.set_tlsext_host_name(HOST.encode())
        conn.set_connect_state()
        conn.do_handshake()
        chain = [c.to_cryptography() for c in conn.get_peer_cert_chain()]
        conn.shutdown()
    return chain


async def chain_of(srv) -> list:
    return await anyio.to_thread.run_sync(served_chain, srv.port)


def trusting(ca: Pebble, tmp_path) -> ssl.SSLContext:
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(ca.root)
    return ssl.create_default_context(cafile=str(root))


def der(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.DER)


def san(cert) -> list[str]:
    from cryptography import x509

    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


async def poll_proxy(srv, context) -> httpx.Response:
    async with httpx.AsyncClient(verify=context) as http:
        return await http.post(srv.url + "/proxy", content=PROXY_POLL, extensions={"sni_hostname": HOST})


async def test_snowflake_serves_a_pebble_chain_and_a_restart_reuses_it(pebble, tmp_path):
    from cryptography import x509

    ca = pebble()
    cache = tmp_path / "cache"
    async with serve("snowflake", SNOWFLAKE, server=acme_settings(ca, cache)) as srv:
        assert srv.url.startswith("https://")
        await wait_until(srv.acme.ready.is_set, timeout=30)
        chain = await chain_of(srv)
        assert san(chain[0]) == [HOST]
        assert der(chain[1]) == der(x509.load_pem_x509_certificate(ca.intermediate))  # leaf + pebble's intermediate
        reply = await poll_proxy(srv, trusting(ca, tmp_path))  # verified up to pebble's root, hostname included
        assert reply.status_code == 200 and reply.json()["Status"] == "no match"
        # The challenge listener redirects plain HTTP, as Go's autocert handler does.
        async with httpx.AsyncClient() as http:
            moved = await http.get(f"{srv.acme_http_url}/proxy?x=1", headers={"Host": HOST})
        assert moved.status_code == 302 and moved.headers["location"] == f"https://{HOST}:{srv.port}/proxy?x=1"
        assert srv.acme.issued == 1
        serial = chain[0].serial_number
    for path in (cache / HOST, cache / "acme_account+key"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert cache.stat().st_mode & 0o777 == 0o700
    assert (cache / HOST).read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")

    async with serve("snowflake", SNOWFLAKE, server=acme_settings(ca, cache)) as srv:
        assert srv.acme.ready.is_set()  # from the cache, before anything is asked of the CA
        assert (await chain_of(srv))[0].serial_number == serial
        assert (await poll_proxy(srv, trusting(ca, tmp_path))).status_code == 200
        assert srv.acme.issued == 0


async def test_overlay_gets_the_same_acme_support(pebble, tmp_path, monkeypatch):
    ca = pebble()
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))  # the other usual way to trust the CA's HTTPS
    async with serve("overlay", {"secret": "s"}, server=acme_settings(ca, tmp_path / "cache")) as srv:
        await wait_until(srv.acme.ready.is_set, timeout=30)
        wss, context = "wss" + srv.url[5:], trusting(ca, tmp_path)
        async with ws_connect(wss + "/s/webrtc-bootstrap-root", ssl=context, server_hostname=HOST) as root, \
                ws_connect(wss + "/join", ssl=context, server_hostname=HOST) as peer:
            await peer.send(json.dumps({"over": "acme"}))
            assert (await recv_json(root))["over"] == "acme"


@pytest.mark.slow
async def test_renewal_reaches_new_handshakes_without_a_restart(pebble, tmp_path):
    ca = pebble(validity=12)  # renewed at two thirds of its life: every ~8 s
    context = trusting(ca, tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with serve("snowflake", SNOWFLAKE, server=acme_settings(ca, tmp_path / "cache")) as srv:
            await wait_until(srv.acme.ready.is_set, timeout=30)
            first = (await chain_of(srv))[0].serial_number
            await wait_until(lambda: srv.acme.issued >= 2, timeout=30, interval=0.2)
            renewed = (await chain_of(srv))[0]
            assert renewed.serial_number != first and san(renewed) == [HOST]
            assert (await poll_proxy(srv, context)).status_code == 200
    obtained = [e for e in logs if e["event"] == "acme: certificate obtained"]
    assert obtained[0]["reloaded"] == 0 and obtained[1]["reloaded"] == 1  # the first, before HTTPS started


def entry(cache, days: int):
    """A cache entry for broker.test (self-signed: any certificate will do for what is served)."""
    directory = cache.parent / "made"
    directory.mkdir()
    cert, key = self_signed_certificate(directory, hostname=HOST, days=days)
    cache.mkdir(mode=0o700)
    (cache / HOST).write_bytes(key.read_bytes() + cert.read_bytes())
    return cert


def failures(logs) -> list[dict]:
    return [e for e in logs if e["event"] == "acme: certificate not obtained"]


async def test_unreachable_ca_is_one_line_and_the_cached_certificate_keeps_serving(tmp_path):
    from cryptography import x509

    cache = tmp_path / "cache"
    cert = x509.load_pem_x509_certificate(entry(cache, days=0).read_bytes())  # expired: due now
    with structlog.testing.capture_logs() as logs:
        async with serve("snowflake", SNOWFLAKE, server=acme_settings(None, cache)) as srv:
            await wait_until(lambda: failures(logs), timeout=10)
            assert (await chain_of(srv))[0].serial_number == cert.serial_number
    [failure] = failures(logs)
    assert failure["reason"].startswith("cannot reach the CA at https://127.0.0.1:")
    assert failure["reason"].endswith(": Connection refused") and failure["retry_in"] == 60
    assert failure["serving"] == "cached"


async def test_refused_challenge_is_one_line_and_http01_keeps_answering(pebble, tmp_path):
    ca = pebble(http_port=free_port())  # pebble validates on a port where nobody listens
    with structlog.testing.capture_logs() as logs:
        async with serve("snowflake", SNOWFLAKE, server={**acme_settings(ca, tmp_path / "cache"),
                                                         "acme_http_addr": "127.0.0.1:0"}) as srv:
            await wait_until(lambda: failures(logs), timeout=30)
            async with httpx.AsyncClient() as http:
                assert (await http.get(srv.acme_http_url + "/", headers={"Host": HOST})).status_code == 302
            assert not srv.acme.ready.is_set()
    [failure] = failures(logs)
    assert failure["reason"].startswith(f"the CA refused the challenge for {HOST}: ")
    assert "connection refused" in failure["reason"] and "\n" not in failure["reason"]
    assert failure["serving"] == "nothing yet"


async def test_an_untrusted_ca_is_one_line(pebble, tmp_path, monkeypatch):
    ca = pebble()
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with structlog.testing.capture_logs() as logs:
        async with serve("snowflake", SNOWFLAKE, server=acme_settings(ca, tmp_path / "cache")):
            await wait_until(lambda: failures(logs), timeout=10)
    [failure] = failures(logs)
    assert failure["reason"] == (f"cannot verify the CA's certificate at {ca.url} (self-signed certificate); "
                                 "set SSL_CERT_FILE or REQUESTS_CA_BUNDLE to trust it")


async def test_unusable_cache_is_one_line(tmp_path):
    cache = tmp_path / "not-a-directory"
    cache.write_text("")
    with structlog.testing.capture_logs() as logs:
        async with serve("snowflake", SNOWFLAKE, server=acme_settings(None, cache)):
            await wait_until(lambda: failures(logs), timeout=10)
    [failure] = failures(logs)
    assert failure["reason"] == f"cannot use the certificate cache: {cache}/acme_account+key: Not a directory"


async def test_go_flags_on_the_command_line(pebble, tmp_path):
    ca = pebble()
    srv = Serving(["--profile", "snowflake", "-acme-hostnames", HOST, "-acme-email", "ops@broker.test",
                   "-acme-cert-cache", str(tmp_path / "cache"), "--acme-directory-url", ca.url,
                   "--acme-http-addr", f"127.0.0.1:{ca.http_port}", "-addr", "127.0.0.1:0", "-disable-geoip", "--proxy-timeout", "0.2",
                   "--log-format", "json"], env(REQUESTS_CA_BUNDLE=str(ca.ca_file)))
    try:
        url = srv.wait_for("serving")["url"]
        obtained = srv.wait_for("acme: certificate obtained", timeout=30)
        assert obtained["hostnames"] == [HOST]
        port = int(url.rpartition(":")[2])
        context = trusting(ca, tmp_path)
        async with httpx.AsyncClient(verify=context) as http:
            reply = await http.post(f"https://127.0.0.1:{port}/proxy", content=PROXY_POLL,
                                    extensions={"sni_hostname": HOST})
        assert reply.status_code == 200
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("server, message", [
    ({"http_server": "hypercorn"}, "the hypercorn server reads its certificate only at start"),
    ({"http_server": "uvicorn"}, "use http_server = native"),
    ({"acme_hostnames": ["*.broker.test"]}, "HTTP-01 cannot validate wildcard names"),
    ({"acme_http_addr": "80"}, "acme_http_addr: expected [host]:port"),
    ({"cert": "c.pem", "key": "k.pem"}, "cert and key are not allowed with acme_hostnames"),
])
def test_bad_acme_configuration_is_refused(server, message, tmp_path):
    from rendezvous.server import make_config

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        make_config("overlay", server={**acme_settings(None, tmp_path), **server}, settings={"overlay": {"secret": "s"}})


def test_snowflake_accepts_acme_as_its_tls_mode_and_hypercorn_is_refused_in_one_line(tmp_path):
    from rendezvous.config import load_config

    config = load_config(["snowflake"], environ={}, server_overrides={"acme_hostnames": (HOST, "cli")})
    assert config.server.acme_hostnames == (HOST,) and str(config.server.acme_cert_cache) == "acme-cert-cache"
    assert config.server.acme_directory_url == "https://acme-v02.api.letsencrypt.org/directory"
    out = run("serve", "--profile", "snowflake", "-acme-hostnames", HOST, "--http-server", "hypercorn")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "use http_server = native" in out.stderr


async def test_a_taken_challenge_port_is_a_configuration_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = {**acme_settings(None, tmp_path / "cache"), "acme_http_addr": f"127.0.0.1:{taken.getsockname()[1]}"}
        with pytest.raises(ConfigError, match="for ACME HTTP-01 challenges: Address already in use"):
            async with serve("snowflake", SNOWFLAKE, server=settings):
                pass
