"""Tree-root routing: named endpoints, roots, forward-by-destination, drop rules, lifetimes.

This is the matcher behind webrtc-bootstrap. Newcomers open *endpoints* (each gets an id);
messages with a destination go to that endpoint, messages without one go to the current
*root*. Endpoints live for a fixed time after they open; roots get a keep-alive at a fixed
interval and never time out.

Plain state, given the time: every method takes ``now`` (seconds, any monotonic origin)
and returns the effects to carry out, so every rule is testable with a fake clock.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Generic

import attrs

from rendezvous.core.effects import Answered, Close, Deliver, Dropped, Effect, Keepalive, P
from rendezvous.core.ids import IdSource, random_ids

# WebSocket close codes the router asks for (RFC 6455 §7.4.1).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013


class RootPolicy(enum.Enum):
    """What a second root connection means."""

    #: The original's behaviour: the newest root takes over; older roots stay open (and
    #: keep getting keep-alives) but are never routed to, even after the newest closes.
    LATEST = "latest"
    #: A root is refused (closed with 1008) while another root is open.
    REJECT = "reject"
    #: The newest root takes over; when it closes, the newest still-open root takes over.
    FAILOVER = "failover"


@attrs.define(eq=False)
class _Endpoint(Generic[P]):
    party: P
    expires: float
    asked_at: float | None = None  # first message sent to the root, for answer latency
    answered: bool = False


@attrs.define(eq=False)
class _Root(Generic[P]):
    party: P
    next_keepalive: float


class Router(Generic[P]):
    """Routing state for one overlay (one secret)."""

    def __init__(
        self,
        *,
        endpoint_lifetime: float = 30.0,
        keepalive_interval: float = 15.0,
        root_policy: RootPolicy = RootPolicy.LATEST,
        max_endpoints: int | None = None,
        ids: IdSource | None = None,
    ) -> None:
        if endpoint_lifetime <= 0 or keepalive_interval <= 0:
            raise ValueError("lifetimes and intervals must be positive")
        self.endpoint_lifetime = endpoint_lifetime
        self.keepalive_interval = keepalive_interval
        self.root_policy = root_policy
        self.max_endpoints = max_endpoints
        self._ids = ids or random_ids()
        self._endpoints: dict[str, _Endpoint[P]] = {}
        self._ids_by_party: dict[P, str] = {}
        # Lifetimes are all equal, so opening order is expiry order: a FIFO with lazy
        # deletion replaces a heap (O(1) per endpoint). Entries name the endpoint by id, not
        # by party: a closed endpoint's connection must not stay alive until its lifetime ends.
        self._expiries: deque[tuple[float, str]] = deque()
        self._roots: dict[P, _Root[P]] = {}  # insertion order = connection order
        self._current_root: P | None = None

    # -- introspection -------------------------------------------------------------------
    @property
    def endpoint_count(self) -> int:
        return len(self._endpoints)

    @property
    def root_connected(self) -> bool:
        return self._current_root is not None

    @property
    def root_count(self) -> int:
        return len(self._roots)

    def is_root(self, party: P) -> bool:
        return party in self._roots

    def endpoint_id(self, party: P) -> str | None:
        return self._ids_by_party.get(party)

    def holds(self, endpoint_id: str) -> bool:
        """Whether ``endpoint_id`` is an endpoint of this router."""
        return endpoint_id in self._endpoints

    @property
    def current_root(self) -> P | None:
        return self._current_root

    def parties(self) -> list[P]:
        """Every party held: endpoints, then roots."""
        return [endpoint.party for endpoint in self._endpoints.values()] + list(self._roots)

    # -- lifecycle -----------------------------------------------------------------------
    def open_endpoint(self, now: float, party: P) -> tuple[str | None, list[Effect[P]]]:
        """A newcomer connected. Returns its id, or ``None`` and a Close when the table is full."""
        if self.max_endpoints is not None and len(self._endpoints) >= self.max_endpoints:
            return None, [Dropped("endpoints_full"), Close(party, CLOSE_TRY_AGAIN_LATER, "too many prospects")]
        endpoint_id = self._ids()
        while endpoint_id in self._endpoints:  # only conceivable with a seeded source
            endpoint_id = self._ids()
        expires = now + self.endpoint_lifetime
        self._endpoints[endpoint_id] = _Endpoint(party, expires)
        self._ids_by_party[party] = endpoint_id
        self._expiries.append((expires, endpoint_id))
        return endpoint_id, []

    def open_root(self, now: float, party: P) -> list[Effect[P]]:
        """A root connected (the secret was already checked by the profile)."""
        if self.root_policy is RootPolicy.REJECT and self._roots:
            return [Dropped("root_rejected"), Close(party, CLOSE_POLICY, "root already connected")]
        self._roots[party] = _Root(party, now + self.keepalive_interval)
        self._current_root = party
        return []

    def closed(self, now: float, party: P) -> list[Effect[P]]:
        """A party went away (either side closed). Forget it; never routes to it again."""
        endpoint_id = self._ids_by_party.pop(party, None)
        if endpoint_id is not None:
            self._endpoints.pop(endpoint_id, None)
            return []
        if self._roots.pop(party, None) is not None and party is self._current_root:
            self._current_root = None
            if self.root_policy is RootPolicy.FAILOVER and self._roots:
                self._current_root = next(reversed(self._roots))
        return []

    def set_current_root(self, party: P | None) -> None:
        """Route root-bound messages to ``party`` from now on (``None``: drop them).

        For routers whose root policy is decided elsewhere (several nodes sharing one overlay):
        ``party`` may be a root this router does not hold, e.g. a stand-in for a root on
        another node. Open with :attr:`RootPolicy.LATEST` and set the decision after each change.
        """
        self._current_root = party

    # -- routing -------------------------------------------------------------------------
    def route(self, now: float, sender: P, destination: object, payload: object) -> list[Effect[P]]:
        """Route ``payload`` from endpoint ``sender``.

        A truthy ``destination`` names an endpoint; anything falsy (``None``, ``""``, ``0``,
        ``False``) means "to the root". Unknown destinations and a missing root drop the
        message silently, as the original does.
        """
        origin = self._ids_by_party.get(sender)
        if origin is None:
            return [Dropped("unknown_sender")]
        if destination:
            if not isinstance(destination, str):
                return [Dropped("unknown_destination")]
            return self.route_inbound(now, origin, destination, payload)
        if self._current_root is None:
            return [Dropped("no_root")]
        endpoint = self._endpoints[origin]
        if endpoint.asked_at is None:
            endpoint.asked_at = now
        return [Deliver(self._current_root, payload, origin)]

    def route_inbound(self, now: float, origin: str, destination: str, payload: object) -> list[Effect[P]]:
        """The destination half of :meth:`route`, for a message whose sender ``origin`` is an
        endpoint held elsewhere (another node): to the endpoint ``destination`` if held here,
        else dropped silently (``unknown_destination``)."""
        target = self._endpoints.get(destination)
        if target is None:
            return [Dropped("unknown_destination")]
        effects: list[Effect[P]] = [Deliver(target.party, payload, origin)]
        if not target.answered and target.asked_at is not None and destination != origin:
            target.answered = True
            effects.append(Answered(now - target.asked_at))
        return effects

    def route_unstamped(self, now: float, sender: P, payload: object) -> list[Effect[P]]:
        """Forward ``payload`` to the root without routing by destination.

        For the original's quirk: JSON primitives from a prospect go to the root verbatim.
        """
        if sender not in self._ids_by_party:
            return [Dropped("unknown_sender")]
        if self._current_root is None:
            return [Dropped("no_root")]
        return [Deliver(self._current_root, payload, None)]

    # -- time ----------------------------------------------------------------------------
    def advance(self, now: float) -> list[Effect[P]]:
        """Everything due by ``now``: endpoint lifetimes and root keep-alives."""
        effects: list[Effect[P]] = []
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires, endpoint_id = expiries.popleft()
            endpoint = self._endpoints.get(endpoint_id)
            if endpoint is not None and endpoint.expires == expires:  # (not a later one under the same id)
                # The party stays known until its transport reports it closed, so that a
                # message racing the close is still attributed correctly.
                effects.append(Dropped("timeout"))
                effects.append(Close(endpoint.party, CLOSE_NORMAL, "prospect lifetime over"))
        for root in self._roots.values():
            if root.next_keepalive <= now:
                effects.append(Keepalive(root.party))
                while root.next_keepalive <= now:
                    root.next_keepalive += self.keepalive_interval
        return effects

    def next_deadline(self) -> float | None:
        expiries = self._expiries
        while expiries and self._endpoints.get(expiries[0][1]) is None:
            expiries.popleft()  # closed early: lazy deletion
        candidates = [root.next_keepalive for root in self._roots.values()]
        if expiries:
            candidates.append(expiries[0][0])
        return min(candidates) if candidates else None
