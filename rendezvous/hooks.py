"""The optional parts of a profile and of its runtime, as typed Protocols.

A profile need only have what :class:`rendezvous.profile.Profile` lists; everything here is
optional. The framework asks for each through the accessor below it (one ``isinstance`` check on a
runtime-checkable Protocol, at start or on a signal, never per request), so a third-party profile
knows exactly what it may offer and what type it must have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from rendezvous.profile import ProfileCliExtras, ProfileStatus

# -- on the profile -------------------------------------------------------------------------


@runtime_checkable
class ServerFlags(Protocol):
    """Server settings under the original's flag names (Snowflake's ``-cert``): ``{field: [flags]}``."""

    server_flags: Mapping[str, Sequence[str]]


@runtime_checkable
class ServerEnv(Protocol):
    """Server settings from the original's environment variables: ``{field: [NAMES]}``."""

    server_env: Mapping[str, Sequence[str]]


@runtime_checkable
class ServerDefaults(Protocol):
    """Server defaults of the original's (Snowflake's ``/prometheus``): ``{field: value}``."""

    server_defaults: Mapping[str, Any]


@runtime_checkable
class ServerValues(Protocol):
    """The profile's own settings translated into server settings (``--addr`` → host and port)."""

    def server_values(self, settings: Any) -> Mapping[str, tuple[Any, str]]: ...


@runtime_checkable
class Validates(Protocol):
    """A check of the whole configuration; raises :class:`rendezvous.errors.ConfigError`."""

    def validate(self, settings: Any, server: Any) -> None: ...


#: Command-line arguments beyond ``--<setting>`` flags (the overlay's ``config.json``).
CliExtras = ProfileCliExtras


@runtime_checkable
class Distributed(Protocol):
    """``distributed = True``: the profile keeps its shared state in the configured backend."""

    distributed: bool


def server_flags(profile: object) -> Mapping[str, Sequence[str]]:
    return profile.server_flags if isinstance(profile, ServerFlags) else {}


def server_env(profile: object) -> Mapping[str, Sequence[str]]:
    return profile.server_env if isinstance(profile, ServerEnv) else {}


def server_defaults(profile: object) -> Mapping[str, Any]:
    return profile.server_defaults if isinstance(profile, ServerDefaults) else {}


def is_distributed(profile: object) -> bool:
    return isinstance(profile, Distributed) and bool(profile.distributed)


# -- on the runtime ---------------------------------------------------------------------------


@runtime_checkable
class ShutsDown(Protocol):
    """Answer what is waiting when the server stops (Snowflake's held polls)."""

    def shutdown(self) -> Awaitable[None]: ...


@runtime_checkable
class Reloads(Protocol):
    """SIGHUP: re-read what the original re-reads (may be sync or async)."""

    def reload(self) -> Awaitable[None] | None: ...


@runtime_checkable
class Describes(Protocol):
    """Log lines to write once serving, given where the profile is served: ``(event, fields)``."""

    def describe(self, url: str) -> Iterable[tuple[str, Mapping[str, Any]]]: ...


#: The numbers of the status page.
HasStatus = ProfileStatus
