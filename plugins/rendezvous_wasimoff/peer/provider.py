"""The Python provider's end of the provider socket: the Envelope protocol over a WebSocket;
each task runs in a free :class:`~rendezvous_wasimoff.peer.slot.WasmSlot`, its binary fetched
from the broker's storage on first use."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import SUBPROTOCOL_JSON, SUBPROTOCOL_PROTOBUF, Codec, pack, unpack
from rendezvous_wasimoff.peer.slot import Cancelled, WasmSlot

USER_AGENT = "rendezvous-wasimoff-provider/0.1"


class Provider:
    def __init__(self, broker: str, *, name: str | None = None, workers: int = 2, json: bool = False,
                 report: Callable[[str], None] | None = None) -> None:
        self.broker = broker.rstrip("/")
        self.name = name or "py-" + secrets.token_hex(4)
        self.workers = workers
        self.subprotocol = SUBPROTOCOL_JSON if json else SUBPROTOCOL_PROTOBUF
        self.files: dict[str, bytes] = {}
        self.slots = [WasmSlot() for _ in range(workers)]
        self.cluster_size = 0
        self.tasks_run = 0
        self.tasks_failed = 0
        #: where progress lines go (the CLI prints them; embedded use is quiet)
        self.report = report or (lambda line: None)
        self._seq = 0
        self._ws: Any = None
        self._codec = Codec(self.subprotocol)

    @property
    def ws_url(self) -> str:
        return "ws" + self.broker[4:] + f"/api/provider/ws?id={self.name}"

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        from websockets.asyncio.client import connect
        from websockets.typing import Subprotocol

        async with connect(self.ws_url, subprotocols=[Subprotocol(p) for p in (SUBPROTOCOL_PROTOBUF, SUBPROTOCOL_JSON) if p == self.subprotocol or p == SUBPROTOCOL_JSON],
                           user_agent_header=USER_AGENT, max_size=None, ping_interval=None) as ws:
            self._ws = ws
            self.report(f"connected to {self.broker} as {self.name}: {self.workers} slots, {ws.subprotocol}")
            async with anyio.create_task_group() as tg:
                await self._event(schema.ProviderResources(concurrency=self.workers, tasks=0))
                task_status.started(self)
                async for frame in ws:
                    envelope = self._codec.decode(frame)
                    if envelope.type == schema.REQUEST:
                        tg.start_soon(self._on_request, envelope)
                    elif envelope.type == schema.EVENT:
                        payload = unpack(envelope)
                        if isinstance(payload, schema.ClusterInfo):
                            self.cluster_size = payload.providers
                tg.cancel_scope.cancel()

    def progress(self) -> str:
        """One line on what this provider has done so far."""
        busy = sum(1 for slot in self.slots if slot.task_id is not None)
        return (f"{self.tasks_run} tasks done ({self.tasks_failed} failed), {busy}/{self.workers} slots busy, "
                f"{self.cluster_size} providers in the cluster")

    async def _send(self, envelope: Any) -> None:
        await self._ws.send(self._codec.encode(envelope))

    async def _event(self, payload: Any) -> None:
        envelope = schema.Envelope(sequence=self._seq, type=schema.EVENT)
        self._seq += 1  # the TS provider counts from 0
        pack(envelope, payload)
        await self._send(envelope)

    async def _respond(self, sequence: int, payload: Any = None, error: str = "") -> None:
        envelope = schema.Envelope(sequence=sequence, type=schema.RESPONSE)
        if error:
            envelope.error = error
        if payload is not None:
            pack(envelope, payload)
        await self._send(envelope)

    async def _on_request(self, envelope: Any) -> None:
        try:
            payload = unpack(envelope)
        except KeyError as exc:
            await self._respond(envelope.sequence, error=f"unknown request type {exc}")
            return
        sequence = envelope.sequence
        if isinstance(payload, schema.ListingRequest):
            await self._respond(sequence, schema.ListingResponse(files=list(self.files)))
        elif isinstance(payload, schema.Ping):
            await self._respond(sequence, schema.Ping())
        elif isinstance(payload, schema.ProbeRequest):
            await self._respond(sequence, schema.ProbeResponse(ok=payload.file in self.files))
        elif isinstance(payload, schema.UploadRequest):
            ref = "sha256:" + hashlib.sha256(payload.upload.blob).hexdigest()
            self.files[ref] = payload.upload.blob
            await self._respond(sequence, schema.UploadResponse(ref=ref))
        elif isinstance(payload, schema.Cancel):
            for slot in self.slots:
                if slot.task_id == payload.id:
                    slot.cancel()
            await self._respond(sequence, payload)
        elif isinstance(payload, schema.Wasip1Request):
            await self._run_wasip1(sequence, payload)
        elif isinstance(payload, schema.PyodideRequest):
            response = schema.PyodideResponse(info=payload.info, error="pyodide is not supported by this provider")
            await self._respond(sequence, response)
        else:
            await self._respond(sequence, error="unsupported request")

    async def _file(self, file: Any) -> tuple[str, bytes]:
        if file.HasField("blob"):
            return "sha256:" + hashlib.sha256(file.blob).hexdigest(), file.blob
        ref = file.ref
        if ref not in self.files:
            import httpx

            async with httpx.AsyncClient(timeout=60) as http:
                reply = await http.get(f"{self.broker}/api/storage/{ref}")
            if reply.status_code != 200:
                raise LookupError("binary not found in storage")
            self.files[reply.headers.get("x-wasimoff-ref", ref)] = reply.content
            self.files[ref] = reply.content
            await self._event(schema.FileSystemUpdate(added=[reply.headers.get("x-wasimoff-ref", ref)]))
        return ref, self.files[ref]

    async def _run_wasip1(self, sequence: int, request: Any) -> None:
        response = schema.Wasip1Response()
        response.info.CopyFrom(request.info)
        slot = next((s for s in self.slots if s.task_id is None), None)
        if slot is None:
            await self._respond(sequence, error="no idle workers")
            return
        slot.task_id, slot.cancelled = request.info.id, False
        started = time.monotonic()
        try:
            params = request.params
            try:
                ref, wasm = await self._file(params.binary)
                rootfs = (await self._file(params.rootfs))[1] if params.HasField("rootfs") else None
            except LookupError as exc:
                await self._respond(sequence, error=str(exc))
                return
            args = list(params.args) or [ref]
            try:
                # A provider that is stopped (cancelled) leaves at once, as a killed one would: its
                # running task is the broker's to retry, so the thread is not waited for (nor is
                # its result sent, which would race the connection's close).
                status, stdout, stderr, artifacts = await anyio.to_thread.run_sync(
                    slot.run, ref, wasm, args, list(params.envs), params.stdin, rootfs, list(params.artifacts),
                    abandon_on_cancel=True)
            except Cancelled:
                response.error = "cancelled"
            except Exception as exc:  # a trap or a bad binary is the task's own error
                response.error = f"{type(exc).__name__}: {exc}"
            else:
                response.ok.status = status
                response.ok.stdout = stdout
                response.ok.stderr = stderr
                if artifacts is not None:
                    response.ok.artifacts.blob = artifacts
                    response.ok.artifacts.media = "application/zip"
            self.tasks_run += 1
            took = f"{(time.monotonic() - started) * 1000:.0f} ms"
            if response.error:
                self.tasks_failed += 1
                self.report(f"task {request.info.id} {args[0]}: {response.error.splitlines()[0][:120]} ({took})")
            else:
                self.report(f"task {request.info.id} {args[0]}: exit {response.ok.status} in {took}")
            await self._respond(sequence, response)
        finally:
            slot.task_id = None
