"""Backends: where a profile's shared rendezvous state lives (see ``docs/scale-out.md``).

Found through the ``rendezvous.backends`` entry point group, as profiles are: each entry point
is a factory ``create(settings: BackendSettings) -> Backend``. Built in: ``memory`` (the
default: one node, today's matchers) and ``redis`` (``pip install 'rendezvous[redis]'``).
Importing this package imports no backend; only the selected one is loaded.
"""

from __future__ import annotations

from rendezvous import plugins
from rendezvous.backends.base import (
    Backend,
    BackendError,
    BackendSettings,
    BackendUnavailable,
    Codec,
    ImmediatePairingStore,
    MsgpackCodec,
    PairingStore,
    ReportStore,
)

BACKENDS = "rendezvous.backends"
DEFAULT = "memory"


def available() -> list[str]:
    return sorted(plugins.available(BACKENDS))


def create_backend(name: str = DEFAULT, settings: BackendSettings | None = None) -> Backend:
    """The backend named ``name``, made with ``settings`` (a :class:`PluginError` if none is installed
    under that name; a :class:`ConfigError` if its extra is missing)."""
    factory = plugins.load(BACKENDS, name)
    return factory(settings or BackendSettings())


__all__ = [
    "BACKENDS", "DEFAULT", "Backend", "BackendError", "BackendSettings", "BackendUnavailable", "Codec", "ImmediatePairingStore", "MsgpackCodec",
    "PairingStore", "ReportStore",
    "available", "create_backend",
]
