"""WebTransport (HTTP/3, aioquic) carrying the overlay's channels, in-process, with an aioquic client."""

from __future__ import annotations

import datetime
import json

import anyio
import pytest

from rendezvous.testing import recv_json, serve, wait_until, wt_connect, ws_connect
from rendezvous.tls import CertificateRotation

pytestmark = pytest.mark.anyio


def overlay(**settings):
    return serve("overlay", {"secret": "s", **settings}, http_server="native", server={"webtransport_port": 0})


async def test_prospect_over_webtransport_root_over_websocket():
    async with overlay() as srv:
        assert srv.webtransport_url.startswith("https://127.0.0.1:")
        async with ws_connect(srv.ws_url + "/s/webrtc-bootstrap-root") as root, wt_connect(srv.webtransport_url + "/join") as wt:
            await wt.send(json.dumps({"destination": None, "signal": "via quic"}))
            message = await recv_json(root)
            assert message["signal"] == "via quic" and len(message["origin"]) == 32
            async with ws_connect(srv.ws_url + "/join") as answerer:
                await answerer.send(json.dumps({"destination": message["origin"], "signal": "answer"}))
                reply = json.loads(await wt.recv())
                assert reply["signal"] == "answer" and reply["destination"] == message["origin"]
            assert wt.certificate_sha256 == srv.webtransport.certificate.sha256


async def test_root_over_webtransport_gets_heartbeats_and_lifetime_close_code():
    async with overlay(heartbeat_interval=0.2, timeout=0.5) as srv:
        async with wt_connect(srv.webtransport_url + "/s/webrtc-bootstrap-root") as root:
            await root.send("hello")  # opens the message stream (ignored by the overlay)
            assert await root.recv(2) == '"heartbeat"'
            async with wt_connect(srv.webtransport_url + "/join") as p:
                await p.send("{}")
                assert "origin" in json.loads(await _skip_heartbeats(root))
                assert await p.wait_closed(3) == 1000  # the prospect lifetime


async def _skip_heartbeats(wt):
    while True:
        message = await wt.recv(3)
        if message != '"heartbeat"':
            return message


async def test_bad_input_over_webtransport():
    async with overlay(max_message_size=100) as srv:
        async with ws_connect(srv.ws_url + "/s/webrtc-bootstrap-root") as root:
            async with wt_connect(srv.webtransport_url + "/join") as big:
                await big.send("x" * 101)
                assert await big.wait_closed() == 1009
            async with wt_connect(srv.webtransport_url + "/join") as bad:
                await bad.send(b"\xff\xfe")  # binary garbage: dropped, session kept
                await bad.send('{"still":"here"}')
                assert (await recv_json(root))["still"] == "here"
        with pytest.raises(ConnectionError):
            async with wt_connect(srv.webtransport_url + "/nowhere"):
                pass


async def test_shutdown_closes_sessions_with_1001():
    async with overlay() as srv:
        wt = await wt_connect(srv.webtransport_url + "/join").__aenter__()
        await wt.send("{}")
    assert await wt.wait_closed() == 1001


async def test_certificate_rotation_new_sessions_get_the_new_certificate():
    async with overlay() as srv:
        old = srv.webtransport.certificate
        async with wt_connect(srv.webtransport_url + "/join") as before:
            rotation = CertificateRotation(datetime.datetime.now(datetime.timezone.utc))
            srv.webtransport.use_certificate(rotation.current)
            async with wt_connect(srv.webtransport_url + "/join") as after:
                assert after.certificate_sha256 == rotation.current.sha256 != old.sha256
            await before.send("{}")  # the live session is not cut
            assert before.certificate_sha256 == old.sha256 and before.close_code is None


def test_rotation_schedule_with_a_fake_clock():
    made = []

    def make(now, validity):
        made.append(now)
        return f"cert@{now.isoformat()}"

    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    rotation = CertificateRotation(t0, validity=datetime.timedelta(days=13), make=make)
    assert rotation.renew_at() == t0 + datetime.timedelta(days=6.5)
    assert rotation.advance(t0 + datetime.timedelta(days=6)) is None
    renewed = rotation.advance(t0 + datetime.timedelta(days=7))
    assert renewed == "cert@2026-01-08T00:00:00+00:00" and len(made) == 2
    assert rotation.renew_at() == t0 + datetime.timedelta(days=13.5)


def test_ephemeral_certificate_meets_chromium_rules():
    from cryptography.hazmat.primitives.asymmetric import ec

    from rendezvous.tls import ephemeral_certificate

    now = datetime.datetime.now(datetime.timezone.utc)
    cert = ephemeral_certificate(now)
    c = cert.certificate
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey) and c.public_key().curve.name == "secp256r1"
    assert c.not_valid_after_utc - c.not_valid_before_utc < datetime.timedelta(days=14)
    assert len(cert.sha256) == 64
    with pytest.raises(ValueError):
        ephemeral_certificate(now, datetime.timedelta(days=14))


async def test_messages_as_datagrams_and_unidirectional_streams():
    async with overlay(max_message_size=1000) as srv:
        async with ws_connect(srv.ws_url + "/s/webrtc-bootstrap-root") as root, wt_connect(srv.webtransport_url + "/join") as wt:
            wt.send_datagram('{"via":"datagram"}')
            assert (await recv_json(root))["via"] == "datagram"
            wt.send_unidirectional('{"via":"uni"}')
            assert (await recv_json(root))["via"] == "uni"
            wt.send_datagram(b"\x07junk")  # not a message: dropped, session kept
            await wt.send('{"via":"stream"}')
            assert (await recv_json(root))["via"] == "stream"
            wt.send_unidirectional("x" * 1001)
            assert await wt.wait_closed() == 1009


async def test_a_peer_that_stops_reading_is_backpressured_then_closed_1008():
    # The overlay gives a receiver send_timeout to drain; a WebTransport root whose packets are
    # all lost stops acknowledging, the unacknowledged bytes pass the high-water mark, the send
    # waits, times out, and the overlay closes that root: everyone else is unaffected.
    async with overlay(send_timeout=0.5) as srv:
        runtime = srv.runtimes["overlay"]
        async with wt_connect(srv.webtransport_url + "/s/webrtc-bootstrap-root") as root:
            await root.send('"heartbeat"')
            await wait_until(lambda: runtime.router.root_connected)
            root._protocol.datagram_received = lambda data, addr: None  # deaf from now on
            async with ws_connect(srv.ws_url + "/join") as p:
                big = json.dumps({"blob": "y" * 60000})
                with anyio.fail_after(20):
                    while runtime.router.root_connected:
                        await p.send(big)
                        await anyio.sleep(0.01)
            assert srv.metrics.get_sample_value("rendezvous_overlay_dropped_total", {"reason": "slow_receiver"}) >= 1


async def test_abrupt_close_of_the_quic_connection_ends_the_channel():
    async with overlay() as srv:
        runtime = srv.runtimes["overlay"]
        wt = await wt_connect(srv.webtransport_url + "/join").__aenter__()
        await wt.send("{}")
        await wait_until(lambda: srv.metrics.get_sample_value("rendezvous_overlay_prospects") == 1)
        wt.abort(0x100)  # CONNECTION_CLOSE, no capsule, no FIN
        await wait_until(lambda: srv.metrics.get_sample_value("rendezvous_overlay_prospects") == 0)
        assert runtime.router.root_count == 0
