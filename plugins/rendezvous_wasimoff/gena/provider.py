"""One generation-A provider as the broker's :class:`~rendezvous_wasimoff.worker.Worker`: tasks
become ``run`` calls, the files they need are probed and uploaded first."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from rendezvous.transports.base import ChannelClosed
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.gena.rpc import MsgpackRpcClient, RpcFailed
from rendezvous_wasimoff.gena.translate import response_from_run, run_body, trace_event
from rendezvous_wasimoff.storage import off_loop
from rendezvous_wasimoff.tasks import TaskHandle

if TYPE_CHECKING:
    from rendezvous_wasimoff.broker import Broker

NAME_PREFIX = "sha256-"  # what a content-addressed file is called on a gen-A provider


class GenAProvider:
    def __init__(self, broker: Broker, session: Any, name: str) -> None:
        self.broker = broker
        self.session = session  # its WebTransport session
        self.name = name
        self.rpc: MsgpackRpcClient | None = None
        self.capacity = 0
        self.files: dict[str, str] = {}  # name on the provider -> sha256 hex it holds
        self.info: dict[str, Any] = {}  # providerinfo (platform, useragent)

    async def ensure(self, name: str, data: bytes) -> None:
        """Make sure the provider holds ``data`` as ``name`` (probe, then upload), as the broker does."""
        digest = hashlib.sha256(data).hexdigest()
        if self.files.get(name) == digest:
            return
        meta = {"filename": name, "hash": bytes.fromhex(digest), "length": len(data), "epoch": int(time.time() * 1000)}
        assert self.rpc is not None
        if not await self.rpc.call("fs:probe", meta):
            await self.rpc.call("fs:upload", {**meta, "bytes": data})
        self.files[name] = digest

    # -- Worker --------------------------------------------------------------------------------
    async def start(self, task: TaskHandle) -> None:
        # The run call waits for the provider's answer: not here (start() must not block the
        # dispatcher's effects), in the broker's background.
        self.broker.spawn(self._run, task)

    async def revoke(self, task: TaskHandle) -> None:
        pass  # gen A has no cancel; the result is ignored when it comes

    async def _run(self, task: TaskHandle) -> None:
        """Run ``task`` with ``run``; feed the result back."""
        params = task.request.params
        trace = task.gen_a.trace if task.gen_a is not None else None
        artifact = params.artifacts[0] if params.artifacts else None
        try:
            body = run_body(task, "")  # (all it needs from the request, before any wait)
            blob = params.binary.blob if params.binary.HasField("blob") else None
            ref = params.binary.ref
            # (storage read in a worker thread: on a cluster the files may come from Redis)
            binary, data = await off_loop(self.broker.storage, self._binary, blob, ref)
            body["binary"] = binary
            await self.ensure(binary, data)
            for name in task.gen_a.loadfs if task.gen_a is not None else ():
                found = await off_loop(self.broker.storage, self.broker.storage.get, name)
                if found is not None:
                    await self.ensure(name, found[0])
            assert self.rpc is not None
            if trace is not None:
                trace.append(trace_event("broker: task scheduled"))
            reply = await self.rpc.call("run", body)
        except RpcFailed as exc:
            response = schema.Wasip1Response(error=str(exc))
        except (ChannelClosed, TimeoutError) as exc:
            await self.broker.transport_error(task, self, str(exc) or "provider gone")
            return
        else:
            response = response_from_run(reply, artifact, trace)
        response.info.id = task.id
        response.info.provider = self.name
        await self.broker.completed(task, self, response)

    def _binary(self, blob: bytes | None, ref: str) -> tuple[str, bytes]:
        """The task's binary, and its name on the provider: its stored name, else ``sha256-<hex>``."""
        if blob is not None:
            return NAME_PREFIX + hashlib.sha256(blob).hexdigest(), blob
        storage = self.broker.storage
        found = storage.get(ref)
        if found is None:
            raise RpcFailed(f"binary {ref!r} not found in storage")
        name = next((n for n, r in storage.names().items() if r == found[2]), NAME_PREFIX + found[2].split(":", 1)[1])
        return name, found[0]
