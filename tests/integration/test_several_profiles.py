"""Several profiles in one process: each under its prefix, metrics labelled by profile."""

from __future__ import annotations

import json

import pytest

from rendezvous.config import load_config
from rendezvous.errors import ConfigError
from rendezvous.testing import http_call, recv_json, serve, ws_connect

from .conftest import SECRET

pytestmark = pytest.mark.anyio

SNOWFLAKE = {"disable_tls": True, "disable_geoip": True, "proxy_timeout": 0.5, "client_timeout": 0.5,
             "metrics_interval": 3600.0}
MOUNTS = ["overlay=/ov", "snowflake=/sf", "wasimoff=/wm"]


def three(http_server="native", mount=MOUNTS):
    return serve(["overlay", "snowflake", "wasimoff"],
                 {"overlay": {"secret": SECRET}, "snowflake": SNOWFLAKE, "wasimoff": {"static_files": None}},
                 http_server=http_server, server={"mount": mount})


async def test_three_profiles_each_under_its_prefix(http_server):
    async with three(http_server) as srv:
        # overlay: a root and a prospect, under /ov
        async with ws_connect(f"{srv.ws_url}/ov/{SECRET}/webrtc-bootstrap-root") as root, \
                ws_connect(f"{srv.ws_url}/ov/join") as joiner:
            await joiner.send(json.dumps({"destination": None, "signal": "offer"}))
            assert (await recv_json(root))["signal"] == "offer"
        # snowflake: an idle proxy poll is answered "no match" under /sf
        reply = await http_call(srv.url + "/sf/proxy", "POST",
                                json.dumps({"Sid": "x", "Version": "1.3", "Type": "standalone"}).encode())
        assert reply.status == 200 and json.loads(reply.content)["Status"] == "no match"
        # wasimoff: its own health check under /wm
        reply = await http_call(srv.url + "/wm/healthz")
        assert (reply.status, reply.content) == (200, b"OK\n")
        # and not at the root
        assert (await http_call(srv.url + "/proxy", "POST", b"{}")).status == 404

        # One /metrics for the process, every profile's series labelled with its name.
        reply = await http_call(srv.url + "/metrics")
        text = reply.content.decode()
        assert reply.status == 200
        assert 'rendezvous_overlay_joins_total{profile="overlay"} 1.0' in text
        assert 'profile="snowflake"' in text
        assert 'wasimoff_connected_providers{profile="wasimoff"} 0.0' in text
        # Snowflake's own routes move with it.
        reply = await http_call(srv.url + "/sf/debug")
        assert reply.status == 200 and b"current snowflakes available" in reply.content


async def test_clashing_routes_without_prefixes_is_a_config_error():
    with pytest.raises(ConfigError, match="/healthz.*--mount NAME=/prefix"):
        async with serve(["wasimoff", "overlay"], {"wasimoff": {"static_files": None}, "overlay": {"secret": SECRET}},
                         server={"healthz_path": "/healthz"}):
            pass


async def test_two_profiles_without_clashes_share_the_root():
    async with serve(["overlay", "wasimoff"], {"overlay": {"secret": SECRET}, "wasimoff": {"static_files": None}}) as srv:
        async with ws_connect(f"{srv.ws_url}/join"):
            pass
        reply = await http_call(srv.url + "/healthz")
        assert (reply.status, reply.content) == (200, b"OK\n")  # wasimoff's (the framework's is off: profiles disagree)


def test_mount_must_name_a_served_profile():
    with pytest.raises(ConfigError, match="server.mount: 'snowflake' is not one of the profiles served"):
        load_config(["overlay"], environ={"RENDEZVOUS_MOUNT": "snowflake=/sf"})
    with pytest.raises(ConfigError, match="expected NAME=/prefix, NAME=:PORT"):
        load_config(["overlay"], environ={"RENDEZVOUS_MOUNT": "overlay"})


def test_profile_defaults_for_server_settings_rank_below_the_server_table():
    # Snowflake's default -addr :443 is only a default; RENDEZVOUS_PORT wins over it,
    # while an explicit -addr still wins over RENDEZVOUS_PORT (it is the profile's own flag).
    config = load_config(["snowflake"], environ={"RENDEZVOUS_PORT": "9000", "RENDEZVOUS_SNOWFLAKE_DISABLE_TLS": "1"})
    assert config.server.port == 9000
    config = load_config(["snowflake"], environ={"RENDEZVOUS_PORT": "9000", "RENDEZVOUS_SNOWFLAKE_DISABLE_TLS": "1",
                                                  "RENDEZVOUS_SNOWFLAKE_ADDR": ":8443"})
    assert config.server.port == 8443


async def test_a_profile_on_a_listener_of_its_own():
    # Snowflake keeps its own port (as the Go broker would have), the others share one; no prefixes needed.
    async with three(mount=["snowflake=:0", "wasimoff=/wm"]) as srv:
        snowflake_url, overlay_url = srv.urls["snowflake"], srv.urls["overlay"]
        assert snowflake_url != overlay_url and srv.urls["wasimoff"] == overlay_url + "/wm"
        reply = await http_call(snowflake_url + "/proxy", "POST",
                                json.dumps({"Sid": "y", "Version": "1.3", "Type": "standalone"}).encode())
        assert reply.status == 200 and json.loads(reply.content)["Status"] == "no match"
        assert (await http_call(overlay_url + "/proxy", "POST", b"{}")).status == 404
        assert (await http_call(snowflake_url + "/wm/healthz")).status == 404
        async with ws_connect(f"{srv.ws_url}/{SECRET}/webrtc-bootstrap-root"):
            pass
        # /metrics lives on the main listener and covers every profile.
        text = (await http_call(srv.url + "/metrics")).content.decode()
        assert 'profile="snowflake"' in text and 'profile="overlay"' in text


def test_mount_syntax():
    from rendezvous.config import ServerSettings

    settings = ServerSettings(mount=("a=/x/", "b=:8443", "c=:9000/y"))
    assert settings.mounts() == {"a": (None, "/x"), "b": (8443, ""), "c": (9000, "/y")}
    for bad in ("a", "a=x", "a=:", "a=:99999", "a=:12x"):
        with pytest.raises(ValueError, match="expected NAME=/prefix, NAME=:PORT"):
            ServerSettings(mount=(bad,))
