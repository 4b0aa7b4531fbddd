"""The broker's core, shared by both protocol generations: storage, the dispatcher and its driver,
metrics, task submission, and the one place where the dispatcher's effects become I/O.

Generation C (:mod:`rendezvous_wasimoff.genc`) and generation A (:mod:`rendezvous_wasimoff.gena`)
talk to it through these methods only: a client API calls :meth:`Broker.submit`; a provider
connection registers its :class:`~rendezvous_wasimoff.worker.Worker` with :meth:`Broker.admit`,
reports results with :meth:`Broker.completed` / :meth:`Broker.transport_error` and leaves with
:meth:`Broker.retire`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, cast

import anyio
import anyio.abc
from google.protobuf.message import Message

from rendezvous.backends.base import BackendUnavailable
from rendezvous.core import Deliver, Dispatch, Failed, QueueFull, Revoke
from rendezvous.core.effects import Effect
from rendezvous_wasimoff.metrics import Metrics
from rendezvous_wasimoff.settings import WasimoffSettings
from rendezvous_wasimoff.status import WasimoffStatus
from rendezvous_wasimoff.storage import off_loop, open_storage
from rendezvous_wasimoff.tasks import GenAExec, RpcError, TaskCodec, TaskHandle
from rendezvous_wasimoff.worker import Worker


class Broker:
    def __init__(self, settings: WasimoffSettings, log: Any, clock: Callable[[], float], registry: Any,
                 backend: Any = None) -> None:
        self.settings = settings
        self.log = log
        self.clock = clock
        self.storage = open_storage(settings.filestorage, backend)
        if backend is None:
            from rendezvous.backends.memory import MemoryBackend
            backend = MemoryBackend()
        # The task queue: this node's alone (memory), or the cluster's (redis), with this node's
        # providers in its local dispatcher either way.
        self.tasks = backend.tasks("wasimoff", policy=settings.scheduler, queue_limit=settings.queue_limit,
                                   max_attempts=settings.max_attempts, clock=clock, codec=TaskCodec())
        self.tasks.attach(self.execute)
        self.dispatch: Dispatch[Worker, TaskHandle] = self.tasks.dispatch
        self.metrics = Metrics(registry)
        self._loop: asyncio.AbstractEventLoop | None = None  # (kept: asked for, it is a getpid() on 3.11)
        # Read from the dispatcher when scraped, not set after every effect (two locked writes a task).
        dispatch = self.dispatch
        self.metrics.queued.set_function(lambda: dispatch.queued)
        self.metrics.dispatching.set_function(lambda: dispatch.in_flight)
        self.status = WasimoffStatus(self.dispatch, self.metrics)  # the status page's numbers
        self.workers: dict[Worker, None] = {}  # admitted providers of both generations, in order
        # Called with the new provider count whenever it changes (gen C tells its providers).
        self.on_provider_count: list[Callable[[int], Awaitable[None]]] = []
        self._tasks: anyio.abc.TaskGroup | None = None  # run()'s task group, for spawn()
        self._completions = 0  # since the last take_completions()
        self._last_second = 0  # completions in the last whole second (what this node tells the cluster)
        self._others = (0, 0)  # the other nodes' providers and completions per second
        self._distributed = bool(getattr(backend, "distributed", False))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            task_status.started()  # spawn() works from here on
            if self._distributed:
                tg.start_soon(self._cluster_numbers)
            await self.tasks.run()

    async def _cluster_numbers(self) -> None:
        """Every second: this node's numbers out, the cluster's in (ClusterInfo, Throughput)."""
        counted = 0
        while True:
            total = self.metrics.completed.value
            self._last_second, counted = int(total - counted), int(total)
            before = self.provider_count()
            try:
                providers, completions = await self.tasks.cluster(len(self.workers), self._last_second)
            except Exception as exc:  # (BackendUnavailable, a script error): the numbers wait
                self.log.debug("cluster numbers not read", error=str(exc))
            else:
                self._others = (providers - len(self.workers), completions - self._last_second)
                if self.provider_count() != before:
                    await self._provider_count_changed()
            await anyio.sleep(1.0)

    def spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``function(*args)`` in the background, for as long as the broker runs."""
        assert self._tasks is not None, "the broker is not running"
        self._tasks.start_soon(function, *args)

    # -- effects ---------------------------------------------------------------------------
    async def execute(self, effects: Sequence[Effect]) -> None:
        """Apply the dispatcher's effects: the only place its decisions turn into I/O."""
        for effect in effects:
            if type(effect) is Deliver:
                if type(effect.to) is TaskHandle:  # a result for the task's client
                    self._finish(effect.to, effect.payload)
                else:  # a task for a provider
                    await self._start(effect.to, cast(TaskHandle, effect.payload))
            elif type(effect) is Failed:
                effect.task.error = "\n".join(effect.errors)
                self.log.info("task failed", task=effect.task.id, kind=effect.task.kind, attempts=effect.task.attempts,
                              error=effect.task.error[:200])
                self.status.task_failed()
                effect.task.event.set()
            elif type(effect) is Revoke:
                worker: Worker = effect.worker
                await worker.revoke(effect.task)

    async def _start(self, worker: Worker, task: TaskHandle) -> None:
        task.attempts += 1
        if task.attempts > 1:  # every retry, whatever its cause, counted when it is sent
            self.metrics.retries.attempt(task.attempts)
        self.metrics.scheduled.inc()
        await worker.start(task)

    def _finish(self, task: TaskHandle, result: Message) -> None:
        task.result = result
        task.event.set()
        outcome = result.WhichOneof("result") if "result" in result.DESCRIPTOR.oneofs_by_name else None
        self.log.info("task done", task=task.id, kind=task.kind, result=outcome, attempts=task.attempts,
                      ms=round((time.monotonic() - task.started) * 1000, 1))
        self._completions += 1
        self.metrics.completed.inc()
        self.metrics.execution.observe(time.monotonic() - task.started)

    def take_completions(self) -> int:
        """Tasks completed since the last call (gen C's Throughput event), in the whole cluster
        (other nodes' as of their last report)."""
        count, self._completions = self._completions, 0
        return count + self._others[1]

    # -- what providers report ---------------------------------------------------------------
    async def completed(self, task: TaskHandle, worker: Worker, result: Message) -> None:
        """``worker`` answered ``task`` with an application result (ignored unless it holds the lease)."""
        await self.execute(await self.tasks.completed(self.clock(), task, worker, result))

    async def transport_error(self, task: TaskHandle, worker: Worker, error: str) -> None:
        """``worker`` could not run ``task``: it retries elsewhere (or fails after its last attempt)."""
        await self.execute(await self.tasks.transport_error(self.clock(), task, worker, error))

    async def set_capacity(self, worker: Worker, capacity: int) -> None:
        self.metrics.workers.labels(worker.name).set(capacity)
        await self.execute(await self.tasks.set_capacity(self.clock(), worker, capacity))

    async def update_files(self, worker: Worker, added: Iterable[str], removed: Iterable[str]) -> None:
        await self.execute(await self.tasks.update_files(self.clock(), worker, added, removed))

    # -- providers ---------------------------------------------------------------------------
    def provider_count(self) -> int:
        """Providers of both generations, in the whole cluster (other nodes' as of their last report)."""
        return len(self.workers) + self._others[0]

    async def admit(self, worker: Worker, files: Iterable[str], capacity: int,
                    provides: Iterable[str] | None = None, **log: Any) -> None:
        """A provider is ready for tasks. ``provides``: its capabilities (None: all of them)."""
        self.workers[worker] = None
        self.log.info("provider connected", provider=worker.name, providers=self.provider_count(), **log)
        now = self.clock()
        await self.execute(await self.tasks.add_worker(now, worker, worker.name, files, provides))
        await self.execute(await self.tasks.set_capacity(now, worker, capacity))
        self.metrics.workers.labels(worker.name).set(capacity)
        await self._provider_count_changed()

    async def retire(self, worker: Worker, **log: Any) -> None:
        """A provider left: its slots go, and the tasks it was running retry elsewhere."""
        if worker not in self.workers:
            return
        del self.workers[worker]
        self.metrics.workers.labels(worker.name).set(0)
        await self.execute(await self.tasks.remove_worker(self.clock(), worker))
        self.log.info("provider disconnected", provider=worker.name, providers=self.provider_count(), **log)
        await self._provider_count_changed()

    async def _provider_count_changed(self) -> None:
        count = self.provider_count()
        self.metrics.providers.set(len(self.workers))  # (this node's: Prometheus sums the nodes)
        for listener in self.on_provider_count:
            await listener(count)

    # -- tasks -------------------------------------------------------------------------------
    async def _resolve_file(self, file: Message, what: str) -> str | None:
        """Exactly one of ref/blob; a name or ref becomes the canonical sha256 ref."""
        has_ref, has_blob = file.HasField("ref") and file.ref != "", file.HasField("blob")
        if has_ref and has_blob:
            raise RpcError("invalid_argument", f"{what}: don't use both Blob and Ref together")
        if not has_ref and not has_blob:
            raise RpcError("invalid_argument", f"{what}: both Blob and Ref are nil")
        if has_blob:
            return None
        ref = await off_loop(self.storage, self.storage.resolve, file.ref)  # (on a cluster: a Redis read)
        if ref is None:
            raise RpcError("invalid_argument", f"{what}: Ref not found in storage")
        file.ref = ref
        return ref

    async def submit(self, request: Message, kind: str, requester: str | None, gen_a: GenAExec | None = None) -> Message:
        """Run one task to its end; raises :class:`RpcError` for what is not an application result.

        ``gen_a``: the task came from the generation-A API (its loadfs/datafile, which gen-A
        providers run natively, are also in the request as rootfs/artifacts for gen-C ones)."""
        params = request.params
        needs: list[str] = []
        requires: set[str] = set()
        if kind == "pyodide":
            requires.add("pyodide")
        elif gen_a is None and (params.HasField("rootfs") or len(params.artifacts)):
            requires.add("rootfs")
        if kind == "wasip1":
            if not request.HasField("params") or not params.HasField("binary"):
                raise RpcError("invalid_argument", "binary: both Blob and Ref are nil")
            ref = await self._resolve_file(params.binary, "binary")
            if ref:
                needs.append(ref)
            if params.HasField("rootfs"):
                ref = await self._resolve_file(params.rootfs, "rootfs")
                if ref:
                    needs.append(ref)
        task = TaskHandle(self.tasks.new_id(), request, kind, frozenset(needs), gen_a)
        reference, trace = request.info.reference, request.info.trace if request.info.HasField("trace") else None
        request.info.Clear()
        request.info.id = task.id
        if requester:
            request.info.requester = requester
        if reference:
            request.info.reference = reference
        if trace is not None:
            request.info.trace.CopyFrom(trace)
        try:
            if self._distributed:  # (the memory store never suspends: no scope to pay for)
                with anyio.CancelScope(shield=True):  # accepted or not, known: a client gone meanwhile is cancelled below
                    effects = await self.tasks.submit(self.clock(), task, task.needs, requires)
            else:
                effects = await self.tasks.submit(self.clock(), task, task.needs, requires)
        except QueueFull:
            raise RpcError("resource_exhausted", "Queue Full") from None
        except BackendUnavailable:
            raise RpcError("unavailable", "broker backend unavailable") from None
        try:
            await self.execute(effects)
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            await task.event.wait(loop)
        finally:
            if not task.event.is_set():  # the client went away: revoke it
                with anyio.CancelScope(shield=True):
                    await self.execute(await self.tasks.cancel(self.clock(), task))
                # A running task stays in its provider's pending requests until the provider
                # answers the Cancel (gen C) or its run (gen A): that must not keep the
                # client's payload alive.
                task.release_payload()
        if task.error is not None:
            raise RpcError("unknown", task.error)
        return task.result  # set before the event
