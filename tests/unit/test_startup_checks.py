"""The startup checks that decide, one by one: each returns (or raises) the operator's one line."""

from __future__ import annotations

import errno
import pathlib
import socket

import attrs
import pytest

from rendezvous import plugins
from rendezvous.app import DuplicateRoute, static_at
from rendezvous.cli import shared_flag_problem
from rendezvous.config import load_config, profile_server_defaults
from rendezvous.errors import ConfigError
from rendezvous.server import bind_sockets, bound_address, listen_error
from rendezvous.settings import (
    APPENDED,
    CERTIFICATE,
    NOT_A_FILE,
    PRIVATE_KEY,
    append_problem,
    check_files,
    fields_of,
    file_kind,
    setting,
)
from rendezvous.testing.tls import self_signed_certificate
from rendezvous.tls import pem_problem


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    cert, key = self_signed_certificate(one)
    _, other_key = self_signed_certificate(two)
    return {"cert": cert.read_bytes(), "key": key.read_bytes(), "other_key": other_key.read_bytes()}


def test_pem_problem(pem):
    from cryptography.hazmat.primitives import serialization

    assert pem_problem(pem["cert"], pem["key"]) is None
    assert pem_problem(pem["cert"] + pem["key"], None) is None  # the key in the certificate's file
    assert pem_problem(pem["key"] + pem["cert"], None) is None
    assert pem_problem(None, pem["key"]) is None
    assert pem_problem(b"garbage", pem["key"]) == ("cert", "not a PEM certificate")
    assert pem_problem(pem["key"], pem["key"]) == ("cert", "not a PEM certificate")
    assert pem_problem(pem["cert"], b"garbage") == ("key", "not a PEM private key (or one of an unsupported kind)")
    assert pem_problem(pem["cert"], pem["cert"]) == ("key", "not a PEM private key (or one of an unsupported kind)")
    assert pem_problem(pem["cert"], pem["other_key"]) == ("key", "this private key does not belong to the certificate")
    assert pem_problem(pem["cert"], None)[0] == "cert" and "no private key" in pem_problem(pem["cert"], None)[1]
    key = serialization.load_pem_private_key(pem["key"], password=None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))
    assert pem_problem(pem["cert"], encrypted) == ("key", "the private key is encrypted (give it unencrypted)")


def test_append_problem(tmp_path):
    assert append_problem(tmp_path / "new.log") is None
    (tmp_path / "old.log").write_text("")
    assert append_problem(tmp_path / "old.log") is None
    assert append_problem(tmp_path / "no" / "new.log") == f"no directory {tmp_path / 'no'}"
    assert append_problem(tmp_path) == "it is a directory"
    assert not (tmp_path / "new.log").exists()


@attrs.frozen
class Files:
    cert: pathlib.Path | None = setting(None, help="")
    key: pathlib.Path | None = setting(None, help="")
    quic_cert: pathlib.Path | None = setting(None, help="")
    quic_key: pathlib.Path | None = setting(None, help="")
    metrics_log: pathlib.Path | None = setting(None, help="")
    public: pathlib.Path | None = setting(None, help="")
    ip_count_log: str = setting("", help="")  # a str, not a Path: not checked
    monkey_key: pathlib.Path | None = setting(None, help="", file=NOT_A_FILE)
    journal: pathlib.Path | None = setting(None, help="", file=APPENDED)


def test_what_a_path_setting_names():
    kinds = {field.name: file_kind(field, meta, tp) for field, meta, tp in fields_of(Files)}
    assert kinds == {"cert": CERTIFICATE, "key": PRIVATE_KEY, "quic_cert": CERTIFICATE, "quic_key": PRIVATE_KEY,
                     "metrics_log": APPENDED, "public": "", "ip_count_log": "", "monkey_key": "", "journal": APPENDED}


def test_check_files_names_the_setting_its_source_and_the_file(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    (tmp_path / "o").mkdir()
    _, other = self_signed_certificate(tmp_path / "o")
    check_files(Files(cert=cert, key=key, quic_cert=cert, quic_key=key, metrics_log=tmp_path / "m.log",
                      monkey_key=tmp_path / "nowhere"), "p", {})
    with pytest.raises(ConfigError) as info:
        check_files(Files(quic_cert=cert, quic_key=other), "wasimoff", {"quic_key": "env WASIMOFF_QUIC_KEY"})
    assert str(info.value) == f"wasimoff.quic_key (from env WASIMOFF_QUIC_KEY): {other}: this private key does not belong to the certificate"
    with pytest.raises(ConfigError, match=r"^p.journal \(from default\): .*: cannot append to it: no directory"):
        check_files(Files(journal=tmp_path / "no" / "j"), "p", {})
    with pytest.raises(ConfigError, match=r"^p.key \(from x\): .*nowhere: cannot read it: No such file or directory$"):
        check_files(Files(key=tmp_path / "nowhere"), "p", {"key": "x"})


def test_a_choice_outside_the_list_is_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(["overlay"], environ={"RENDEZVOUS_LOG_LEVEL": "chatty"})
    assert str(info.value) == ("server.log_level (from env RENDEZVOUS_LOG_LEVEL): expected one of 'debug', 'info', "
                               "'warning', 'error', got 'chatty'")
    with pytest.raises(ConfigError, match="no server named 'tomcat' is installed"):
        load_config(["overlay"], environ={"RENDEZVOUS_HTTP_SERVER": "tomcat"})


def test_a_flag_several_profiles_share():
    owners = {"--max-message-size": [("overlay", "max_message_size"), ("wasimoff", "max_message_size")],
              "--secret": [("overlay", "secret")]}
    assert shared_flag_problem(["--secret", "x"], owners) is None
    assert shared_flag_problem(["--", "--max-message-size"], owners) is None
    assert shared_flag_problem(["--max-message-size=5"], owners) == (
        "--max-message-size is a setting of several profiles served (overlay, wasimoff): say which, "
        "--overlay-max-message-size or --wasimoff-max-message-size")


def test_profiles_server_defaults():
    load = {name: plugins.load_profile(name) for name in ("overlay", "wasimoff", "snowflake")}
    alone = profile_server_defaults({"wasimoff": load["wasimoff"]})
    assert alone["host"] == ("localhost", "WASIMOFF_HTTP_LISTEN") and alone["webtransport_port"][0] == 4443
    # With several profiles the listener's host and port are a profile's only if all agree: the documented 0.0.0.0.
    several = profile_server_defaults({"overlay": load["overlay"], "wasimoff": load["wasimoff"]})
    assert "host" not in several and "port" not in several and several["webtransport_port"][0] == 4443
    # Turned off, wasimoff's WebTransport is no default either.
    assert load_config(["wasimoff"], environ={"WASIMOFF_QUIC_LISTEN": ""}).server.webtransport_port is None
    # An explicit -addr makes its host explicit too (":8080" is every interface).
    c = load_config(["overlay", "snowflake"], environ={},
                    profile_overrides={"snowflake": {"addr": (":8080", "command line"), "disable_tls": (True, "command line")}})
    assert (c.server.host, c.server.port, c.sources["host"]) == ("::", 8080, "snowflake.addr")


def test_listen_error_line():
    exc = OSError(errno.EADDRINUSE, "Address already in use")
    assert listen_error("server.port (from command line)", "TCP", "127.0.0.1:80", exc) == (
        "server.port (from command line): cannot listen on TCP 127.0.0.1:80: Address already in use")
    assert listen_error("s", "UDP", "[::]:4443", exc, "WebTransport") == (
        "s: cannot listen on UDP [::]:4443 for WebTransport: Address already in use")


def test_every_interface_means_both_and_a_clash_is_not_papered_over():
    [sock] = bind_sockets("::", 0)
    with sock:
        assert bound_address(sock) == f"[::]:{sock.getsockname()[1]}"
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    with socket.socket(socket.AF_INET6) as v6only:  # IPv6 taken, IPv4 free: no silent IPv4-only listener
        v6only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6only.bind(("::", 0))
        v6only.listen()
        with pytest.raises(OSError) as info:
            bind_sockets("::", v6only.getsockname()[1])
        assert info.value.errno == errno.EADDRINUSE
    [sock] = bind_sockets("localhost", 0)
    with sock:
        assert bound_address(sock).startswith(("127.0.0.1:", "[::1]:"))  # the name's first address


def test_two_static_directories_at_one_prefix():
    a, b = pathlib.Path("/a"), pathlib.Path("/b")
    assert static_at([a, ("/x/", b)]) == [("", a), ("/x", b)]
    with pytest.raises(DuplicateRoute, match="two static directories claim /x/: /a and /b"):
        static_at([("/x", a), ("/x", b)])
