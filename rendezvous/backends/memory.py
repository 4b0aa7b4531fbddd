"""The ``memory`` backend: today's in-process matchers behind the store interface.

The default. One node, nothing shared, no I/O: every call returns without suspending, so a
profile pays an ``await`` (a fraction of a microsecond) and nothing else. Imports no Redis client.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import anyio

from rendezvous.backends.base import BackendSettings, Clock, Codec, Execute, FrameCodec, TaskCodec, Then, discard
from rendezvous.core.dispatch import Dispatch, Policy
from rendezvous.core.driver import Driver
from rendezvous.core.effects import Deliver, Effect, Expired
from rendezvous.core.ids import IdSource
from rendezvous.core.pairing import Pairing
from rendezvous.core.routing import RootPolicy, Router


class _Timed:
    """A store that is one core matcher (:mod:`rendezvous.core`) on this node: its timers run
    by a :class:`Driver`, their effects to the executor attached."""

    def __init__(self, matcher: Any, clock: Clock) -> None:
        self._execute: Execute = discard
        self._driver = Driver(matcher, self._timed, clock)

    def attach(self, execute: Execute) -> None:
        self._execute = execute

    async def run(self) -> None:
        await self._driver.run()

    async def _timed(self, effects: Sequence[Effect]) -> None:
        await self._execute(effects)


class MemoryPairingStore(_Timed):
    """:class:`Pairing` as a :class:`~rendezvous.backends.base.PairingStore`.

    The one addition: ``answer`` returns the waiter's ``info`` (a node that takes a proxy's
    answer needs it for its metrics, and with a shared backend the asker may be elsewhere).
    The info is remembered per matched asker until its match ends.
    """

    def __init__(self, *, hold_timeout: float, answer_timeout: float, clock: Clock = time.monotonic) -> None:
        self._pairing: Pairing[Hashable] = Pairing(hold_timeout=hold_timeout, answer_timeout=answer_timeout)
        self.hold_timeout = hold_timeout
        self.answer_timeout = answer_timeout
        self._asker_info: dict[Hashable, Any] = {}
        super().__init__(self._pairing, clock)

    async def _timed(self, effects: Sequence[Effect]) -> None:
        await self._execute(self._forget(effects))

    def _forget(self, effects: list[Effect] | Sequence[Effect]) -> Any:
        for effect in effects:
            if type(effect) is Expired and effect.reason == "answer":
                self._asker_info.pop(effect.party, None)
        return effects

    # The matcher's plain calls, in callback form (an ImmediatePairingStore: ``then`` runs at
    # once) and as a PairingStore's async ones.
    def _wait(self, now: float, sid: str, party: Hashable, pool: str, order: float, info: Any) -> list[Effect]:
        effects = self._pairing.wait(now, sid, party, pool, order, info)
        self._driver.poke(now + self.hold_timeout)
        return effects

    def _ask(self, now: float, party: Hashable, pools: Iterable[str], offer: Any) -> tuple[Any, list[Effect]]:
        info, effects = self._pairing.ask(now, party, pools, offer)
        if type(effects[0]) is Deliver:
            self._asker_info[party] = info
            self._driver.poke(now + self.answer_timeout)
        return info, effects

    def _answer(self, now: float, sid: str, answer: Any) -> tuple[Any, list[Effect]]:
        effects = self._pairing.answer(now, sid, answer)
        first = effects[0]
        return (self._asker_info.pop(first.to, None) if type(first) is Deliver else None), effects

    def wait_now(self, now: float, sid: str, party: Hashable, pool: str, order: float, info: Any, then: Then) -> None:
        then(None, self._wait(now, sid, party, pool, order, info))

    def ask_now(self, now: float, party: Hashable, pools: Iterable[str], offer: Any, then: Then) -> None:
        then(*self._ask(now, party, pools, offer))

    def answer_now(self, now: float, sid: str, answer: Any, then: Then) -> None:
        then(*self._answer(now, sid, answer))

    def gone_now(self, now: float, party: Hashable) -> list[Effect]:
        self._asker_info.pop(party, None)
        return self._pairing.gone(now, party)

    async def wait(self, now: float, sid: str, party: Hashable, pool: str, order: float, info: Any = None) -> list[Effect]:
        return self._wait(now, sid, party, pool, order, info)

    async def ask(self, now: float, party: Hashable, pools: Iterable[str], offer: Any) -> tuple[Any, list[Effect]]:
        return self._ask(now, party, pools, offer)

    async def answer(self, now: float, sid: str, answer: Any) -> tuple[Any, list[Effect]]:
        return self._answer(now, sid, answer)

    async def gone(self, now: float, party: Hashable) -> list[Effect]:
        return self.gone_now(now, party)

    async def drain(self, now: float) -> list[Effect]:
        return self._forget(self._pairing.drain(now))

    async def advance(self, now: float) -> list[Effect]:
        return self._forget(self._pairing.advance(now))

    def next_deadline(self) -> float | None:
        return self._pairing.next_deadline()

    async def known(self, *, here: bool = False) -> list[Any]:
        return self._pairing.known()


class MemoryRoutingStore(_Timed):
    """:class:`Router` as a :class:`~rendezvous.backends.base.RoutingStore`: each method is the
    router's, and no call suspends. The store's timers are the router's (a :class:`Driver`)."""

    def __init__(self, *, endpoint_lifetime: float, keepalive_interval: float, root_policy: RootPolicy = RootPolicy.LATEST,
                 max_endpoints: int | None = None, ids: IdSource | None = None, clock: Clock = time.monotonic) -> None:
        self.router: Router[Any] = Router(endpoint_lifetime=endpoint_lifetime, keepalive_interval=keepalive_interval,
                                          root_policy=root_policy, max_endpoints=max_endpoints, ids=ids)
        super().__init__(self.router, clock)

    async def open_endpoint(self, now: float, party: Hashable) -> tuple[str | None, list[Effect]]:
        endpoint_id, effects = self.router.open_endpoint(now, party)
        if endpoint_id is not None:
            self._driver.poke()
        return endpoint_id, effects

    async def open_root(self, now: float, party: Hashable) -> list[Effect]:
        effects = self.router.open_root(now, party)
        if not effects:
            self._driver.poke()
        return effects

    async def closed(self, now: float, party: Hashable) -> list[Effect]:
        return self.router.closed(now, party)

    async def route(self, now: float, sender: Hashable, destination: object, payload: Any) -> list[Effect]:
        return self.router.route(now, sender, destination, payload)

    async def route_unstamped(self, now: float, sender: Hashable, payload: Any) -> list[Effect]:
        return self.router.route_unstamped(now, sender, payload)

    async def advance(self, now: float) -> list[Effect]:
        return self.router.advance(now)

    def next_deadline(self) -> float | None:
        return self.router.next_deadline()


class MemoryTaskStore(_Timed):
    """:class:`Dispatch` as a :class:`~rendezvous.backends.base.TaskStore`: each method is the
    dispatcher's, and no call suspends. The store's timers (retries) are the dispatcher's."""

    def __init__(self, *, policy: Policy = Policy.SIMPLE_MATCH, queue_limit: int = 2048, max_attempts: int = 10,
                 clock: Clock = time.monotonic) -> None:
        self.dispatch: Dispatch[Any, Any] = Dispatch(policy=policy, queue_limit=queue_limit, max_attempts=max_attempts)
        super().__init__(self.dispatch, clock)
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        return str(next(self._ids))

    async def submit(self, now: float, task: Hashable, needs: Iterable[str] = (), requires: Iterable[str] = ()) -> list[Effect]:
        return self.dispatch.submit(now, task, needs, requires)

    async def completed(self, now: float, task: Hashable, worker: Hashable, result: Any) -> list[Effect]:
        effects = self.dispatch.completed(now, task, worker, result)
        self._driver.poke()
        return effects

    async def transport_error(self, now: float, task: Hashable, worker: Hashable, error: str) -> list[Effect]:
        effects = self.dispatch.transport_error(now, task, worker, error)
        self._driver.poke()  # (a retry's deadline)
        return effects

    async def cancel(self, now: float, task: Hashable) -> list[Effect]:
        return self.dispatch.cancel(now, task)

    async def add_worker(self, now: float, worker: Hashable, name: str, files: Iterable[str] = (),
                         provides: Iterable[str] | None = None) -> list[Effect]:
        return self.dispatch.add_worker(now, worker, name, files, provides)

    async def set_capacity(self, now: float, worker: Hashable, capacity: int) -> list[Effect]:
        return self.dispatch.set_capacity(now, worker, capacity)

    async def update_files(self, now: float, worker: Hashable, added: Iterable[str], removed: Iterable[str]) -> list[Effect]:
        return self.dispatch.update_files(now, worker, added, removed)

    async def remove_worker(self, now: float, worker: Hashable) -> list[Effect]:
        effects = self.dispatch.remove_worker(now, worker)
        self._driver.poke()
        return effects

    async def cluster(self, providers: int, completions: int) -> tuple[int, int]:
        return providers, completions


class MemoryReportStore:
    """One node is the whole cluster: its part is the report, and its file the record."""

    def __init__(self) -> None:
        self._salt = secrets.token_bytes(16)

    async def salt(self, period: int, ttl: float) -> bytes:
        return self._salt

    async def gather(self, period: int, part: Any, *, grace: float, ttl: float) -> list[Any] | None:
        return [part]

    async def publish(self, text: str) -> None:
        pass

    async def published(self) -> list[str] | None:
        return None


class MemoryBackend:
    name = "memory"
    distributed = False
    ready = True

    def __init__(self, settings: BackendSettings | None = None) -> None:
        self.settings = settings or BackendSettings()

    def pairing(self, ns: str, *, hold_timeout: float, answer_timeout: float, clock: Clock = time.monotonic,
                codec: Codec | None = None) -> MemoryPairingStore:
        return MemoryPairingStore(hold_timeout=hold_timeout, answer_timeout=answer_timeout, clock=clock)

    def reports(self, ns: str, *, codec: Codec | None = None) -> MemoryReportStore:
        return MemoryReportStore()

    def routing(self, ns: str, *, endpoint_lifetime: float, keepalive_interval: float,
                root_policy: RootPolicy = RootPolicy.LATEST, max_endpoints: int | None = None,
                ids: IdSource | None = None, clock: Clock = time.monotonic,
                codec: FrameCodec | None = None) -> MemoryRoutingStore:
        return MemoryRoutingStore(endpoint_lifetime=endpoint_lifetime, keepalive_interval=keepalive_interval,
                                  root_policy=root_policy, max_endpoints=max_endpoints, ids=ids, clock=clock)

    def tasks(self, ns: str, *, policy: Policy = Policy.SIMPLE_MATCH, queue_limit: int = 2048, max_attempts: int = 10,
              clock: Clock = time.monotonic, codec: TaskCodec | None = None) -> MemoryTaskStore:
        return MemoryTaskStore(policy=policy, queue_limit=queue_limit, max_attempts=max_attempts, clock=clock)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()


def create(settings: BackendSettings) -> MemoryBackend:
    """The ``rendezvous.backends`` entry point ``memory``."""
    return MemoryBackend(settings)
