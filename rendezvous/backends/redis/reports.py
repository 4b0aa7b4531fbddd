"""Reports made once per period for the whole cluster (Snowflake's CollecTor descriptor).

Keys (``R = <prefix>:{<ns>}:rep``): ``R:<period>`` HASH node -> its part; ``R:<period>:w`` the
period's lease (the node that writes the report); ``R:<period>:salt`` random bytes the parts hash
addresses with; ``R:log`` LIST of the reports written (the last 1000). The period keys expire
after ``ttl``; nothing is ever read from them after their period's report is written.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

import anyio

from rendezvous.backends.base import Codec, MsgpackCodec

if TYPE_CHECKING:
    from rendezvous.backends.redis.node import RedisBackend

KEEP = 1000  # reports kept for /metrics (daily: almost three years)


class RedisReportStore:
    def __init__(self, node: RedisBackend, ns: str, codec: Codec | None = None) -> None:
        self._node = node
        self._mux = node.mux
        self._codec = codec or MsgpackCodec()
        self._key = f"{node.settings.prefix}:{{{ns}}}:rep"

    async def salt(self, period: int, ttl: float) -> bytes:
        fresh = secrets.token_bytes(16)
        # SET NX GET (Redis 7.0): the salt another node set first, or ours
        old = await self._mux.call("SET", f"{self._key}:{period}:salt", fresh, "NX", "GET", "PX", int(ttl * 1000))
        return fresh if old is None else old

    async def gather(self, period: int, part: Any, *, grace: float, ttl: float) -> list[Any] | None:
        key, ttl_ms, node = f"{self._key}:{period}", int(ttl * 1000), self._node.node_id
        _, _, lease = await asyncio.gather(  # one write, run in this order
            self._mux.call("HSET", key, node, self._codec.dumps(part)),
            self._mux.call("PEXPIRE", key, ttl_ms),
            self._mux.call("SET", key + ":w", node, "NX", "PX", ttl_ms))
        if lease is None:
            return None  # another node writes this period's report
        await anyio.sleep(grace)
        flat = await self._mux.call("HGETALL", key)
        return [self._codec.loads(value) for value in flat[1::2]]

    async def publish(self, text: str) -> None:
        await asyncio.gather(self._mux.call("RPUSH", f"{self._key}:log", text.encode()),
                             self._mux.call("LTRIM", f"{self._key}:log", -KEEP, -1))

    async def published(self) -> list[str] | None:
        return [item.decode() for item in await self._mux.call("LRANGE", f"{self._key}:log", 0, -1)]
