"""Parsing ``redis+sentinel://`` URLs (pure: no I/O, no redis-py).

``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<service>[/<db>][?query]``:
the Sentinels (port 26379 by default) that watch the primary named ``service``; the user and
password are the primary's (as in a ``redis://`` URL), ``sentinel_username`` and
``sentinel_password`` in the query the Sentinels' own, if they require one. A node asks the
Sentinels for the primary on every (re)connect, so after a failover it reaches the new one.
"""

from __future__ import annotations

import urllib.parse

import attrs

from rendezvous.errors import ConfigError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_QUERY = ("sentinel_username", "sentinel_password")


@attrs.frozen
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``url`` as a :class:`SentinelTarget`, or :class:`ConfigError` saying what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME or not sep:
        raise ConfigError(f"backend_url: expected {SENTINEL_SCHEME}://, got {scheme}://")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    sentinels = tuple(_host_port(part) for part in hosts.split(",")) if hosts else ()
    if not sentinels:
        raise ConfigError("backend_url: a redis+sentinel:// URL names at least one Sentinel (host[:port])")
    segments = [urllib.parse.unquote(s) for s in path.split("/")] if slash else []
    if not segments or not segments[0]:
        raise ConfigError("backend_url: a redis+sentinel:// URL names the primary's service after the hosts "
                          "(redis+sentinel://host:26379/mymaster)")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ConfigError(f"backend_url: after the service name, only a database number may follow, got /{path}")
    options = urllib.parse.parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - set(_QUERY))
    if unknown:
        raise ConfigError(f"backend_url: unknown option {unknown[0]!r} (redis+sentinel:// takes {', '.join(_QUERY)})")
    return SentinelTarget(sentinels=sentinels, service=segments[0], db=int(segments[1]) if len(segments) == 2 else 0,
                          username=username, password=password,
                          sentinel_username=options.get("sentinel_username", [None])[-1],
                          sentinel_password=options.get("sentinel_password", [None])[-1])


def _host_port(part: str) -> tuple[str, int]:
    host, port = part, ""
    if part.startswith("["):  # [IPv6]:port
        host, _, tail = part[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else tail
    elif ":" in part:
        host, _, port = part.rpartition(":")
    if not host:
        raise ConfigError(f"backend_url: a Sentinel without a host: {part!r}")
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"backend_url: bad Sentinel port in {part!r}")
    return host, int(port)
