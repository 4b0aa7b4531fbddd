"""wasimoff generation A (the WebTransport era, spec wasimoff.md §1 and §7), on the same dispatcher.

Providers open a WebTransport session to ``/transport``. Their first bidirectional stream is
the control stream (MessagePack values ``{type, message}``: ``hello``, ``providerinfo``,
``poolinfo``); the broker opens a second one and calls the provider over it with Go's
``net/rpc`` framing in MessagePack (header map, then body): ``ping``, ``fs:list``, ``fs:probe``,
``fs:upload``, ``run``. Clients use ``/api/broker/v1/upload`` and ``/api/broker/v1/run``.

Every task, whichever API submitted it, is a gen-C ``Task.Wasip1.Request`` in the one
dispatcher (:mod:`rendezvous.core.dispatch`), so either generation's providers run either
generation's tasks; ``poolinfo.pool`` and ``ProviderResources.concurrency`` are both the
provider's capacity. A gen-A provider runs what ``run`` can express: tasks with a zip rootfs or
artifacts, and Pyodide tasks, need a gen-C provider (capability ``rootfs`` / ``pyodide``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
import uuid
import zipfile
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import msgpack

from rendezvous import gojson
from rendezvous.transports.base import ChannelClosed, ExchangeRoute, HttpRequest, HttpResponse, SessionRoute
from rendezvous_wasimoff import schema

JSON = ("content-type", "application/json")
TEXT = ("content-type", "text/plain; charset=utf-8")
CORS = ("access-control-allow-origin", "*")
GEN_A_PROVIDES = frozenset({"wasip1"})
NAME_PREFIX = "sha256-"  # what a content-addressed file is called on a gen-A provider


class RpcFailed(Exception):
    """The provider answered a call with an ``Error`` (an application error)."""


class BadReply(ValueError):
    """The provider answered a call with a body of the wrong shape (Go's decode fails): its session ends."""


def read_listing(listing: Any) -> dict[str, str]:
    """An ``fs:list`` body (nil, or an array of ``{filename, hash, ...}`` maps) → name → sha256 hex."""
    if listing is None:
        return {}
    if not isinstance(listing, list) or not all(isinstance(item, dict) for item in listing):
        found = type(listing).__name__ if not isinstance(listing, list) else "an array holding a non-map"
        raise BadReply(f"fs:list answered {found}, not an array of files")
    return {item["filename"]: item["hash"].hex() for item in listing
            if isinstance(item.get("filename"), str) and isinstance(item.get("hash"), bytes)}


class MsgpackRpcClient:
    """Go ``net/rpc`` over MessagePack on one stream, the broker being the client."""

    def __init__(self, stream: Any, max_buffer: int) -> None:
        self.stream = stream
        self._seq = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max_buffer, strict_map_key=False)

    async def call(self, method: str, body: Any) -> Any:
        self._seq += 1
        seq = self._seq
        future = self._pending[seq] = asyncio.get_running_loop().create_future()
        try:
            await self.stream.send(msgpack.packb({"ServiceMethod": method, "Seq": seq}) + msgpack.packb(body))
            return await future
        finally:
            self._pending.pop(seq, None)

    async def read_forever(self) -> None:
        """Match responses to calls until the stream ends; then every pending call fails."""
        header: dict[str, Any] | None = None
        try:
            while True:
                data = await self.stream.receive()
                if not data:
                    break
                self._unpacker.feed(data)
                for value in self._unpacker:
                    if header is None:
                        if not isinstance(value, dict):
                            raise ValueError("an RPC response header must be a map")
                        header = value
                        continue
                    future = self._pending.get(header.get("Seq"))  # type: ignore[arg-type]
                    error = header.get("Error")
                    header = None
                    if future is None or future.done():
                        continue
                    if error:
                        future.set_exception(RpcFailed(str(error)))
                    else:
                        future.set_result(value)
        except ChannelClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ChannelClosed(1006, "rpc stream ended"))


class GenAProvider:
    """One generation-A provider: a worker of the dispatcher (hashable by identity)."""

    def __init__(self, session: Any, name: str) -> None:
        self.session = session
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


def trace_event(label: str) -> dict[str, Any]:
    """One gen-A trace event: unix microseconds and a label."""
    return {"time": time.time_ns() // 1000, "label": label}


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def _unzip_one(blob: bytes, name: str) -> bytes | None:
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            for candidate in (name, name.lstrip("/")):
                if candidate in archive.namelist():
                    return archive.read(candidate)
    except (zipfile.BadZipFile, KeyError, OSError):
        return None
    return None


class GenerationA:
    """Gen-A routes and sessions for a :class:`rendezvous_wasimoff.profile.WasimoffRuntime`."""

    def __init__(self, runtime: Any, webtransport: Callable[[], Any]) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.webtransport = webtransport
        self.providers: dict[GenAProvider, None] = {}
        # exec details only gen A has (loadfs names, datafile), by task id
        self.extras: dict[str, dict[str, Any]] = {}
        api = "/api/broker/v1"
        self.routes = [
            SessionRoute("/transport", self.transport),
            ExchangeRoute(api + "/healthz", self.healthz),
            ExchangeRoute(api + "/config", self.config),
            ExchangeRoute(api + "/upload", self.upload, frozenset(), self.settings.max_upload, 413),
            ExchangeRoute(api + "/run", self.run, frozenset(), self.settings.max_upload, 413),
        ]

    # -- HTTP ------------------------------------------------------------------------------------
    def _headers(self, *headers: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        wt = self.webtransport()
        if wt is None or wt.port is None:
            return headers
        return (*headers, ("alt-svc", f'h3=":{wt.port}"; ma=2592000'))

    async def healthz(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"OK\n", self._headers(TEXT))

    async def config(self, request: HttpRequest) -> HttpResponse:
        wt = self.webtransport()
        if wt is None:
            return HttpResponse(503, b"WebTransport is off (WASIMOFF_QUIC_LISTEN is empty)\n", (TEXT, CORS))
        url = self.settings.transport_url
        if not url:
            # The original's default is https://localhost:4443/transport. Derived here from the
            # host the page reached us by (Chromium resolves localhost to ::1 first, pitfall 5).
            host = urlsplit("//" + request.headers.get("host", "localhost")).hostname or "localhost"
            host = f"[{host}]" if ":" in host else host
            url = f"https://{host}:{wt.port}/transport"
        body: dict[str, str] = {"transport": url}
        if wt.certificate.ephemeral:
            body["certhash"] = wt.certificate.sha256
        return HttpResponse(200, json.dumps(body).encode(), self._headers(JSON, CORS))

    async def upload(self, request: HttpRequest) -> HttpResponse:
        query = parse_qs(request.query)
        name = query.get("name", [""])[0]
        if not name:
            return HttpResponse(400, b"need a name in query parameter\n", self._headers(TEXT))
        if query.get("persist", [""])[0].lower() not in ("n", "no", "false"):
            await anyio.to_thread.run_sync(lambda: self.runtime.storage.put(request.body, name, strict=False))  # hashing, fsync
        if not self.runtime.provider_count():
            return HttpResponse(503, b"provider list is empty\n", self._headers(TEXT))
        results: dict[str, str] = {}
        for provider in list(self.providers):
            try:
                await provider.ensure(name, request.body)
                results[provider.name] = "OK"
            except (RpcFailed, ChannelClosed) as exc:
                results[provider.name] = str(exc) or type(exc).__name__
        if any(v != "OK" for v in results.values()):
            return HttpResponse(500, gojson.marshal(results) + b"\n", self._headers(JSON))
        return HttpResponse(200, f"Upload OK, {len(request.body)} bytes".encode(), self._headers(TEXT))

    async def run(self, request: HttpRequest) -> HttpResponse:
        trace = [trace_event("broker: request received")]
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return HttpResponse(400, b"no config parsers besides JSON are implemented yet\n", self._headers(TEXT))
        try:
            config = gojson.loads(request.body)  # as Go decodes it: nothing in it is unencodable
            tasks = self._validate(config)
        except (ValueError, RecursionError) as exc:
            return HttpResponse(400, f"failed to validate run configuration: {exc}\n".encode(), self._headers(TEXT))
        if config.get("trace") is True:
            if len(tasks) != 1:
                return HttpResponse(400, b"trace is only supported for a single task\n", self._headers(TEXT))
            trace.append(trace_event("broker: configuration decoded"))
        if not self.runtime.provider_count():
            return HttpResponse(503, b"provider store is empty\n", self._headers(TEXT))
        run_id = str(uuid.uuid4())
        results: list[dict[str, Any] | None] = [None] * len(tasks)

        async def one(index: int, entry: dict[str, Any]) -> None:
            results[index] = await self._run_one(f"{run_id}/{index:04d}", config, entry, request.client_host,
                                                 trace if config.get("trace") is True else None)

        async with anyio.create_task_group() as tg:
            for index, entry in enumerate(tasks):
                tg.start_soon(one, index, entry)
        return HttpResponse(200, gojson.marshal(results) + b"\n", self._headers(JSON))

    @staticmethod
    def _validate(config: Any) -> list[dict[str, Any]]:
        if not isinstance(config, dict):
            raise ValueError("expected a JSON object")
        binary = config.get("bin")
        if not isinstance(binary, str) or not binary or "\x00" in binary:
            raise ValueError("Key: 'RunConfiguration.Binary' Error:Field validation for 'Binary' failed on the 'required' tag")
        entries = config.get("exec")
        if not isinstance(entries, list) or not entries:
            raise ValueError("Key: 'RunConfiguration.Exec' Error:Field validation for 'Exec' failed on the 'min' tag")
        envs = config.get("envs") or []
        for name, value in (("envs", envs),) + tuple(("exec.envs", e.get("envs") or []) for e in entries if isinstance(e, dict)):
            if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
                raise ValueError(f"{name}: every env must be a string containing '='")
        for entry in entries:
            if not isinstance(entry, dict) or not (entry.get("args") or entry.get("envs")):
                raise ValueError("each exec entry needs args or envs")
            if not isinstance(entry.get("args") or [], list) or not all(isinstance(a, str) for a in entry.get("args") or []):
                raise ValueError("exec.args: a list of strings")
            if not isinstance(entry.get("loadfs") or [], list) or not all(isinstance(a, str) for a in entry.get("loadfs") or []):
                raise ValueError("exec.loadfs: a list of file names")
            for key in ("stdin", "datafile"):
                if entry.get(key) is not None and not isinstance(entry[key], str):
                    raise ValueError(f"exec.{key}: a string")
        if not isinstance(config.get("trace", False), bool):
            raise ValueError("trace: true or false")
        return entries

    async def _run_one(self, task_id: str, config: dict[str, Any], entry: dict[str, Any], client: str | None,
                       trace: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """One exec entry as a gen-C task; its result in gen-A's shape (with the trace, if asked:
        the broker's events and, from a gen-A provider, the provider's, as the original concatenates them)."""
        storage = self.runtime.storage
        request = schema.Wasip1Request()
        params = request.params
        params.binary.ref = config["bin"]
        params.args.extend([config["bin"], *(entry.get("args") or [])])
        params.envs.extend([*(entry.get("envs") or []), *(config.get("envs") or [])])
        if entry.get("stdin") is not None:
            params.stdin = entry["stdin"].encode()
        loadfs = list(entry.get("loadfs") or [])
        datafile = entry.get("datafile")
        if loadfs:
            files = {}
            for name in loadfs:
                found = storage.get(name)
                if found is None:
                    return {"error": f"file {name!r} not found in storage"}
                files[name] = found[0]
            params.rootfs.blob = _zip(files)
        if datafile:
            params.artifacts.append(datafile)
        request.info.reference = task_id
        self.extras[task_id] = {"loadfs": loadfs, "datafile": datafile, "trace": trace}
        if trace is not None:
            trace.append(trace_event("broker: task queued"))
        try:
            result = await self.runtime.submit(request, "wasip1", client, gen_a=task_id)
        except Exception as exc:  # RpcError from submit: queue full, unknown binary, all attempts failed
            return {"error": getattr(exc, "message", str(exc))}
        finally:
            self.extras.pop(task_id, None)
        if result.WhichOneof("result") == "error":
            return {"error": result.error}
        ok = result.ok
        item: dict[str, Any] = {"status": ok.status, "stdout": ok.stdout.decode("utf-8", "replace"),
                                "stderr": ok.stderr.decode("utf-8", "replace")}
        if datafile and ok.HasField("artifacts") and ok.artifacts.blob:
            data = _unzip_one(ok.artifacts.blob, datafile)
            if data is not None:
                item["datafile"] = base64.b64encode(data).decode()
        if trace is not None:
            if not any(e["label"] == "broker: task rpc completed" for e in trace):
                trace.append(trace_event("broker: task rpc completed"))  # (run by a gen-C provider)
            item["trace"] = list(trace)
        return {"result": item}

    # -- providers -------------------------------------------------------------------------------
    async def transport(self, session: Any) -> None:
        info = session.info
        await session.accept()
        name = f"{info.client_host}:{info.client_port}" if info.client_port else str(info.client_host)
        provider = GenAProvider(session, name)
        try:
            with anyio.fail_after(self.settings.listing_timeout):
                control = await session.accept_stream()
        except TimeoutError:
            await session.close(1002, "no control stream")
            return
        # Open the RPC stream at once: the provider sends nothing on the control stream
        # before it sees it (spec §7.3).
        provider.rpc = MsgpackRpcClient(session.open_stream(), self.settings.max_message_size)
        runtime = self.runtime
        close_code, close_reason = 1000, ""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._rpc_reader, provider, tg.cancel_scope)
            tg.start_soon(self._control_reader, provider, control, tg.cancel_scope)
            try:
                with anyio.fail_after(self.settings.listing_timeout):
                    if await provider.rpc.call("ping", "ping") != "pong":
                        raise RpcFailed("ping was not answered with pong")
                    provider.files.update(read_listing(await provider.rpc.call("fs:list", None)))
                for stored_name in runtime.storage.names():
                    found = runtime.storage.get(stored_name)
                    if found is not None:
                        await provider.ensure(stored_name, found[0])
                refs = [r for r in (runtime.storage.resolve(n) for n in provider.files) if r]
                await runtime.admit_provider(provider, name, self.providers, refs, provider.capacity, GEN_A_PROVIDES,
                                             generation="A")
                await anyio.sleep_forever()
            except (RpcFailed, ChannelClosed, TimeoutError, ValueError) as exc:
                runtime.log.info("provider failed to register", provider=name, generation="A", error=str(exc)[:200])
                if isinstance(exc, BadReply):
                    close_code, close_reason = 1007, str(exc)
            finally:
                with anyio.CancelScope(shield=True):
                    tg.cancel_scope.cancel()
                    await runtime.retire_provider(provider, name, self.providers, generation="A")
                    await session.close(close_code, close_reason)

    async def _rpc_reader(self, provider: GenAProvider, scope: anyio.CancelScope) -> None:
        try:
            assert provider.rpc is not None
            await provider.rpc.read_forever()
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self.runtime.log.info("bad rpc stream from provider", provider=provider.name, error=str(exc)[:200])
            await provider.session.close(1007, "bad rpc stream")
        finally:
            scope.cancel()

    async def _control_reader(self, provider: GenAProvider, control: Any, scope: anyio.CancelScope) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1024 * 1024, strict_map_key=False)
        try:
            while True:
                data = await control.receive()
                if not data:
                    break
                unpacker.feed(data)
                for value in unpacker:
                    await self._on_control(provider, value)
        except ChannelClosed:
            pass
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self.runtime.log.info("bad control stream from provider", provider=provider.name, error=str(exc)[:200])
            await provider.session.close(1007, "bad control stream")
        finally:
            scope.cancel()

    async def _on_control(self, provider: GenAProvider, value: Any) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("message"), dict):
            return  # the original logs and ignores what it does not know
        kind, message = value.get("type"), value["message"]
        if kind == "poolinfo":
            pool = message.get("pool")
            if isinstance(pool, int) and not isinstance(pool, bool):
                provider.capacity = max(0, pool)
                if provider in self.providers:
                    runtime = self.runtime
                    runtime.metrics.workers.labels(provider.name).set(provider.capacity)
                    await runtime.execute(runtime.dispatch.set_capacity(runtime.clock(), provider, provider.capacity))
        elif kind == "providerinfo":
            provider.info = {k: v for k, v in message.items() if isinstance(k, str) and isinstance(v, str)}
        elif kind == "hello":
            pass

    async def start_task(self, provider: GenAProvider, task: Any) -> None:
        """Run ``task`` (a TaskHandle) on a gen-A provider with ``run``; feed the result back."""
        runtime = self.runtime
        params = task.request.params
        trace = self.extras.get(task.request.info.reference, {}).get("trace")
        try:
            body = await self._run_body(provider, task.id, task.request)
            assert provider.rpc is not None
            if trace is not None:
                trace.append(trace_event("broker: task scheduled"))
            reply = await provider.rpc.call("run", body)
        except RpcFailed as exc:
            response = schema.Wasip1Response(error=str(exc))
        except (ChannelClosed, TimeoutError) as exc:
            await runtime.execute(runtime.dispatch.transport_error(runtime.clock(), task, provider, str(exc) or "provider gone"))
            runtime.driver.poke()
            return
        else:
            response = schema.Wasip1Response()
            if trace is not None:
                done = trace_event("broker: task rpc completed")
                for event in (reply.get("trace") if isinstance(reply, dict) else None) or []:
                    if isinstance(event, dict) and isinstance(event.get("label"), str):
                        time_us = event.get("time")  # int64 µs; anything else would not encode as JSON
                        trace.append({"time": time_us if type(time_us) is int else None, "label": "provider: " + event["label"]})
                trace.append(done)
            if not isinstance(reply, dict):
                response.error = "malformed run result from provider"
            else:
                ok = response.ok
                code = reply.get("exitcode", reply.get("returncode", 0))
                ok.status = code if isinstance(code, int) and -2**31 <= code < 2**31 else 0
                for key in ("stdout", "stderr"):
                    text = reply.get(key) or ""
                    setattr(ok, key, text.encode() if isinstance(text, str) else bytes(text) if isinstance(text, bytes) else b"")
                datafile = reply.get("datafile")
                names = list(params.artifacts)
                if isinstance(datafile, bytes) and names:
                    ok.artifacts.blob = _zip({names[0]: datafile})
                    ok.artifacts.media = "application/zip"
        response.info.id = task.id
        response.info.provider = provider.name
        await runtime.execute(runtime.dispatch.completed(runtime.clock(), task, provider, response))
        runtime.driver.poke()

    async def _run_body(self, provider: GenAProvider, task_id: str, request: Any) -> dict[str, Any]:
        storage = self.runtime.storage
        params = request.params
        if params.binary.HasField("blob"):
            data = params.binary.blob
            binary = NAME_PREFIX + hashlib.sha256(data).hexdigest()
        else:
            found = storage.get(params.binary.ref)
            if found is None:
                raise RpcFailed(f"binary {params.binary.ref!r} not found in storage")
            data = found[0]
            binary = next((n for n, r in storage.names().items() if r == found[2]), NAME_PREFIX + found[2].split(":", 1)[1])
        await provider.ensure(binary, data)
        extras = self.extras.get(request.info.reference, {})
        loadfs = extras.get("loadfs") or []
        for name in loadfs:
            found = storage.get(name)
            if found is not None:
                await provider.ensure(name, found[0])
        if request.info.reference in self.extras:
            task_id = request.info.reference  # "<run uuid>/<index>", as the gen-A broker names them
        body: dict[str, Any] = {"id": task_id, "binary": binary, "args": list(params.args[1:]) or None,
                                "envs": list(params.envs) or None}
        if params.stdin:
            body["stdin"] = params.stdin.decode("utf-8", "replace")
        if loadfs:
            body["loadfs"] = loadfs
        if extras.get("datafile"):
            body["datafile"] = extras["datafile"]
        if extras.get("trace") is not None:
            body["trace"] = True
        return body
