"""The generation-C client socket ``/api/client/ws``: Wasip1, Pyodide and Upload requests in
Envelopes, answered by sequence, concurrently and out of order. A client that leaves cancels
its tasks."""

from __future__ import annotations

import contextlib

import anyio
from google.protobuf.message import Message

from rendezvous.transports.base import Channel, ChannelClosed
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.codec import BadFrame, pack, unpack
from rendezvous_wasimoff.genc.connect import store_upload
from rendezvous_wasimoff.genc.negotiate import negotiate
from rendezvous_wasimoff.tasks import RpcError

REQUESTS = (schema.Wasip1Request, schema.PyodideRequest, schema.UploadRequest)


async def client_socket(broker: Broker, channel: Channel) -> None:
    codec = await negotiate(channel)
    if codec is None:
        return

    async def reply(sequence: int, payload: Message | None, error: str = "") -> None:
        envelope = schema.Envelope(sequence=sequence, type=schema.RESPONSE)
        if error:
            envelope.error = error
        if payload is not None:
            pack(envelope, payload)
        with contextlib.suppress(ChannelClosed):
            await channel.send(codec.encode(envelope))

    async def handle(sequence: int, payload: Message) -> None:
        try:
            if isinstance(payload, schema.Wasip1Request):
                result = await broker.submit(payload, "wasip1", channel.info.client_host)
            elif isinstance(payload, schema.PyodideRequest):
                result = await broker.submit(payload, "pyodide", channel.info.client_host)
            else:
                result = await store_upload(broker.storage, payload)
        except RpcError as exc:
            await reply(sequence, None, exc.message)
            return
        await reply(sequence, result)

    async with anyio.create_task_group() as tg:
        try:
            while True:
                frame = await channel.receive()
                try:
                    envelope = codec.decode(frame)
                except BadFrame as exc:
                    await channel.close(exc.close_code, str(exc)[:100])
                    break
                if envelope.type != schema.REQUEST:
                    continue  # client events are only logged by the original
                try:
                    payload = unpack(envelope)
                except (KeyError, BadFrame):
                    payload = None
                if not isinstance(payload, REQUESTS):
                    await reply(envelope.sequence, None, "expecting only Task_Request/Upload messages on this socket")
                    continue
                tg.start_soon(handle, envelope.sequence, payload)
        except ChannelClosed:
            pass
        finally:
            tg.cancel_scope.cancel()  # a client that leaves cancels its tasks
