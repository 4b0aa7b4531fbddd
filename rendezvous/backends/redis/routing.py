"""The overlay's tree-root routing shared through Redis: the distributed form of :class:`Router`.

What stays on the node: a :class:`Router` for the endpoints and roots held here (their ids,
lifetimes, keep-alives, the answer-latency bookkeeping), and the current root as this node
knows it. What is shared (scripts in :mod:`.lua_routing`):

* **Endpoint ids name their node.** Each node takes a *slot* (16 bits, unique among live
  nodes) and gives out ids ``slot (4 hex) + 112 random bits``: still 32 lowercase hex digits,
  and a message by destination needs no lookup per endpoint. A message for an endpoint held
  here goes through the local router, as on one node; for another slot, ``ov_send`` publishes
  it to the node holding that slot (no live holder: dropped silently, as an unknown id is).
  The sender's node stamps and encodes it once (the profile's :class:`FrameCodec`); the
  receiving node delivers those bytes.
* **Roots are decided by the cluster.** ``ov_root_open`` / ``ov_root_close`` apply the root
  policy to every open root of every node, and announce the current root (a version and its
  ``(node, epoch, token)``) to every node. A message for a root on another node is published
  straight to that node's inbox, which delivers it only to the root it takes for current.
* **Order.** A sender's messages leave this node in order on the one mux connection (each is
  sent after the previous one's reply), Redis publishes them in that order, and the receiving
  node hands them to each destination through a queue of its own, so one slow receiver holds
  up no one else.
* **Death.** A node whose liveness key is gone loses its slot and roots at once for every
  script (they check ``(node, epoch)``); every live node's beat (``ov_sync``) removes them and
  applies the policy (``failover``: the newest live root). A fenced node closes everything it
  held (1012) and takes a slot again.

Pub/Sub is at most once: a lost root event is made up for at the next beat (``ov_sync`` returns
the current root) and after the bus reconnects; a lost message is lost, as one written to a
socket that breaks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import secrets
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import msgpack
from redis.exceptions import RedisError

from rendezvous.backends.base import BackendUnavailable, Clock, Execute, FrameCodec, MsgpackFrames, discard
from rendezvous.backends.redis.lua_routing import OV_LEAVE, OV_ROOT_CLOSE, OV_ROOT_OPEN, OV_SEND, OV_SYNC
from rendezvous.core.driver import Driver
from rendezvous.core.effects import Close, Deliver, Dropped, Effect
from rendezvous.core.ids import token_hex
from rendezvous.core.routing import CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER, RootPolicy, Router

if TYPE_CHECKING:
    from rendezvous.backends.redis.node import RedisBackend

CLOSE_SERVICE_RESTART = 1012  # a fenced node ends what it held, as a restart would
_ID = re.compile(r"[0-9a-f]{32}")
_NO_ORIGIN = b"\x00"


@attrs.frozen
class RemoteRoot:
    """The current root when it is held on another node (a stand-in for the local router)."""

    node: bytes
    epoch: bytes
    token: int


class RedisRoutingStore:
    def __init__(self, node: RedisBackend, ns: str, *, endpoint_lifetime: float, keepalive_interval: float,
                 root_policy: RootPolicy = RootPolicy.LATEST, max_endpoints: int | None = None,
                 clock: Clock = time.monotonic, codec: FrameCodec | None = None) -> None:
        self.ns = ns
        self._ns_b = ns.encode()
        self._node = node
        self._mux = node.mux
        self._clock = clock
        self._codec = codec or MsgpackFrames()
        self.policy = root_policy
        # The cluster decides which root is current: locally every root is opened as "latest",
        # and the current root is set from the cluster's decision after each change.
        self.router: Router[Any] = Router(endpoint_lifetime=endpoint_lifetime, keepalive_interval=keepalive_interval,
                                          root_policy=RootPolicy.LATEST, max_endpoints=max_endpoints, ids=self._new_id)
        self._key = f"{node.settings.prefix}:{{{ns}}}"
        self._send_head = (self._key, node.node_key_prefix, node.inbox_prefix, ns)
        self._ttl_ms = int(node.settings.node_ttl * 2000)
        self._slot = ""  # 4 hex digits: the start of every id given out here
        self._slot_epoch = b""  # the node's epoch when the slot was taken (a fence ends it)
        self._slot_lock = anyio.Lock()
        self._roots: dict[int, Hashable] = {}  # by token
        self._root_tokens: dict[Hashable, int] = {}
        self._unclosed: set[int] = set()  # roots whose close could not reach Redis: closed at the next beat
        self._version = -1
        self._current: bytes | None = None  # the current root's member (epoch, token, node), as the cluster said
        self._remote: dict[bytes, RemoteRoot] = {}
        self._queues: dict[Hashable, collections.deque[list[Effect]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._running = False
        self.execute: Execute = discard
        self._driver = Driver(self.router, self._timed, clock)

    # -- the store interface -------------------------------------------------------------------
    def attach(self, execute: Execute) -> None:
        self.execute = execute

    async def run(self) -> None:
        self._running = True
        try:
            if not self._slot_live():
                await self._take_slot()
            await self._driver.run()
        finally:
            self._running = False
            for task in list(self._tasks):
                task.cancel()

    async def _timed(self, effects: Any) -> None:
        await self.execute(effects)

    async def open_endpoint(self, now: float, party: Hashable) -> tuple[str | None, list[Effect]]:
        if not self._slot_live() and not await self._take_slot():
            return None, [Dropped("unavailable"), Close(party, CLOSE_TRY_AGAIN_LATER, "backend unavailable")]
        endpoint_id, effects = self.router.open_endpoint(now, party)
        if endpoint_id is not None:
            self._driver.poke()
        return endpoint_id, effects

    async def open_root(self, now: float, party: Hashable) -> list[Effect]:
        token = self._node.new_token()
        # Known before the script runs: an event naming it may overtake the reply.
        self._roots[token] = party
        self._root_tokens[party] = token
        future = self._mux.eval(OV_ROOT_OPEN, *self._head(), _hex(token), late=self._late_open(token))
        try:
            reply = await future
        except asyncio.CancelledError:
            self._forget_root(party)
            if future.done() and not future.cancelled():  # (its reply came: the mux did not hand it to late)
                self._late_open(token)(future.exception() or future.result())
            raise
        except (BackendUnavailable, RedisError) as exc:
            reply = exc
        if isinstance(reply, Exception) or reply[0] == -1:
            self._forget_root(party)
            return [Dropped("unavailable"), Close(party, CLOSE_TRY_AGAIN_LATER, "backend unavailable")]
        if reply[0] == 0:
            self._forget_root(party)
            return [Dropped("root_rejected"), Close(party, CLOSE_POLICY, "root already connected")]
        if self._root_tokens.get(party) != token:  # fenced meanwhile: the node ended it
            return [Close(party, CLOSE_SERVICE_RESTART, "service restart")]
        self.router.open_root(now, party)
        self._apply(reply[1], reply[2])
        self._driver.poke()
        return []

    async def closed(self, now: float, party: Hashable) -> list[Effect]:
        token = self._root_tokens.get(party)
        if token is None:  # an endpoint (or a party ended by a fence): never suspends
            return self.router.closed(now, party)
        self._forget_root(party)
        self.router.closed(now, party)
        self._sync_router()
        try:
            reply = await self._mux.eval(OV_ROOT_CLOSE, *self._head(), _hex(token), late=self._late_state)
        except (BackendUnavailable, RedisError):
            self._unclosed.add(token)  # its record stays until then (others' messages for it are dropped here)
            return []
        self._apply(reply[1], reply[2])
        return []

    async def route(self, now: float, sender: Hashable, destination: object, payload: Any) -> list[Effect]:
        router = self.router
        if destination and type(destination) is str and not router.holds(destination):
            origin = router.endpoint_id(sender)
            if origin is None:
                return [Dropped("unknown_sender")]
            if destination[:4] == self._slot or not _ID.fullmatch(destination):
                return [Dropped("unknown_destination")]
            frame = destination.encode() + origin.encode() + self._codec.dumps(payload, origin)
            try:
                delivered = await self._mux.eval(OV_SEND, *self._send_head, destination[:4], frame)
            except (BackendUnavailable, RedisError):
                return [Dropped("unavailable")]
            return [] if delivered else [Dropped("unknown_destination")]
        effects = router.route(now, sender, destination, payload)
        first = effects[0]
        if type(first) is Deliver and type(first.to) is RemoteRoot:
            return await self._to_root(first)
        return effects

    async def route_unstamped(self, now: float, sender: Hashable, payload: Any) -> list[Effect]:
        effects = self.router.route_unstamped(now, sender, payload)
        first = effects[0]
        if type(first) is Deliver and type(first.to) is RemoteRoot:
            return await self._to_root(first)
        return effects

    async def advance(self, now: float) -> list[Effect]:
        return self.router.advance(now)

    def next_deadline(self) -> float | None:
        return self.router.next_deadline()

    # -- what the node calls ------------------------------------------------------------------
    def on_message(self, kind: bytes, token: int, payload: bytes) -> list[Effect]:
        """A bus frame for this node (the node checked the epoch)."""
        if kind == b"m":  # an endpoint's message for an endpoint held here
            destination, origin = payload[:32].decode(), payload[32:64].decode()
            effects = self.router.route_inbound(self._clock(), origin, destination, self._codec.loads(payload[64:]))
            if type(effects[0]) is Deliver:
                return self._deliver(effects[0].to, effects)
            return effects
        if kind == b"t":  # a message for a root held here
            party = self._roots.get(token)
            if party is None or self.router.current_root is not party:
                return [Dropped("no_root")]  # closed, or no longer current: never routed to again
            if payload[:1] == _NO_ORIGIN:
                return self._deliver(party, [Deliver(party, self._codec.loads(payload[1:]), None)])
            return self._deliver(party, [Deliver(party, self._codec.loads(payload[32:]), payload[:32].decode())])
        if kind == b"e":  # the current root changed
            self._apply(token, payload)
        return []

    def fence(self) -> list[Effect]:
        """This node was declared dead: its slot and roots belong to nobody any more, so every
        party held here ends (1012), as on a restart. A slot is taken again under the new epoch."""
        effects: list[Effect] = [Close(party, CLOSE_SERVICE_RESTART, "service restart") for party in self.router.parties()]
        self._roots.clear()
        self._root_tokens.clear()
        self._unclosed.clear()
        self._sync_router()
        return effects

    async def resync(self) -> list[Effect]:
        """After the bus reconnected: root events may have been lost, so read the current root
        (the next beat does, should Redis not answer now)."""
        with contextlib.suppress(BackendUnavailable, RedisError):
            await self._sync()
        return []

    async def reap(self) -> None:
        """At every beat: dead nodes' slots and roots leave (the policy applies), the keys' TTLs
        are renewed, the current root is read again, and roots whose close was lost are closed."""
        for token in list(self._unclosed):
            try:
                reply = await self._mux.eval(OV_ROOT_CLOSE, *self._head(), _hex(token))
            except RedisError as exc:  # (not BackendUnavailable: that ends this beat's work, tried again at the next)
                self._node.log.error("overlay: closing a root failed", error=str(exc))
                reply = None
            self._unclosed.discard(token)
            if reply is not None:
                self._apply(reply[1], reply[2])
        await self._sync()

    async def tidy(self) -> None:
        pass  # nothing is indexed per node (slots and roots are checked against liveness by every script)

    async def forget(self, old_epoch: str) -> None:
        pass  # the old epoch's slot and roots are dead for every script; ov_sync removes them

    def leaving(self) -> list[tuple[Any, tuple]]:
        """What a clean stop runs (on the node's last connection): this node's roots and slot go."""
        return [(OV_LEAVE, self._head())]

    # -- the slot ---------------------------------------------------------------------------------
    def _new_id(self) -> str:
        return self._slot + token_hex(14)

    def _slot_live(self) -> bool:
        return self._slot_epoch == self._node.epoch_b

    async def _take_slot(self) -> bool:
        async with self._slot_lock:
            if self._slot_live():
                return True
            try:
                await self._sync()
            except (BackendUnavailable, RedisError):
                return False
            return self._slot_live()

    async def _sync(self) -> None:
        """``ov_sync`` with this node's slot (a new one while another live node holds it)."""
        epoch = self._node.epoch_b
        slot = self._slot or _random_slot()
        for _ in range(64):
            reply = await self._mux.eval(OV_SYNC, *self._head(), slot)
            if reply[0] != 0:
                break
            slot = _random_slot()
        else:
            raise BackendUnavailable("no free overlay slot found")
        if reply[0] == 1 and self._node.epoch_b == epoch:
            version, current = reply[1], reply[2]
            if self._slot and slot != self._slot:
                self._node.log.warning("overlay: this node's slot changed", old=self._slot, new=slot)
            self._slot, self._slot_epoch = slot, epoch
            self._apply(version, current)

    def _head(self) -> tuple[Any, ...]:
        node = self._node
        return (self._key, node.node_key_prefix, node.inbox_prefix, self.ns, node.node_id, node.epoch,
                self.policy.value, self._ttl_ms)

    # -- the current root ---------------------------------------------------------------------------
    def _apply(self, version: Any, current: bytes) -> None:
        version = int(version)
        if version > self._version:
            self._version = version
            self._current = current or None
            self._sync_router()

    def _sync_router(self) -> None:
        member = self._current
        party: Any = None
        if member is not None:
            epoch, token, node = member[:16], int(member[16:32], 16), member[32:]
            if node == self._node.node_id_b:
                if epoch == self._node.epoch_b:
                    party = self._roots.get(token)
            else:
                party = self._remote.get(member)
                if party is None:
                    self._remote.clear()  # one entry is enough: the current root changes rarely
                    party = self._remote[member] = RemoteRoot(node, epoch, token)
        self.router.set_current_root(party)

    def _late_state(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            self._apply(reply[1], reply[2])

    def _late_open(self, token: int) -> Any:
        def late(reply: Any) -> None:
            # The root's handler was cancelled while its open was on the wire: close what it opened.
            if isinstance(reply, list) and reply[0] == 1:
                self._mux.send(OV_ROOT_CLOSE, *self._head(), _hex(token))
        return late

    def _forget_root(self, party: Hashable) -> None:
        token = self._root_tokens.pop(party, None)
        if token is not None:
            self._roots.pop(token, None)

    # -- messages from other nodes ------------------------------------------------------------------
    async def _to_root(self, deliver: Deliver) -> list[Effect]:
        root: RemoteRoot = deliver.to
        origin = deliver.origin
        data = (origin.encode() if origin is not None else _NO_ORIGIN) + self._codec.dumps(deliver.payload, origin)
        frame = msgpack.packb([b"t", self._ns_b, root.epoch, root.token, data], use_bin_type=True)
        try:
            receivers = await self._mux.call("PUBLISH", self._node.inbox_prefix.encode() + root.node, frame)
        except (BackendUnavailable, RedisError):
            return [Dropped("unavailable")]
        return [] if receivers else [Dropped("no_root")]

    def _deliver(self, party: Hashable, effects: list[Effect]) -> list[Effect]:
        """Effects for ``party`` in the order they came, each party on its own: a receiver that
        does not read holds up only what is for it (up to the profile's send timeout)."""
        if not self._running:
            return effects  # (no task to deliver from: the node hands them to execute in order)
        queue = self._queues.get(party)
        if queue is not None:
            queue.append(effects)
            return []
        self._queues[party] = collections.deque((effects,))
        task = asyncio.get_running_loop().create_task(self._drain(party))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return []

    async def _drain(self, party: Hashable) -> None:
        queue = self._queues[party]
        try:
            while queue:
                try:
                    await self.execute(queue[0])
                except Exception:
                    self._node.log.exception("overlay: delivering a message from another node failed")
                queue.popleft()
        finally:
            del self._queues[party]


def _hex(token: int) -> str:
    return f"{token:016x}"


def _random_slot() -> str:
    return f"{secrets.randbelow(1 << 16):04x}"

