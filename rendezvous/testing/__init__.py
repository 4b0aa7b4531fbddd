"""Public helpers for testing profiles, ours and third parties', the way we test ours.

- :class:`FakeClock` to drive a core matcher by hand (unit tests, no I/O).
- :func:`serve` to start a real server on 127.0.0.1 with an ephemeral port.
- :func:`ws_connect`, :func:`recv_json`, :func:`assert_silent` for WebSocket clients
  (needs the ``websockets`` package: ``pip install rendezvous[test]``).
- :func:`http_call`: one HTTP/1.1 request per connection, for many concurrent long-polls.
- :func:`wt_connect`, :class:`WebTransportSessionClient`, :func:`h3_call`: WebTransport and
  HTTP/3 clients (aioquic), from :mod:`rendezvous.testing.webtransport`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator, Mapping, Sequence

import anyio

from rendezvous.server import RunningServer, make_config, running
from rendezvous.testing.webtransport import WebTransportClient, WebTransportSessionClient, h3_call, wt_connect


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
