"""Offer/answer pairing shared through Redis: the distributed form of :class:`Pairing`.

What stays on the node: the parties (held polls and offers) and their deadlines, on the
caller's clock. What is shared: the pools and each session's record, changed only by the
scripts in :mod:`.lua`, one atomic step each:

* ``wait``: the waiter's record and pool entry (a reused sid replaces the earlier waiter,
  wherever it waits). ``ask``: ZPOPMIN from the pools in order, skipping waiters whose node
  is not alive with the epoch they registered under; the offer is published to the waiter's
  node (or delivered here). ``answer`` (on any node): routed by session id to the asker's
  node. ``gone``: a waiter leaves its pool, an asker ends its match.
* Deadlines run here. A waiter's hold ends with ``withdraw``, which removes it, or, if a
  claim won the race, returns the offer (whose bus message may still be on its way): the
  poll gets that offer, never "no match" after being matched. An asker's answer time ends
  with ``asker_end``, which returns the answer if it came meanwhile. So both races are
  decided by Redis's order of scripts, without comparing clocks between hosts.
* A local party is resolved once: by whichever of the call's reply, a bus message or a
  timer's script is processed first; the others find it gone and do nothing.

No shared deadline is stored: hold and answer times are local, and a record's TTL is garbage
collection only: ``hold + answer + 5 s`` while it waits, then ``max(hold, answer) + 2 s`` once
matched (longer than either side may still need it), so what a dead node left behind is gone
within seconds. A party is told apart on its node by a
token that is never reused in the process; bus frames carry the epoch too, so a frame for an
earlier life of the node is ignored.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
import time
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from redis.exceptions import RedisError

from rendezvous.backends.base import (
    BackendUnavailable,
    Clock,
    Codec,
    Execute,
    MsgpackCodec,
    Then,
    discard,
    timer_driver,
)
from rendezvous.backends.redis import lua
from rendezvous.core.effects import Deliver, Dropped, Effect, Expired

if TYPE_CHECKING:
    from rendezvous.backends.redis.node import RedisBackend

WAITER, ASKER = "waiter", "asker"
MAX_POPS = 64  # stale pool entries one claim may drop before it lets other scripts run
_MORE = object()
_MATCHED_STATES = (b"matched", b"answered", b"done")


@attrs.define(eq=False, slots=True)
class _Held:
    """A party held on this node: a waiter (a proxy's poll) or an asker (a client's offer)."""

    party: Hashable
    kind: str
    token: int
    sid: str | None
    deadline: float = math.inf
    firing: bool = False  # its deadline passed and the script that ends it is on its way
    confirmed: bool = False  # its record is in Redis (a waiter's wait, an asker's claim came back)


def _score(order: float) -> str:
    return repr(float(order))


class RedisPairingStore:
    def __init__(self, node: RedisBackend, ns: str, *, hold_timeout: float, answer_timeout: float,
                 clock: Clock = time.monotonic, codec: Codec | None = None) -> None:
        if hold_timeout <= 0 or answer_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.hold_timeout = hold_timeout
        self.answer_timeout = answer_timeout
        self.ns = ns
        self._node = node
        self._mux = node.mux
        self._codec = codec or MsgpackCodec()
        self._key = f"{node.settings.prefix}:{{{ns}}}"
        self._ttl_ms = int((hold_timeout + answer_timeout) * 1000) + 5000
        self._match_ttl_ms = int(max(hold_timeout, answer_timeout) * 1000) + 2000
        self._head_cache: tuple[str, ...] = ("",)
        self._tidy_cursors: tuple[Any, Any] = (0, 0)  # SSCAN cursors of the index sets, resumed at each tidy
        self._held: dict[int, _Held] = {}  # by token
        self._by_party: dict[Hashable, _Held] = {}
        # (deadline, seq, token): by token, not by party, so that a resolved party's entry (there
        # until it is popped or compacted) keeps none of its request's objects alive
        self._deadlines: list[tuple[float, int, int]] = []
        self._seq = itertools.count()
        self.execute: Execute = discard
        self._driver = timer_driver(self, lambda: self.execute, clock)

    # -- the store interface -------------------------------------------------------------------
    def attach(self, execute: Execute) -> None:
        self.execute = execute

    async def run(self) -> None:
        await self._driver.run()

    # (Each call in two forms, awaited and with a callback (below), from one set of arguments.)
    def _waiting(self, now: float, sid: str, party: Hashable, pool: str, order: float, info: Any) -> tuple[_Held, tuple]:
        held = self._hold(party, WAITER, sid, now + self.hold_timeout)
        return held, (held.token, sid, pool, _score(order), self._codec.dumps(info), self._ttl_ms)

    def _asking(self, now: float, party: Hashable, pools: Iterable[str], offer: Any) -> tuple[_Held, tuple, Callable]:
        held = self._hold(party, ASKER, None, math.inf)
        args = (held.token, self._codec.dumps(offer), self._match_ttl_ms, MAX_POPS, *pools)
        return held, args, functools.partial(self._claimed, held, now, offer)

    def _answering(self, sid: str, answer: Any) -> tuple[tuple, Callable]:
        return (sid, self._codec.dumps(answer), self._match_ttl_ms), functools.partial(self._answered, answer)

    async def wait(self, now: float, sid: str, party: Hashable, pool: str, order: float, info: Any = None) -> list[Effect]:
        held, args = self._waiting(now, sid, party, pool, order, info)
        try:
            return (await self._call(lua.SF_WAIT, args, functools.partial(self._waited, held)))[1]
        except asyncio.CancelledError:
            self._abandon(held)
            raise

    async def ask(self, now: float, party: Hashable, pools: Iterable[str], offer: Any) -> tuple[Any, list[Effect]]:
        held, args, process = self._asking(now, party, pools, offer)
        try:
            while True:
                info, effects = await self._call(lua.SF_CLAIM, args, process)
                if info is not _MORE:
                    return info, effects
        except asyncio.CancelledError:
            self._release(held)  # the claim's reply, when it comes, ends the match it made
            raise

    async def answer(self, now: float, sid: str, answer: Any) -> tuple[Any, list[Effect]]:
        return await self._call(lua.SF_ANSWER, *self._answering(sid, answer))

    async def gone(self, now: float, party: Hashable) -> list[Effect]:
        held = self._by_party.get(party)
        if held is None or not self._release(held) or held.sid is None:
            return []
        if held.kind is WAITER:
            return (await self._call(lua.SF_WITHDRAW, (held.token, held.sid), _left_pool))[1]
        return (await self._call(lua.SF_ASKER_END, (held.token, held.sid, self._match_ttl_ms), _ended_match))[1]

    # -- the same in callback form (an ImmediatePairingStore): no task, no future -----------------
    def wait_now(self, now: float, sid: str, party: Hashable, pool: str, order: float, info: Any, then: Then) -> None:
        held, args = self._waiting(now, sid, party, pool, order, info)
        self._call_then(lua.SF_WAIT, args, functools.partial(self._waited, held), then)

    def ask_now(self, now: float, party: Hashable, pools: Iterable[str], offer: Any, then: Then) -> None:
        _, args, process = self._asking(now, party, pools, offer)
        self._claim(args, process, then)

    def _claim(self, args: tuple, process: Callable[[Any], tuple[Any, list[Effect]]], then: Then) -> None:
        def claimed(info: Any, effects: list[Effect]) -> None:
            if info is _MORE:  # stale entries dropped: claim again
                self._claim(args, process, then)
            else:
                then(info, effects)

        self._call_then(lua.SF_CLAIM, args, process, claimed)

    def answer_now(self, now: float, sid: str, answer: Any, then: Then) -> None:
        self._call_then(lua.SF_ANSWER, *self._answering(sid, answer), then)

    def gone_now(self, now: float, party: Hashable) -> list[Effect]:
        """:meth:`gone` without waiting for its script (its reply only says what was dropped)."""
        held = self._by_party.get(party)
        if held is not None and self._release(held) and held.sid is not None:
            if held.kind is WAITER:
                self._mux.send(lua.SF_WITHDRAW, *self._head(), held.token, held.sid)
            else:
                self._mux.send(lua.SF_ASKER_END, *self._head(), held.token, held.sid, self._match_ttl_ms)
        return []

    async def advance(self, now: float) -> list[Effect]:
        heap = self._deadlines
        due = []
        while heap and heap[0][0] <= now:
            held = self._due(heapq.heappop(heap))
            if held is not None:
                due.append(held)
        return await self._end(due) if due else []

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and self._due(heap[0]) is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    async def drain(self, now: float) -> list[Effect]:
        held = [h for h in self._held.values() if h.sid is not None and not h.firing]
        self._deadlines.clear()
        return await self._end(held)

    async def known(self, *, here: bool = False) -> list[Any]:
        def infos(reply: Any) -> tuple[list[Any], list[Effect]]:
            return ([] if isinstance(reply, Exception) else [self._codec.loads(i) for i in reply]), []

        return (await self._call(lua.SF_KNOWN, (self._node.node_id if here else "",), infos))[0]

    # -- what the node calls ------------------------------------------------------------------
    def on_message(self, kind: bytes, token: int, payload: bytes) -> list[Effect]:
        """A bus frame for a party held here (the node checked the epoch)."""
        held = self._held.get(token)
        if held is None or not self._release(held):
            return []  # resolved already (by a reply or a timer's script): exactly once
        if kind == b"r":
            return [Expired(held.party, "replaced")]
        if kind == b"a" and held.sid is not None:  # delivered: the answered record has served its purpose
            # (without a sid yet, the claim's reply is still on its way: it ends the record then)
            self._mux.send(lua.SF_ASKER_END, *self._head(), held.token, held.sid, self._match_ttl_ms)
        return [Deliver(held.party, self._codec.loads(payload))]

    def fence(self) -> list[Effect]:
        """This node was declared dead (its liveness key expired): what it holds can no longer
        be matched or answered, so every party ends now, as on a restart."""
        effects: list[Effect] = [Expired(h.party, "hold" if h.kind is WAITER else "answer") for h in self._held.values()]
        self._held.clear()
        self._by_party.clear()
        self._deadlines.clear()
        return effects

    async def resync(self) -> list[Effect]:
        """After the bus reconnected: bus frames may have been lost, so read the records of the
        matched parties held here and deliver what came (offers, answers, replacements)."""
        fields = ("state", "node", "epoch", "wt", "offer", "an", "ae", "at", "answer")
        parties = [h for h in self._held.values() if h.confirmed and not h.firing]
        calls = [(h, self._mux.call("HMGET", f"{self._key}:w:{h.sid}", *fields)) for h in parties]
        effects: list[Effect] = []
        for held, future in calls:
            try:
                state, w_node, w_epoch, w_token, offer, a_node, a_epoch, a_token, answer = await future
            except (BackendUnavailable, RedisError):
                continue
            token = str(held.token).encode()
            if held.kind is WAITER:
                if self._is_here(w_node, w_epoch) and w_token == token:
                    if state in _MATCHED_STATES and self._release(held):
                        effects.append(Deliver(held.party, self._codec.loads(offer)))
                elif self._release(held):  # its record is gone (a reused sid took it, or it expired)
                    effects.append(Expired(held.party, "hold" if state is None else "replaced"))
            elif state == b"answered" and self._is_here(a_node, a_epoch) and a_token == token and self._release(held):
                effects.append(Deliver(held.party, self._codec.loads(answer)))
                self._mux.send(lua.SF_ASKER_END, *self._head(), held.token, held.sid, self._match_ttl_ms)
        return effects

    async def reap(self) -> None:
        """Garbage-collect the pool entries of dead nodes (run at every beat by every live node)."""
        while await self._mux.eval(lua.SF_REAP, *self._head(), 500) == 1:
            pass

    async def tidy(self) -> None:
        """The next few members of this node's index sets whose records went another way leave
        them (run at every beat; a full pass over the sets takes a few beats)."""
        self._tidy_cursors = tuple(await self._mux.eval(lua.SF_TIDY, *self._head(), *self._tidy_cursors, 100))

    async def forget(self, old_epoch: str) -> None:
        """After a fence (under the new epoch, before registering it): take this node's waiting
        records of ``old_epoch`` out of their pools, should no other node have reaped them."""
        while await self._mux.eval(lua.SF_FORGET, *self._head(), old_epoch, 500) == 1:
            pass

    # -- replies ------------------------------------------------------------------------------
    def _waited(self, held: _Held, reply: Any) -> tuple[None, list[Effect]]:
        if isinstance(reply, Exception):
            return None, ([Expired(held.party, "unavailable")] if self._release(held) else [])
        if reply == -1:  # this node is not alive with its epoch (about to fence itself): not recorded
            return None, ([Expired(held.party, "unavailable")] if self._release(held) else [])
        held.confirmed = True
        if reply is not None:
            old = self._held.get(int(reply))
            if old is not None and old is not held and self._release(old):
                return None, [Expired(old.party, "replaced")]
        return None, []

    def _claimed(self, held: _Held, now: float, offer: Any, reply: Any) -> tuple[Any, list[Effect]]:
        if reply is None or isinstance(reply, Exception):
            self._release(held)
            return None, [Dropped("no_waiter" if reply is None else "unavailable")]
        if reply == 1:
            return (_MORE if self._held.get(held.token) is held else None), []
        sid, w_node, w_epoch, w_token, info = reply
        held.sid = sid = sid.decode()
        held.confirmed = True
        effects: list[Effect] = []
        if self._is_here(w_node, w_epoch):
            waiter = self._held.get(int(w_token))
            if waiter is not None and self._release(waiter):
                effects.append(Deliver(waiter.party, offer))
        if self._held.get(held.token) is held:
            self._set_deadline(held, now + self.answer_timeout)
        else:  # the asker hung up while its claim was on the wire: end the match it made
            self._mux.send(lua.SF_ASKER_END, *self._head(), held.token, sid, self._match_ttl_ms)
        return self._codec.loads(info), effects

    def _answered(self, answer: Any, reply: Any) -> tuple[Any, list[Effect]]:
        if reply is None or isinstance(reply, Exception):
            return None, [Dropped("asker_gone" if reply is None else "unavailable")]
        a_node, a_epoch, a_token, info = reply
        effects: list[Effect] = []
        if self._is_here(a_node, a_epoch):
            asker = self._held.get(int(a_token))
            if asker is not None and self._release(asker):
                effects.append(Deliver(asker.party, answer))
        return self._codec.loads(info), effects

    def _ended(self, held: _Held, reply: Any) -> tuple[None, list[Effect]]:
        """A deadline's script came back (withdraw for a waiter, asker_end for an asker)."""
        if not self._release(held):
            return None, []  # an offer or answer reached it first
        if isinstance(reply, list):  # what the other side sent meanwhile
            return None, [Deliver(held.party, self._codec.loads(reply[0]))]
        return None, [Expired(held.party, "hold" if held.kind is WAITER else "answer")]

    # -- calls --------------------------------------------------------------------------------
    def _head(self) -> tuple[str, ...]:
        """The arguments every script starts with (this node's life: new after a fence)."""
        node = self._node
        head = self._head_cache
        if head[-1] is not node.epoch:
            head = self._head_cache = (self._key, node.node_key_prefix, node.inbox_prefix, self.ns, node.node_id, node.epoch)
        return head

    async def _call(self, script: Any, args: tuple, process: Callable[[Any], tuple[Any, list[Effect]]]) -> Any:
        """Run ``script`` and turn its reply into ``(value, effects)`` with ``process``. Should the
        caller be cancelled meanwhile, the reply still counts: ``process`` runs when it comes,
        and its effects go to the attached executor."""
        future = self._mux.eval(script, *self._head(), *args, late=functools.partial(self._late, process))
        try:
            reply = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._late(process, future.exception() or future.result())
            raise
        except BackendUnavailable as exc:
            reply = exc
        except RedisError as exc:
            self._node.log.error("redis script failed", script=script.name, error=str(exc))
            reply = exc
        return process(reply)

    def _call_then(self, script: Any, args: tuple, process: Callable[[Any], tuple[Any, list[Effect]]], then: Then) -> None:
        """:meth:`_call` in callback form: ``then(*process(reply))`` when the reply comes."""

        def replied(reply: Any) -> None:
            if isinstance(reply, RedisError):
                self._node.log.error("redis script failed", script=script.name, error=str(reply))
            value, effects = process(reply)
            then(value, effects)

        self._mux.eval_then(script, *self._head(), *args, then=replied)

    def _late(self, process: Callable[[Any], tuple[Any, list[Effect]]], reply: Any) -> None:
        effects = process(reply)[1]
        if effects:
            self._node.emit(self, effects)

    async def _end(self, parties: list[_Held]) -> list[Effect]:
        """End parties whose time is up: one script each, all in one batch."""
        calls = []
        for held in parties:
            held.firing = True
            process = functools.partial(self._ended, held)
            late = functools.partial(self._late, process)
            if held.kind is WAITER:
                future = self._mux.eval(lua.SF_WITHDRAW, *self._head(), held.token, held.sid, late=late)
            else:
                future = self._mux.eval(lua.SF_ASKER_END, *self._head(), held.token, held.sid, self._match_ttl_ms, late=late)
            calls.append((future, process))
        effects: list[Effect] = []
        for index, (future, process) in enumerate(calls):
            try:
                reply = await future
            except asyncio.CancelledError:
                for rest, rest_process in calls[index:]:
                    rest.add_done_callback(functools.partial(self._late_from, rest_process))
                raise
            except (BackendUnavailable, RedisError) as exc:
                reply = exc
            effects += process(reply)[1]
        return effects

    def _late_from(self, process: Callable[[Any], tuple[Any, list[Effect]]], future: asyncio.Future) -> None:
        if not future.cancelled():  # (a cancelled one is handed to its late callback by the mux)
            self._late(process, future.exception() or future.result())

    # -- local parties --------------------------------------------------------------------------
    def _hold(self, party: Hashable, kind: str, sid: str | None, deadline: float) -> _Held:
        held = _Held(party, kind, self._node.new_token(), sid)
        self._held[held.token] = held
        self._by_party[party] = held
        if deadline != math.inf:
            self._set_deadline(held, deadline)
        return held

    def _set_deadline(self, held: _Held, deadline: float) -> None:
        held.deadline = deadline
        heap = self._deadlines
        heapq.heappush(heap, (deadline, next(self._seq), held.token))
        if len(heap) > 2 * len(self._held) + 64:  # entries of resolved parties outnumber the live ones
            heap[:] = [entry for entry in heap if self._due(entry) is not None]
            heapq.heapify(heap)
        self._driver.poke(deadline)

    def _due(self, entry: tuple[float, int, int]) -> _Held | None:
        """The party a deadline entry stands for, if it still waits with that deadline."""
        held = self._held.get(entry[2])
        if held is None or held.firing or held.deadline != entry[0]:
            return None
        return held

    def _release(self, held: _Held) -> bool:
        """Forget a party; False if it was already forgotten (resolved by someone else)."""
        if self._held.get(held.token) is not held:
            return False
        del self._held[held.token]
        if self._by_party.get(held.party) is held:
            del self._by_party[held.party]
        return True

    def _abandon(self, held: _Held) -> None:
        """The caller of ``wait`` was cancelled: the poll is gone, take it out of its pool."""
        if self._release(held):
            self._mux.send(lua.SF_WITHDRAW, *self._head(), held.token, held.sid)

    def _is_here(self, node: bytes, epoch: bytes) -> bool:
        return node == self._node.node_id_b and epoch == self._node.epoch_b


def _left_pool(reply: Any) -> tuple[None, list[Effect]]:
    return None, ([Dropped("waiter_gone")] if reply == 1 else [])


def _ended_match(reply: Any) -> tuple[None, list[Effect]]:
    return None, ([Dropped("asker_gone")] if reply == 1 else [])
