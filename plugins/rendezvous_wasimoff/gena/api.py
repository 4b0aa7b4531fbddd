"""The generation-A HTTP API under ``/api/broker/v1``: ``healthz``, ``config`` (where the
WebTransport endpoint is, and its certificate hash), ``upload`` (stored and pushed to every gen-A
provider) and ``run`` (a run configuration, one task per exec entry)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread

from rendezvous import gojson
from rendezvous.transports.base import ChannelClosed, HttpRequest, HttpResponse
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.gena.provider import GenAProvider
from rendezvous_wasimoff.gena.rpc import RpcFailed
from rendezvous_wasimoff.gena.translate import item_from_result, request_from_exec, trace_event
from rendezvous_wasimoff.storage import off_loop
from rendezvous_wasimoff.tasks import GenAExec

JSON = ("content-type", "application/json")
TEXT = ("content-type", "text/plain; charset=utf-8")
CORS = ("access-control-allow-origin", "*")


class ClientApi:
    def __init__(self, broker: Broker, providers: dict[GenAProvider, None], webtransport: Callable[[], Any]) -> None:
        self.broker = broker
        self.settings = broker.settings
        self.providers = providers  # admitted gen-A providers
        self.webtransport = webtransport

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
            storage = self.broker.storage
            await anyio.to_thread.run_sync(lambda: storage.put(request.body, name, strict=False))  # hashing, fsync
        if not self.broker.provider_count():
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
            tasks = validate(config)
        except (ValueError, RecursionError) as exc:
            return HttpResponse(400, f"failed to validate run configuration: {exc}\n".encode(), self._headers(TEXT))
        if config.get("trace") is True:
            if len(tasks) != 1:
                return HttpResponse(400, b"trace is only supported for a single task\n", self._headers(TEXT))
            trace.append(trace_event("broker: configuration decoded"))
        if not self.broker.provider_count():
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

    async def _run_one(self, task_id: str, config: dict[str, Any], entry: dict[str, Any], client: str | None,
                       trace: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """One exec entry as a task; its result in gen-A's shape."""
        storage = self.broker.storage
        request = await off_loop(storage, request_from_exec, storage, config, entry)  # (storage reads)
        if isinstance(request, str):
            return {"error": request}
        request.info.reference = task_id
        datafile = entry.get("datafile")
        gen_a = GenAExec(task_id, tuple(entry.get("loadfs") or ()), datafile, trace)
        if trace is not None:
            trace.append(trace_event("broker: task queued"))
        try:
            result = await self.broker.submit(request, "wasip1", client, gen_a=gen_a)
        except Exception as exc:  # RpcError from submit: queue full, unknown binary, all attempts failed
            return {"error": getattr(exc, "message", str(exc))}
        return item_from_result(result, datafile, trace)


def validate(config: Any) -> list[dict[str, Any]]:
    """The run configuration's exec entries, checked as the original's validator does."""
    if not isinstance(config, dict):
        raise ValueError("expected a JSON object")
    binary = config.get("bin")
    if not isinstance(binary, str) or not binary or "\x00" in binary:
        raise ValueError("Key: 'RunConfiguration.Binary' Error:Field validation for 'Binary' failed on the 'required' tag")
    entries = config.get("exec")
    if not isinstance(entries, list) or not entries:
        raise ValueError("Key: 'RunConfiguration.Exec' Error:Field validation for 'Exec' failed on the 'min' tag")
    envs = config.get("envs") or []
    for name, value in (("envs", envs), *tuple(("exec.envs", e.get("envs") or []) for e in entries if isinstance(e, dict))):
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
