"""Finding plugins through entry points: profiles, transports, HTTP servers."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from rendezvous.errors import PluginError

PROFILES = "rendezvous.profiles"
TRANSPORTS = "rendezvous.transports"
SERVERS = "rendezvous.servers"


def available(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def load(group: str, name: str) -> Any:
    found = available(group)
    if name not in found:
        kind = group.rsplit(".", 1)[-1].rstrip("s")
        known = ", ".join(sorted(found)) or "none"
        raise PluginError(f"no {kind} named {name!r} is installed (installed: {known})")
    try:
        return found[name].load()
    except Exception as exc:  # a broken third-party plugin must not give a traceback
        raise PluginError(f"{group} plugin {name!r} failed to load: {type(exc).__name__}: {exc}") from exc


def load_profile(name: str) -> Any:
    return load(PROFILES, name)
