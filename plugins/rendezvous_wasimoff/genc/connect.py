"""ConnectRPC ``/api/client/wasimoff.v1.Tasks/{RunWasip1,RunPyodide,Upload}``: unary calls in
``application/proto`` or ``application/json``, errors in the Connect format."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import anyio.to_thread
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from rendezvous.observe.logging import get_logger
from rendezvous.transports.base import ExchangeRoute, HttpRequest, HttpResponse
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.storage import MemoryStorage, Unsupported
from rendezvous_wasimoff.tasks import RpcError

log = get_logger("rendezvous.wasimoff")

PATH = "/api/client/wasimoff.v1.Tasks/"
STATUS = {"invalid_argument": 400, "not_found": 404, "resource_exhausted": 429, "unknown": 500,
          "internal": 500, "unimplemented": 501, "unavailable": 503, "canceled": 499}


async def store_upload(storage: MemoryStorage, message: Message) -> Message:
    """An ``Upload`` request (ConnectRPC or the client socket) into storage; its ref."""
    upload = message.upload
    if upload.media not in ("application/wasm", "application/zip"):
        raise RpcError("invalid_argument", "unsupported filetype (application/wasm or application/zip)")
    try:
        ref = await anyio.to_thread.run_sync(storage.put, upload.blob, upload.ref or None, upload.media)
    except Unsupported as exc:
        raise RpcError("invalid_argument", str(exc)) from None
    return schema.UploadResponse(ref=ref)


class ConnectRpc:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        cap = broker.settings.max_upload
        self.routes = [
            ExchangeRoute(PATH + "RunWasip1", self.run_wasip1, frozenset(), cap, 413),
            ExchangeRoute(PATH + "RunPyodide", self.run_pyodide, frozenset(), cap, 413),
            ExchangeRoute(PATH + "Upload", self.upload, frozenset(), cap, 413),
        ]

    async def run_wasip1(self, request: HttpRequest) -> HttpResponse:
        return await self._unary(request, schema.Wasip1Request,
                                 lambda m, r: self.broker.submit(m, "wasip1", r.client_host))

    async def run_pyodide(self, request: HttpRequest) -> HttpResponse:
        return await self._unary(request, schema.PyodideRequest,
                                 lambda m, r: self.broker.submit(m, "pyodide", r.client_host))

    async def upload(self, request: HttpRequest) -> HttpResponse:
        return await self._unary(request, schema.UploadRequest, lambda m, r: store_upload(self.broker.storage, m))

    async def _unary(self, request: HttpRequest, request_cls: type,
                     handler: Callable[[Message, HttpRequest], Awaitable[Message]]) -> HttpResponse:
        if request.method != "POST":
            return _error("unimplemented", f"{request.method} is not supported (POST)", 405)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/proto", "application/json"):
            return HttpResponse(415, b"", (("accept-post", "application/json, application/proto"),))
        message = request_cls()
        try:
            if content_type == "application/proto":
                message.ParseFromString(request.body)
            else:
                json_format.Parse(request.body.decode("utf-8") or "{}", message, descriptor_pool=schema.POOL)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            return _error("invalid_argument", f"unmarshal request: {exc}")
        try:
            reply = await handler(message, request)
        except RpcError as exc:
            return _error(exc.code, exc.message)
        if content_type == "application/proto":
            return HttpResponse(200, reply.SerializeToString(), (("content-type", "application/proto"),))
        body = json_format.MessageToJson(reply, descriptor_pool=schema.POOL, indent=None).encode()
        return HttpResponse(200, body, (("content-type", "application/json"),))


def _error(code: str, message: str, status: int | None = None) -> HttpResponse:
    log.debug("request refused", protocol="connect", code=code, reason=message[:200])
    body = json.dumps({"code": code, "message": message}).encode()
    return HttpResponse(status or STATUS.get(code, 500), body, (("content-type", "application/json"),))
