"""Every startup mistake an operator can make is found before anything is served or logged:
exactly one line on stderr naming the file, port or setting, exit code 2, nothing left bound.
And the server binds what it was asked to, and logs exactly that (docs/operations.md,
"Startup errors" and "Where it listens")."""

from __future__ import annotations

import contextlib
import ipaddress
import pathlib
import socket

import httpx
import pytest

from rendezvous.testing import serve
from rendezvous.testing.tls import self_signed_certificate

from .test_cli import Serving, env, run

pytestmark = pytest.mark.anyio


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET6, kind) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return s.getsockname()[1]


def listening(port: int, udp: bool = False) -> set[str]:
    """The addresses bound to ``port`` on this host (TCP: listening; UDP: any), from /proc."""
    found = set()
    for name in ("udp", "udp6") if udp else ("tcp", "tcp6"):
        for line in pathlib.Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if int(hex_port, 16) != port or (not udp and state != "0A"):
                continue
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints host-order words
            found.add(str(ipaddress.ip_address(raw)))
    return found


def fails(*args: str, environ=None, tcp: int | None = None, udp: int | None = None) -> str:
    """Run ``rendezvous serve ARGS``: exit 2 with one line on stderr, nothing on stdout, and
    nothing listening on the ports it was given afterwards. Returns the line."""
    out = run("serve", *args, environ=environ)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rendezvous: error: "), out.stderr
    assert out.stdout == ""
    if tcp is not None:
        assert listening(tcp) == set()
    if udp is not None:
        assert listening(udp, udp=True) == set()
    return lines[0]


@contextlib.contextmanager
def taken(port: int, kind: int = socket.SOCK_STREAM, host: str = "::"):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        if ":" in host:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        yield s


@pytest.fixture
def pems(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = self_signed_certificate(other)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    return {"cert": cert, "key": key, "other_key": other_key, "garbage": garbage, "dir": tmp_path,
            "missing": tmp_path / "missing.pem"}


# --- certificates and keys ------------------------------------------------------------------------

@pytest.mark.parametrize("cert,key,message", [
    ("missing", "key", "server.cert (from command line): {missing}: cannot read it: No such file or directory"),
    ("dir", "key", "server.cert (from command line): {dir}: cannot read it: Is a directory"),
    ("garbage", "key", "server.cert (from command line): {garbage}: not a PEM certificate"),
    ("cert", "missing", "server.key (from command line): {missing}: cannot read it: No such file or directory"),
    ("cert", "garbage", "server.key (from command line): {garbage}: not a PEM private key"),
    ("cert", "other_key", "server.key (from command line): {other_key}: this private key does not belong to the certificate"),
])
def test_a_bad_cert_or_key_is_one_line_naming_the_file(pems, cert, key, message):
    port = free_port()
    line = fails("--profile", "overlay", "--host", "127.0.0.1", "--port", str(port),
                 "--cert", str(pems[cert]), "--key", str(pems[key]), tcp=port)
    assert message.format(**pems) in line


def test_snowflake_go_flags_name_the_file_too(pems):
    port = free_port()
    line = fails("--profile", "snowflake", "-cert", str(pems["missing"]), "-key", str(pems["key"]), "-disable-geoip",
                 "-addr", f"127.0.0.1:{port}", tcp=port)
    assert f"server.cert (from command line): {pems['missing']}: cannot read it" in line


@pytest.mark.parametrize("variable,value,message", [
    ("WASIMOFF_QUIC_CERT", "missing", "wasimoff.quic_cert (from env WASIMOFF_QUIC_CERT): {missing}: cannot read it"),
    ("WASIMOFF_QUIC_KEY", "missing", "wasimoff.quic_key (from env WASIMOFF_QUIC_KEY): {missing}: cannot read it"),
    ("WASIMOFF_QUIC_CERT", "garbage", "wasimoff.quic_cert (from env WASIMOFF_QUIC_CERT): {garbage}: not a PEM certificate"),
    ("WASIMOFF_QUIC_KEY", "other_key", "wasimoff.quic_key (from env WASIMOFF_QUIC_KEY): {other_key}: this private key does not belong"),
])
def test_wasimoff_quic_cert_and_key_pointing_nowhere(pems, variable, value, message):
    port, udp = free_port(), free_port(socket.SOCK_DGRAM)
    files = {"WASIMOFF_QUIC_CERT": str(pems["cert"]), "WASIMOFF_QUIC_KEY": str(pems["key"]), variable: str(pems[value])}
    line = fails("--profile", "wasimoff", environ=env(WASIMOFF_HTTP_LISTEN=f"127.0.0.1:{port}", WASIMOFF_QUIC_LISTEN=f":{udp}",
                                                      **files), tcp=port, udp=udp)
    assert message.format(**pems) in line


# --- ports ----------------------------------------------------------------------------------------

def test_a_tcp_port_in_use():
    port = free_port()
    with taken(port, host="127.0.0.1"):
        line = fails("--profile", "overlay", "--host", "127.0.0.1", "--port", str(port))
    assert line.endswith(f"server.port (from command line): cannot listen on TCP 127.0.0.1:{port}: Address already in use")


def test_a_profile_listener_port_in_use_names_the_mount():
    main, own = free_port(), free_port()
    with taken(own):
        line = fails("--profile", "overlay", "--profile", "wasimoff", "--quic-listen", "", "--host", "127.0.0.1",
                     "--port", str(main), "--mount", f"wasimoff=:{own}", tcp=main)
    assert f"server.mount (from command line): cannot listen on TCP 127.0.0.1:{own}: Address already in use" in line


def test_an_address_not_on_this_host_names_the_host():
    port = free_port()
    line = fails("--profile", "overlay", "--host", "192.0.2.1", "--port", str(port), tcp=port)
    assert f"server.host (from command line): cannot listen on TCP 192.0.2.1:{port}: Cannot assign requested address" in line


def test_a_webtransport_port_in_use_is_an_error_not_a_crash():
    port, udp = free_port(), free_port(socket.SOCK_DGRAM)
    with taken(udp, socket.SOCK_DGRAM):
        line = fails("--profile", "wasimoff", "--http-listen", f"127.0.0.1:{port}", "--quic-listen", f":{udp}", tcp=port)
    assert "server.webtransport_port (from WASIMOFF_QUIC_LISTEN): cannot listen on UDP" in line
    assert f":{udp} for WebTransport: Address already in use (give it another port, or '' for no WebTransport)" in line


def test_wasimoffs_default_udp_4443_in_use_names_the_setting():
    """wasimoff opens UDP 4443 by default (its original and the seed broker do); taken, it is one line."""
    try:
        holder = taken(4443, socket.SOCK_DGRAM)
        holder.__enter__()
    except OSError:
        pytest.skip("UDP 4443 is in use here already")
    try:
        port = free_port()
        # (its missing provider web app is logged as it is created: that line is held back too)
        line = fails("--profile", "wasimoff", environ=env(WASIMOFF_HTTP_LISTEN=f"127.0.0.1:{port}"), tcp=port)
    finally:
        holder.__exit__(None, None, None)
    assert "server.webtransport_port (from WASIMOFF_QUIC_LISTEN): cannot listen on UDP" in line and ":4443 " in line


def test_the_acme_challenge_port_in_use_and_bad_acme_settings():
    port = free_port()
    acme = ["--profile", "overlay", "--host", "127.0.0.1", "--port", str(port), "--acme-directory-url", "http://127.0.0.1:9/dir"]
    with taken(free_port(), host="127.0.0.1") as holder:
        busy = holder.getsockname()[1]
        line = fails(*acme, "--acme-hostnames", "broker.example.org", "--acme-http-addr", f"127.0.0.1:{busy}", tcp=port)
    assert f"server.acme_http_addr (from command line): cannot listen on TCP 127.0.0.1:{busy} for ACME HTTP-01 challenges" in line
    assert "acme_hostnames" in fails(*acme, "--acme-hostnames", "not a hostname", tcp=port)
    assert "acme_http_addr" in fails(*acme, "--acme-hostnames", "broker.example.org", "--acme-http-addr", "nowhere", tcp=port)
    assert "use http_server = native" in fails(*acme, "--acme-hostnames", "broker.example.org", "--http-server", "uvicorn")


# --- files the server writes ---------------------------------------------------------------------

@pytest.mark.parametrize("where,message", [
    ("nodir/metrics.log", "cannot append to it: no directory {tmp}/nodir"),
    (".", "cannot append to it: it is a directory"),
])
def test_an_unwritable_metrics_log(tmp_path, where, message):
    port = free_port()
    path = tmp_path / where
    line = fails("--profile", "snowflake", "--disable-tls", "--disable-geoip", "--addr", f"127.0.0.1:{port}",
                 "--metrics-log", str(path), tcp=port)
    assert f"snowflake.metrics_log (from command line): {path}: " + message.format(tmp=tmp_path) in line
    assert not (tmp_path / "nodir").exists()  # nothing created


# --- enumerated settings -------------------------------------------------------------------------

@pytest.mark.parametrize("args,environ,message", [
    (["--log-level", "chatty"], {}, "server.log_level (from command line): expected one of 'debug', 'info', 'warning', 'error', got 'chatty'"),
    ([], {"RENDEZVOUS_LOG_LEVEL": "chatty"}, "server.log_level (from env RENDEZVOUS_LOG_LEVEL): expected one of"),
    (["--log-format", "xml"], {}, "server.log_format (from command line): expected one of 'auto', 'console', 'json', got 'xml'"),
    (["--http-server", "tomcat"], {}, "server.http_server (from command line): no server named 'tomcat' is installed"),
    (["--root-policy", "coin"], {}, "overlay.root_policy (from command line): expected one of"),
    (["--bad-message", "shout"], {}, "overlay.bad_message (from command line): expected one of"),
])
def test_every_enumerated_setting_is_checked(args, environ, message):
    port = free_port()
    line = fails("--profile", "overlay", "--host", "127.0.0.1", "--port", str(port), *args, environ=env(**environ), tcp=port)
    assert message in line


def test_enumerated_settings_in_a_config_file(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('profiles = ["overlay"]\n[server]\nlog_level = "loud"\n')
    assert f"server.log_level (from {conf}): expected one of" in fails("--config", str(conf))


# --- mounts ---------------------------------------------------------------------------------------

def test_two_static_directories_at_one_place(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    port = free_port()
    both = ["--profile", "overlay", "--profile", "wasimoff", "--quic-listen", "", "--host", "127.0.0.1", "--port", str(port),
            "--overlay-public", str(tmp_path / "a"), "--wasimoff-static-files", str(tmp_path / "b")]
    line = fails(*both, tcp=port)
    assert "two static directories claim /" in line
    assert "(overlay.public (--overlay-public) and wasimoff.static_files (--wasimoff-static-files))" in line and "--mount" in line
    line = fails(*both, "--mount", "overlay=/x", "--mount", "wasimoff=/x", tcp=port)
    assert "two static directories claim /x/" in line


async def test_static_directories_are_served_under_their_mounts(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f"index {name}")
        (tmp_path / name / f"{name}.txt").write_text(name)
    async with serve(["overlay", "wasimoff"], {"overlay": {"secret": "s", "public": str(tmp_path / "a")},
                                               "wasimoff": {"static_files": str(tmp_path / "b")}},
                     server={"mount": ["overlay=/o", "wasimoff=/w"]}) as srv, httpx.AsyncClient() as http:
        assert (await http.get(srv.url + "/o/")).text == "index a"
        assert (await http.get(srv.url + "/w/")).text == "index b"
        assert (await http.get(srv.url + "/w/b.txt")).text == "b"
        assert (await http.get(srv.url + "/o/b.txt")).status_code == 404
        assert (await http.get(srv.url + "/a.txt")).status_code == 404
        moved = await http.get(srv.url + "/o")
        assert moved.status_code == 302 and moved.headers["location"].endswith("/o/")


# --- where it listens, and what it logs ------------------------------------------------------------

def serving(args, environ=None):
    srv = Serving(args, environ or env())
    return srv, srv.wait_for("serving")


def test_snowflake_all_interfaces_is_bound_and_logged_as_such():
    port = free_port()
    srv, record = serving(["--profile", "snowflake", "-disable-tls", "-disable-geoip", "-addr", f":{port}"])
    try:
        assert record["url"] == f"http://[::]:{port}"  # not [::1]: every interface
        assert srv.wait_for("snowflake broker")["url"] == f"http://[::]:{port}/"
        assert listening(port) == {"::"}
    finally:
        assert srv.stop() == 0


def test_two_profiles_with_a_port_bind_the_documented_default_host():
    port = free_port()
    srv, record = serving(["--profile", "overlay", "--profile", "wasimoff", "--quic-listen", "", "--port", str(port),
                           "--mount", "overlay=/o", "--mount", "wasimoff=/w"])
    try:
        assert record["url"] == f"http://0.0.0.0:{port}"
        assert listening(port) == {"0.0.0.0"}
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("host,expected", [("::", "::"), (None, "127.0.0.1")])
def test_the_webtransport_listener_binds_its_host(host, expected):
    port, udp = free_port(), free_port(socket.SOCK_DGRAM)
    args = ["--profile", "overlay", "--host", "127.0.0.1", "--port", str(port), "--webtransport-port", str(udp)]
    srv, _ = serving(args + (["--webtransport-host", host] if host else []))
    try:
        shown = f"[{expected}]" if ":" in expected else expected
        assert srv.wait_for("webtransport")["url"] == f"https://{shown}:{udp}"
        assert listening(udp, udp=True) == {expected}
    finally:
        assert srv.stop() == 0


def test_wasimoff_quic_listen_port_only_binds_every_interface():
    port, udp = free_port(), free_port(socket.SOCK_DGRAM)
    srv, _ = serving(["--profile", "wasimoff", "--http-listen", f"127.0.0.1:{port}", "--quic-listen", f":{udp}"])
    try:
        assert listening(udp, udp=True) == {"::"}  # as the Go broker: ":port" is every interface
    finally:
        assert srv.stop() == 0
