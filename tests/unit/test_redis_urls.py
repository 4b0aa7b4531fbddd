"""redis+sentinel:// URLs: what they name, and a clear error for each mistake."""

from __future__ import annotations

import pytest

from rendezvous.backends.redis.urls import SentinelTarget, parse_sentinel_url
from rendezvous.errors import ConfigError


def test_one_sentinel_with_the_default_port():
    assert parse_sentinel_url("redis+sentinel://sentinel.internal/mymaster") == SentinelTarget(
        sentinels=(("sentinel.internal", 26379),), service="mymaster")


def test_several_sentinels_passwords_and_a_database():
    target = parse_sentinel_url("redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:5000/cache/3"
                                "?sentinel_username=watch&sentinel_password=s3cret")
    assert target == SentinelTarget(sentinels=(("s1", 26380), ("s2", 26379), ("::1", 5000)), service="cache", db=3,
                                    username="app", password="p@ss", sentinel_username="watch",
                                    sentinel_password="s3cret")


def test_a_password_without_a_user():
    target = parse_sentinel_url("redis+sentinel://:secret@s1/m")
    assert (target.username, target.password) == (None, "secret")


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://s1", "names the primary's service"),
    ("redis+sentinel://s1/", "names the primary's service"),
    ("redis+sentinel:///m", "at least one Sentinel"),
    ("redis+sentinel://s1:x/m", "bad Sentinel port in 's1:x'"),
    ("redis+sentinel://s1:70000/m", "bad Sentinel port"),
    ("redis+sentinel://s1,:26379/m", "a Sentinel without a host"),
    ("redis+sentinel://s1/m/zero", "only a database number may follow"),
    ("redis+sentinel://s1/m/0/x", "only a database number may follow"),
    ("redis+sentinel://s1/m?ssl=true", "unknown option 'ssl'"),
    ("redis://s1/m", "expected redis+sentinel://"),
])
def test_mistakes_are_said_in_one_line(url, says):
    with pytest.raises(ConfigError) as error:
        parse_sentinel_url(url)
    assert says in str(error.value) and "\n" not in str(error.value)
