"""What the broker needs of a provider, of either generation: the dispatcher's worker party."""

from __future__ import annotations

from typing import Protocol

from rendezvous_wasimoff.tasks import TaskHandle


class Worker(Protocol):
    """A connected provider. Hashable by identity: it is the party the dispatcher leases tasks to.

    Implemented by :class:`rendezvous_wasimoff.genc.session.ProviderSession` (gen C, Envelopes
    over a socket) and :class:`rendezvous_wasimoff.gena.provider.GenAProvider` (gen A, ``run``
    calls over WebTransport).
    """

    name: str  # in logs, the available-workers metric label, and the result's info.provider

    async def start(self, task: TaskHandle) -> None:
        """Send ``task`` to the provider. Its outcome is reported to the broker later
        (:meth:`~rendezvous_wasimoff.broker.Broker.completed` or
        :meth:`~rendezvous_wasimoff.broker.Broker.transport_error`); do not wait for it here."""

    async def revoke(self, task: TaskHandle) -> None:
        """The task's client went away: ask the provider to stop it, if the protocol can."""
