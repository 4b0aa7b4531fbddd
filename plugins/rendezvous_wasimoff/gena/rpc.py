"""Go's ``net/rpc`` in MessagePack over one WebTransport stream, the broker being the client:
a request is a header map ``{ServiceMethod, Seq}`` then the body; a response is a header map
``{ServiceMethod, Seq, Error}`` then the body. Calls are matched by ``Seq``, several in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from rendezvous.transports.base import ChannelClosed


class RpcFailed(Exception):
    """The provider answered a call with an ``Error`` (an application error)."""


class BadReply(ValueError):
    """The provider answered a call with a body of the wrong shape (Go's decode fails): its session ends."""


def read_listing(listing: Any) -> dict[str, str]:
    """An ``fs:list`` body (nil, or an array of ``{filename, hash, ...}`` maps) → name → sha256 hex."""
    if listing is None:
        return {}
    if not isinstance(listing, list) or not all(isinstance(item, dict) for item in listing):
        found = type(listing).__name__ if not isinstance(listing, list) else "an array holding a non-map"
        raise BadReply(f"fs:list answered {found}, not an array of files")
    return {item["filename"]: item["hash"].hex() for item in listing
            if isinstance(item.get("filename"), str) and isinstance(item.get("hash"), bytes)}


class MsgpackRpcClient:
    """Go ``net/rpc`` over MessagePack on one stream, the broker being the client."""

    def __init__(self, stream: Any, max_buffer: int) -> None:
        self.stream = stream
        self._seq = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max_buffer, strict_map_key=False)

    async def call(self, method: str, body: Any) -> Any:
        self._seq += 1
        seq = self._seq
        future = self._pending[seq] = asyncio.get_running_loop().create_future()
        try:
            await self.stream.send(msgpack.packb({"ServiceMethod": method, "Seq": seq}) + msgpack.packb(body))
            return await future
        finally:
            self._pending.pop(seq, None)

    async def read_forever(self) -> None:
        """Match responses to calls until the stream ends; then every pending call fails."""
        header: dict[str, Any] | None = None
        try:
            while True:
                data = await self.stream.receive()
                if not data:
                    break
                self._unpacker.feed(data)
                for value in self._unpacker:
                    if header is None:
                        if not isinstance(value, dict):
                            raise ValueError("an RPC response header must be a map")
                        header = value
                        continue
                    future = self._pending.get(header.get("Seq"))  # type: ignore[arg-type]
                    error = header.get("Error")
                    header = None
                    if future is None or future.done():
                        continue
                    if error:
                        future.set_exception(RpcFailed(str(error)))
                    else:
                        future.set_result(value)
        except ChannelClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ChannelClosed(1006, "rpc stream ended"))
