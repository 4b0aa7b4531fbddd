"""The ``redis`` backend: one node of a cluster that shares its rendezvous state in Redis.

A node is ``node_id`` (configured, or 8 random hex digits) plus an ``epoch`` (random per life).
It holds ``<prefix>:node:<id> = <epoch>`` with a TTL of ``node_ttl``, renewed every third of
it. Every shared record names the node and epoch of the party it stands for, and scripts
count a record only while that key still holds that epoch: a dead node's parties vanish when
its key expires, without anyone deleting them, and nothing is ever taken over because a
timer ran out. A node that finds its key gone (it stalled, or was cut off, for longer than
``node_ttl``) is *fenced*: it ends every party it holds, as a restart would, and registers
again under a new epoch. Another node holding its id is fatal (:class:`BackendError`).

Connections: the mux (every call, auto-pipelined) and the inbox (SUBSCRIBE
``<prefix>:inbox:<id>``; scripts publish straight to the node that holds the party). Pub/Sub
is at most once, so every frame that matters is also in a record, and stores re-read what
they hold after the inbox reconnects. While Redis is unreachable the node is not ready
(``ready`` is False) and shared operations fail fast; it is never taken down for it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any

import anyio
import msgpack
import structlog
from redis.exceptions import RedisError

from rendezvous.backends.base import (
    BackendError,
    BackendSettings,
    BackendUnavailable,
    Clock,
    Codec,
    FrameCodec,
    TaskCodec,
)
from rendezvous.backends.redis import lua
from rendezvous.backends.redis.lua_routing import ROUTING_SCRIPTS
from rendezvous.backends.redis.lua_tasks import TASK_SCRIPTS
from rendezvous.backends.redis.mux import Late, Mux, Replies, connection_factory, describe, reconnecting
from rendezvous.backends.redis.pairing import RedisPairingStore
from rendezvous.backends.redis.reports import RedisReportStore
from rendezvous.backends.redis.routing import RedisRoutingStore
from rendezvous.backends.redis.tasks import RedisTaskStore
from rendezvous.core.dispatch import Policy
from rendezvous.core.effects import Effect
from rendezvous.core.ids import IdSource
from rendezvous.core.routing import RootPolicy
from rendezvous.errors import ConfigError


class RedisBackend:
    name = "redis"
    distributed = True

    def __init__(self, settings: BackendSettings, *, log: Any = None) -> None:
        self.settings = settings
        self.log = log or structlog.get_logger("rendezvous.backends.redis")
        self.node_id = settings.node_id or secrets.token_hex(4)
        self.node_id_b = self.node_id.encode()
        self._new_epoch()
        self.node_key_prefix = f"{settings.prefix}:node:"
        self.inbox_prefix = f"{settings.prefix}:inbox:"
        self._node_key = self.node_key_prefix + self.node_id
        self._ttl_ms = int(settings.node_ttl * 1000)
        self._connect = connection_factory(settings.url)
        self.where = describe(settings.url)
        self.mux = Mux(self._connect, (*lua.ALL, *ROUTING_SCRIPTS, *TASK_SCRIPTS), on_late=self._late, name=f"redis at {self.where}", on_connect=self._connected)
        self.new_token = itertools.count(1).__next__  # never reused in this process, across epochs too
        self._stores: dict[bytes, RedisPairingStore | RedisRoutingStore | RedisTaskStore] = {}
        self._registered = False
        self._confirmed = True  # False from a reconnect until a beat has checked the liveness key
        self._beat_now = anyio.Event()
        self._subscribed = False
        self._beating = True
        self._forget: list[str] = []  # epochs of this node's earlier lives whose waiting records may be left
        self._emitted: collections.deque[tuple[Any, Sequence[Effect]]] = collections.deque()  # effects to execute
        self._late_waiter: asyncio.Future | None = None
        self._frames: Replies | None = None
        self._subscribing: asyncio.Future | None = None  # the SUBSCRIBE's confirmation

    def _new_epoch(self) -> None:
        self.epoch = secrets.token_hex(8)
        self.epoch_b = self.epoch.encode()

    @property
    def ready(self) -> bool:
        return self._registered and self._confirmed and self._subscribed and self.mux.connected

    def pairing(self, ns: str, *, hold_timeout: float, answer_timeout: float, clock: Clock = time.monotonic,
                codec: Codec | None = None) -> RedisPairingStore:
        key = ns.encode()
        if key in self._stores:
            raise ValueError(f"a store named {ns!r} exists already on this node")
        store = RedisPairingStore(self, ns, hold_timeout=hold_timeout, answer_timeout=answer_timeout, clock=clock, codec=codec)
        self._stores[key] = store
        return store

    def reports(self, ns: str, *, codec: Codec | None = None) -> RedisReportStore:
        return RedisReportStore(self, ns, codec)

    def routing(self, ns: str, *, endpoint_lifetime: float, keepalive_interval: float,
                root_policy: RootPolicy = RootPolicy.LATEST, max_endpoints: int | None = None,
                ids: IdSource | None = None, clock: Clock = time.monotonic,
                codec: FrameCodec | None = None) -> RedisRoutingStore:
        if ids is not None:
            raise ValueError("the redis backend gives out ids that name their node: an id source cannot be given")
        key = ns.encode()
        if key in self._stores:
            raise ValueError(f"a store named {ns!r} exists already on this node")
        store = RedisRoutingStore(self, ns, endpoint_lifetime=endpoint_lifetime, keepalive_interval=keepalive_interval,
                                  root_policy=root_policy, max_endpoints=max_endpoints, clock=clock, codec=codec)
        self._stores[key] = store
        return store

    def tasks(self, ns: str, *, policy: Policy = Policy.SIMPLE_MATCH, queue_limit: int = 2048, max_attempts: int = 10,
              clock: Clock = time.monotonic, codec: TaskCodec | None = None) -> RedisTaskStore:
        key = ns.encode()
        if key in self._stores:
            raise ValueError(f"a store named {ns!r} exists already on this node")
        store = RedisTaskStore(self, ns, policy=policy, queue_limit=queue_limit, max_attempts=max_attempts,
                               clock=clock, codec=codec)
        self._stores[key] = store
        return store

    # -- running --------------------------------------------------------------------------------
    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigError("the redis backend runs on asyncio only (redis-py)") from None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.mux.run)
                await self._register(wait_out_clash=True)
                await tg.start(self._inbox)
                tg.start_soon(self._beat)
                tg.start_soon(self._deliver_late)
                self.log.info("redis backend up", node=self.node_id, redis=self.where, at=self.mux.address)
                task_status.started()
        except BaseExceptionGroup as group:  # our own errors reach the caller as themselves
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], (BackendUnavailable, BackendError)):
                raise group.exceptions[0] from None
            raise
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._leave()

    async def _register(self, *, wait_out_clash: bool = False) -> None:
        """Take ``<prefix>:node:<id>``. An earlier process with this id may have died less than
        ``node_ttl`` ago: at start, wait for its key to expire."""
        give_up = anyio.current_time() + self.settings.node_ttl + 1.0
        while True:
            if await self.mux.call("SET", self._node_key, self.epoch, "NX", "PX", self._ttl_ms) is not None:
                self._registered = True
                return
            if not wait_out_clash or anyio.current_time() > give_up:
                raise BackendError(f"node id {self.node_id!r} is held by another live node")
            await anyio.sleep(self.settings.node_ttl / 10)

    async def _leave(self) -> None:
        """A clean stop: drop the liveness key at once, so nobody waits ``node_ttl`` to know."""
        self._registered = False
        conn = self._connect()
        try:
            await conn.connect()
            for store in list(self._stores.values()):  # what a store says when its node leaves (the overlay's roots)
                for script, args in getattr(store, "leaving", list)():
                    await conn.send_command("EVAL", script.source, 0, *args)
                    await conn.read_response(timeout=math.inf)
            await conn.send_command("EVAL", lua.NODE_LEAVE.source, 0, self._node_key, self.epoch)
            await conn.read_response(timeout=math.inf)
        except (RedisError, OSError):
            pass
        finally:
            await conn.disconnect(nowait=True)

    def _connected(self, first: bool) -> None:
        """The mux (re)connected: Redis may have lost this node's key meanwhile (restarted, or the
        node was cut off past its TTL), so it is not ready until a beat, made now, has checked."""
        if not first:
            self.log.warning("redis backend: connected again", node=self.node_id, at=self.mux.address)
            self._confirmed = False
            self._beat_now.set()

    async def _beat(self) -> None:
        while True:
            with anyio.move_on_after(self.settings.node_ttl / 3):
                await self._beat_now.wait()
            self._beat_now = anyio.Event()
            if not self._beating:
                continue
            try:
                if not self._registered:
                    await self._register()
                    self._confirmed = True
                    continue
                state = await self.mux.eval(lua.NODE_BEAT, self._node_key, self.epoch, self._ttl_ms)
                if state == 1:
                    self._confirmed = True
                if state == 0:
                    await self._fence()
                    self._confirmed = True
                elif state == -1:
                    raise BackendError(f"node id {self.node_id!r} was taken by another node while this one was cut off")
                else:  # garbage collection: what dead nodes left, this node's from before a fence
                    for store in list(self._stores.values()):
                        await store.reap()
                        await store.tidy()
                    while self._forget:
                        for store in list(self._stores.values()):
                            await store.forget(self._forget[0])
                        self._forget.pop(0)
            except BackendUnavailable:
                continue  # not ready; the mux reconnects, and the next beat tells what happened meanwhile
            except RedisError as exc:
                self.log.error("redis backend: beat failed", error=str(exc))

    async def _fence(self) -> None:
        self.log.warning("redis backend: this node was declared dead (its liveness key expired); "
                         "ending what it held and registering again", node=self.node_id)
        self._registered = False
        self._forget.append(self.epoch)  # its waiting records leave their pools at the next beats
        self._new_epoch()  # frames and records of the old life are ignored from now on
        for store in list(self._stores.values()):
            await self._execute(store, store.fence())
        await self._register()

    def suspend_heartbeat(self) -> None:
        """Stop renewing the liveness key, as a stalled or cut-off node would (chaos tests)."""
        self._beating = False

    def resume_heartbeat(self) -> None:
        self._beating = True

    # -- the inbox --------------------------------------------------------------------------------
    async def _inbox(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await reconnecting(self._subscribe, self._listen, name=f"redis at {self.where}", task_status=task_status)

    async def _subscribe(self) -> Any:
        """Connect and SUBSCRIBE; frames are then parsed as they arrive (:class:`Replies`)."""
        conn = self._connect()
        try:
            await conn.connect()
            channel = self.inbox_prefix + self.node_id
            frames = self._frames = Replies.take(conn, self._frame)
            if frames is None:  # (without hiredis: redis-py reads, in _listen)
                await conn.send_command("SUBSCRIBE", channel)
                await conn.read_response(timeout=math.inf)
                return conn
            self._subscribing = asyncio.get_running_loop().create_future()
            frames.transport.write(conn.pack_command("SUBSCRIBE", channel)[0])
            done, _ = await asyncio.wait((self._subscribing, frames.lost), return_when=asyncio.FIRST_COMPLETED)
            if frames.lost in done:
                frames.lost.result()  # raises: lost before the subscription was confirmed
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    async def _listen(self, conn: Any, first: bool) -> None:
        self._subscribed = True
        try:
            if not first:  # frames sent while the inbox was away are lost: read the records instead
                for store in list(self._stores.values()):
                    await self._execute(store, await store.resync())
            if self._frames is not None:
                await self._frames.lost
            while True:
                self._frame(await conn.read_response(disable_decoding=True, timeout=math.inf))
        except (RedisError, OSError) as exc:
            self.log.warning("redis backend: inbox connection lost", error=str(exc))
            raise
        finally:
            self._subscribed = False

    def _frame(self, reply: Any) -> None:
        """One reply on the inbox connection: a bus frame, or the subscription's confirmation."""
        if reply[0] != b"message":
            if reply[0] == b"subscribe" and self._subscribing is not None and not self._subscribing.done():
                self._subscribing.set_result(None)
            return
        try:
            kind, ns, epoch, token, payload = msgpack.unpackb(reply[2], raw=True)
        except (ValueError, TypeError, msgpack.UnpackException):
            self.log.warning("redis backend: malformed bus frame dropped")
            return
        if epoch != self.epoch_b:
            return  # for an earlier life of this node
        store = self._stores.get(ns)
        if store is None:
            return
        try:
            effects = store.on_message(kind, int(token), payload)
        except Exception:  # a store bug must not take the inbox down
            self.log.exception("redis backend: handling a bus frame failed")
            return
        if effects:
            self.emit(store, effects)

    # -- effects that no call returns --------------------------------------------------------------
    def emit(self, store: Any, effects: Sequence[Effect]) -> None:
        self._emitted.append((store, effects))
        waiter = self._late_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _late(self, late: Late, reply: Any) -> None:
        try:
            late(reply)
        except Exception:  # a store bug must not take the connection's reader down
            self.log.exception("redis backend: handling a late reply failed")

    async def _deliver_late(self) -> None:
        emitted, loop = self._emitted, asyncio.get_running_loop()
        while True:
            while emitted:
                store, effects = emitted.popleft()
                await self._execute(store, effects)
            self._late_waiter = loop.create_future()
            try:
                await self._late_waiter
            finally:
                self._late_waiter = None

    async def _execute(self, store: Any, effects: Sequence[Effect]) -> None:
        if not effects:
            return
        try:
            await store.execute(effects)
        except Exception:
            self.log.exception("redis backend: executing effects failed")
