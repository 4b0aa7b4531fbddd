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
