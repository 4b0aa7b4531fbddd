"""What the server does with a backend: make it from ``[server]``, check the profiles against
it, run it before the profiles, and answer ``/readyz`` from it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio

from rendezvous import hooks
from rendezvous.backends import BackendSettings, BackendUnavailable, create_backend
from rendezvous.backends.base import Backend
from rendezvous.errors import ConfigError, PluginError, RendezvousError
from rendezvous.transports.base import HttpRequest, HttpResponse


def for_server(settings: Any, profiles: Mapping[str, Any]) -> Backend:
    """The backend the server settings name (``backend``, ``backend_url``, ``node_id``,
    ``node_ttl``, ``backend_prefix``). A distributed one with a profile that does not declare
    ``distributed = True`` (third-party profiles too) is a one-line :class:`ConfigError`."""
    config = BackendSettings(url=settings.backend_url, node_id=settings.node_id, node_ttl=settings.node_ttl,
                             prefix=settings.backend_prefix)
    try:
        backend = create_backend(settings.backend, config)
    except PluginError as exc:
        raise ConfigError(f"server.backend: {exc}") from None
    if backend.distributed:
        for name, profile in profiles.items():
            if not hooks.is_distributed(profile):
                raise ConfigError(f"server.backend: the {name} profile does not support a distributed backend "
                                  f"({backend.name}); serve it with backend = \"memory\"")
    return backend


async def run(backend: Backend, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """``backend.run``, with an unreachable backend at start as a one-line :class:`ConfigError`
    (later it reconnects by itself and only ``/readyz`` tells)."""
    try:
        await backend.run(task_status=task_status)
    except BackendUnavailable as exc:
        raise ConfigError(f"server.backend_url: {exc}") from None


@contextlib.asynccontextmanager
async def one_error() -> AsyncIterator[None]:
    """A task group's single :class:`RendezvousError` (a backend that could not start, say) as
    itself, so that the operator gets its one line instead of an exception group."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], RendezvousError):
            raise group.exceptions[0] from None
        raise


def readyz(backend: Backend) -> Any:
    """``/readyz``: 200 while the backend can be reached, else 503 (``/healthz`` stays 200: a node
    that cannot reach Redis must not be restarted for it, only taken out of rotation)."""

    async def handler(request: HttpRequest) -> HttpResponse:
        if backend.ready:
            return HttpResponse.text(200, "ready\n")
        return HttpResponse.text(503, f"not ready: the {backend.name} backend cannot be reached\n")

    return handler
