"""What a matcher asks its driver to do. Small frozen values, as in h11/wsproto events.

Parties are opaque, hashable handles owned by whoever drives the matcher (a profile's
connection object). A matcher never looks inside them.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs

Party = Hashable


@attrs.frozen
class Deliver:
    """Send ``payload`` to ``to``. ``origin`` names the sender, for codecs that stamp it."""

    to: Party
    payload: object
    origin: str | None = None


@attrs.frozen
class Keepalive:
    """Send the protocol's keep-alive to ``to`` (the overlay's ``"heartbeat"``)."""

    to: Party


@attrs.frozen
class Close:
    """Close ``party`` with a WebSocket-style close code and reason."""

    party: Party
    code: int
    reason: str = ""


@attrs.frozen
class Dropped:
    """A message or party was dropped on purpose; ``reason`` is a short metric label."""

    reason: str


@attrs.frozen
class Revoke:
    """Tell ``worker`` to stop ``task`` (its requester went away)."""

    task: Party
    worker: Party


@attrs.frozen
class Failed:
    """``task`` failed for good; ``errors`` are the reasons, one per attempt."""

    task: Party
    errors: tuple[str, ...]


@attrs.frozen
class Expired:
    """``party`` waited past its deadline; ``reason`` says which wait (e.g. ``"hold"``, ``"answer"``)."""

    party: Party
    reason: str


@attrs.frozen
class Answered:
    """The first message reached a party that had asked something: ``latency`` seconds after it asked."""

    latency: float


Effect = Deliver | Keepalive | Close | Dropped | Answered | Expired | Revoke | Failed
