"""A wasimoff provider in Python: speaks the provider protocol and runs WASI binaries with wasmtime.

It is the far end of our tests and what a user without a browser runs:

    rendezvous-wasimoff-provider --broker http://localhost:4080 --workers 4

Each worker slot has its own wasmtime Engine with epoch interruption, so a ``Task.Cancel``
interrupts exactly that slot's task (the real provider likewise kills and respawns the worker).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pathlib
import secrets
import tempfile
import zipfile
from typing import Any

import anyio
import anyio.to_thread

from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import SUBPROTOCOL_JSON, SUBPROTOCOL_PROTOBUF, Codec, pack, unpack

USER_AGENT = "rendezvous-wasimoff-provider/0.1"


class Cancelled(Exception):
    pass


class _Slot:
    def __init__(self) -> None:
        import wasmtime

        config = wasmtime.Config()
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.modules: dict[str, Any] = {}
        self.task_id: str | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.engine.increment_epoch()

    def run(self, ref: str, wasm: bytes, args: list[str], envs: list[str], stdin: bytes, rootfs: bytes | None,
            artifacts: list[str]) -> tuple[int, bytes, bytes, bytes | None]:
        import wasmtime

        module = self.modules.get(ref)
        if module is None:
            module = self.modules[ref] = wasmtime.Module(self.engine, wasm)
        with tempfile.TemporaryDirectory(prefix="wasimoff-") as tmp:
            tmpdir = pathlib.Path(tmp)
            (tmpdir / "stdin").write_bytes(stdin)
            wasi = wasmtime.WasiConfig()
            wasi.argv = args
            wasi.env = [tuple(e.split("=", 1)) if "=" in e else (e, "") for e in envs]
            wasi.stdin_file = str(tmpdir / "stdin")
            wasi.stdout_file = str(tmpdir / "stdout")
            wasi.stderr_file = str(tmpdir / "stderr")
            root = tmpdir / "root"
            if rootfs is not None:
                root.mkdir()
                with zipfile.ZipFile(io.BytesIO(rootfs)) as z:
                    for member in z.namelist():  # refuse paths that escape the root
                        if member.startswith("/") or ".." in pathlib.PurePosixPath(member).parts:
                            raise ValueError(f"rootfs: unsafe path {member!r}")
                    z.extractall(root)
                wasi.preopen_dir(str(root), "/")
            store = wasmtime.Store(self.engine)
            store.set_epoch_deadline(1)
            # A cancel that came before the deadline was armed would never trap: check after arming.
            if self.cancelled:
                raise Cancelled()
            store.set_wasi(wasi)
            linker = wasmtime.Linker(self.engine)
            linker.define_wasi()
            status = 0
            try:
                instance = linker.instantiate(store, module)
                instance.exports(store)["_start"](store)
            except wasmtime.ExitTrap as exc:
                status = exc.code
            except wasmtime.Trap:
                if self.cancelled:
                    raise Cancelled() from None
                raise
            stdout = (tmpdir / "stdout").read_bytes() if (tmpdir / "stdout").exists() else b""
            stderr = (tmpdir / "stderr").read_bytes() if (tmpdir / "stderr").exists() else b""
            packed = None
            if artifacts and rootfs is not None:
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as z:
                    for name in artifacts:
                        path = root / name.lstrip("/")
                        if path.is_file():
                            z.write(path, name.lstrip("/"))
                packed = buffer.getvalue()
            return status, stdout, stderr, packed


class Provider:
    def __init__(self, broker: str, *, name: str | None = None, workers: int = 2, json: bool = False) -> None:
        self.broker = broker.rstrip("/")
        self.name = name or "py-" + secrets.token_hex(4)
        self.workers = workers
        self.subprotocol = SUBPROTOCOL_JSON if json else SUBPROTOCOL_PROTOBUF
        self.files: dict[str, bytes] = {}
        self.slots = [_Slot() for _ in range(workers)]
        self.cluster_size = 0
        self.tasks_run = 0
        self._seq = 0
        self._ws: Any = None
        self._codec = Codec(self.subprotocol)

    @property
    def ws_url(self) -> str:
        return "ws" + self.broker[4:] + f"/api/provider/ws?id={self.name}"

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.ws_url, subprotocols=[SUBPROTOCOL_PROTOBUF, SUBPROTOCOL_JSON] if self.subprotocol == SUBPROTOCOL_PROTOBUF else [SUBPROTOCOL_JSON],
                           user_agent_header=USER_AGENT, max_size=None, ping_interval=None) as ws:
            self._ws = ws
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
                status, stdout, stderr, artifacts = await anyio.to_thread.run_sync(
                    slot.run, ref, wasm, args, list(params.envs), params.stdin, rootfs, list(params.artifacts))
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
            await self._respond(sequence, response)
        finally:
            slot.task_id = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rendezvous-wasimoff-provider", description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default=os.environ.get("WASIMOFF_BROKER", "http://localhost:4080"))
    parser.add_argument("--name", default=None, help="provider id (default: random)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="use the protojson subprotocol")
    args = parser.parse_args(argv)
    try:
        anyio.run(Provider(args.broker, name=args.name, workers=args.workers, json=args.json).run)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"rendezvous-wasimoff-provider: cannot reach {args.broker}: {exc}")
        return 1
    return 0
