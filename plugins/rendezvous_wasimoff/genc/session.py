"""One connected generation-C provider: its socket, sequence numbers and pending requests. It is
the broker's :class:`~rendezvous_wasimoff.worker.Worker` for that provider."""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING, Any

import anyio
from google.protobuf.message import Message

from rendezvous.transports.base import Channel, ChannelClosed, SendTimeout
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import Codec, pack
from rendezvous_wasimoff.tasks import TaskHandle

if TYPE_CHECKING:
    from rendezvous_wasimoff.broker import Broker

CLOSE_POLICY, CLOSE_INTERNAL = 1008, 1011
SEND_SECONDS_PER_MIB = 1.0  # on top of send_timeout: a big task may take longer to reach a provider


class ProviderSession:
    def __init__(self, broker: Broker, channel: Channel, codec: Codec, name: str) -> None:
        self.broker = broker
        self.channel = channel
        self.codec = codec
        self.name = name
        self._seq = itertools.count(1)
        # sequence -> what was asked ("listing", "ping", "task", "cancel") and, for a task, its handle
        self.pending: dict[int, tuple[str, TaskHandle | None]] = {}
        self.listing: anyio.Event = anyio.Event()
        self.files: list[str] | None = None
        self.ping_misses = 0
        self.completed_recently = 0
        self.capacity = 0  # announced by ProviderResources, possibly before the Listing answer

    # -- sending -----------------------------------------------------------------------------
    async def send(self, kind: int, payload: Message | None, sequence: int | None = None, error: str = "") -> int:
        envelope = schema.Envelope(sequence=next(self._seq) if sequence is None else sequence, type=kind)
        if error:
            envelope.error = error
        if payload is not None:
            pack(envelope, payload)
        await self._send(self.codec.encode(envelope))
        return envelope.sequence

    async def request(self, payload: Message, what: str, task: TaskHandle | None = None) -> None:
        sequence = next(self._seq)
        self.pending[sequence] = (what, task)
        envelope = schema.Envelope(sequence=sequence, type=schema.REQUEST)
        pack(envelope, payload)
        await self._send(self.codec.encode(envelope))

    async def _send(self, frame: str | bytes) -> None:
        """Send with a deadline: a provider that stops reading (a frozen tab) is closed 1008 and
        treated as disconnected (``ChannelClosed``), so its tasks retry elsewhere."""
        timeout = self.broker.settings.send_timeout + len(frame) / (1 << 20) * SEND_SECONDS_PER_MIB
        try:
            await self.channel.send(frame, timeout)
        except SendTimeout:
            self.broker.log.warning("provider stopped reading", provider=self.name)
            await self.channel.close(CLOSE_POLICY, "not reading fast enough")
            raise ChannelClosed(CLOSE_POLICY) from None

    # -- Worker --------------------------------------------------------------------------------
    async def start(self, task: TaskHandle) -> None:
        # The task's own request goes out (no copy per attempt): only info.provider differs
        # between attempts, and every attempt sets it (info.id is the task's since submit).
        task.request.info.provider = self.name
        try:
            await self.request(task.request, "task", task)
        except ChannelClosed:
            await self.broker.transport_error(task, self, "provider socket closed")

    async def revoke(self, task: TaskHandle) -> None:
        with contextlib.suppress(ChannelClosed):
            await self.request(schema.Cancel(id=task.id, reason="client cancelled"), "cancel")

    # -- answers ---------------------------------------------------------------------------------
    async def on_response(self, envelope: Message, payload: Any) -> None:
        """The answer to one of our requests (``payload``: the decoded message, or the KeyError
        of a type the schema does not know)."""
        entry = self.pending.pop(envelope.sequence, None)
        if entry is None:
            return
        what, task = entry
        if what == "listing":
            if not envelope.error and isinstance(payload, schema.ListingResponse):
                self.files = list(payload.files)
            self.listing.set()
        elif what == "ping":
            self.ping_misses = 0
        elif what == "task":
            assert task is not None
            expected = schema.Wasip1Response if task.kind == "wasip1" else schema.PyodideResponse
            if envelope.error or not isinstance(payload, expected):
                error = envelope.error or f"unexpected response type from provider {self.name}"
                await self.broker.transport_error(task, self, error)
                return
            sent = task.request.info
            payload.info.id = task.id
            for field in ("reference", "requester"):
                if sent.HasField(field):
                    setattr(payload.info, field, getattr(sent, field))
                else:
                    payload.info.ClearField(field)
            payload.info.provider = self.name  # who ran it is the broker's word, not the provider's
            self.completed_recently += 1
            await self.broker.completed(task, self, payload)
