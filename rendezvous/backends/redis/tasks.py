"""wasimoff's task queue shared through Redis: the distributed form of :class:`Dispatch`.

What stays on the node: a :class:`Dispatch` for the workers (providers) connected here, with the
configured policy and a single attempt per lease, and the clients' tasks waiting here. What is
shared (scripts in :mod:`.lua_tasks`): one queue per class of task (the capabilities it
requires), the tasks' records, and their leases.

* **Submit** (any node): ``wm_submit`` writes the task and, when this node has a free slot that
  can run it, leases it here at once; otherwise it queues it and tells the nodes whose
  providers can run it. The task is accepted (the call returns) only once it is in Redis.
* **Pull** (a node with free slots): ``wm_pull`` leases up to that many queued tasks to this
  node (retries first); the local :class:`Dispatch` picks the provider with its policy.
  Triggers: a ``w`` frame, a slot freed, a provider added, and every half second.
* **First result wins**: ``wm_complete`` / ``wm_fail`` count only from the (node, epoch) holding
  the lease. A result goes to the origin (a frame; the record keeps it until the origin acks).
  A transport error retries the task after the original's backoff, cluster-wide, up to
  ``max_attempts``; a task this node leased but could not start within a second goes back.
* **Cancel**: the task leaves the queue, or is revoked on the node running it.
* **Death**: a dead node's leases are retried elsewhere, the tasks it originated cancelled
  (``wm_reap``, at every live node's beat). A fenced node answers its clients "broker node lost".

Pub/Sub is at most once: a lost ``w`` costs at most half a second (the tick pulls); a lost result
is re-read from its record (tasks waiting longer than two seconds, and after the bus reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from rendezvous.backends.base import BackendUnavailable, Clock, Execute, TaskCodec, discard
from rendezvous.backends.redis.lua_tasks import (
    WM_ACK,
    WM_CANCEL,
    WM_CAP,
    WM_COMPLETE,
    WM_FAIL,
    WM_KICK,
    WM_PULL,
    WM_REAP,
    WM_RELEASE,
    WM_STATES,
    WM_STATS,
    WM_SUBMIT,
)
from rendezvous.core.dispatch import Dispatch, Policy, QueueFull
from rendezvous.core.effects import Deliver, Effect, Failed

if TYPE_CHECKING:
    from rendezvous.backends.redis.node import RedisBackend

TICK = 0.5  # seconds between the safety-net pulls, kicks and releases
RESYNC_AFTER = 2.0  # a task waiting this long has its record re-read (a result frame may be lost)
RELEASE_AFTER = 1.0  # a task leased here but not started for this long goes back to the queue
NODE_LOST = "broker node lost"


def _requires(cls: str) -> frozenset[str]:
    return frozenset() if cls == "-" else frozenset(cls.split(","))


class RedisTaskStore:
    def __init__(self, node: RedisBackend, ns: str, *, policy: Policy = Policy.SIMPLE_MATCH, queue_limit: int = 2048,
                 max_attempts: int = 10, clock: Clock = time.monotonic, codec: TaskCodec | None = None) -> None:
        if codec is None:
            raise ValueError("the redis backend needs a task codec (tasks cross nodes)")
        self.ns = ns
        self._node = node
        self._mux = node.mux
        self._clock = clock
        self._codec = codec
        self.queue_limit = queue_limit
        self.max_attempts = max_attempts
        # This node's providers; each lease is one attempt (retries are the cluster's).
        self.dispatch: Dispatch[Any, Any] = Dispatch(policy=policy, queue_limit=1 << 62, max_attempts=1)
        self._key = f"{node.settings.prefix}:{{{ns}}}"
        self._ids = itertools.count(1)
        self._origin: dict[str, Any] = {}  # id -> the client's task, waiting here
        self._since: dict[str, float] = {}  # id -> when it was accepted
        self._missing: set[str] = set()  # ids whose record was found gone once
        self._exec: dict[str, Any] = {}  # id -> the task party leased here
        self._exec_ids: dict[Any, str] = {}
        self._leased_at: dict[str, float] = {}
        self._provides: dict[Any, frozenset[str] | None] = {}  # workers' capabilities (None: all)
        self._classes: set[str] = {"-"}  # classes of task seen (what a pull asks for)
        self._unsent: list[tuple[Any, tuple]] = []  # completions Redis did not take: sent again at the next beat
        self._pulling = 0  # slots asked for by a pull in flight
        self._taking = 0  # slots promised to submissions in flight
        self._maybe_work = True
        self._wake = asyncio.Event()
        self._kick_due = False
        self._kick_at = float("inf")
        self._tick = False
        self.execute: Execute = discard

    # -- the store interface -------------------------------------------------------------------
    def attach(self, execute: Execute) -> None:
        self.execute = execute

    def new_id(self) -> str:
        return f"{self._node.node_id}-{self._node.epoch[:6]}-{next(self._ids)}"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        handle = loop.call_later(TICK, self._tick_soon)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._work()
        finally:
            handle.cancel()

    async def submit(self, now: float, task: Hashable, needs: Iterable[str] = (), requires: Iterable[str] = ()) -> list[Effect]:
        needs, requires = tuple(needs), frozenset(requires)
        cls = ",".join(sorted(requires)) or "-"
        task_id = self._codec.task_id(task)
        dispatch = self.dispatch
        # A free slot here takes it at once (slots promised to pulls and takes in flight count as taken).
        take = dispatch.free_slots(requires) - dispatch.queued - self._pulling - self._taking > 0
        self._taking += take
        # Known before the script runs: its result may come (on the bus) before the script's reply.
        self._origin[task_id] = task
        self._since[task_id] = now
        try:
            reply = await self._mux.eval(WM_SUBMIT, *self._head(), task_id, cls, self._codec.dumps(task), "\n".join(needs),
                                         self.queue_limit, "1" if take else "0")
        except (BackendUnavailable, RedisError) as exc:
            reply = exc
            # The script may have run (only its reply was lost): the client is told "unavailable",
            # so the task is cancelled when Redis is back (the next beat), lest it run for nobody.
            self._unsent.append((WM_CANCEL, (*self._head(), task_id)))
        finally:
            self._taking -= take
        if type(reply) is not int or reply < 0:
            self._origin.pop(task_id, None)
            self._since.pop(task_id, None)
            if reply == -1:
                raise QueueFull()
            raise BackendUnavailable(str(reply) if isinstance(reply, Exception) else "this node is not registered (fenced)")
        self._classes.add(cls)
        if reply != 2:
            return []
        self._hold(task_id, task)
        return await self._translate(dispatch.submit(now, task, needs, requires))

    async def completed(self, now: float, task: Hashable, worker: Hashable, result: Any) -> list[Effect]:
        effects = await self._translate(self.dispatch.completed(now, task, worker, result))
        self._poke()
        return effects

    async def transport_error(self, now: float, task: Hashable, worker: Hashable, error: str) -> list[Effect]:
        effects = await self._translate(self.dispatch.transport_error(now, task, worker, error))
        self._poke()
        return effects

    async def cancel(self, now: float, task: Hashable) -> list[Effect]:
        task_id = self._codec.task_id(task)
        if self._origin.pop(task_id, None) is None:
            return []  # (answered already)
        self._since.pop(task_id, None)
        try:
            reply = await self._mux.eval(WM_CANCEL, *self._head(), task_id)
        except (BackendUnavailable, RedisError):
            reply = 2  # (unreachable: the record stays, and its result is ignored here when it comes)
        party = self._exec.get(task_id)
        if reply == 2 and party is not None:
            self._drop(party)
            return self.dispatch.cancel(now, party)
        return []

    async def add_worker(self, now: float, worker: Hashable, name: str, files: Iterable[str] = (),
                         provides: Iterable[str] | None = None) -> list[Effect]:
        self._provides[worker] = None if provides is None else frozenset(provides)
        self._mux.send(WM_CAP, *self._head(), self._caps())
        effects = await self._translate(self.dispatch.add_worker(now, worker, name, files, provides))
        self._poke(work=True)
        return effects

    async def set_capacity(self, now: float, worker: Hashable, capacity: int) -> list[Effect]:
        effects = await self._translate(self.dispatch.set_capacity(now, worker, capacity))
        self._poke(work=True)
        return effects

    async def update_files(self, now: float, worker: Hashable, added: Iterable[str], removed: Iterable[str]) -> list[Effect]:
        return self.dispatch.update_files(now, worker, added, removed)

    async def remove_worker(self, now: float, worker: Hashable) -> list[Effect]:
        if self._provides.pop(worker, 0) != 0:
            self._mux.send(WM_CAP, *self._head(), self._caps())
        return await self._translate(self.dispatch.remove_worker(now, worker))

    async def cluster(self, providers: int, completions: int) -> tuple[int, int]:
        others = await self._mux.eval(WM_STATS, *self._head(), self._caps(), providers, completions)
        return providers + int(others[0]), completions + int(others[1])

    # -- what the node calls ------------------------------------------------------------------
    def on_message(self, kind: bytes, token: int, payload: bytes) -> list[Effect]:
        if kind == b"w":
            self._classes.add(payload.decode())
            self._poke(work=True)
            return []
        if kind == b"r" or kind == b"f":
            raw_id, _, data = payload.partition(b" ")
            task_id = raw_id.decode()
            self._mux.send(WM_ACK, *self._head(), task_id)
            return self._answer(task_id, kind, data)
        if kind == b"c":
            party = self._exec.get(payload.decode())
            if party is None:
                return []
            self._drop(party)
            return self.dispatch.cancel(self._clock(), party)
        return []

    def fence(self) -> list[Effect]:
        """This node was declared dead: the tasks it originated were cancelled by the cluster (their
        clients are answered "broker node lost"), and those it ran were retried elsewhere (revoked here)."""
        now = self._clock()
        effects: list[Effect] = [Failed(task, (NODE_LOST,)) for task in self._origin.values()]
        self._origin.clear()
        self._since.clear()
        for party in list(self._exec.values()):
            self._drop(party)
            effects += self.dispatch.cancel(now, party)
        self._unsent.clear()
        return effects

    async def resync(self) -> list[Effect]:
        """After the bus reconnected: frames may have been lost, so re-read every waiting task."""
        self._poke(work=True)
        self._kick_due = True
        with contextlib.suppress(BackendUnavailable, RedisError):
            return await self._states(list(self._origin))
        return []

    async def reap(self) -> None:
        """At every beat: dead nodes' leases retried and originated tasks cancelled; completions,
        failures and cancels that did not reach Redis sent again."""
        unsent, self._unsent = self._unsent, []
        for script, args in unsent:
            try:
                await self._mux.eval(script, *args)
            except BackendUnavailable:
                self._unsent.append((script, args))
            except RedisError as exc:
                self._node.log.error("wasimoff tasks: a completion failed", error=str(exc))
        await self._mux.eval(WM_REAP, *self._head(), 200, "0")

    async def tidy(self) -> None:
        pass

    async def forget(self, old_epoch: str) -> None:
        pass  # the old epoch's lives are dead for every script; wm_reap handles them

    def leaving(self) -> list[tuple[Any, tuple]]:
        """A clean stop: this node's leases are retried elsewhere, the tasks it originated cancelled."""
        return [(WM_REAP, (*self._head(), 1 << 30, "1"))]

    # -- internals ------------------------------------------------------------------------------
    def _caps(self) -> str:
        """What this node's providers can run, for ``P:cap``."""
        provides = list(self._provides.values())
        if not provides:
            return ""
        if any(p is None for p in provides):
            return "*"
        return ",".join(sorted(set().union(*[p for p in provides if p is not None])))

    def _head(self) -> tuple[Any, ...]:
        node = self._node
        return (self._key, node.node_key_prefix, node.inbox_prefix, self.ns, node.node_id, node.epoch, self.max_attempts)

    def _hold(self, task_id: str, party: Any) -> None:
        self._exec[task_id] = party
        self._exec_ids[party] = task_id
        self._leased_at[task_id] = self._clock()

    def _drop(self, party: Any) -> str | None:
        """``party`` is no longer leased here; its id (None: it was dropped already, e.g. revoked
        by a frame that came while the effects naming it were on their way)."""
        task_id = self._exec_ids.pop(party, None)
        if task_id is not None:
            del self._exec[task_id]
            self._leased_at.pop(task_id, None)
        return task_id

    def _answer(self, task_id: str, kind: bytes, data: bytes) -> list[Effect]:
        task = self._origin.pop(task_id, None)
        self._since.pop(task_id, None)
        self._missing.discard(task_id)
        if task is None:
            return []
        if kind == b"r" or kind == b"d":
            return [Deliver(task, self._codec.loads_result(task, data))]
        return [Failed(task, tuple(data.decode(errors="replace").split("\n")))]

    async def _translate(self, effects: list[Effect]) -> list[Effect]:
        """The local dispatcher's effects for the cluster: a result or a failed attempt of a task
        leased here goes to Redis (and to its client when it waits here); the rest stays as it is."""
        out: list[Effect] = []
        for effect in effects:
            if type(effect) is Deliver and effect.to in self._exec_ids:
                out += await self._complete(effect.to, effect.payload)
            elif type(effect) is Failed:
                out += await self._fail(effect.task, effect.errors[-1])
            else:
                out.append(effect)
        return out

    async def _complete(self, party: Any, result: Any) -> list[Effect]:
        task_id = self._drop(party)
        if task_id is None:
            return []
        local = task_id in self._origin
        args = (*self._head(), task_id, b"" if local else self._codec.dumps_result(party, result))
        try:
            reply = await self._mux.eval(WM_COMPLETE, *args)
        except (BackendUnavailable, RedisError):
            self._unsent.append((WM_COMPLETE, args))
            return []
        if reply == 2:
            task = self._origin.pop(task_id, None)
            self._since.pop(task_id, None)
            if task is not None:
                return [Deliver(task, result)]
        return []

    async def _fail(self, party: Any, error: str) -> list[Effect]:
        task_id = self._drop(party)
        if task_id is None:
            return []
        args = (*self._head(), task_id, error)
        try:
            reply = await self._mux.eval(WM_FAIL, *args)
        except (BackendUnavailable, RedisError):
            self._unsent.append((WM_FAIL, args))
            return []
        if reply[0] == 2:
            task = self._origin.pop(task_id, None)
            self._since.pop(task_id, None)
            if task is not None:
                return [Failed(task, tuple(reply[1].decode(errors="replace").split("\n")))]
        elif reply[0] == 3:
            self._kick_in(int(reply[1]) / 1000)
        return []

    def _poke(self, work: bool = False) -> None:
        if work:
            self._maybe_work = True
        if self._maybe_work:
            self._wake.set()

    def _kick_in(self, delay: float) -> None:
        at = self._clock() + delay
        if at < self._kick_at:
            self._kick_at = at
            asyncio.get_running_loop().call_later(delay, self._kick_now)

    def _kick_now(self) -> None:
        self._kick_at = float("inf")
        self._kick_due = True
        self._wake.set()

    def _tick_soon(self) -> None:
        self._tick = True
        self._kick_due = True
        self._maybe_work = True
        self._wake.set()
        asyncio.get_running_loop().call_later(TICK, self._tick_soon)

    async def _work(self) -> None:
        """What the wake-ups asked for: kick due retries, pull while there are free slots, and
        (each tick) give back what could not start and re-read tasks waiting long."""
        try:
            if self._tick:
                self._tick = False
                await self._release_stuck()
                now = self._clock()
                stale = [i for i, since in self._since.items() if now - since > RESYNC_AFTER]
                for task_id in stale:  # (each re-read every RESYNC_AFTER, not at every tick)
                    self._since[task_id] = now
                if stale:
                    await self._run(await self._states(stale))
            if self._kick_due:
                self._kick_due = False
                next_due = await self._mux.eval(WM_KICK, *self._head())
                if next_due >= 0:
                    self._kick_in(next_due / 1000)
            while self._maybe_work and await self._pull():
                pass
        except BackendUnavailable:
            pass  # the next tick tries again
        except RedisError as exc:
            self._node.log.error("wasimoff tasks: a script failed", error=str(exc))
        except Exception:  # (a bug must not stop the pulls: the next wake-up tries again)
            self._node.log.exception("wasimoff tasks: pulling failed")

    async def _pull(self) -> bool:
        """Lease queued tasks for this node's free slots; whether a pull filled them (more may wait)."""
        dispatch = self.dispatch
        budget = dispatch.free_slots() - dispatch.queued - self._taking
        if budget <= 0:
            return False
        args: list[Any] = []
        for cls in sorted(self._classes, key=lambda c: -len(c)):  # the most demanding classes first
            free = dispatch.free_slots(_requires(cls))
            if free > 0:
                args += (cls, free)
        if not args:
            return False
        self._pulling += budget
        try:
            got, classes, next_due = await self._mux.eval(WM_PULL, *self._head(), budget, *args)
        finally:
            self._pulling -= budget
        self._classes.update(c.decode() for c in classes)
        if next_due >= 0:
            self._kick_in(next_due / 1000)
        self._maybe_work = len(got) >= budget
        if got:
            now = self._clock()
            effects: list[Effect] = []
            for raw_id, data, needs, attempts, cls in got:
                task_id = raw_id.decode()
                party = self._codec.loads(task_id, data, int(attempts))
                self._hold(task_id, party)
                effects += dispatch.submit(now, party, needs.decode().split("\n") if needs else (), _requires(cls.decode()))
            await self._run(await self._translate(effects))
        return self._maybe_work

    async def _release_stuck(self) -> None:
        """Tasks leased here that found no free slot within a second go back to the queue (a
        provider left, or capacity shrank): another node may have one."""
        now = self._clock()
        released = []
        for party in self.dispatch.queued_parties():  # (all taken out before any await: none is started meanwhile)
            task_id = self._exec_ids.get(party)
            if task_id is None or now - self._leased_at.get(task_id, now) < RELEASE_AFTER:
                continue
            self.dispatch.cancel(now, party)  # (queued: no effects)
            self._drop(party)
            released.append(task_id)
        for task_id in released:
            await self._mux.eval(WM_RELEASE, *self._head(), task_id)

    async def _states(self, ids: list[str]) -> list[Effect]:
        if not ids:
            return []
        replies = await self._mux.eval(WM_STATES, *self._head(), *ids)
        effects: list[Effect] = []
        for task_id, (state, data) in zip(ids, replies, strict=True):
            if task_id not in self._origin:
                continue
            if state == b"d" or state == b"f":
                self._mux.send(WM_ACK, *self._head(), task_id)
                effects += self._answer(task_id, state, data)
            elif state == b"":
                if task_id in self._missing:  # gone twice, RESYNC_AFTER apart: nobody will answer it
                    effects += self._answer(task_id, b"f", b"task lost")
                else:
                    self._missing.add(task_id)
        return effects

    async def _run(self, effects: list[Effect]) -> None:
        if effects:
            await self.execute(effects)
