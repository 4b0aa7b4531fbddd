"""AMP cache rendezvous as upstream's broker/amp.go answers it, and where v2.5.1 and HEAD differ."""

from __future__ import annotations

import hashlib
import ipaddress
import json

import pytest

from rendezvous_snowflake import amp
from rendezvous_snowflake.messages import encode_client_request

from .test_snowflake import broker, client, descriptor_value, dump, poll

pytestmark = pytest.mark.anyio
# sha256 of Go's armored page for {"error":"cannot decode URL path"} (common/amp at a399aee)
GO_CANNOT_DECODE_PAGE = "9abaabb1bc92546ebd5e9b32e4886d6b23bf7796d6371083a139c97fd5a895a8"
SDP_HEAD = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"


def offer_with(*candidates):
    return json.dumps({"type": "offer", "sdp": SDP_HEAD + "".join(f"a=candidate:{c}\r\n" for c in candidates)})


@pytest.mark.parametrize("path", ["bad", "0foobar", "0", "0/YW+j", "0/YWJj%3D", "1/YWJj", "0/Y"])
async def test_paths_go_refuses_get_the_go_page_byte_for_byte(http_server, path):
    async with broker(http_server) as srv, client() as http:
        r = await http.get(srv.url + "/amp/client/" + path)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html" and r.headers["cache-control"] == "max-age=15"
        assert hashlib.sha256(r.content).hexdigest() == GO_CANNOT_DECODE_PAGE
        assert r.content.endswith(b"</pre>\n</body>\n</html>")


async def test_amp_clients_are_geolocated_by_their_best_candidate(http_server, tmp_path):
    (tmp_path / "geoip").write_text(f"{int(ipaddress.IPv4Address('129.97.208.0'))},{int(ipaddress.IPv4Address('129.97.208.255'))},CA\n"
                                    f"{int(ipaddress.IPv4Address('131.0.0.0'))},{int(ipaddress.IPv4Address('131.0.0.255'))},BR\n")
    (tmp_path / "geoip6").write_text("")
    async with broker(http_server, disable_geoip=False, geoipdb=str(tmp_path / "geoip"),
                      geoip6db=str(tmp_path / "geoip6")) as srv, client() as http:
        offers = [
            # a host candidate outranks srflx and relay, whatever the order
            offer_with("1 1 udp 16777215 131.0.0.1 5000 typ relay raddr 0.0.0.0 rport 0",
                       "2 1 udp 1694498815 131.0.0.2 5000 typ srflx raddr 0.0.0.0 rport 0",
                       "3 1 udp 2122260223 129.97.208.23 5000 typ host"),
            # an mDNS host name is skipped: the srflx address counts
            offer_with("1 1 udp 2122260223 c0ffee.local 5000 typ host",
                       "2 1 udp 1694498815 129.97.208.24 5000 typ srflx raddr 0.0.0.0 rport 0"),
            # among srflx candidates the higher priority wins
            offer_with("1 1 udp 1694498815 131.0.0.3 5000 typ srflx raddr 0.0.0.0 rport 0",
                       "2 1 udp 1694498816 129.97.208.25 5000 typ srflx raddr 0.0.0.0 rport 0"),
            # the first candidate of the list is not the one (v2.5.1-era code took it): BR loses
            offer_with("1 1 udp 16777215 131.0.0.4 5000 typ relay raddr 0.0.0.0 rport 0",
                       "2 1 udp 2122260223 129.97.208.26 5000 typ host"),
        ]
        for offer in offers:
            r = await http.get(srv.url + "/amp/client/" + amp.encode_path(encode_client_request(offer, "unknown")))
            assert json.loads(amp.dearmor(r.text)) == {"error": "no snowflake proxies currently available"}
        text = dump(srv)
        assert descriptor_value(text, "client-ampcache-ips") == "CA=8"
        assert descriptor_value(text, "client-ampcache-count") == "8"


async def test_proxies_without_relay_pattern_v2_5_1_default_and_head_option(http_server):
    ok = b'{"Status":"no match","Offer":"","NAT":"","RelayURL":""}'
    rejected = b'{"Status":"incorrect relay pattern","Offer":"","NAT":"","RelayURL":""}'
    async with broker(http_server, proxy_timeout=0.05) as srv, client() as http:
        assert (await poll(http, srv, pattern=None)).content == ok  # v2.5.1: --default-relay-pattern ""
    async with broker(http_server, proxy_timeout=0.05, relay_pattern_required=True) as srv, client() as http:
        assert (await poll(http, srv, pattern=None)).content == rejected  # HEAD: always rejected
        assert (await poll(http, srv)).content == ok
        assert descriptor_value(dump(srv), "snowflake-proxy-rejected-for-relay-url-count") == "8"
