"""What a matcher asks its driver to do. Small frozen values, as in h11/wsproto events.

Parties are opaque, hashable handles owned by whoever drives the matcher (a profile's
connection object). A matcher never looks inside them. The effects are generic in the party
type: a ``Router[Channel]`` returns ``Effect[Channel]``, so its driver gets its own type back.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeAlias, TypeVar

import attrs

Party = Hashable
#: The party type of a matcher (any object; hashable at run time).
P = TypeVar("P")


@attrs.frozen
class Deliver(Generic[P]):
    """Send ``payload`` to ``to``. ``origin`` names the sender, for codecs that stamp it."""

    to: P
    payload: object
    origin: str | None = None


@attrs.frozen
class Keepalive(Generic[P]):
    """Send the protocol's keep-alive to ``to`` (the overlay's ``"heartbeat"``)."""

    to: P


@attrs.frozen
class Close(Generic[P]):
    """Close ``party`` with a WebSocket-style close code and reason."""

    party: P
    code: int
    reason: str = ""


@attrs.frozen
class Dropped:
    """A message or party was dropped on purpose; ``reason`` is a short metric label."""

    reason: str


@attrs.frozen
class Revoke(Generic[P]):
    """Tell ``worker`` to stop ``task`` (its requester went away)."""

    task: P
    worker: P


@attrs.frozen
class Failed(Generic[P]):
    """``task`` failed for good; ``errors`` are the reasons, one per attempt."""

    task: P
    errors: tuple[str, ...]


@attrs.frozen
class Expired(Generic[P]):
    """``party`` waited past its deadline; ``reason`` says which wait (e.g. ``"hold"``, ``"answer"``)."""

    party: P
    reason: str


@attrs.frozen
class Answered:
    """The first message reached a party that had asked something: ``latency`` seconds after it asked."""

    latency: float


Effect: TypeAlias = Deliver[P] | Keepalive[P] | Close[P] | Dropped | Answered | Expired[P] | Revoke[P] | Failed[P]
