"""Public helpers for testing profiles, ours and third parties', the way we test ours.

- :class:`FakeClock` to drive a core matcher by hand (unit tests, no I/O).
- :func:`serve` to start a real server on 127.0.0.1 with an ephemeral port.
- :func:`ws_connect`, :func:`recv_json`, :func:`assert_silent` for WebSocket clients
  (needs the ``websockets`` package: ``pip install rendezvous[test]``).
- :func:`http_call`: one HTTP/1.1 request per connection, for many concurrent long-polls.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator, Mapping, Sequence

import anyio

from rendezvous.server import RunningServer, make_config, running


class FakeClock:
    """A clock you move by hand: pass it as ``clock=`` wherever a ``() -> float`` is taken."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@contextlib.asynccontextmanager
async def serve(
    profile: str | Sequence[str],
    settings: Mapping[str, Any] | None = None,
    *,
    http_server: str = "native",
    server: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[RunningServer]:
    """Run ``profile`` in-process on ``127.0.0.1:0``; yields the :class:`RunningServer`.

    Several profiles: pass their names as a list and ``settings`` as ``{name: {...}}``
    (mount them under prefixes with ``server={"mount": ["overlay=/ov"]}``).
    """
    # No WebTransport unless asked for (``server={"webtransport_port": 0}``), even for a profile
    # whose original listens on a fixed UDP port (wasimoff's :4443): tests must not clash on it.
    server_values = {"host": "127.0.0.1", "port": 0, "http_server": http_server, "shutdown_grace": 1.0,
                     "webtransport_port": None, **(server or {})}
    if isinstance(profile, str):
        config = make_config(profile, server=server_values, settings={profile: dict(settings or {})})
    else:
        per_profile = {name: dict((settings or {}).get(name, {})) for name in profile}
        config = make_config(list(profile), server=server_values, settings=per_profile)
    async with running(config, **kwargs) as running_server:
        yield running_server


async def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until it is true; ``TimeoutError`` after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(interval)


def ws_connect(url: str, **kwargs: Any) -> Any:
    """A ``websockets`` client connection (async context manager), with no size limit or pings."""
    from websockets.asyncio.client import connect

    kwargs.setdefault("max_size", None)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("open_timeout", 5)
    return connect(url, **kwargs)


async def recv_json(ws: Any, timeout: float = 5.0) -> Any:
    """The next frame, parsed as JSON; fails if none arrives within ``timeout``."""
    with anyio.fail_after(timeout):
        return json.loads(await ws.recv())


async def recv_frame(ws: Any, timeout: float = 5.0) -> str | bytes:
    with anyio.fail_after(timeout):
        return await ws.recv()


async def assert_silent(ws: Any, within: float = 0.3) -> None:
    """Assert that no frame arrives on ``ws`` within ``within`` seconds (and it stays open)."""
    with anyio.move_on_after(within):
        frame = await ws.recv()
        raise AssertionError(f"expected silence, got {frame!r}")


async def closed_code(ws: Any, timeout: float = 5.0) -> int | None:
    """Wait for the server to close ``ws``; returns the close code it sent (None if none)."""
    from websockets.exceptions import ConnectionClosed

    with anyio.fail_after(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code


class HttpReply:
    __slots__ = ("status", "headers", "content")

    def __init__(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.status = status
        self.headers = headers
        self.content = content

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


async def http_call(url: str, method: str = "GET", body: bytes = b"", headers: Mapping[str, str] | None = None,
                    timeout: float = 30.0) -> HttpReply:
    """One HTTP/1.1 request on its own connection: cheap enough for thousands at once.

    (A pooled client such as httpx slows down sharply with many concurrent long-polls on one
    pool; load tests and long-poll tests use this instead.)
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with anyio.fail_after(timeout):
        async with await anyio.connect_tcp(parts.hostname, parts.port or 80) as stream:
            await stream.send(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, rest = data.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            reply_headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                reply_headers[name.strip().lower()] = value.strip()
            status = int(status_line.split(" ")[1])
            length = reply_headers.get("content-length")
            try:
                while length is None or len(rest) < int(length):
                    rest += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            if reply_headers.get("transfer-encoding", "").lower() == "chunked":
                rest = _dechunk(rest)
            elif length is not None:
                rest = rest[: int(length)]
    return HttpReply(status, reply_headers, rest)


class LongPoll:
    """A channel over HTTP long-poll (see :mod:`rendezvous.transports.bridges`), for tests.

    ``lp = await LongPoll.open(srv.url + "/join")``; ``await lp.send("x")``; ``await lp.recv()``;
    ``lp.close_code`` once the server closed it.
    """

    def __init__(self, url: str, session: str, subprotocol: str | None) -> None:
        self.url = url
        self.session = session
        self.subprotocol = subprotocol
        self.close_code: int | None = None

    @classmethod
    async def open(cls, url: str, headers: Mapping[str, str] | None = None) -> "LongPoll":
        reply = await http_call(url, "POST", b"", headers)
        if reply.status != 200:
            raise ConnectionError(f"long-poll open refused: {reply.status} {reply.content!r}")
        opened = json.loads(reply.content)
        base = url.split("?", 1)[0]
        return cls(base, opened["session"], opened.get("subprotocol"))

    async def send(self, message: str | bytes) -> HttpReply:
        binary = isinstance(message, bytes)
        body = message if binary else message.encode()
        kind = "application/octet-stream" if binary else "text/plain; charset=utf-8"
        return await http_call(f"{self.url}?session={self.session}", "POST", body, {"Content-Type": kind})

    async def recv(self, timeout: float = 5.0) -> str | bytes:
        """The next message; raises :class:`ConnectionError` once closed (``close_code`` set)."""
        with anyio.fail_after(timeout):
            while True:
                reply = await http_call(f"{self.url}?session={self.session}", timeout=timeout + 30)
                if reply.status == 200:
                    binary = reply.headers.get("content-type", "").startswith("application/octet-stream")
                    return reply.content if binary else reply.content.decode()
                if reply.status == 410:
                    self.close_code = json.loads(reply.content)["code"]
                    raise ConnectionError(f"closed with {self.close_code}")
                if reply.status != 204:
                    raise ConnectionError(f"poll failed: {reply.status}")

    async def close(self) -> None:
        await http_call(f"{self.url}?session={self.session}", "DELETE")


async def ws_exchange(ws: Any, body: str, *, request_id: Any = 1, method: str = "POST", timeout: float = 10.0,
                      **fields: Any) -> dict[str, Any]:
    """One request/response route called over a channel (WebSocket or :func:`wt_connect`): the reply dict."""
    await ws.send(json.dumps({"id": request_id, "method": method, "body": body, **fields}))
    with anyio.fail_after(timeout):
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == request_id:
                return reply


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


def self_signed_certificate(directory: Any, hostname: str = "localhost", days: int = 10) -> tuple[Any, Any]:
    """Write a self-signed ECDSA P-256 certificate and key (PEM) for ``hostname``, 127.0.0.1 and ::1.

    Returns ``(cert_path, key_path)``. Uses ``cryptography`` (installed with aioquic).
    """
    import datetime
    import ipaddress
    import pathlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = pathlib.Path(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


async def h3_call(url: str, method: str = "GET", body: bytes = b"", headers: Mapping[str, str] | None = None,
                  timeout: float = 30.0) -> HttpReply:
    """One HTTP/3 request (aioquic; certificate not verified), e.g. to the WebTransport listener."""
    import asyncio
    import ssl
    from urllib.parse import urlsplit

    from aioquic.asyncio import QuicConnectionProtocol, connect
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration

    parts = urlsplit(url)
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    reply: dict[str, Any] = {"headers": {}, "body": b""}

    class Protocol(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic)

        def quic_event_received(self, event: Any) -> None:
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived):
                    reply["headers"].update({k.decode(): v.decode() for k, v in h3_event.headers})
                elif isinstance(h3_event, DataReceived):
                    reply["body"] += h3_event.data
                if getattr(h3_event, "stream_ended", False) and not done.done():
                    done.set_result(None)

    configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=True)
    configuration.verify_mode = ssl.CERT_NONE
    with anyio.fail_after(timeout):
        async with connect(parts.hostname, parts.port, configuration=configuration, create_protocol=Protocol) as protocol:
            stream_id = protocol._quic.get_next_available_stream_id()
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            protocol.h3.send_headers(stream_id, [
                (b":method", method.encode()), (b":scheme", b"https"), (b":authority", parts.netloc.encode()),
                (b":path", target.encode()), *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ], end_stream=not body)
            if body:
                protocol.h3.send_data(stream_id, body, end_stream=True)
            protocol.transmit()
            await done
    status = int(reply["headers"].pop(":status"))
    return HttpReply(status, reply["headers"], reply["body"])


class WebTransportSessionClient:
    """A WebTransport session from aioquic with raw streams (for tests and test peers).

    ``open_stream()`` opens a bidirectional stream, ``send_stream`` writes to it,
    ``accept_stream()`` waits for one the server opened, ``receive_stream`` reads (``b""`` at
    its end). ``close_code`` is the server's CLOSE_WEBTRANSPORT_SESSION code once it closed.
    """

    def __init__(self, url: str, verify: bool = False, headers: Mapping[str, str] | None = None,
                 protocols: Sequence[str] = ()) -> None:
        self.url = url
        self.verify = verify
        self.headers = dict(headers or {})
        if protocols:
            self.headers["wt-available-protocols"] = ", ".join(f'"{p}"' for p in protocols)
        self.protocol: str | None = None  # the server's choice (wt-protocol)
        self.close_code: int | None = None
        self.certificate_sha256: str | None = None

    async def __aenter__(self) -> "WebTransportSessionClient":
        import asyncio
        import hashlib
        import ssl
        import struct
        from urllib.parse import urlsplit

        from aioquic.asyncio import QuicConnectionProtocol, connect
        from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
        from aioquic.h3.events import DataReceived, HeadersReceived, WebTransportStreamDataReceived
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.events import ConnectionTerminated, StreamDataReceived

        from rendezvous.transports.webtransport import CLOSE_WEBTRANSPORT_SESSION, parse_capsules

        client = self
        parts = urlsplit(self.url)
        self._streams: dict[int, asyncio.Queue[bytes]] = {}
        self._incoming: asyncio.Queue[int] = asyncio.Queue()
        self._ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        capsules = bytearray()

        def stream_data(stream_id: int, data: bytes, ended: bool) -> None:
            queue = client._streams.get(stream_id)
            if queue is None:
                queue = client._streams[stream_id] = asyncio.Queue()
                if stream_id & 0x3 == 1:  # server-initiated bidirectional
                    client._incoming.put_nowait(stream_id)
            if data:
                queue.put_nowait(data)
            if ended:
                queue.put_nowait(b"")

        class Protocol(QuicConnectionProtocol):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.h3 = H3Connection(self._quic, enable_webtransport=True)

            def quic_event_received(self, event: Any) -> None:
                if isinstance(event, ConnectionTerminated):
                    client._closed.set()
                    if not client._ready.done():
                        client._ready.set_exception(ConnectionError(event.reason_phrase))
                for h3_event in self.h3.handle_event(event):
                    if isinstance(h3_event, HeadersReceived) and h3_event.stream_id == client.session_id:
                        headers = dict(h3_event.headers)
                        if headers.get(b"wt-protocol") is not None:
                            client.protocol = headers[b"wt-protocol"].decode().strip('"')
                        if not client._ready.done():
                            if headers.get(b":status") == b"200":
                                client._ready.set_result(None)
                            else:
                                client._ready.set_exception(ConnectionError(f"status {headers.get(b':status')!r}"))
                    elif isinstance(h3_event, WebTransportStreamDataReceived):
                        stream_data(h3_event.stream_id, h3_event.data, h3_event.stream_ended)
                    elif isinstance(h3_event, DataReceived) and h3_event.stream_id == client.session_id:
                        capsules.extend(h3_event.data)
                        for kind, payload in parse_capsules(capsules):
                            if kind == CLOSE_WEBTRANSPORT_SESSION:
                                client.close_code = struct.unpack("!I", payload[:4])[0]
                        if h3_event.stream_ended:
                            client._closed.set()
                # A server stream that so far carried only its preamble (aioquic reports none).
                if isinstance(event, StreamDataReceived) and event.stream_id not in client._streams:
                    stream = self.h3._stream.get(event.stream_id)
                    if stream is not None and stream.frame_type == FrameType.WEBTRANSPORT_STREAM:
                        stream_data(event.stream_id, b"", False)

        configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=True, max_datagram_frame_size=65536)
        if not self.verify:
            configuration.verify_mode = ssl.CERT_NONE
        self._cm = connect(parts.hostname, parts.port, configuration=configuration, create_protocol=Protocol)
        self._protocol = await self._cm.__aenter__()
        protocol = self._protocol
        self.session_id = protocol._quic.get_next_available_stream_id()
        protocol.h3.send_headers(self.session_id, [
            (b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":scheme", b"https"),
            (b":authority", parts.netloc.encode()), (b":path", (parts.path or "/").encode() + (b"?" + parts.query.encode() if parts.query else b"")),
            (b"sec-webtransport-http3-draft02", b"1"), (b"origin", b"http://" + parts.netloc.encode()),
            *((k.lower().encode(), v.encode()) for k, v in self.headers.items()),
        ])
        protocol.transmit()
        with anyio.fail_after(5):
            await self._ready
        tls = protocol._quic.tls
        if getattr(tls, "_peer_certificate", None) is not None:
            from cryptography.hazmat.primitives import serialization

            self.certificate_sha256 = hashlib.sha256(tls._peer_certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
        return self

    def open_stream(self) -> int:
        import asyncio

        from aioquic.h3.connection import FrameType

        protocol = self._protocol
        stream_id = protocol.h3.create_webtransport_stream(self.session_id)
        # aioquic 1.7.2 does not register a bidirectional WebTransport stream it opens itself
        # (spec webtransport.md, pitfall 10): without this the replies parse as HTTP/3 frames.
        with protocol.h3._get_or_create_stream(stream_id) as stream:
            stream.frame_type = FrameType.WEBTRANSPORT_STREAM
            stream.session_id = self.session_id
        self._streams[stream_id] = asyncio.Queue()
        protocol.transmit()
        return stream_id

    def send_stream(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self._protocol._quic.send_stream_data(stream_id, data, end_stream=end)
        self._protocol.transmit()

    async def accept_stream(self, timeout: float = 5.0) -> int:
        with anyio.fail_after(timeout):
            return await self._incoming.get()

    async def receive_stream(self, stream_id: int, timeout: float = 5.0) -> bytes:
        with anyio.fail_after(timeout):
            return await self._streams[stream_id].get()

    def close(self, code: int = 0, reason: str = "") -> None:
        from rendezvous.transports.webtransport import close_capsule

        self._protocol.h3.send_data(self.session_id, close_capsule(code, reason), end_stream=True)
        self._protocol.transmit()

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        with anyio.fail_after(timeout):
            await self._closed.wait()
        return self.close_code

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


class WebTransportClient(WebTransportSessionClient):
    """A WebTransport session speaking rendezvous's channel framing (docs/transports.md).

    ``async with wt_connect(url) as wt: await wt.send("x"); await wt.recv()``.
    """

    async def __aenter__(self) -> "WebTransportClient":
        await super().__aenter__()
        self.stream_id = self.open_stream()
        self._buffer = bytearray()
        self._messages: list[str | bytes] = []
        return self

    async def send(self, message: str | bytes) -> None:
        import struct

        kind, data = (0, message.encode()) if isinstance(message, str) else (1, message)
        self.send_stream(self.stream_id, struct.pack("!IB", len(data), kind) + data)

    def send_datagram(self, message: str | bytes) -> None:
        """One message as a datagram (``u8 kind | payload``)."""
        kind, data = (b"\x00", message.encode()) if isinstance(message, str) else (b"\x01", message)
        self._protocol.h3.send_datagram(self.session_id, kind + data)
        self._protocol.transmit()

    def send_unidirectional(self, message: str | bytes) -> None:
        """One message as a unidirectional stream (``u8 kind | payload``, then FIN)."""
        kind, data = (b"\x00", message.encode()) if isinstance(message, str) else (b"\x01", message)
        stream_id = self._protocol.h3.create_webtransport_stream(self.session_id, is_unidirectional=True)
        self.send_stream(stream_id, kind + data, end=True)

    async def recv(self, timeout: float = 5.0) -> str | bytes:
        import struct

        with anyio.fail_after(timeout):
            while True:
                if len(self._buffer) >= 5:
                    length, kind = struct.unpack_from("!IB", self._buffer)
                    if len(self._buffer) >= 5 + length:
                        payload = bytes(self._buffer[5:5 + length])
                        del self._buffer[:5 + length]
                        return payload.decode() if kind == 0 else payload
                chunk = await self._streams[self.stream_id].get()
                if not chunk and self._streams[self.stream_id].empty():
                    await anyio.sleep(0.01)
                self._buffer += chunk


def wt_connect(url: str, verify: bool = False, headers: Mapping[str, str] | None = None,
               protocols: Sequence[str] = ()) -> WebTransportClient:
    """A :class:`WebTransportClient` (channel framing); :class:`WebTransportSessionClient` for raw streams."""
    return WebTransportClient(url, verify, headers, protocols)
