"""Between generation A's shapes and the gen-C task the dispatcher carries: an exec entry becomes
a ``Task.Wasip1.Request`` (its ``loadfs`` files a zip rootfs, its ``datafile`` an artifact), a task
becomes a ``run`` call body, and the answers go the other way."""

from __future__ import annotations

import base64
import io
import time
import zipfile
from typing import Any

from google.protobuf.message import Message

from rendezvous_wasimoff import schema
from rendezvous_wasimoff.storage import MemoryStorage
from rendezvous_wasimoff.tasks import TaskHandle


def trace_event(label: str) -> dict[str, Any]:
    """One gen-A trace event: unix microseconds and a label."""
    return {"time": time.time_ns() // 1000, "label": label}


def zip_files(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def unzip_one(blob: bytes, name: str) -> bytes | None:
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            for candidate in (name, name.lstrip("/")):
                if candidate in archive.namelist():
                    return archive.read(candidate)
    except (zipfile.BadZipFile, KeyError, OSError):
        return None
    return None


# -- the client API's side ----------------------------------------------------------------------
def request_from_exec(storage: MemoryStorage, config: dict[str, Any], entry: dict[str, Any]) -> Message | str:
    """One exec entry of a run configuration as a gen-C request, or why it cannot be one."""
    request = schema.Wasip1Request()
    params = request.params
    params.binary.ref = config["bin"]
    params.args.extend([config["bin"], *(entry.get("args") or [])])
    params.envs.extend([*(entry.get("envs") or []), *(config.get("envs") or [])])
    if entry.get("stdin") is not None:
        params.stdin = entry["stdin"].encode()
    loadfs = entry.get("loadfs") or []
    if loadfs:
        files = {}
        for name in loadfs:
            found = storage.get(name)
            if found is None:
                return f"file {name!r} not found in storage"
            files[name] = found[0]
        params.rootfs.blob = zip_files(files)
    if entry.get("datafile"):
        params.artifacts.append(entry["datafile"])
    return request


def item_from_result(result: Message, datafile: str | None, trace: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A task's result as an item of the ``/run`` answer (with the trace, if asked: the broker's
    events and, from a gen-A provider, the provider's, as the original concatenates them)."""
    if result.WhichOneof("result") == "error":
        return {"error": result.error}
    ok = result.ok
    item: dict[str, Any] = {"status": ok.status, "stdout": ok.stdout.decode("utf-8", "replace"),
                            "stderr": ok.stderr.decode("utf-8", "replace")}
    if datafile and ok.HasField("artifacts") and ok.artifacts.blob:
        data = unzip_one(ok.artifacts.blob, datafile)
        if data is not None:
            item["datafile"] = base64.b64encode(data).decode()
    if trace is not None:
        if not any(e["label"] == "broker: task rpc completed" for e in trace):
            trace.append(trace_event("broker: task rpc completed"))  # (run by a gen-C provider)
        item["trace"] = list(trace)
    return {"result": item}


# -- the provider's side ------------------------------------------------------------------------
def run_body(task: TaskHandle, binary: str) -> dict[str, Any]:
    """The ``run`` call for ``task``, its binary stored on the provider as ``binary``."""
    params = task.request.params
    gen_a = task.gen_a
    # "<run uuid>/<index>" for a task from the gen-A API, as the gen-A broker names them
    body: dict[str, Any] = {"id": task.id if gen_a is None else gen_a.id, "binary": binary,
                            "args": list(params.args[1:]) or None, "envs": list(params.envs) or None}
    if params.stdin:
        body["stdin"] = params.stdin.decode("utf-8", "replace")
    if gen_a is not None:
        if gen_a.loadfs:
            body["loadfs"] = list(gen_a.loadfs)
        if gen_a.datafile:
            body["datafile"] = gen_a.datafile
        if gen_a.trace is not None:
            body["trace"] = True
    return body


def response_from_run(reply: Any, artifact: str | None, trace: list[dict[str, Any]] | None) -> Message:
    """A ``run`` answer as a gen-C response (``artifact``: the name its ``datafile`` is zipped
    under). A traced task's trace gets the provider's events."""
    response = schema.Wasip1Response()
    if trace is not None:
        done = trace_event("broker: task rpc completed")
        events = reply.get("trace") if isinstance(reply, dict) else None
        for event in events if isinstance(events, list) else ():  # (a provider may send anything)
            if isinstance(event, dict) and isinstance(event.get("label"), str):
                time_us = event.get("time")  # int64 µs; anything else would not encode as JSON
                trace.append({"time": time_us if type(time_us) is int else None, "label": "provider: " + event["label"]})
        trace.append(done)
    if not isinstance(reply, dict):
        response.error = "malformed run result from provider"
        return response
    ok = response.ok
    code = reply.get("exitcode", reply.get("returncode", 0))
    ok.status = code if isinstance(code, int) and -2**31 <= code < 2**31 else 0
    for key in ("stdout", "stderr"):
        text = reply.get(key) or ""
        setattr(ok, key, text.encode() if isinstance(text, str) else bytes(text) if isinstance(text, bytes) else b"")
    datafile = reply.get("datafile")
    if isinstance(datafile, bytes) and artifact is not None:
        ok.artifacts.blob = zip_files({artifact: datafile})
        ok.artifacts.media = "application/zip"
    return response
