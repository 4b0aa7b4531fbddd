"""Offer/answer pairing: waiting parties in pools, askers drawing from them, answers by session id.

This is the matcher behind the Snowflake broker. *Waiters* (proxies) sit in a pool for up to
``hold_timeout``; each pool is a min-heap on an order key (Snowflake's ``Clients``: the least
loaded first). An *asker* (client) draws from a list of pools in order; the drawn waiter is
handed the asker's offer, and the asker waits up to ``answer_timeout`` for the answer that the
waiter sends back under its session id. Every entry is removed on every path, so a late
answer finds nobody. The heaps (pools, deadlines) delete lazily, and are rebuilt from their live
entries once stale ones outnumber them: an idle pool whose polls expire or hang up stays small.

Plain state given the time. Effects: ``Deliver(waiter, offer)`` on a match,
``Deliver(asker, answer)`` on an answer, ``Expired(party, "hold" | "answer")`` on timeouts,
``Dropped(reason)`` for the caller to report.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, cast

import attrs

from rendezvous.core.effects import Deliver, Dropped, Effect, Expired, P

WAITING, MATCHED, DONE = "waiting", "matched", "done"


def _compact(heap: list, live: int, is_live: Callable[[tuple], bool]) -> None:
    """Lazy deletion leaves stale entries in ``heap``; once they outnumber the ``live`` ones,
    rebuild it in place from the live ones. The O(n) rebuild drops more than n/2 entries, each
    of which cost a push, so every operation stays amortised O(log n), and a heap never holds
    more than twice its live entries however long nobody pops it."""
    if len(heap) > 2 * live:
        heap[:] = [entry for entry in heap if is_live(entry)]
        heapq.heapify(heap)


@attrs.define(eq=False)
class _Pool:
    heap: list[tuple[float, int, _Waiter]] = attrs.field(factory=list)  # (order, seq, waiter)
    live: int = 0  # entries whose waiter is still waiting; the rest are stale

    def left(self) -> None:
        """One waiter left (drawn, or done while waiting)."""
        self.live -= 1
        _compact(self.heap, self.live, _in_pool)


def _in_pool(entry: tuple[float, int, _Waiter]) -> bool:
    return entry[2].state == WAITING


@attrs.define(eq=False)
class _Waiter(Generic[P]):
    sid: Hashable
    party: P
    pool: Hashable
    order: float
    deadline: float
    info: object  # the caller's description of the waiter (type, NAT, ...): returned on draw
    state: str = WAITING
    asker: P | None = None  # set once matched

    @property
    def matched_asker(self) -> P:
        """The asker, for a matched waiter (every caller has checked the state)."""
        return cast(P, self.asker)


def _let_go(waiter: _Waiter[Any]) -> None:
    """A waiter that is done keeps nothing of its parties: its stale heap entries (there until
    they are popped or compacted) must not keep a request's objects alive, cold by the time
    they are freed. (A matched waiter lets go of its own party at once: it has its offer.)"""
    waiter.party = waiter.asker = waiter.info = None


class Pairing(Generic[P]):
    def __init__(self, *, hold_timeout: float = 10.0, answer_timeout: float = 10.0) -> None:
        if hold_timeout <= 0 or answer_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.hold_timeout = hold_timeout
        self.answer_timeout = answer_timeout
        self._pools: dict[Hashable, _Pool] = {}
        self._by_sid: dict[Hashable, _Waiter[P]] = {}  # waiting, or matched and not finished
        self._by_party: dict[P, _Waiter[P]] = {}  # waiting waiters and waiting askers
        self._seq = itertools.count()
        # (time, seq, kind, waiter), lazily deleted: an entry is live while the waiter's state fits.
        # A waiter has one live deadline while it waits or is matched: ``_active`` counts them.
        self._deadlines: list[tuple[float, int, str, _Waiter[P]]] = []
        self._active = 0

    # -- introspection ---------------------------------------------------------------------
    def waiting(self, pool: Hashable) -> int:
        entry = self._pools.get(pool)
        return entry.live if entry is not None else 0

    def known(self) -> list[object]:
        """``info`` of every waiter known by session id: waiting, or matched and not finished."""
        return [w.info for w in self._by_sid.values()]

    # -- waiters ---------------------------------------------------------------------------
    def wait(self, now: float, sid: Hashable, party: P, pool: Hashable, order: float, info: object = None) -> list[Effect[P]]:
        """A waiter polls: it joins ``pool`` for ``hold_timeout``. A reused sid takes over the id."""
        effects: list[Effect[P]] = []
        old = self._by_sid.get(sid)
        if old is not None and old.state == WAITING:
            self._retire(old)
            if self._by_party.get(old.party) is old:
                del self._by_party[old.party]
            effects.append(Expired(old.party, "replaced"))
            _let_go(old)
        waiter = _Waiter(sid, party, pool, order, now + self.hold_timeout, info)
        self._by_sid[sid] = waiter
        self._by_party[party] = waiter
        entry = self._pools.get(pool)
        if entry is None:
            entry = self._pools[pool] = _Pool()
        heapq.heappush(entry.heap, (order, next(self._seq), waiter))
        entry.live += 1
        self._active += 1
        self._push_deadline(waiter.deadline, "hold", waiter)
        return effects

    def answer(self, now: float, sid: Hashable, answer: object) -> list[Effect[P]]:
        """The waiter with ``sid`` answers; its asker gets it, or ``Dropped("asker_gone")``."""
        waiter = self._by_sid.get(sid)
        if waiter is None or waiter.state != MATCHED:
            return [Dropped("asker_gone")]
        asker = waiter.matched_asker
        self._finish(waiter)
        _let_go(waiter)
        return [Deliver(asker, answer)]

    # -- askers ----------------------------------------------------------------------------
    def ask(self, now: float, party: P, pools: Iterable[Hashable], offer: object) -> tuple[object, list[Effect[P]]]:
        """Draw the best waiter from the first pool of ``pools`` that has one.

        Returns the drawn waiter's ``info`` and ``Deliver(waiter, offer)``, or ``None`` and
        ``Dropped("no_waiter")``. On a match the asker waits ``answer_timeout`` for the answer.
        """
        for pool in pools:
            entry = self._pools.get(pool)
            while entry is not None and entry.live:
                _, _, waiter = heapq.heappop(entry.heap)
                if waiter.state != WAITING:
                    continue
                entry.left()
                waiter.state = MATCHED  # (its hold deadline goes stale, the answer deadline is live)
                waiter.asker = party
                if self._by_party.get(waiter.party) is waiter:
                    del self._by_party[waiter.party]
                self._by_party[party] = waiter
                self._push_deadline(now + self.answer_timeout, "answer", waiter)
                effects: list[Effect[P]] = [Deliver(waiter.party, offer)]
                waiter.party = None  # (done waiting: see _let_go)
                return waiter.info, effects
        return None, [Dropped("no_waiter")]

    # -- leaving -----------------------------------------------------------------------------
    def gone(self, now: float, party: P) -> list[Effect[P]]:
        """A waiter or an asker went away (disconnected). A waiter leaves its pool; an asker
        ends its match, so the late answer gets ``asker_gone``."""
        waiter = self._by_party.get(party)
        if waiter is None:
            return []
        if waiter.state == WAITING and waiter.party is party:
            del self._by_party[party]
            self._retire(waiter)
            if self._by_sid.get(waiter.sid) is waiter:
                del self._by_sid[waiter.sid]
            _let_go(waiter)
            return [Dropped("waiter_gone")]
        if waiter.state == MATCHED and waiter.asker is party:
            self._finish(waiter)
            _let_go(waiter)
            return [Dropped("asker_gone")]
        return []

    def _finish(self, waiter: _Waiter[P]) -> None:
        """A match ends (answered, timed out, or the asker left): forget it everywhere."""
        self._retire(waiter)
        if self._by_sid.get(waiter.sid) is waiter:
            del self._by_sid[waiter.sid]
        if self._by_party.get(waiter.matched_asker) is waiter:
            del self._by_party[waiter.matched_asker]

    def drain(self, now: float) -> list[Effect[P]]:
        """Shutting down: every waiting party expires now (waiters "hold", askers "answer")."""
        effects: list[Effect[P]] = []
        for _, _, kind, waiter in sorted(self._deadlines, key=lambda d: d[:2]):
            if self._live(kind, waiter):
                effects += self._expire(kind, waiter)
        self._deadlines.clear()
        return effects

    def _expire(self, kind: str, waiter: _Waiter[P]) -> list[Effect[P]]:
        if kind == "hold":
            self._retire(waiter)
            if self._by_sid.get(waiter.sid) is waiter:
                del self._by_sid[waiter.sid]
            if self._by_party.get(waiter.party) is waiter:
                del self._by_party[waiter.party]
            expired: list[Effect[P]] = [Expired(waiter.party, "hold")]
        else:
            asker = waiter.matched_asker
            self._finish(waiter)
            expired = [Expired(asker, "answer")]
        _let_go(waiter)
        return expired

    def _retire(self, waiter: _Waiter[P]) -> None:
        """A waiting or matched waiter is done: its heap entries go stale. Bound them."""
        was_waiting = waiter.state == WAITING
        waiter.state = DONE
        if was_waiting:
            self._pools[waiter.pool].left()
        self._active -= 1
        _compact(self._deadlines, self._active, self._live_deadline)

    def _push_deadline(self, time: float, kind: str, waiter: _Waiter[P]) -> None:
        heapq.heappush(self._deadlines, (time, next(self._seq), kind, waiter))
        _compact(self._deadlines, self._active, self._live_deadline)

    # -- time --------------------------------------------------------------------------------
    def _live(self, kind: str, waiter: _Waiter[P]) -> bool:
        return waiter.state == (WAITING if kind == "hold" else MATCHED)

    def _live_deadline(self, entry: tuple[float, int, str, _Waiter[P]]) -> bool:
        return self._live(entry[2], entry[3])

    def advance(self, now: float) -> list[Effect[P]]:
        effects: list[Effect[P]] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, kind, waiter = heapq.heappop(deadlines)
            if self._live(kind, waiter):
                effects += self._expire(kind, waiter)
        return effects

    def next_deadline(self) -> float | None:
        deadlines = self._deadlines
        while deadlines and not self._live(deadlines[0][2], deadlines[0][3]):
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None
