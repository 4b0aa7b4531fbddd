"""Geolocating AMP-cache and SQS clients by their offer's ICE candidates (upstream HEAD)."""

from __future__ import annotations

import json

from rendezvous_snowflake.candidates import candidate_addresses, client_address, parse_candidate

# common/util/util_test.go "GetCandidateAddrs", verbatim
OFFER_START = ("v=0\r\no=- 4358805017720277108 2 IN IP4 8.8.8.8\r\ns=-\r\nt=0 0\r\na=group:BUNDLE data\r\n"
               "a=msid-semantic: WMS\r\nm=application 56688 DTLS/SCTP 5000\r\nc=IN IP4 8.8.8.8\r\n")
OFFER_END = ("a=ice-ufrag:aMAZ\r\na=ice-pwd:jcHb08Jjgrazp2dzjdrvPPvV\r\na=ice-options:trickle\r\n"
             "a=fingerprint:sha-256 C8:88:EE:B9:E7:02:2E:21:37:ED:7A:D1:EB:2B:A3:15:A2:3B:5B:1C:3D:D4:D5:1F:06:CF:52:40:03:F8:DD:66\r\n"
             "a=setup:actpass\r\na=mid:data\r\na=sctpmap:5000 webrtc-datachannel 1024\r\n")


def test_upstream_vector_type_then_priority():
    sdp = (OFFER_START + "a=candidate:3769337065 1 udp 2122260223 8.8.8.8 56688 typ prflx\r\n"
           "a=candidate:3769337065 1 udp 2122260223 129.97.124.13 56688 typ relay\r\n"
           "a=candidate:3769337065 1 udp 2122260223 129.97.124.14 56688 typ srflx\r\n"
           "a=candidate:3769337065 1 udp 2122260223 129.97.124.15 56688 typ host\r\n"
           "a=candidate:3769337065 1 udp 2122260224 129.97.124.16 56688 typ host\r\n" + OFFER_END)
    assert candidate_addresses(sdp) == ["129.97.124.16", "129.97.124.15", "8.8.8.8", "129.97.124.14", "129.97.124.13"]


def test_mdns_names_and_bad_candidates_are_skipped():
    sdp = (OFFER_START + "a=candidate:1 1 udp 2122260223 abcd-1234.local 5000 typ host\r\n"
           "a=candidate:2 1 udp 9 10.0.0.1 5000 typ bogus\r\n"
           "a=candidate:3 1 udp 1694498815 129.97.208.23 5000 typ srflx raddr 0.0.0.0 rport 0\r\n" + OFFER_END)
    assert candidate_addresses(sdp) == ["129.97.208.23"]
    assert parse_candidate("candidate:1 1 udp 2122260223 abcd-1234.local 5000 typ host") == ("host", 2122260223, None)
    assert parse_candidate("candidate:1 1 udp 2122260223 somehost 5000 typ host") is None
    assert parse_candidate("candidate:1 1 udp 2122260223 10.0.0.1 99999 typ host") is None


def test_private_host_candidate_wins_as_in_go():
    # Go takes the first parseable address whatever it is: a private host candidate outranks a public srflx
    sdp = (OFFER_START + "a=candidate:1 1 udp 1694498815 129.97.208.23 5000 typ srflx raddr 10.0.0.2 rport 5000\r\n"
           "a=candidate:2 1 udp 2122260223 10.0.0.2 5000 typ host\r\n" + OFFER_END)
    assert candidate_addresses(sdp)[0] == "10.0.0.2"


def test_equal_candidates_last_first_and_ipv4_mapped():
    sdp = (OFFER_START + "a=candidate:1 1 udp 5 129.97.208.1 5000 typ host\r\n"
           "a=candidate:2 1 udp 5 ::ffff:129.97.208.2 5000 typ host\r\n" + OFFER_END)
    assert candidate_addresses(sdp) == ["129.97.208.2", "129.97.208.1"]


def test_session_level_candidates_and_non_sdp_offers_give_nothing():
    assert candidate_addresses("v=0\r\na=candidate:1 1 udp 5 129.97.208.1 5000 typ host\r\n") == []
    assert candidate_addresses("a=candidate:1 1 udp 5 129.97.208.1 5000 typ host\r\n") == []
    offer = json.dumps({"type": "offer", "sdp": OFFER_START + "a=candidate:1 1 udp 5 129.97.208.1 5000 typ host\r\n"})
    assert client_address(offer) == "129.97.208.1"
    assert client_address(json.dumps({"type": "nonsense", "sdp": OFFER_START})) is None
    assert client_address("fake") is None
    assert client_address(json.dumps({"type": "offer"})) is None
