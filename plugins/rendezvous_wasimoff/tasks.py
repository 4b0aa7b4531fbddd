"""A task as the broker holds it while it is queued, running or retried, and the error a client
is answered with when it does not come to an application result."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import attrs
import msgpack
from google.protobuf.message import Message


class RpcError(Exception):
    """What to answer the client with instead of a result, in ConnectRPC's terms (``code`` is a
    Connect error code; every client API maps it to its own shape)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class GenAExec:
    """What a generation-A exec entry adds to its task. A gen-A provider gets these as they are;
    a gen-C provider gets the same files as the request's rootfs and artifacts, which
    :func:`rendezvous_wasimoff.gena.translate.request_from_exec` put there."""

    id: str  # "<run uuid>/<index>": the gen-A broker's name for the run call
    loadfs: tuple[str, ...]  # stored files copied into the task's filesystem
    datafile: str | None  # the file to return
    trace: list[dict[str, Any]] | None  # the run's trace events, appended as the task goes; None: not traced


class Done:
    """Set once, when the task's client has its answer (a result or an error); awaited by the
    client's request. (An anyio Event costs a wrapper and, on Python 3.11, a getpid() system
    call per wait: a task is one of thousands a second.)"""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        if not self._set:
            self._set = True
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def is_set(self) -> bool:
        return self._set

    async def wait(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Until set (a cancelled wait leaves it unset). ``loop``: the running loop, if the caller has it."""
        while not self._set:
            waiter = self._waiter = (loop or asyncio.get_running_loop()).create_future()
            await waiter


class TaskHandle:
    """One client request while it is queued, running or retried: the dispatcher's party for it."""

    __slots__ = ("attempts", "error", "event", "gen_a", "id", "kind", "needs", "request", "result", "started")

    def __init__(self, task_id: str, request: Message, kind: str, needs: frozenset[str],
                 gen_a: GenAExec | None = None) -> None:
        self.id = task_id
        self.request = request
        self.kind = kind  # "wasip1" | "pyodide"
        self.needs = needs
        self.gen_a = gen_a  # set for a task from the generation-A client API
        self.event = Done()
        self.result: Message | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self.attempts = 0  # times sent to a provider

    def release_payload(self) -> None:
        """Drop the request's body (binary blob, stdin, rootfs): the task will never be sent again.
        A revoked task stays referenced by its provider's pending requests until the provider
        answers; its metadata (``info``), all that answer needs, stays."""
        self.request.ClearField("params")


class TaskCodec:
    """A task as it crosses nodes (the ``redis`` backend's :class:`~rendezvous.backends.base.TaskCodec`):
    its kind, its request (protobuf), the files it prefers and what gen A adds; results as protobuf.
    A gen-A trace does not cross nodes: the run's trace events from another node are not added."""

    def task_id(self, task: TaskHandle) -> str:
        return task.id

    def dumps(self, task: TaskHandle) -> bytes:
        gen_a = task.gen_a
        return msgpack.packb([task.kind, task.request.SerializeToString(), sorted(task.needs),
                              None if gen_a is None else [gen_a.id, list(gen_a.loadfs), gen_a.datafile]],
                             use_bin_type=True)

    def loads(self, task_id: str, data: bytes, attempts: int) -> TaskHandle:
        from rendezvous_wasimoff import schema

        kind, request_bytes, needs, gen_a = msgpack.unpackb(data, raw=False)
        request = (schema.Wasip1Request if kind == "wasip1" else schema.PyodideRequest).FromString(request_bytes)
        extra = None if gen_a is None else GenAExec(gen_a[0], tuple(gen_a[1]), gen_a[2], None)
        task = TaskHandle(task_id, request, kind, frozenset(needs), extra)
        task.attempts = attempts  # (sent before: each failed; the broker counts this send)
        return task

    def dumps_result(self, task: TaskHandle, result: Message) -> bytes:
        return result.SerializeToString()

    def loads_result(self, task: TaskHandle, data: bytes) -> Message:
        from rendezvous_wasimoff import schema

        return (schema.Wasip1Response if task.kind == "wasip1" else schema.PyodideResponse).FromString(data)
