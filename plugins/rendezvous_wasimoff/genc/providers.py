"""The generation-C provider socket ``/api/provider/ws?id=NAME``: who may connect, the connect
sequence (Listing, admission, Pings), what providers send, and the events the broker sends
them (ClusterInfo on every change, Throughput every second)."""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from google.protobuf.message import Message

from rendezvous.transports.base import Channel, ChannelClosed
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.codec import BadFrame, unpack
from rendezvous_wasimoff.genc.negotiate import negotiate
from rendezvous_wasimoff.genc.session import CLOSE_INTERNAL, CLOSE_POLICY, ProviderSession

# A provider's name (?id=) goes into logs, a metric label and the X-Wasimoff-Provider header:
# printable ASCII without leading or trailing spaces, at most 256 characters (real providers send a nanoid).
PROVIDER_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")


class ProviderSockets:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.settings = broker.settings
        self.log = broker.log
        self.sessions: dict[ProviderSession, None] = {}  # admitted, in order
        broker.on_provider_count.append(self._broadcast_cluster_info)

    async def handle(self, channel: Channel) -> None:
        info = channel.info
        if not info.headers.get("user-agent"):
            await channel.refuse(400, b"no user-agent\n")
            return
        if not self._origin_allowed(info.headers):
            await channel.refuse(403, b"origin not allowed\n")
            return
        codec = await negotiate(channel)
        if codec is None:
            return
        name = parse_qs(info.query).get("id", ["anonymous"])[0] or "anonymous"
        if not PROVIDER_ID.fullmatch(name):
            self.log.info("provider refused: invalid id", id=name[:64])
            await channel.close(CLOSE_POLICY, "invalid provider id: printable ASCII, at most 256 characters")
            return
        session = ProviderSession(self.broker, channel, codec, name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._receive, session, tg.cancel_scope)
            try:
                await session.request(schema.ListingRequest(), "listing")
                with anyio.move_on_after(self.settings.listing_timeout):
                    await session.listing.wait()
                if session.files is None:
                    await channel.close(CLOSE_INTERNAL, "no answer to the Listing request")
                    return
                self.sessions[session] = None
                await self.broker.admit(session, session.files, session.capacity)
                await self._ping_forever(session)
            except ChannelClosed:
                pass
            finally:
                with anyio.CancelScope(shield=True):
                    tg.cancel_scope.cancel()
                    self.sessions.pop(session, None)
                    await self.broker.retire(session)  # (nothing to do if it was never admitted)
                    await channel.close(1000)

    def _origin_allowed(self, headers: Mapping[str, str]) -> bool:
        origin = headers.get("origin")
        if not origin:
            return True
        origin_host = urlsplit(origin).netloc.lower()
        if origin_host == headers.get("host", "").lower():
            return True  # same origin
        return any(fnmatch.fnmatch(origin_host, pattern.strip().lower()) for pattern in self.settings.allowed_origins)

    async def _ping_forever(self, session: ProviderSession) -> None:
        while True:
            await anyio.sleep(self.settings.ping_interval)
            if session.ping_misses >= self.settings.ping_misses:
                self.log.warning("provider stopped answering pings", provider=session.name)
                await session.channel.close(CLOSE_INTERNAL, "provider stopped answering")
                raise ChannelClosed(CLOSE_INTERNAL)
            session.ping_misses += 1
            await session.request(schema.Ping(), "ping")

    # -- what providers send -------------------------------------------------------------------
    async def _receive(self, session: ProviderSession, scope: anyio.CancelScope) -> None:
        try:
            while True:
                frame = await session.channel.receive()
                try:
                    envelope = session.codec.decode(frame)
                except BadFrame as exc:
                    self.log.info("bad frame from provider", provider=session.name, error=str(exc))
                    await session.channel.close(exc.close_code, str(exc)[:100])
                    break
                await self._on_envelope(session, envelope)
        except ChannelClosed:
            pass
        finally:
            scope.cancel()

    async def _on_envelope(self, session: ProviderSession, envelope: Message) -> None:
        kind = envelope.type
        if kind == schema.REQUEST:
            await session.send(schema.RESPONSE, None, envelope.sequence, "requests not supported on provider socket")
            return
        try:
            payload = unpack(envelope)
        except KeyError as exc:
            payload = exc  # an unknown type: an error for a Response, ignored for an Event
        except BadFrame as exc:
            await session.channel.close(exc.close_code, str(exc)[:100])
            raise ChannelClosed(exc.close_code) from None
        if kind == schema.EVENT:
            await self._on_event(session, payload)
        elif kind == schema.RESPONSE:
            await session.on_response(envelope, payload)

    async def _on_event(self, session: ProviderSession, payload: Any) -> None:
        if isinstance(payload, schema.ProviderResources):
            session.capacity = payload.concurrency
            await self.broker.set_capacity(session, payload.concurrency)
        elif isinstance(payload, schema.FileSystemUpdate):
            if session.files is not None:
                session.files = [f for f in session.files if f not in payload.removed] + list(payload.added)
            await self.broker.update_files(session, payload.added, payload.removed)
        elif isinstance(payload, schema.GenericMessage):
            self.log.info("provider says", provider=session.name, message=payload.message[:200])

    # -- what the broker tells them ----------------------------------------------------------------
    async def _broadcast_cluster_info(self, providers: int) -> None:
        event = schema.ClusterInfo(providers=providers)
        for session in list(self.sessions):
            with contextlib.suppress(ChannelClosed):
                await session.send(schema.EVENT, event)

    async def throughput_forever(self) -> None:
        while True:
            await anyio.sleep(1.0)
            overall = self.broker.take_completions()
            for session in list(self.sessions):
                yours, session.completed_recently = session.completed_recently, 0
                with contextlib.suppress(ChannelClosed):
                    await session.send(schema.EVENT, schema.Throughput(overall=overall, yours=yours))
