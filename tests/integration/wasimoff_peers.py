"""Test peers for the wasimoff profile: a scripted raw provider and small client helpers."""

from __future__ import annotations

import anyio
from websockets.asyncio.client import connect

from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import SUBPROTOCOL_PROTOBUF, Codec, pack, unpack

PROTO = {"content-type": "application/proto"}


class RawProvider:
    """A provider whose every message the test controls (answers Listing and Ping by itself)."""

    def __init__(self, srv, name="raw", subprotocols=(SUBPROTOCOL_PROTOBUF,), auto=True, headers=None):
        self.url = f"{srv.ws_url}/api/provider/ws?id={name}"
        self.subprotocols = list(subprotocols)
        self.auto = auto
        self.headers = headers
        self.codec = Codec(SUBPROTOCOL_PROTOBUF)
        self.seq = 0

    async def __aenter__(self):
        self.cm = connect(self.url, subprotocols=self.subprotocols, user_agent_header="test-provider",
                          max_size=None, ping_interval=None, additional_headers=self.headers)
        self.ws = await self.cm.__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.cm.__aexit__(*exc)

    async def recv(self, timeout=5.0):
        """The next envelope (Listing and Ping are answered automatically when ``auto``)."""
        with anyio.fail_after(timeout):
            while True:
                envelope = self.codec.decode(await self.ws.recv())
                payload = unpack(envelope)
                if self.auto and envelope.type == schema.REQUEST and isinstance(payload, schema.ListingRequest):
                    await self.respond(envelope.sequence, schema.ListingResponse())
                    continue
                if self.auto and envelope.type == schema.REQUEST and isinstance(payload, schema.Ping):
                    await self.respond(envelope.sequence, schema.Ping())
                    continue
                return envelope, payload

    async def recv_request(self, cls, timeout=5.0):
        while True:
            envelope, payload = await self.recv(timeout)
            if envelope.type == schema.REQUEST and isinstance(payload, cls):
                return envelope, payload

    async def respond(self, sequence, payload=None, error=""):
        envelope = schema.Envelope(sequence=sequence, type=schema.RESPONSE)
        if error:
            envelope.error = error
        if payload is not None:
            pack(envelope, payload)
        await self.ws.send(self.codec.encode(envelope))

    async def event(self, payload):
        envelope = schema.Envelope(sequence=self.seq, type=schema.EVENT)
        self.seq += 1
        pack(envelope, payload)
        await self.ws.send(self.codec.encode(envelope))

    async def request(self, payload):
        envelope = schema.Envelope(sequence=100 + self.seq, type=schema.REQUEST)
        self.seq += 1
        pack(envelope, payload)
        await self.ws.send(self.codec.encode(envelope))


def wasip1(ref=None, args=(), blob=None, stdin=b"", envs=(), reference=None):
    request = schema.Wasip1Request()
    if ref is not None:
        request.params.binary.ref = ref
    if blob is not None:
        request.params.binary.blob = blob
    request.params.args.extend(args)
    request.params.envs.extend(envs)
    if stdin:
        request.params.stdin = stdin
    if reference is not None:
        request.info.reference = reference
    return request


def ok_response(request, stdout=b"", status=0):
    response = schema.Wasip1Response()
    response.info.CopyFrom(request.info)
    response.ok.status = status
    response.ok.stdout = stdout
    return response


async def run_rpc(http, srv, request, timeout=20.0):
    """ConnectRPC RunWasip1 with application/proto, as client_tsp.py does."""
    with anyio.fail_after(timeout):
        reply = await http.post(srv.url + "/api/client/wasimoff.v1.Tasks/RunWasip1", content=request.SerializeToString(),
                                headers=PROTO)
    if reply.status_code != 200:
        return reply, None
    response = schema.Wasip1Response()
    response.ParseFromString(reply.content)
    return reply, response


class GenAPeer:
    """A generation-A provider (spec wasimoff.md §7) over an aioquic WebTransport session:
    control stream with MessagePack hello/providerinfo/poolinfo, net/rpc-over-MessagePack
    server on the broker's stream, WASI runs with wasmtime. ``calls`` records what the broker asked."""

    def __init__(self, srv, pool=2, answer_ping="pong"):
        self.url = srv.webtransport_url + "/transport"
        self.pool = pool
        self.answer_ping = answer_ping
        self.files: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.runs: list[dict] = []

    async def __aenter__(self):
        import contextlib

        import msgpack

        from rendezvous.testing import WebTransportSessionClient

        self._stack = contextlib.AsyncExitStack()
        self.session = await self._stack.enter_async_context(WebTransportSessionClient(self.url))
        self.control = self.session.open_stream()  # announced empty, as Chromium does
        self.rpc = await self.session.accept_stream()  # nothing is sent on control before this (§7.3)
        self.packb = msgpack.packb
        self.send_control("hello", {"sent": "2024-02-04T12:00:00.000Z"})
        self.send_control("providerinfo", {"platform": "Linux x86_64", "useragent": "GenAPeer"})
        self.send_control("poolinfo", {"nmax": max(2, self.pool), "pool": self.pool})
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._tg.start_soon(self._serve_rpc)
        return self

    async def __aexit__(self, *exc):
        self._tg.cancel_scope.cancel()
        await self._stack.__aexit__(*exc)

    def send_control(self, kind, message):
        self.session.send_stream(self.control, self.packb({"type": kind, "message": message}))

    async def _serve_rpc(self):
        import msgpack

        unpacker = msgpack.Unpacker(raw=False)
        header = None
        while True:
            data = await self.session.receive_stream(self.rpc, timeout=3600)
            if not data:
                return
            unpacker.feed(data)
            for value in unpacker:
                if header is None:
                    header = value
                    continue
                request, header = header, None
                self._tg.start_soon(self._answer, request, value)

    async def _answer(self, header, body):
        method = header["ServiceMethod"]
        self.calls.append(method)
        error, result = None, None
        try:
            result = await self._call(method, body)
        except Exception as exc:  # the JS provider sends String(err)
            error = f"Error: {exc}"
        reply = {"ServiceMethod": method, "Seq": header["Seq"], "Error": error}
        self.session.send_stream(self.rpc, self.packb(reply) + self.packb(result))

    async def _call(self, method, body):
        import hashlib

        if method == "ping":
            if body != "ping":
                raise ValueError("expected a 'ping'")
            return self.answer_ping
        if method == "fs:list":
            return [{"filename": n, "hash": hashlib.sha256(d).digest(), "length": len(d), "epoch": 0} for n, d in self.files.items()]
        if method == "fs:probe":
            data = self.files.get(body["filename"])
            return data is not None and len(data) == body["length"] and hashlib.sha256(data).digest() == body["hash"]
        if method == "fs:upload":
            self.files[body["filename"]] = body["bytes"]
            return True
        if method == "run":
            return await self._run(body)
        raise ValueError("unknown method")

    async def _run(self, body):
        import io
        import zipfile

        import anyio.to_thread

        from rendezvous_wasimoff.peer.slot import WasmSlot

        self.runs.append(body)
        if body["binary"] not in self.files:
            raise FileNotFoundError("NotFoundError: A requested file or directory could not be found")
        rootfs = None
        if body.get("loadfs") or body.get("datafile"):
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as z:
                for name in body.get("loadfs") or []:
                    z.writestr(name, self.files[name])
            rootfs = buffer.getvalue()
        artifacts = [body["datafile"]] if body.get("datafile") else []
        argv = [body["binary"], *(body.get("args") or [])]
        status, stdout, stderr, packed = await anyio.to_thread.run_sync(
            WasmSlot().run, body["binary"], self.files[body["binary"]], argv, body.get("envs") or [],
            (body.get("stdin") or "").encode(), rootfs, artifacts)
        trace = [{"time": 1, "label": "worker: start"}, {"time": 2, "label": "worker: done"}] if body.get("trace") else None
        result = {"exitcode": status, "stdout": stdout.decode(), "stderr": stderr.decode(), "trace": trace}
        if artifacts:
            with zipfile.ZipFile(io.BytesIO(packed)) as z:
                if body["datafile"] in z.namelist():
                    result["datafile"] = z.read(body["datafile"])
                else:
                    raise FileNotFoundError(f'requested datafile "{body["datafile"]}" not found!')
        return result
