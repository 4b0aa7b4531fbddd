"""Snowflake broker behaviours (spec §2, 1–33), against a real server on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import json

import anyio
import httpx
import pytest

from rendezvous.testing import http_call, serve
from rendezvous_snowflake import amp
from rendezvous_snowflake.messages import encode_client_request

pytestmark = pytest.mark.anyio
PATTERN = "snowflake.torproject.net"
SDP_OFFER = json.dumps({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
                        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
                        "a=candidate:1 1 udp 2122260223 129.97.208.23 5000 typ host\r\n"})
ANSWER = json.dumps({"type": "answer", "sdp": "v=0\r\na=candidate:1 1 udp 1 10.0.0.2 6000 typ host\r\n"})
NO_MATCH = b'{"Status":"no match","Offer":"","NAT":"","RelayURL":""}'


def broker(http_server="native", **settings):
    base = {"disable_tls": True, "disable_geoip": True, "allowed_relay_pattern": PATTERN, "proxy_timeout": 1.0,
            "client_timeout": 1.0, "metrics_interval": 3600.0}
    return serve("snowflake", {**base, **settings}, http_server=http_server)


def client(**kwargs):
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=3000, max_keepalive_connections=3000), **kwargs)


# Proxies and clients make one request per connection, as the real peers' long-polls do.
async def poll(http, srv, sid="sid-1", nat="unrestricted", clients=0, pattern=PATTERN, ptype="standalone", headers=None):
    body = {"Sid": sid, "Version": "1.3", "Type": ptype, "NAT": nat, "Clients": clients}
    if pattern is not None:
        body["AcceptedRelayPattern"] = pattern
    return await http_call(srv.url + "/proxy", "POST", json.dumps(body).encode(), headers)


async def offer(http, srv, nat="unknown", sdp=SDP_OFFER, fingerprint=None, headers=None):
    body = encode_client_request(sdp, nat) if fingerprint is None else encode_client_request(sdp, nat, fingerprint)
    return await http_call(srv.url + "/client", "POST", body, headers)


async def answer(http, srv, sid, text=ANSWER):
    return await http_call(srv.url + "/answer", "POST", json.dumps({"Version": "1.3", "Sid": sid, "Answer": text}).encode())


async def known(srv) -> list:
    """The proxies the broker knows (waiting, or matched and unanswered): its store is async."""
    return await srv.runtimes["snowflake"].pairing.known()


async def wait_known(srv, predicate, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate(await known(srv)):
            await anyio.sleep(0.01)


async def wait_polling(srv, n=1):
    await wait_known(srv, lambda proxies: len(proxies) >= n)


def dump(srv) -> str:
    return srv.runtimes["snowflake"].dump_metrics()


def descriptor_value(text, key):
    for line in text.splitlines():
        if line.startswith(key + " "):
            return line[len(key) + 1:]
    raise AssertionError(f"{key} not in {text}")


# 1, 2
async def test_no_proxies(http_server):
    async with broker(http_server) as srv, client() as http:
        r = await offer(http, srv)
        assert r.status_code == 200 and r.content == b'{"error":"no snowflake proxies currently available"}'
        text = dump(srv)
        assert descriptor_value(text, "client-denied-count") == "8"
        assert descriptor_value(text, "client-restricted-denied-count") == "8"
        assert descriptor_value(text, "client-unrestricted-denied-count") == "0"
        assert descriptor_value(text, "client-http-count") == "8"
        assert descriptor_value(text, "client-http-ips") == "??=8"


# 3, 16, 20
async def test_end_to_end_rendezvous(http_server):
    async with broker(http_server, client_timeout=5.0, proxy_timeout=5.0) as srv, client() as http:
        async with anyio.create_task_group() as tg:
            polled = {}

            async def proxy():
                r = await poll(http, srv, sid="e2e", nat="unrestricted")
                polled["reply"] = r
                offer_text = r.json()["Offer"]
                assert offer_text == SDP_OFFER
                a = await answer(http, srv, "e2e")
                polled["answer"] = a

            tg.start_soon(proxy)
            await wait_polling(srv)
            r = await offer(http, srv, nat="restricted")
        assert r.status_code == 200 and r.json() == {"answer": ANSWER}
        assert polled["reply"].content == json.dumps(
            {"Status": "client match", "Offer": SDP_OFFER, "NAT": "restricted", "RelayURL": "wss://snowflake.torproject.net/"},
            separators=(",", ":")).encode()
        assert polled["answer"].content == b'{"Status":"success"}'
        assert descriptor_value(dump(srv), "client-snowflake-match-count") == "8"


# 4 (current rule) and the 2.5.1 rule
@pytest.mark.parametrize("matching,expect_match", [("current", True), ("2.5.1", False)])
async def test_unrestricted_client_fallback(http_server, matching, expect_match):
    async with broker(http_server, matching=matching) as srv, client() as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, http, srv, "u1", "unrestricted")
            await wait_polling(srv)
            r = await offer(http, srv, nat="unrestricted")
            tg.cancel_scope.cancel()
        if expect_match:
            assert r.json() == {"error": "timed out waiting for answer!"}  # matched; the proxy never answered
        else:
            assert r.json() == {"error": "no snowflake proxies currently available"}


# 5, 17 (late answer after the timeout)
async def test_client_timeout_then_client_gone(http_server):
    async with broker(http_server, client_timeout=0.5) as srv, client() as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, http, srv, "slow", "unrestricted")
            await wait_polling(srv)
            r = await offer(http, srv)
        assert r.json() == {"error": "timed out waiting for answer!"}
        late = await answer(http, srv, "slow")
        assert late.status_code == 200 and late.content == b'{"Status":"client gone"}'
        assert descriptor_value(dump(srv), "client-snowflake-timeout-count") == "8"


# 6, 7, 8: legacy client format
async def test_legacy_client(http_server):
    async with broker(http_server, client_timeout=0.5) as srv, client() as http:
        legacy = b'{"type":"offer","sdp":"fake"}'
        r = await http.post(srv.url + "/client", content=legacy, headers={"Snowflake-NAT-Type": "restricted"})
        assert r.status_code == 503 and r.content == b""
        assert descriptor_value(dump(srv), "client-restricted-denied-count") == "8"
        got = {}

        async def proxy_that_answers():
            reply = (await poll(http, srv, "leg", "unrestricted")).json()
            got["offer"] = reply["Offer"]
            await answer(http, srv, "leg", "fake answer a=candidate")

        async with anyio.create_task_group() as tg:
            tg.start_soon(proxy_that_answers)
            await wait_polling(srv)
            r = await http.post(srv.url + "/client", content=legacy, headers={"snowflake-nat-type": "restricted"})
        assert r.status_code == 200 and r.content == b"fake answer a=candidate"
        assert got["offer"] == legacy.decode()
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, http, srv, "leg2", "unrestricted")
            await wait_polling(srv)
            r = await http.post(srv.url + "/client", content=legacy)
        assert r.status_code == 504
        # a NAT type that does not decode: the client's fault (Go's broker panics and drops it)
        r = await http.post(srv.url + "/client", content=legacy, headers={"snowflake-nat-type": "carrier-grade"})
        assert r.status_code == 400


# 9, 10, 11, 12, 13: AMP cache
async def test_amp_cache(http_server, tmp_path):
    (tmp_path / "geoip").write_text(f"{int(ipaddress.IPv4Address('129.97.208.0'))},{int(ipaddress.IPv4Address('129.97.208.255'))},CA\n")
    (tmp_path / "geoip6").write_text("")
    async with broker(http_server, disable_geoip=False, geoipdb=str(tmp_path / "geoip"), geoip6db=str(tmp_path / "geoip6"),
                      client_timeout=0.5) as srv, client() as http:
        r = await http.get(srv.url + "/amp/client/bad")
        assert r.status_code == 200 and r.headers["content-type"] == "text/html"
        assert r.headers["cache-control"] == "max-age=15"
        assert json.loads(amp.dearmor(r.text)) == {"error": "cannot decode URL path"}
        path = amp.encode_path(encode_client_request(SDP_OFFER, "unknown"))
        r = await http.get(srv.url + "/amp/client/" + path)
        assert json.loads(amp.dearmor(r.text)) == {"error": "no snowflake proxies currently available"}
        text = dump(srv)
        assert descriptor_value(text, "client-ampcache-count") == "8"
        assert descriptor_value(text, "client-ampcache-ips") == "CA=8"  # from the SDP candidate, not HTTP

        got = {}

        async def proxy_that_answers():
            got["offer"] = (await poll(http, srv, "amp", "unrestricted")).json()["Offer"]
            await answer(http, srv, "amp", "fake answer a=candidate")

        fake = amp.encode_path(encode_client_request("fake", "unknown"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(proxy_that_answers)
            await wait_polling(srv)
            r = await http.get(srv.url + "/amp/client/" + fake)
        assert json.loads(amp.dearmor(r.text)) == {"answer": "fake answer a=candidate"}
        assert got["offer"] == "fake"
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, http, srv, "amp2", "unrestricted")
            await wait_polling(srv)
            r = await http.get(srv.url + "/amp/client/" + fake)
        assert json.loads(amp.dearmor(r.text)) == {"error": "timed out waiting for answer!"}


def test_armor_roundtrip_and_shape():
    data = json.dumps({"answer": "x" * 100_000}).encode()
    page = amp.armor(data)
    assert amp.dearmor(page) == data
    pres = page.split("<pre>\n")[1:]
    assert all(len(line) <= 32 for pre in pres for line in pre.split("</pre>")[0].splitlines())
    assert all(len(pre.split("</pre>")[0].splitlines()) <= 992 for pre in pres)


# 14, 15
async def test_poll_replies_byte_exact(http_server):
    async with broker(http_server, proxy_timeout=0.3) as srv, client() as http:
        r = await http.post(srv.url + "/proxy", content=b'{"Sid":"ymbcCMto7KHNGYlp","Version":"1.0","AcceptedRelayPattern":"snowflake.torproject.net"}')
        assert r.status_code == 200 and r.content == NO_MATCH
        reply = await poll_during(http, srv, b'{"Sid":"ymbcCMto7KHNGYlp","Version":"1.0","AcceptedRelayPattern":"snowflake.torproject.net"}',
                                  lambda: http.post(srv.url + "/client", content=encode_client_request("<offer>", "unknown")))
        # v1.0 proxy without NAT sits in the restricted pool; an unknown client takes only unrestricted.
        assert reply.content == NO_MATCH


async def poll_during(http, srv, body, action):
    """A raw proxy poll held while ``action()`` runs; its reply."""
    got = {}
    async with anyio.create_task_group() as tg:
        async def p():
            got["r"] = await http.post(srv.url + "/proxy", content=body)

        tg.start_soon(p)
        await wait_polling(srv)
        await action()
    return got["r"]


async def test_client_match_reply_key_order_and_nat(http_server):
    async with broker(http_server) as srv, client() as http:
        reply = await poll_during(http, srv, b'{"Sid":"ymbcCMto7KHNGYlp","Version":"1.0","NAT":"unrestricted","AcceptedRelayPattern":"snowflake.torproject.net"}',
                                  lambda: offer(http, srv, sdp="<offer>"))
        assert reply.content == b'{"Status":"client match","Offer":"\\u003coffer\\u003e","NAT":"unknown","RelayURL":"wss://snowflake.torproject.net/"}'


# 17, 18, 19, 33 (answers)
@pytest.mark.parametrize(
    "body,status,reply",
    [
        (b"", 400, b""),
        (json.dumps({"Version": "1.0", "Sid": "nobody", "Answer": ANSWER}).encode(), 200, b'{"Status":"client gone"}'),
        (json.dumps({"Version": "1.0", "Sid": "x", "Answer": "no candidates"}).encode(), 400, b""),
        (json.dumps({"Version": "1.0", "Answer": ANSWER}).encode(), 400, b""),
        (json.dumps({"Version": "1.0", "Sid": "x", "Answer": "", "a=candidate": 1}).encode(), 400, b""),
        (json.dumps({"Version": "2.0", "Sid": "x", "Answer": ANSWER}).encode(), 400, b""),
        (b"a=candidate not json", 400, b""),
        (b"{" + b" " * 100_001 + b"a=candidate}", 400, b""),
    ],
)
async def test_answer_errors(http_server, body, status, reply):
    async with broker(http_server) as srv, client() as http:
        r = await http.post(srv.url + "/answer", content=body)
        assert (r.status_code, r.content) == (status, reply)


# 21
async def test_least_loaded_proxy_first(http_server):
    async with broker(http_server, proxy_timeout=3.0, client_timeout=0.3) as srv, client() as http:
        results = {}

        async def p(sid, clients):
            results[sid] = (await poll(http, srv, sid, "unrestricted", clients)).json()["Status"]

        async with anyio.create_task_group() as tg:
            for sid, clients in (("four", 4), ("five", 5), ("three", 3), ("one", 1)):
                tg.start_soon(p, sid, clients)
            await wait_polling(srv, 4)
            order = []
            for _ in range(4):
                before = {k for k, v in results.items()}
                await offer(http, srv)
                with anyio.fail_after(5):
                    while len(results) == len(before):
                        await anyio.sleep(0.01)
                order.extend(set(results) - before)
        assert order == ["one", "three", "four", "five"]


# 22: geoip missing / disabled
async def test_geoip_disabled_still_serves(http_server):
    async with broker(http_server, proxy_timeout=0.2) as srv, client() as http:
        assert (await poll(http, srv)).content == NO_MATCH


def test_geoip_missing_is_a_config_error(tmp_path):
    from rendezvous.errors import ConfigError

    async def start():
        async with broker(disable_geoip=False, geoipdb=str(tmp_path / "none"), geoip6db=str(tmp_path / "none6")):
            pass

    with pytest.raises(ConfigError, match="--disable-geoip"):
        anyio.run(start)


# 23, 24, 26, 27, 29
async def test_proxy_metrics_descriptor(http_server, tmp_path):
    ca = [f"129.97.208.{i}" for i in range(1, 5)]
    (tmp_path / "geoip").write_text(f"{int(ipaddress.IPv4Address('129.97.208.0'))},{int(ipaddress.IPv4Address('129.97.208.255'))},CA\n")
    (tmp_path / "geoip6").write_text("")
    async with broker(http_server, disable_geoip=False, geoipdb=str(tmp_path / "geoip"), geoip6db=str(tmp_path / "geoip6"),
                      proxy_timeout=0.2) as srv, client() as http:
        async with anyio.create_task_group() as tg:
            for ip, ptype in zip(ca, ("", "standalone", "badge", "webext")):
                tg.start_soon(lambda ip=ip, ptype=ptype: poll(http, srv, "s" + ip, "", ptype=ptype, headers={"X-Forwarded-For": ip}))
        text = dump(srv)
        assert text.startswith("snowflake-stats-end ") and " (3600 s)\nsnowflake-ips CA=4\n" in text
        for key, value in (("snowflake-ips-standalone", "1"), ("snowflake-ips-badge", "1"), ("snowflake-ips-webext", "1"),
                           ("snowflake-ips-iptproxy", "0"), ("snowflake-ips-total", "4"), ("snowflake-idle-count", "8"),
                           ("snowflake-proxy-poll-with-relay-url-count", "8"), ("snowflake-ips-nat-unknown", "4")):
            assert descriptor_value(text, key) == value
        keys = [line.split(" ")[0] for line in text.splitlines()]
        assert keys == ["snowflake-stats-end", "snowflake-ips", "snowflake-ips-iptproxy", "snowflake-ips-standalone",
                        "snowflake-ips-webext", "snowflake-ips-badge", "snowflake-ips-total", "snowflake-idle-count",
                        "snowflake-proxy-poll-with-relay-url-count", "snowflake-proxy-poll-without-relay-url-count",
                        "snowflake-proxy-rejected-for-relay-url-count", "client-denied-count",
                        "client-restricted-denied-count", "client-unrestricted-denied-count",
                        "client-snowflake-match-count", "client-snowflake-timeout-count", "client-http-count",
                        "client-http-ips", "client-ampcache-count", "client-ampcache-ips", "client-sqs-count",
                        "client-sqs-ips", "snowflake-ips-nat-restricted", "snowflake-ips-nat-unrestricted",
                        "snowflake-ips-nat-unknown"]
        empty = dump(srv)  # 24: a dump resets everything
        assert descriptor_value(empty, "snowflake-ips") == "" and "\nsnowflake-ips \n" in empty
        assert descriptor_value(empty, "snowflake-ips-total") == "0"
        for _ in range(2):  # 26: same IP twice counts once; 29: counted again after a dump
            await poll(http, srv, "same", "restricted", headers={"X-Forwarded-For": ca[0]})
        await poll(http, srv, "other", "unrestricted", headers={"Forwarded": f'for="{ca[1]}:1234"'})
        text = dump(srv)
        assert descriptor_value(text, "snowflake-ips") == "CA=2" and descriptor_value(text, "snowflake-ips-total") == "2"
        assert descriptor_value(text, "snowflake-ips-nat-restricted") == "1"  # 27
        assert descriptor_value(text, "snowflake-ips-nat-unrestricted") == "1"
        assert descriptor_value(text, "snowflake-ips-nat-unknown") == "0"


# 25, 28, 30
async def test_client_denial_binning_and_country_order(http_server):
    async with broker(http_server) as srv, client() as http:
        for _ in range(9):
            await offer(http, srv, nat="restricted")
        await offer(http, srv, nat="unrestricted")
        await offer(http, srv, nat="unknown")
        text = dump(srv)
        assert descriptor_value(text, "client-denied-count") == "16"
        assert descriptor_value(text, "client-restricted-denied-count") == "16"  # 10 restricted-or-unknown
        assert descriptor_value(text, "client-unrestricted-denied-count") == "8"
    from rendezvous_snowflake.stats import country_list

    counts = {"CN": 250, "FR": 200, "RU": 150, "AT": 110, "MY": 105, "ZA": 111, "TZ": 100, "IT": 50, "BE": 1, "CA": 1, "PH": 1}
    assert country_list(counts, bin_counts=True) == "CN=256,FR=200,RU=152,AT=112,MY=112,ZA=112,TZ=104,IT=56,BE=8,CA=8,PH=8"


# 31
async def test_1000_proxies_and_500_clients(http_server):
    async with broker(http_server, proxy_timeout=8.0, client_timeout=8.0) as srv, client() as http:
        answers: list[str] = []

        async def proxy(i):
            reply = (await poll(http, srv, f"p{i}", "unrestricted")).json()
            if reply["Status"] == "client match":
                assert (await answer(http, srv, f"p{i}", f"proxy-sdp-{i} a=candidate")).json() == {"Status": "success"}

        async def a_client():
            r = await offer(http, srv, nat="unrestricted")
            assert r.status_code == 200
            answers.append(r.json()["answer"])

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(proxy, i)
                await wait_polling(srv, 1000)
                async with anyio.create_task_group() as clients:
                    for _ in range(500):
                        clients.start_soon(a_client)
                await srv.runtimes["snowflake"].shutdown()  # release the 500 unmatched polls
        assert len(answers) == 500 and all("proxy-sdp-" in a for a in answers)
        assert len(set(answers)) == 500


# 32
async def test_bridge_list(http_server, tmp_path):
    lines = [
        {"displayName": "default", "webSocketAddress": "wss://snowflake.torproject.net/", "fingerprint": "2B280B23E1107BB62ABFC40DDCC8824814F80A72"},
        {"displayName": "imaginary-8", "webSocketAddress": "wss://imaginary-8-snowflake.torproject.org", "fingerprint": "8B8B2B2D4D8CB0F0A3DFD4A57D78BE9E36F80B07"},
    ]
    path = tmp_path / "bridges.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    async with broker(http_server, bridge_list_path=str(path)) as srv, client() as http:
        got = {}

        async def p():
            got["r"] = (await poll(http, srv, "b", "unrestricted")).json()

        async with anyio.create_task_group() as tg:
            tg.start_soon(p)
            await wait_polling(srv)
            await offer(http, srv, fingerprint="8b8b2b2d4d8cb0f0a3dfd4a57d78be9e36f80b07")
        assert got["r"]["RelayURL"] == "wss://imaginary-8-snowflake.torproject.org"
        r = await offer(http, srv, fingerprint="00" * 20)
        assert r.json() == {"error": "bridge with requested fingerprint is unknown to the broker"}


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"displayName":"a","webSocketAddress":"wss://x","fingerprint":"2B280B23E1107BB62ABFC40DDCC8824814F80A72","extra":1}', "unknown field"),
        ('{"displayName":"a","webSocketAddress":"wss://x","fingerprint":"XYZ"}', "40 or 64 hex"),
        ("not json", "invalid JSON"),
    ],
)
def test_bad_bridge_list_is_a_config_error(tmp_path, text, message):
    from rendezvous.errors import ConfigError

    path = tmp_path / "bridges"
    path.write_text(text + "\n")

    async def start():
        async with broker(bridge_list_path=str(path)):
            pass

    with pytest.raises(ConfigError, match=message):
        anyio.run(start)


# 33 (polls)
@pytest.mark.parametrize(
    "body,status",
    [
        (b'{"Sid":"a","Version":"1.0"}', 200),
        (b'{"Sid":"a","Version":"1.1","Type":"standalone"}', 200),
        (b'{"sid":"a","version":"1.2","nat":"restricted","CLIENTS":3}', 200),
        (b'{"Sid":"a"}', 400),
        (b"{}", 400),
        (b'{"Version":"1.0"}', 400),
        (b'{"Sid":"a","Version":"2.0"}', 400),
        (b'{"Sid":"a","Version":"1.3","NAT":"symmetric"}', 400),
        (b'{"Sid":"a","Version":"1.3","Clients":"3"}', 400),
        (b'{"Sid":"a","Version":"1.3","Clients":1.5}', 400),
        (b'{"Sid":5,"Version":"1.3"}', 400),
        (b"[1,2]", 400),
        (b"not json", 400),
        (b"", 400),
        (b'{"Sid":"a","Version":"1.3"} trailing', 400),
        (b'{"Sid":"' + b"x" * 100_001 + b'","Version":"1.3"}', 400),
    ],
)
async def test_poll_decoding(body, status):
    async with broker(proxy_timeout=0.1, default_relay_pattern=PATTERN) as srv, client() as http:
        r = await http.post(srv.url + "/proxy", content=body)
        assert r.status_code == status
        if status == 200:
            assert r.content == NO_MATCH
        else:
            assert r.content == b""
        assert await known(srv) == []


@pytest.mark.parametrize(
    "body,error",
    [
        (b'2.0\n{"offer":"x"}', "unsupported message version"),
        (b'1.0{"offer":"x"}', "unsupported message version"),
        (b"1.0\n{", "unexpected end of JSON input"),
        (b"1.0\n?", "invalid character '?' looking for beginning of value"),
        (b'1.0\n{"offer":""}', "no supplied offer"),
        (b'1.0\n{"offer":5}', "json: cannot unmarshal number into Go struct field ClientPollRequest.offer of type string"),
        (b'1.0\n{"offer":"x","fingerprint":"zz"}', "encoding/hex: invalid byte: U+007A 'z'"),
        (b'1.0\n{"offer":"x","fingerprint":"abc"}', "encoding/hex: odd length hex string"),
        (b'1.0\n{"offer":"x","fingerprint":"abcd"}', "cannot decode fingerprint"),
        (b'1.0\n{"offer":"x","nat":"weird"}', "invalid NAT type"),
    ],
)
async def test_client_decoding_errors(body, error):
    async with broker() as srv, client() as http:
        r = await http.post(srv.url + "/client", content=body)
        assert r.status_code == 200 and r.json() == {"error": error}


async def test_relay_pattern_rules(http_server):
    async with broker(http_server, proxy_timeout=0.1, allowed_relay_pattern="snowflake.torproject.net$") as srv, client() as http:
        bad = b'{"Status":"incorrect relay pattern","Offer":"","NAT":"","RelayURL":""}'
        assert (await poll(http, srv, pattern="torproject.net$")).content == NO_MATCH  # suffix covers
        assert (await poll(http, srv, pattern="other.net$")).content == bad
        assert (await poll(http, srv, pattern="^snowflake.torproject.net$")).content == bad  # exact needs exact
        assert (await poll(http, srv, pattern=None)).content == NO_MATCH  # absent → default pattern "" covers all
    async with broker(http_server, proxy_timeout=0.1, allowed_relay_pattern=PATTERN, default_relay_pattern="other.net$") as srv:
        bad = b'{"Status":"incorrect relay pattern","Offer":"","NAT":"","RelayURL":""}'
        assert (await poll(None, srv, pattern=None)).content == bad
        assert (await poll(None, srv, pattern=PATTERN)).content == NO_MATCH
    async with broker(http_server, proxy_timeout=0.1, allowed_relay_pattern="") as srv, client() as http:
        assert (await poll(http, srv, pattern="snowflake.torproject.net$")).content == b'{"Status":"incorrect relay pattern","Offer":"","NAT":"","RelayURL":""}'
        assert (await poll(http, srv, pattern="")).content == NO_MATCH


async def test_cors_options_debug_robots_and_any_method(http_server):
    async with broker(http_server, proxy_timeout=3.0) as srv, client() as http:
        r = await http.options(srv.url + "/client")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["access-control-allow-headers"] == "Origin, X-Session-ID"
        r = await http.get(srv.url + "/robots.txt")
        assert r.text == "User-agent: *\nDisallow: /\n" and "access-control-allow-origin" not in r.headers
        r = await http.request("PUT", srv.url + "/client", content=encode_client_request("x", "unknown"))
        assert r.json() == {"error": "no snowflake proxies currently available"}
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, http, srv, "d1", "unrestricted", 0, PATTERN, "webext")
            tg.start_soon(poll, http, srv, "d2", "restricted", 0, PATTERN, "mystery")
            await wait_polling(srv, 2)
            r = await http.get(srv.url + "/debug")
            tg.cancel_scope.cancel()
        lines = r.text.split("\n")
        assert lines[0] == "current snowflakes available: 2"
        assert "\twebext proxies: 1" in lines and "\tunknown proxies: 1" in lines
        assert r.text.endswith("NAT Types available:\n\trestricted: 1\n\tunrestricted: 1\n\tunknown: 0")
        assert r.headers["access-control-allow-origin"] == "*"
        assert (await http.get(srv.url + "/nope")).status_code == 404


async def test_disconnecting_client_frees_proxy_and_disconnecting_proxy_leaves_pool(http_server):
    async with broker(http_server, proxy_timeout=5.0, client_timeout=5.0) as srv, client() as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll, http, srv, "gone", "unrestricted")
            await wait_polling(srv)
            tg.cancel_scope.cancel()  # the proxy hangs up mid-poll
        await wait_known(srv, lambda proxies: not proxies)
        assert (await offer(http, srv)).json() == {"error": "no snowflake proxies currently available"}

        async with anyio.create_task_group() as tg:
            got = {}

            async def p():
                got["r"] = (await poll(http, srv, "matched", "unrestricted")).json()

            tg.start_soon(p)
            await wait_polling(srv)
            async with anyio.create_task_group() as clients:
                clients.start_soon(offer, http, srv)
                with anyio.fail_after(5):
                    while "r" not in got:
                        await anyio.sleep(0.01)
                clients.cancel_scope.cancel()  # the client hangs up while waiting for the answer
        await wait_known(srv, lambda proxies: not proxies)
        assert (await answer(http, srv, "matched")).content == b'{"Status":"client gone"}'


async def test_prometheus_names(http_server):
    async with broker(http_server, proxy_timeout=0.1) as srv, client() as http:
        await poll(http, srv, nat="restricted")
        await offer(http, srv, nat="unknown")
        text = (await http.get(srv.url + "/prometheus")).text
        assert 'snowflake_rounded_proxy_poll_total{nat="restricted",status="idle",type="standalone"} 8.0' in text
        assert 'snowflake_rounded_proxy_poll_with_relay_url_extension_total{nat="restricted",type="standalone"} 8.0' in text
        assert 'snowflake_rounded_client_poll_total{cc="??",nat="unknown",rendezvous_method="http",status="denied"} 8.0' in text
        assert 'snowflake_proxy_total{cc="??",nat="restricted",type="standalone"} 1.0' in text
        assert 'snowflake_available_proxies{nat="restricted",type="standalone"} 0.0' in text
        assert "_created" not in text
        assert (await http.get(srv.url + "/metrics")).status_code == 404  # no --metrics-log


async def test_metrics_log_file_is_written_on_the_interval_and_served(http_server, tmp_path):
    log = tmp_path / "metrics.log"
    async with broker(http_server, metrics_log=str(log), metrics_interval=0.3) as srv, client() as http:
        await offer(http, srv)
        with anyio.fail_after(5):
            while "client-http-count 8" not in (log.read_text() if log.exists() else ""):
                await anyio.sleep(0.05)
        r = await http.get(srv.url + "/metrics")
        assert r.status_code == 200 and "snowflake-stats-end" in r.text and "(0 s)" in r.text


async def test_geoip_reload_reads_the_files_again_and_survives_a_bad_one(tmp_path):
    geoip, geoip6 = tmp_path / "geoip", tmp_path / "geoip6"
    low, high = int(ipaddress.IPv4Address("129.97.208.0")), int(ipaddress.IPv4Address("129.97.208.255"))
    geoip.write_text(f"{low},{high},CA\n")
    geoip6.write_text("")
    async with broker(disable_geoip=False, geoipdb=str(geoip), geoip6db=str(geoip6)) as srv:
        runtime = srv.runtimes["snowflake"]
        assert runtime._country("129.97.208.23") == "CA"
        geoip.write_text(f"{low},{high},DE\n")
        runtime.reload()  # what SIGHUP does under `rendezvous serve`
        assert runtime._country("129.97.208.23") == "DE"
        geoip.write_text("garbage\n")
        runtime.reload()  # logged, and the tables in use stay
        assert runtime._country("129.97.208.23") == "DE"


def _post(path, body):
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)


async def _responses(stream, n):
    """``n`` HTTP responses (Content-Length framed) read off ``stream``: [(status line, body)]."""
    data, out = b"", []
    with anyio.fail_after(5):
        while len(out) < n:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                head = data[:head_end].decode("latin-1")
                length = int(next(line.split(":", 1)[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
                if len(data) >= head_end + 4 + length:
                    out.append((head.split("\r\n")[0], data[head_end + 4:head_end + 4 + length]))
                    data = data[head_end + 4 + length:]
                    continue
            data += await stream.receive()
    return out


async def test_pipelined_requests_behind_a_long_poll_are_answered_in_order_after_it():
    """On the native server /proxy, /client and /answer run without a task (immediate handlers);
    pipelining must still answer in order: a request queued behind a held poll waits for it."""
    async with broker(proxy_timeout=0.3) as srv:
        stream = await anyio.connect_tcp("127.0.0.1", srv.port)
        poll_body = json.dumps({"Sid": "pipelined", "Version": "1.3", "Type": "standalone", "NAT": "restricted",
                                "Clients": 0, "AcceptedRelayPattern": PATTERN}).encode()
        answer_body = json.dumps({"Version": "1.3", "Sid": "nobody", "Answer": ANSWER}).encode()
        await stream.send(_post("/proxy", poll_body) + _post("/answer", answer_body)
                          + b"GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n" + _post("/answer", b"{"))
        started = anyio.current_time()
        replies = await _responses(stream, 4)
        assert anyio.current_time() - started >= 0.25  # the poll was held its proxy_timeout first
        assert replies[0] == ("HTTP/1.1 200 OK", NO_MATCH)
        assert replies[1] == ("HTTP/1.1 200 OK", b'{"Status":"client gone"}')
        assert replies[2][1] == b"User-agent: *\nDisallow: /\n"
        assert replies[3][0] == "HTTP/1.1 400 Bad Request"
        await stream.aclose()


async def test_a_proxy_that_hangs_up_mid_poll_leaves_the_pool_on_the_fast_path():
    async with broker(proxy_timeout=5.0) as srv, client() as http:
        stream = await anyio.connect_tcp("127.0.0.1", srv.port)
        body = json.dumps({"Sid": "gone", "Version": "1.3", "Type": "standalone", "NAT": "unrestricted",
                           "Clients": 0, "AcceptedRelayPattern": PATTERN}).encode()
        await stream.send(_post("/proxy", body))
        await wait_known(srv, lambda proxies: len(proxies) == 1)
        await stream.aclose()  # hang up while held
        await wait_known(srv, lambda proxies: not proxies)
        assert (await offer(http, srv)).json() == {"error": "no snowflake proxies currently available"}
