"""A handler that raises: a logged 500 with a request id (never a traceback to the client, never a
silent hang) on every carrier of an exchange; a channel handler that raises closes that channel
with 1011 and no other."""

from __future__ import annotations

import io
import json

import httpx
import pytest
import structlog

from rendezvous.observe import logging as rlog
from rendezvous.testing import closed_code, h3_call, recv_json, serve, ws_connect
from rendezvous_overlay.profile import OverlayRuntime
from rendezvous_snowflake.profile import SnowflakeRuntime

pytestmark = pytest.mark.anyio


@pytest.fixture
def log_lines():
    """The JSON log lines written while the test runs."""
    stream = io.StringIO()
    rlog.configure(log_format="json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    structlog.reset_defaults()


@pytest.fixture
def broken_debug(monkeypatch):
    async def boom(self, request):
        raise RuntimeError("the handler broke")

    monkeypatch.setattr(SnowflakeRuntime, "debug", boom)


def _assert_logged_500(body: str, lines: list[dict]) -> None:
    assert body.startswith("internal server error (request ") and "Traceback" not in body
    request_id = body.split("request ")[1].rstrip(")\n")
    (record,) = [r for r in lines if r.get("request_id") == request_id]
    assert record["event"] == "handler failed" and record["path"] == "/debug"
    assert "RuntimeError: the handler broke" in record["exception"]


async def test_exchange_handler_exception_is_a_logged_500_on_http1(broken_debug, log_lines, http_server):
    async with serve("snowflake", {"disable_geoip": True, "disable_tls": True}, http_server=http_server) as srv, httpx.AsyncClient() as http:
        reply = await http.get(srv.url + "/debug", timeout=5)
        assert reply.status_code == 500
        _assert_logged_500(reply.text, log_lines())
        assert (await http.post(srv.url + "/proxy", content=b"{}", timeout=5)).status_code == 400  # still serving


async def test_exchange_handler_exception_is_a_logged_500_on_http3(broken_debug, log_lines):
    async with serve("snowflake", {"disable_geoip": True, "disable_tls": True}, server={"webtransport_port": 0}) as srv:
        reply = await h3_call(srv.webtransport_url + "/debug", timeout=10)
        assert reply.status == 500
        _assert_logged_500(reply.content.decode(), log_lines())


async def test_response_header_with_a_line_break_is_a_500_not_a_second_header(monkeypatch, log_lines, http_server):
    from rendezvous.transports.base import HttpResponse

    async def split(self, request):
        return HttpResponse(200, b"x", (("X-Name", "evil\r\nSet-Cookie: pwned=1"),))

    monkeypatch.setattr(SnowflakeRuntime, "debug", split)
    async with serve("snowflake", {"disable_geoip": True, "disable_tls": True}, http_server=http_server) as srv, httpx.AsyncClient() as http:
        reply = await http.get(srv.url + "/debug", timeout=5)
        assert reply.status_code == 500 and "set-cookie" not in reply.headers
        assert any(r.get("reason") == "bad value for header 'X-Name'" for r in log_lines())


async def test_channel_handler_exception_closes_that_channel_with_1011(monkeypatch, log_lines, http_server):
    original = OverlayRuntime.join

    async def join(self, channel):
        if "boom" in channel.info.query:
            await channel.accept()
            raise RuntimeError("the channel handler broke")
        await original(self, channel)

    monkeypatch.setattr(OverlayRuntime, "join", join)
    async with serve("overlay", {"secret": "s"}, http_server=http_server) as srv, ws_connect(srv.ws_url + "/s/webrtc-bootstrap-root") as root:
        async with ws_connect(srv.ws_url + "/join?boom=1") as broken:
            assert await closed_code(broken) == 1011
        async with ws_connect(srv.ws_url + "/join") as fine:
            await fine.send('{"still":"served"}')
            assert (await recv_json(root))["still"] == "served"
    failures = [r for r in log_lines() if r.get("event") == "channel handler failed"]
    assert len(failures) == 1 and "the channel handler broke" in failures[0]["exception"]
