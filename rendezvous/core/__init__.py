"""Core matchers: rendezvous logic with no sockets, no HTTP and no JSON.

Every matcher is plain state that is *given the time* and returns what must happen
(effects), plus ``next_deadline()``. :mod:`rendezvous.core.driver` turns that into waiting.
"""

from rendezvous.core.dispatch import Dispatch, Policy, QueueFull
from rendezvous.core.effects import Answered, Close, Deliver, Dropped, Effect, Expired, Failed, Keepalive, Revoke
from rendezvous.core.pairing import Pairing
from rendezvous.core.routing import RootPolicy, Router

__all__ = [
    "Answered", "Close", "Deliver", "Dispatch", "Dropped", "Effect", "Expired", "Failed", "Keepalive", "Pairing", "Policy",
    "QueueFull", "Revoke", "RootPolicy", "Router",
]
