"""The profile plugin API: what a protocol binding provides to the framework."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from rendezvous.transports.base import Route


def _memory_backend() -> Any:
    from rendezvous.backends.memory import MemoryBackend

    return MemoryBackend()


@attrs.frozen
class ProfileContext:
    """What the framework hands a profile when it starts it."""

    name: str
    settings: Any
    metrics: Any  # prometheus_client.CollectorRegistry
    log: Any  # a structlog bound logger
    clock: Callable[[], float]
    #: The running WebTransport listener (``.port``, ``.certificate.sha256``/``.ephemeral``), or None.
    #: Called, not read: the listener starts after the profiles are created, and its
    #: certificate changes when it is renewed.
    webtransport: Callable[[], Any] = lambda: None
    #: Where shared rendezvous state lives (``rendezvous.backends``: ``memory``, the default, or
    #: ``redis``): the profile makes its stores from it (``backend.pairing(...)``). The server runs it.
    backend: Any = attrs.field(factory=_memory_backend)


@runtime_checkable
class ProfileRuntime(Protocol):
    """A started profile: its routes, optional static files, and its background work."""

    routes: Sequence[Route]
    static_dir: pathlib.Path | None

    async def run(self) -> None:
        """Background work (timers); runs until cancelled when the server stops.

        A runtime may also have ``async def shutdown()``: called first when the server
        stops, to answer whatever is waiting (long-polls) instead of cutting it off; and
        ``reload()`` (plain or async): called on SIGHUP by ``rendezvous serve``.
        """


@runtime_checkable
class Profile(Protocol):
    """A protocol binding, found through the ``rendezvous.profiles`` entry point.

    ``settings`` is an attrs class made with :func:`rendezvous.settings.setting` fields.
    ``default_port`` is the port the original system listens on. ``server_env`` maps
    server settings to the env vars the original uses for them (the overlay's ``PORT``).

    A profile that keeps all its shared state in the stores of ``context.backend`` declares
    ``distributed = True``; without it (the default, third-party profiles too) the server refuses
    to run it on a distributed backend (``redis``), since its nodes would not see each other.
    """

    name: str
    summary: str
    settings: type
    default_port: int
    server_env: Mapping[str, Sequence[str]]

    def create(self, context: ProfileContext) -> ProfileRuntime: ...


@runtime_checkable
class ProfileStatus(Protocol):
    """Optional on a runtime: the numbers of the status page (``/status``), read once a second:
    ``{id: Gauge | Counter | Latency}`` (:mod:`rendezvous.observe.status.readings`). Cheap, exact,
    and nothing that names a peer (no addresses, ids or secrets)."""

    def status(self) -> Mapping[str, Any]: ...


@runtime_checkable
class ProfileCliExtras(Protocol):
    """Optional: profiles with command-line arguments beyond ``--<setting>`` flags."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def values_from_arguments(self, args: argparse.Namespace) -> Mapping[str, tuple[Any, str]]: ...
