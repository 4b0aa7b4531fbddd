"""Task dispatch: tasks onto workers' announced free slots, with retries and cancellation.

This is the matcher behind the wasimoff broker. Workers (providers) announce a capacity
(0 until they do) and hold files; tasks name the files they need. A policy picks a worker
with a free slot; a task waits in a bounded FIFO queue while none is free. A transport
failure (the worker errored or went away) retries the task on a fresh selection, up to
``max_attempts``, after a growing delay; an application result, good or bad, is final. A
task whose requester goes away is revoked on its worker. First result wins: a result for a
task that is no longer leased to that worker is ignored.

Plain state given the time. Effects: ``Deliver(worker, task)`` to run it,
``Deliver(task, result)`` when done, ``Failed(task, errors)`` after the last attempt,
``Revoke(task, worker)`` on cancellation.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
import math
from collections.abc import Iterable
from typing import Generic, TypeVar

import attrs

from rendezvous.core.effects import Deliver, Effect, Failed, Revoke

W = TypeVar("W")  # a worker party
T = TypeVar("T")  # a task party


class Policy(enum.Enum):
    #: wasimoff's SimpleMatch: free workers that hold every required file, else any free worker.
    SIMPLE_MATCH = "simplematch"
    #: Workers in name order, taking turns (a busy worker's turn passes to the next free one).
    ROUND_ROBIN = "roundrobin"
    #: Any free worker, in connection order.
    ANY_FREE = "anyfree"


class QueueFull(Exception):
    """The queue is at its bound; the task was not accepted."""


def wasimoff_retry_delay(attempt: int) -> float:
    """The original's backoff: about 3.16·e^(i/1.737) ms, 10 ms … 1 s."""
    return min(1.0, 3.16 * math.exp(attempt / 1.737) / 1000)


@attrs.define(eq=False)
class _Worker(Generic[W, T]):
    party: W
    name: str
    order: int
    capacity: int = 0
    files: set[str] = attrs.field(factory=set)
    running: set[T] = attrs.field(factory=set)
    provides: frozenset[str] | None = None  # capabilities; None: every capability

    @property
    def free(self) -> bool:
        return len(self.running) < self.capacity

    def can_take(self, t: _Task[W, T]) -> bool:
        """A free slot and every capability ``t`` requires."""
        return self.free and (self.provides is None or t.requires <= self.provides)


@attrs.define(eq=False)
class _Task(Generic[W, T]):
    party: T
    needs: frozenset[str]
    requires: frozenset[str] = frozenset()
    state: str = "queued"  # queued | leased | retrying | done
    worker: _Worker[W, T] | None = None
    errors: list[str] = attrs.field(factory=list)


class Dispatch(Generic[W, T]):
    def __init__(
        self,
        *,
        policy: Policy = Policy.SIMPLE_MATCH,
        queue_limit: int = 2048,
        max_attempts: int = 10,
        retry_delay=wasimoff_retry_delay,
    ) -> None:
        self.policy = policy
        self.queue_limit = queue_limit
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self._workers: dict[W, _Worker[W, T]] = {}
        self._tasks: dict[T, _Task[W, T]] = {}
        # Queued tasks in FIFO order, by party: a cancelled one leaves at once (O(1)), so it holds
        # neither a place nor its payload; a retried one is moved to the front.
        self._queue: collections.OrderedDict[T, _Task[W, T]] = collections.OrderedDict()
        self._retries: list[tuple[float, int, _Task[W, T]]] = []
        self._seq = itertools.count()
        self._rr_next = 0

    # -- introspection -------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return sum(len(w.running) for w in self._workers.values())

    @property
    def workers(self) -> int:
        return len(self._workers)

    def free_slots(self, requires: Iterable[str] | None = None) -> int:
        """Free slots; with ``requires``, only those of workers that have every capability in it."""
        if requires is None:
            return sum(max(0, w.capacity - len(w.running)) for w in self._workers.values())
        needed = frozenset(requires)
        return sum(max(0, w.capacity - len(w.running)) for w in self._workers.values()
                   if w.provides is None or needed <= w.provides)

    def queued_parties(self) -> list[T]:
        """The tasks waiting for a slot, in queue order."""
        return list(self._queue)

    def worker_of(self, task: T) -> W | None:
        t = self._tasks.get(task)
        return t.worker.party if t is not None and t.worker is not None else None

    # -- workers -------------------------------------------------------------------------
    def add_worker(self, now: float, worker: W, name: str, files: Iterable[str] = (),
                   provides: Iterable[str] | None = None) -> list[Effect[W | T]]:
        """``provides``: the capabilities this worker has (None: all); a task that ``requires``
        one it lacks is never given to it."""
        self._workers[worker] = _Worker(worker, name, next(self._seq), files=set(files),
                                        provides=None if provides is None else frozenset(provides))
        return self._assign(now)

    def set_capacity(self, now: float, worker: W, capacity: int) -> list[Effect[W | T]]:
        w = self._workers.get(worker)
        if w is None:
            return []
        w.capacity = max(0, capacity)
        return self._assign(now)

    def update_files(self, now: float, worker: W, added: Iterable[str] = (), removed: Iterable[str] = ()) -> list[Effect[W | T]]:
        w = self._workers.get(worker)
        if w is not None:
            w.files.update(added)
            w.files.difference_update(removed)
        return []

    def remove_worker(self, now: float, worker: W, reason: str = "provider disconnected") -> list[Effect[W | T]]:
        """The worker is gone: everything it was running fails with a transport error (and retries)."""
        w = self._workers.pop(worker, None)
        if w is None:
            return []
        effects: list[Effect[W | T]] = []
        for task_party in list(w.running):
            t = self._tasks.get(task_party)
            if t is not None:  # (a revoked task's slot simply goes away with the worker)
                effects += self._transport_error(now, t, reason)
        return effects + self._assign(now)

    # -- tasks ---------------------------------------------------------------------------
    def submit(self, now: float, task: T, needs: Iterable[str] = (), requires: Iterable[str] = ()) -> list[Effect[W | T]]:
        """Queue ``task``; raises :class:`QueueFull` at the bound.

        ``needs``: files it prefers a worker to hold (SimpleMatch); ``requires``: capabilities
        a worker must have. A task no free worker can take lets the tasks behind it pass."""
        if len(self._queue) >= self.queue_limit:
            raise QueueFull()
        t: _Task[W, T] = _Task(task, frozenset(needs), frozenset(requires))
        self._tasks[task] = t
        self._queue[task] = t
        return self._assign(now)

    def completed(self, now: float, task: T, worker: W, result: object) -> list[Effect[W | T]]:
        """``worker`` answered ``task`` with an application result (success or error): final."""
        t = self._tasks.get(task)
        if t is None or t.state != "leased" or t.worker is None or t.worker.party is not worker:
            w = self._workers.get(worker)
            if w is not None and task in w.running:  # a revoked task's late answer frees its slot
                w.running.discard(task)
                return self._assign(now)
            return []
        self._release(t)
        t.state = "done"
        del self._tasks[task]
        return [Deliver(task, result), *self._assign(now)]

    def transport_error(self, now: float, task: T, worker: W, error: str) -> list[Effect[W | T]]:
        """``worker`` could not run ``task`` (an Envelope error, a broken socket): retry elsewhere."""
        t = self._tasks.get(task)
        if t is None or t.state != "leased" or t.worker is None or t.worker.party is not worker:
            w = self._workers.get(worker)
            if w is not None and task in w.running:
                w.running.discard(task)
                return self._assign(now)
            return []
        return self._transport_error(now, t, error) + self._assign(now)

    def cancel(self, now: float, task: T) -> list[Effect[W | T]]:
        """The requester went away. A running task is revoked on its worker; its slot stays taken
        until the worker answers (it is still busy until then)."""
        t = self._tasks.pop(task, None)
        if t is None:
            return []
        effects: list[Effect[W | T]] = []
        if t.state == "queued":
            del self._queue[task]
        elif t.state == "leased" and t.worker is not None:
            effects.append(Revoke(task, t.worker.party))
        t.state = "done"
        return effects

    # -- internals -----------------------------------------------------------------------
    def _release(self, t: _Task[W, T]) -> None:
        if t.worker is not None:
            t.worker.running.discard(t.party)

    def _transport_error(self, now: float, t: _Task[W, T], error: str) -> list[Effect[W | T]]:
        self._release(t)
        t.worker = None
        t.errors.append(error)
        if len(t.errors) >= self.max_attempts:
            t.state = "done"
            self._tasks.pop(t.party, None)
            return [Failed(t.party, tuple(t.errors))]
        t.state = "retrying"
        heapq.heappush(self._retries, (now + self.retry_delay(len(t.errors)), next(self._seq), t))
        return []

    def _pick(self, t: _Task[W, T]) -> _Worker[W, T] | None:
        free = [w for w in self._workers.values() if w.can_take(t)]
        if not free:
            return None
        if self.policy is Policy.SIMPLE_MATCH:
            if t.needs:
                holders = [w for w in free if t.needs <= w.files]
                if holders:
                    return min(holders, key=lambda w: (len(w.running) / w.capacity, w.order))
            return min(free, key=lambda w: (len(w.running) / w.capacity, w.order))
        if self.policy is Policy.ROUND_ROBIN:
            ordered = sorted(self._workers.values(), key=lambda w: w.name)
            for i in range(len(ordered)):
                w = ordered[(self._rr_next + i) % len(ordered)]
                if w.can_take(t):
                    self._rr_next = (self._rr_next + i + 1) % len(ordered)
                    return w
            return None
        return min(free, key=lambda w: w.order)

    def _assign(self, now: float) -> list[Effect[W | T]]:
        effects: list[Effect[W | T]] = []
        assigned: list[T] = []
        passed = 0  # tasks whose capabilities no free worker has: later tasks may pass them
        for t in self._queue.values():
            w = self._pick(t)
            if w is None:
                if not t.requires or passed >= 256 or not any(x.free for x in self._workers.values()):
                    break
                passed += 1
                continue
            t.state = "leased"
            t.worker = w
            w.running.add(t.party)
            effects.append(Deliver(w.party, t.party))
            assigned.append(t.party)
        for party in assigned:  # (not while iterating the queue)
            del self._queue[party]
        return effects

    # -- time ----------------------------------------------------------------------------
    def advance(self, now: float) -> list[Effect[W | T]]:
        retries = self._retries
        requeued = False
        while retries and retries[0][0] <= now:
            _, _, t = heapq.heappop(retries)
            if t.state == "retrying":
                t.state = "queued"
                self._queue[t.party] = t
                self._queue.move_to_end(t.party, last=False)  # a retried task goes first: it has waited longest
                requeued = True
        return self._assign(now) if requeued else []

    def next_deadline(self) -> float | None:
        retries = self._retries
        while retries and retries[0][2].state != "retrying":
            heapq.heappop(retries)
        return retries[0][0] if retries else None
