"""The seam between a profile and where its shared rendezvous state lives.

A *backend* (entry point group ``rendezvous.backends``) makes *stores*. A store is a core
matcher behind async methods: the same arguments, the same :mod:`rendezvous.core.effects`
values, so a profile's executor does not change. ``memory`` wraps today's in-process
matchers (one node, nothing shared); ``redis`` shares the state between nodes.

Effects come back two ways: as the return value of the call that caused them (the party is
on this node and the outcome is known at once), or later through the ``execute`` callback
given to :meth:`PairingStore.attach` (a timer fired, or another node matched or answered a
party held here). Either way they only ever name parties held on this node.

Stores: :class:`PairingStore` (Snowflake's offer/answer pairing), :class:`RoutingStore` (the
overlay's tree-root routing), :class:`TaskStore` (wasimoff's task queue), :class:`ReportStore`
(a report written once per cluster).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import attrs
import msgpack

from rendezvous.core.dispatch import Dispatch, Policy
from rendezvous.core.driver import Driver
from rendezvous.core.effects import Effect
from rendezvous.core.ids import IdSource
from rendezvous.core.routing import RootPolicy, Router
from rendezvous.errors import RendezvousError
from rendezvous.settings import positive

Execute = Callable[[Sequence[Effect]], Awaitable[None]]
Clock = Callable[[], float]


class BackendUnavailable(RendezvousError):
    """The backend cannot be reached just now. Stores turn this into effects (a poll gets "no
    match", an asker "no waiter"), so profiles rarely see it; ``/readyz`` reports it."""


class BackendError(RendezvousError):
    """The backend cannot go on (e.g. another live node holds this node's id)."""


@attrs.frozen
class BackendSettings:
    """How to reach the backend and who this node is. ``memory`` ignores all of it."""

    url: str = "redis://127.0.0.1:6379/0"
    node_id: str = ""  # "" = 8 random hex digits per process
    node_ttl: float = attrs.field(default=3.0, validator=positive)  # a silent node is dead after this long
    prefix: str = "rdv"  # every key and channel starts with it: several clusters can share one server


class Codec(Protocol):
    """Turns a store's payloads (offers, answers, waiter infos) into bytes and back, for
    backends that share them (``memory`` passes the objects themselves)."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


# One packer, kept: ``msgpack.packb`` builds a Packer per call (0.36 against 0.09 µs). It
# empties its buffer after each value, and after a value it cannot pack.
_pack = msgpack.Packer(use_bin_type=True).pack


class MsgpackCodec:
    """The default codec: msgpack (str, bytes, numbers, bool, None, lists and dicts). Lists come
    back as tuples, so a ``(type, nat)`` info survives the round trip unchanged; other objects
    need a codec of their own (``Backend.pairing(..., codec=...)``)."""

    def dumps(self, value: Any) -> bytes:
        return _pack(value)

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, use_list=False)


class FrameCodec(Protocol):
    """Turns a routed message into bytes for the node that holds its destination, and back
    (``memory`` passes the objects themselves). ``dumps`` gets the sender's endpoint id too
    (``None`` for unstamped messages), so that a codec may stamp the message once, on the
    sender's node; what ``loads`` returns is the ``payload`` of the receiver's ``Deliver``."""

    def dumps(self, payload: Any, origin: str | None) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class MsgpackFrames:
    """The default frame codec: the payload as msgpack (see :class:`MsgpackCodec`), unstamped."""

    def dumps(self, payload: Any, origin: str | None) -> bytes:
        return _pack(payload)

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, use_list=False)


@runtime_checkable
class PairingStore(Protocol):
    """:class:`rendezvous.core.pairing.Pairing` behind async methods (offer/answer pairing).

    ``now`` is the caller's clock (the one given to the store): it sets local deadlines only,
    so nodes never compare clocks. Effects are ``Pairing``'s: ``Deliver(waiter, offer)``,
    ``Deliver(asker, answer)``, ``Expired(party, "hold" | "answer" | "replaced")`` and
    ``Dropped(reason)``; a store that cannot reach its backend answers as if nobody were there
    (``Expired(party, "unavailable")``, ``Dropped("unavailable")``).
    """

    hold_timeout: float
    answer_timeout: float

    def attach(self, execute: Execute) -> None:
        """Where effects that no call returns go (timers, other nodes). Call before :meth:`run`."""

    async def wait(self, now: float, sid: str, party: Hashable, pool: str, order: float, info: Any = None) -> list[Effect]:
        """A waiter joins ``pool`` for ``hold_timeout``, ordered by ``order`` (fewest first, FIFO ties).
        A reused ``sid`` takes over: the earlier waiter expires ("replaced")."""

    async def ask(self, now: float, party: Hashable, pools: Iterable[str], offer: Any) -> tuple[Any, list[Effect]]:
        """Draw the best waiter from the first of ``pools`` that has one: its ``info`` and the
        effects, or ``None`` and ``[Dropped("no_waiter")]``. A match waits ``answer_timeout``."""

    async def answer(self, now: float, sid: str, answer: Any) -> tuple[Any, list[Effect]]:
        """The waiter with ``sid`` answers. Accepted: the waiter's ``info`` and the effects
        (``Deliver(asker, answer)`` when the asker is on this node, else none: it is delivered
        where it waits). Refused: ``None`` and ``[Dropped("asker_gone")]``."""

    async def gone(self, now: float, party: Hashable) -> list[Effect]:
        """A party hung up: a waiter leaves its pool (``Dropped("waiter_gone")``), an asker
        ends its match (``Dropped("asker_gone")``), so a late answer is refused."""

    async def drain(self, now: float) -> list[Effect]:
        """Shutting down: every party held here is answered now (expired, or given what already came)."""

    async def advance(self, now: float) -> list[Effect]:
        """The effects of the deadlines due at ``now``."""

    def next_deadline(self) -> float | None: ...

    async def known(self, *, here: bool = False) -> list[Any]:
        """``info`` of every waiter known by session id (waiting, or matched and unanswered); with
        ``here``, only of those whose waiter was held on this node (what nodes report, summable)."""

    async def run(self) -> None:
        """The store's timers, until cancelled: effects go to the attached ``execute``."""


#: What a callback-form call hands over: what the awaited call returns, as ``(value, effects)``
#: (``value`` None for ``wait``).
Then = Callable[[Any, list[Effect]], None]


@runtime_checkable
class ImmediatePairingStore(Protocol):
    """A :class:`PairingStore` that also offers its calls in callback form, so that a profile can
    answer without a task (an immediate exchange handler): ``then(value, effects)`` gets what the
    awaited call would return, at once (``memory``) or when the backend replied (``redis``, from
    the reply's callback). A caller that leaves before ``then`` says so with ``gone_now`` (it
    stands for a cancelled ``wait`` or ``ask``); ``then`` still runs, and its effects still count.
    ``gone_now`` returns what :meth:`PairingStore.gone` would where that is known at once, else
    [] (the store settles it in the background)."""

    def wait_now(self, now: float, sid: str, party: Hashable, pool: str, order: float, info: Any, then: Then) -> None: ...

    def ask_now(self, now: float, party: Hashable, pools: Iterable[str], offer: Any, then: Then) -> None: ...

    def answer_now(self, now: float, sid: str, answer: Any, then: Then) -> None: ...

    def gone_now(self, now: float, party: Hashable) -> list[Effect]: ...


@runtime_checkable
class RoutingStore(Protocol):
    """:class:`rendezvous.core.routing.Router` behind async methods (the overlay's tree-root routing).

    ``router`` is this node's part: the endpoints and roots held here, their lifetimes and
    keep-alives (run by :meth:`run`, on the store's clock), and the current root as this node
    knows it. Effects are the router's (``Deliver``, ``Keepalive``, ``Close``, ``Dropped``,
    ``Answered``) and only name parties held here: a message for a party on another node is
    carried there and delivered through that node's attached ``execute``, in the order it was
    sent by its sender. What a shared store adds: endpoint ids name the node that holds them
    (still 32 lowercase hex digits), and the root policy is decided for the whole cluster (a
    root on a dead node is gone). A store that cannot reach its backend drops what it cannot
    carry (``Dropped("unavailable")``) and refuses new parties with a ``Close`` (1013).
    """

    router: Router[Any]

    def attach(self, execute: Execute) -> None:
        """Where effects that no call returns go (timers, messages from other nodes)."""

    async def run(self) -> None:
        """The store's timers and deliveries, until cancelled."""

    async def open_endpoint(self, now: float, party: Hashable) -> tuple[str | None, list[Effect]]:
        """A newcomer: its id, or ``None`` and the effects that refuse it (a ``Close``)."""

    async def open_root(self, now: float, party: Hashable) -> list[Effect]:
        """A root connected: ``[]`` when accepted, else the effects that refuse it (a ``Close``)."""

    async def closed(self, now: float, party: Hashable) -> list[Effect]:
        """A party went away. Never suspends for an endpoint (a handler's ``finally`` may call
        it while being cancelled); a root's close may (shield it)."""

    async def route(self, now: float, sender: Hashable, destination: object, payload: Any) -> list[Effect]:
        """:meth:`Router.route`, wherever the destination (or the current root) is held."""

    async def route_unstamped(self, now: float, sender: Hashable, payload: Any) -> list[Effect]:
        """:meth:`Router.route_unstamped`, wherever the current root is held."""


class TaskCodec(Protocol):
    """Turns a task store's tasks and results into bytes and back, for backends that run a task
    on another node than the one its client waits on (``memory`` passes the objects themselves)."""

    def task_id(self, task: Any) -> str:
        """The id the task was made with (:meth:`TaskStore.new_id`)."""

    def dumps(self, task: Any) -> bytes:
        """All a node needs to run ``task`` (to :meth:`loads` on that node)."""

    def loads(self, task_id: str, data: bytes, attempts: int) -> Any:
        """A task party for the node that runs it, from :meth:`dumps`'s bytes (``attempts``: failed so far)."""

    def dumps_result(self, task: Any, result: Any) -> bytes: ...

    def loads_result(self, task: Any, data: bytes) -> Any:
        """The result for the client's ``task`` (on its node), from :meth:`dumps_result`'s bytes."""


@runtime_checkable
class TaskStore(Protocol):
    """:class:`rendezvous.core.dispatch.Dispatch` behind async methods (wasimoff's task queue).

    Workers are held on this node (``dispatch`` is this node's :class:`Dispatch`, its numbers the
    node's). Effects are ``Dispatch``'s and only name parties held here: ``Deliver(worker, task)``
    (run it; ``task`` may have come from another node), ``Deliver(task, result)``,
    ``Failed(task, errors)`` (to a task whose client waits here) and ``Revoke(task, worker)``.
    A shared store accepts a task only once it is written where every node sees it, runs it on
    whichever node has a free capable worker, and keeps the queue limit, the retries (with
    ``Dispatch``'s backoff) and first-result-wins for the whole cluster. A store that cannot
    reach its backend refuses new tasks with :class:`BackendUnavailable`.
    """

    dispatch: Dispatch[Any, Any]

    def attach(self, execute: Execute) -> None:
        """Where effects that no call returns go (retries, results from other nodes)."""

    async def run(self) -> None:
        """The store's timers (and, when shared, its pulls of work), until cancelled."""

    def new_id(self) -> str:
        """An id for a new task, unique in the cluster."""

    async def submit(self, now: float, task: Hashable, needs: Iterable[str] = (), requires: Iterable[str] = ()) -> list[Effect]:
        """Accept ``task``; raises :class:`rendezvous.core.QueueFull` at the queue limit."""

    async def completed(self, now: float, task: Hashable, worker: Hashable, result: Any) -> list[Effect]: ...

    async def transport_error(self, now: float, task: Hashable, worker: Hashable, error: str) -> list[Effect]: ...

    async def cancel(self, now: float, task: Hashable) -> list[Effect]:
        """The task's client went away. Never raises (a handler's ``finally`` calls it)."""

    async def add_worker(self, now: float, worker: Hashable, name: str, files: Iterable[str] = (),
                         provides: Iterable[str] | None = None) -> list[Effect]: ...

    async def set_capacity(self, now: float, worker: Hashable, capacity: int) -> list[Effect]: ...

    async def update_files(self, now: float, worker: Hashable, added: Iterable[str], removed: Iterable[str]) -> list[Effect]: ...

    async def remove_worker(self, now: float, worker: Hashable) -> list[Effect]: ...

    async def cluster(self, providers: int, completions: int) -> tuple[int, int]:
        """This node's provider count and completions in the last second -> the cluster's."""


@runtime_checkable
class ReportStore(Protocol):
    """A report made once per period for the whole cluster (Snowflake's CollecTor descriptor):
    every node hands in its part when a period ends, one node (whichever takes the period's
    lease) gets every part and writes the report, and the reports written are kept for every
    node to serve. Periods are numbered by the caller (wall-clock aligned, the same on every node)."""

    async def salt(self, period: int, ttl: float) -> bytes:
        """Random bytes, the same for every node in ``period``: parts hash what they must not
        hand in as it is (addresses) with it, and can still be merged."""

    async def gather(self, period: int, part: Any, *, grace: float, ttl: float) -> list[Any] | None:
        """Hand in this node's ``part``. The node that gets ``period``'s lease waits ``grace``
        seconds for the others and gets every part; the others get None."""

    async def publish(self, text: str) -> None:
        """Keep a report written (the last 1000)."""

    async def published(self) -> list[str] | None:
        """The reports kept, oldest first; None where the backend keeps none (``memory``: the
        profile's own file is the record)."""


@runtime_checkable
class Backend(Protocol):
    """Made by a ``rendezvous.backends`` entry point: ``create(settings) -> Backend``."""

    name: str
    #: True when several nodes share the state (a profile that keeps state of its own, outside
    #: stores, must refuse to run on such a backend).
    distributed: bool

    @property
    def ready(self) -> bool:
        """False while the backend is unreachable (``/readyz``); the node stays up."""

    def pairing(self, ns: str, *, hold_timeout: float, answer_timeout: float, clock: Clock = time.monotonic,
                codec: Codec | None = None) -> PairingStore:
        """The pairing store named ``ns`` (one per profile; the name keys its shared state)."""

    def reports(self, ns: str, *, codec: Codec | None = None) -> ReportStore:
        """The report store named ``ns``."""

    def routing(self, ns: str, *, endpoint_lifetime: float, keepalive_interval: float,
                root_policy: RootPolicy = RootPolicy.LATEST, max_endpoints: int | None = None,
                ids: IdSource | None = None, clock: Clock = time.monotonic,
                codec: FrameCodec | None = None) -> RoutingStore:
        """The routing store named ``ns`` (one per overlay). ``ids`` (a seeded source, for
        tests) only where ids need not name their node: a distributed backend refuses it."""

    def tasks(self, ns: str, *, policy: Policy = Policy.SIMPLE_MATCH, queue_limit: int = 2048, max_attempts: int = 10,
              clock: Clock = time.monotonic, codec: TaskCodec | None = None) -> TaskStore:
        """The task store named ``ns``. A distributed backend needs ``codec``."""

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect and serve until cancelled (``await task_group.start(backend.run)``); then
        leave cleanly. Raises :class:`BackendUnavailable` if the backend cannot be reached at start."""


class _DueAt:
    """Lets the sync :class:`Driver` time a store whose ``advance`` is async: it reports "time
    ``now`` is due" as its only effect, and the execute callback does the async work."""

    def __init__(self, store: Any) -> None:
        self.next_deadline = store.next_deadline

    def advance(self, now: float) -> Sequence[float]:
        deadline = self.next_deadline()
        return (now,) if deadline is not None and deadline <= now else ()


def timer_driver(store: Any, execute: Callable[[], Execute], clock: Clock) -> Driver:
    """A :class:`Driver` for ``store``: sleeps to its next deadline, awaits ``store.advance(now)``
    and hands the effects to ``execute()`` (looked up each time, so attaching later works)."""

    async def expire(due: Sequence[float]) -> None:
        effects = await store.advance(due[0])
        if effects:
            await execute()(effects)

    return Driver(_DueAt(store), expire, clock)  # type: ignore[arg-type]  # (its "effects" are due times here)


async def discard(effects: Sequence[Effect]) -> None:
    """The executor until one is attached: nothing is held yet, so nothing is lost."""
