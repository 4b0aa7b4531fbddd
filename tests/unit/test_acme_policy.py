"""ACME decisions without I/O: renewal timing and backoff on a fake clock, names, HTTP-01 answers, cache entries."""

from __future__ import annotations

import datetime

import pytest

from rendezvous.acme import cache
from rendezvous.acme.challenge import answer
from rendezvous.acme.policy import (
    RENEW_BEFORE, Held, RenewalPlan, check_hostname, parse_listen_address, renew_at, retry_delay,
)

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
MINUTE = datetime.timedelta(minutes=1)
NAMES = ("broker.example", "www.broker.example")


def held(days: float, names=NAMES, start=T0) -> Held:
    return Held(start, start + days * DAY, frozenset(names))


def test_lets_encrypt_certificates_renew_30_days_before_expiry():
    assert RENEW_BEFORE == 30 * DAY
    assert renew_at(held(90)) == T0 + 60 * DAY


def test_short_lived_certificates_renew_at_two_thirds_of_their_life():
    assert renew_at(held(6)) == T0 + 4 * DAY
    assert renew_at(Held(T0, T0 + datetime.timedelta(seconds=30), frozenset(NAMES))) == T0 + datetime.timedelta(seconds=20)


def test_plan_without_a_certificate_asks_now():
    plan = RenewalPlan(NAMES)
    assert plan.due(T0) and plan.next_attempt(T0) == T0


def test_plan_with_a_certificate_waits_for_its_renewal_time():
    plan = RenewalPlan(NAMES)
    plan.use(held(90))
    clock = T0
    assert not plan.due(clock)
    clock += 60 * DAY - MINUTE
    assert not plan.due(clock)
    clock += MINUTE
    assert plan.due(clock)


def test_a_certificate_missing_a_hostname_is_not_usable_and_is_replaced_now():
    plan = RenewalPlan(NAMES)
    assert not plan.usable(held(90, names=NAMES[:1]))
    plan.use(held(90, names=NAMES[:1]))
    assert plan.due(T0)
    assert plan.usable(held(90, names=(*NAMES, "other.example")))


def test_an_expired_certificate_is_still_usable_and_renewed_now():
    plan = RenewalPlan(NAMES)
    expired = held(90, start=T0 - 100 * DAY)
    assert plan.usable(expired)
    plan.use(expired)
    assert plan.due(T0)


def test_failures_back_off_doubling_up_to_an_hour_and_success_resets():
    plan = RenewalPlan(NAMES)
    clock = T0
    delays = []
    for _ in range(9):
        delay = plan.failed(clock)
        delays.append(delay)
        assert not plan.due(clock + delay - datetime.timedelta(seconds=1))
        clock += delay
        assert plan.due(clock)
    assert delays == [MINUTE * m for m in (1, 2, 4, 8, 16, 32)] + [60 * MINUTE] * 3
    plan.use(held(90, start=clock))
    assert plan.failures == 0 and plan.next_attempt(clock) == clock + 60 * DAY


def test_a_failed_renewal_keeps_the_certificate_held():
    plan = RenewalPlan(NAMES)
    plan.use(held(90))
    clock = T0 + 61 * DAY
    assert plan.due(clock)
    plan.failed(clock)
    assert plan.held == held(90) and plan.next_attempt(clock) == clock + MINUTE


def test_retry_delay_is_bounded_for_any_count():
    assert retry_delay(1) == MINUTE and retry_delay(10_000) == 60 * MINUTE


@pytest.mark.parametrize("name, expected", [("Broker.Example.", "broker.example"), ("a-b.c.test", "a-b.c.test")])
def test_hostnames_are_normalised(name, expected):
    assert check_hostname(name) == expected


@pytest.mark.parametrize("name, why", [
    ("*.example.org", "wildcard"), ("localhost", "not a DNS name"), ("-a.example", "not a DNS name"),
    ("a_b.example", "not a DNS name"), ("192.0.2.1", "IP addresses"), ("", "not a DNS name"),
])
def test_names_http01_cannot_validate_are_refused(name, why):
    with pytest.raises(ValueError, match=why):
        check_hostname(name)


def test_listen_address_go_style():
    assert parse_listen_address(":80") == ("", 80)
    assert parse_listen_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen_address("[::1]:80") == ("::1", 80)
    for bad in ("80", "host:", ":99999", "a:b"):
        with pytest.raises(ValueError):
            parse_listen_address(bad)


TOKENS = {"tok": "tok.thumbprint"}


def http01(method, target, host, https_port=443):
    return answer(method, target, host, TOKENS, NAMES, https_port)


def test_challenge_answered_for_configured_hosts_only():
    assert http01("GET", "/.well-known/acme-challenge/tok", "broker.example:80").body == b"tok.thumbprint"
    assert http01("GET", "/.well-known/acme-challenge/tok", "BROKER.example").status == 200
    assert http01("GET", "/.well-known/acme-challenge/nope", "broker.example").status == 404
    assert http01("GET", "/.well-known/acme-challenge/tok", "evil.example").status == 403


def test_plain_http_is_redirected_to_https_as_autocert_does():
    reply = http01("GET", "/proxy?x=1", "broker.example:80")
    assert (reply.status, reply.location) == (302, "https://broker.example/proxy?x=1")
    assert http01("HEAD", "/", "broker.example").location == "https://broker.example/"
    assert http01("GET", "/a", "broker.example", https_port=8443).location == "https://broker.example:8443/a"
    assert http01("GET", "/a", "[::1]:80", https_port=443).location == "https://[::1]/a"
    assert http01("GET", "http://broker.example/abs?q", "").location == "https://broker.example/abs?q"
    assert http01("POST", "/proxy", "broker.example").status == 400
    assert http01("GET", "/", "").status == 400


def test_cache_entries_are_key_then_chain_and_must_match(tmp_path):
    from rendezvous.testing import self_signed_certificate

    cert, key_file = self_signed_certificate(tmp_path, hostname="broker.example")
    store = cache.CertificateCache(tmp_path / "cache")
    key = cache.new_key()
    path = store.store("broker.example", key, cert.read_bytes())
    assert path.stat().st_mode & 0o777 == 0o600 and store.directory.stat().st_mode & 0o777 == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert store.load("broker.example") is None  # the chain is not for this key
    assert store.load("missing.example") is None
    from cryptography.hazmat.primitives import serialization

    own_key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    store.store("broker.example", own_key, cert.read_bytes())
    entry = store.load("broker.example")
    assert entry is not None and entry.names == {"broker.example"} and entry.covers(["broker.example"])
