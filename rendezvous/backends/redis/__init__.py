"""The ``redis`` backend (``pip install 'rendezvous[redis]'``): several nodes share their
rendezvous state through one Redis ≥ 7.0 (standalone, or found through Sentinel; Valkey works too). See
``docs/scale-out.md``. This module stays light: redis-py is imported only when a node is made.
"""

from __future__ import annotations

from typing import Any

from rendezvous.backends.base import BackendSettings
from rendezvous.backends.redis.urls import SENTINEL_SCHEME, parse_sentinel_url
from rendezvous.errors import ConfigError


def create(settings: BackendSettings) -> Any:
    """The ``rendezvous.backends`` entry point ``redis``."""
    try:
        from rendezvous.backends.redis.node import RedisBackend
    except ImportError as exc:
        raise ConfigError(f"the redis backend needs the redis extra: pip install 'rendezvous[redis]' ({exc})") from None
    scheme = settings.url.split("://")[0]
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(settings.url)  # (a mistake in it is said at start, in one line)
    elif scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"backend_url: expected redis://, rediss://, unix:// or redis+sentinel://, got {scheme}://")
    return RedisBackend(settings)
