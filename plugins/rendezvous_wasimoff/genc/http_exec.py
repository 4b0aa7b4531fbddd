"""HTTP exec ``POST /api/client/run/{wasm}``: a task from headers and a body (stdin), answered with
stderr+stdout and ``X-Wasimoff-*`` headers."""

from __future__ import annotations

import base64
import re
import shlex
from urllib.parse import quote

from rendezvous.transports.base import HttpRequest, HttpResponse
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.genc.connect import STATUS
from rendezvous_wasimoff.tasks import RpcError

PATH = "/api/client/run/"
TEXT = ("content-type", "text/plain; charset=utf-8")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7f) if chr(c) != "%")


async def http_exec(broker: Broker, request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse.text(405, "Method Not Allowed\n")
    wasm = request.path[len(PATH):]
    headers = request.headers
    try:
        args = shlex.split(headers.get("x-args", ""))
    except ValueError as exc:
        return HttpResponse.text(400, f"X-Args: {exc}\n")
    task = schema.Wasip1Request()
    params = task.params
    params.binary.ref = wasm
    params.args.extend([wasm, *args])
    for name, value in headers.items():
        if name.startswith("x-env-") and len(name) > 6:
            params.envs.append(f"{name[6:].upper().replace('-', '_')}={value}")
    params.envs.append(f"CONTENT_LENGTH={len(request.body)}")
    if "content-type" in headers:
        params.envs.append(f"CONTENT_TYPE={headers['content-type']}")
    if headers.get("x-rootfs-ref"):
        params.rootfs.ref = headers["x-rootfs-ref"]
    for artifact in headers.get("x-artifact", "").split(","):
        if artifact.strip():
            params.artifacts.append(artifact.strip())
    params.stdin = request.body
    try:
        result = await broker.submit(task, "wasip1", request.client_host)
    except RpcError as exc:
        # The original answers every error 500; a request's own fault (a ref not in storage,
        # both or neither of blob and ref) is a 4xx here, as over ConnectRPC (Queue Full: 429).
        broker.log.debug("request refused", path=request.path, code=exc.code, reason=exc.message[:200])
        return HttpResponse.text(STATUS.get(exc.code, 500), exc.message + "\n")
    reply_headers = [("x-wasimoff-provider", _header_value(result.info.provider))] if result.info.provider else []
    if result.WhichOneof("result") == "error":
        return HttpResponse(200, result.error.encode(), (*reply_headers, ("x-wasimoff-result", "Error"), TEXT))
    ok = result.ok
    reply_headers += [("x-wasimoff-result", "Ok"), ("x-wasimoff-status", str(ok.status)), TEXT]
    if ok.HasField("artifacts") and ok.artifacts.blob:
        reply_headers.append(("x-wasimoff-artifacts", base64.b64encode(ok.artifacts.blob).decode()))
    return HttpResponse(200, ok.stderr + ok.stdout, tuple(reply_headers))


def _header_value(text: str) -> str:
    """Peer text fit for a header: printable ASCII as it is, anything else percent-encoded."""
    return text if _PRINTABLE.fullmatch(text) else quote(text, safe=_HEADER_SAFE)
