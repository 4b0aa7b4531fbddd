"""A real server for a test: the profile(s) on 127.0.0.1, an ephemeral port, in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from rendezvous.server import RunningServer, make_config, running


@contextlib.asynccontextmanager
async def serve(
    profile: str | Sequence[str],
    settings: Mapping[str, Any] | None = None,
    *,
    http_server: str = "native",
    server: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[RunningServer]:
    """Run ``profile`` in-process on ``127.0.0.1:0``; yields the :class:`RunningServer`.

    Several profiles: pass their names as a list and ``settings`` as ``{name: {...}}``
    (mount them under prefixes with ``server={"mount": ["overlay=/ov"]}``).
    """
    # No WebTransport unless asked for (``server={"webtransport_port": 0}``), even for a profile
    # whose original listens on a fixed UDP port (wasimoff's :4443): tests must not clash on it.
    server_values = {"host": "127.0.0.1", "port": 0, "http_server": http_server, "shutdown_grace": 1.0,
                     "webtransport_port": None, **(server or {})}
    if isinstance(profile, str):
        config = make_config(profile, server=server_values, settings={profile: dict(settings or {})})
    else:
        per_profile = {name: dict((settings or {}).get(name, {})) for name in profile}
        config = make_config(list(profile), server=server_values, settings=per_profile)
    async with running(config, **kwargs) as running_server:
        yield running_server
