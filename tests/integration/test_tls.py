"""TLS with --cert/--key on every HTTP server plugin (HTTPS and WSS)."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from rendezvous.testing import recv_json, self_signed_certificate, serve, ws_connect

pytestmark = pytest.mark.anyio


async def test_snowflake_over_https(http_server, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    settings = {"allowed_relay_pattern": "", "disable_geoip": True, "proxy_timeout": 0.2}
    async with serve("snowflake", settings, http_server=http_server, server={"cert": str(cert), "key": str(key)}) as srv:
        assert srv.url.startswith("https://")
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(cert))) as http:
            r = await http.get(srv.url + "/robots.txt")
            assert r.status_code == 200 and r.text == "User-agent: *\nDisallow: /\n"
            r = await http.post(srv.url + "/proxy", content=b'{"Sid":"x","Version":"1.3","AcceptedRelayPattern":""}')
            assert r.json()["Status"] == "no match"
        with pytest.raises(httpx.TransportError):  # plain HTTP clients can't talk to it
            async with httpx.AsyncClient() as http:
                await http.get(srv.url.replace("https", "http") + "/robots.txt")


async def test_overlay_over_wss(http_server, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    async with serve("overlay", {"secret": "s"}, http_server=http_server, server={"cert": str(cert), "key": str(key)}) as srv:
        wss = "wss" + srv.url[5:]
        async with ws_connect(wss + "/s/webrtc-bootstrap-root", ssl=context) as root, ws_connect(wss + "/join", ssl=context) as p:
            await p.send(json.dumps({"over": "tls"}))
            assert (await recv_json(root))["over"] == "tls"


def test_snowflake_requires_a_tls_mode():
    from rendezvous.config import load_config
    from rendezvous.errors import ConfigError

    with pytest.raises(ConfigError, match="the --acme-hostnames, --cert and --key, or --disable-tls option is required"):
        load_config(["snowflake"], environ={})
