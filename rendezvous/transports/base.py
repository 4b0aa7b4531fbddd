"""The seams between transports and profiles."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs


class ChannelClosed(Exception):
    """The channel is closed; ``code`` is the close code (peer's or ours)."""

    def __init__(self, code: int = 1005, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class SendTimeout(Exception):
    """A send waited longer than its ``timeout`` for a peer that is not reading."""


_NAMES: dict[bytes, str] = {}  # raw header name -> its lower-case str (the few names clients send)


def header_map(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Raw header pairs → lower-case names; repeated headers joined with ", " (RFC 9110 §5.3)."""
    out: dict[str, str] = {}
    names = _NAMES
    for k, v in pairs:
        name = names.get(k)
        if name is None:
            name = k.decode("latin-1").lower()
            if len(names) < 1024 and len(k) <= 64:
                names[k] = name
        value = v.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


class Inbox:
    """Messages waiting for one channel's ``receive()``, and whether (and how) it closed.

    For transports that parse frames themselves (native WebSocket, WebTransport): the
    protocol side ``put``s messages and ``close``s; the channel side awaits ``get``.
    """

    __slots__ = ("_loop", "_waiter", "closed", "code", "messages", "reason")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.messages: collections.deque[str | bytes] = collections.deque()
        self.closed = False
        self.code = 1005
        self.reason = ""
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop  # (the running loop: the transport passes it, else asked at the first wait)

    def put(self, message: str | bytes) -> None:
        self.messages.append(message)
        self._wake()

    def close(self, code: int, reason: str = "") -> None:
        """Mark closed (the first code wins) and wake a waiting ``get``."""
        if not self.closed:
            self.closed = True
            self.code = code
            self.reason = reason
            self._wake()

    @property
    def waiting(self) -> bool:
        """A ``get`` is waiting (an Inbox serves one reader at a time)."""
        return self._waiter is not None

    def raise_if_closed(self) -> None:
        if self.closed:
            raise ChannelClosed(self.code, self.reason)

    async def get(self) -> str | bytes:
        """The next message; once closed and empty, raises :class:`ChannelClosed`."""
        while not self.messages:
            self.raise_if_closed()
            loop = self._loop
            if loop is None:  # (asked once: on Python 3.11 each ask is a getpid() system call)
                loop = self._loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self.messages.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@attrs.frozen
class ConnectionInfo:
    """What a transport knows about who is on the other end."""

    transport: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    client_host: str | None
    client_port: int | None
    subprotocols: Sequence[str] = ()


class Channel(Protocol):
    """A bidirectional message channel (a WebSocket, a WebTransport stream, a long-poll pair)."""

    info: ConnectionInfo

    async def accept(self, subprotocol: str | None = None) -> None: ...

    async def refuse(self, status: int = 403, body: bytes = b"") -> None:
        """Refuse the channel before accepting it (an HTTP status where the transport has one)."""

    def expect(self, kind: str) -> None:
        """Only ``"text"`` or only ``"binary"`` messages are valid from now on. A transport that
        reads frames itself then refuses the other kind on the frame's header (close 1003),
        before buffering it; others may ignore the hint (the profile checks anyway)."""

    async def receive(self) -> str | bytes:
        """The next whole message; raises :class:`ChannelClosed` once closed."""

    async def send(self, message: str | bytes, timeout: float | None = None) -> None:
        """Send one message; raises :class:`ChannelClosed` if the channel is gone.

        With ``timeout``, raises :class:`SendTimeout` if the peer's buffer stays full that
        long (transports make the common, non-blocking case cost nothing extra).
        """

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a code. Safe from any task and safe to repeat; a blocked ``receive`` ends."""


ChannelHandler = Callable[[Channel], Awaitable[None]]


@attrs.frozen
class HttpRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    client_host: str | None


@attrs.frozen
class HttpResponse:
    status: int = 200
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> HttpResponse:
        return cls(status, text.encode(), (("content-type", content_type),))


ExchangeHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
METHOD_NOT_ALLOWED = HttpResponse.text(405, "method not allowed\n")

#: Hands a request its response: called exactly once, at once or later (further calls are ignored).
Respond = Callable[[HttpResponse], None]
#: Called instead, when the client leaves before its response: the handler forgets the request.
Forget = Callable[[], None]
#: An exchange handler in callback form: no task, no coroutine. It calls ``respond`` now (a
#: request answered at once) or keeps it (a long-poll: called when the answer arrives), and
#: returns what to call if the client leaves first, or None.
ImmediateHandler = Callable[[HttpRequest, Respond], Forget | None]


def awaitable(immediate: ImmediateHandler) -> ExchangeHandler:
    """``immediate`` as an ordinary exchange handler, for carriers that run one per task."""

    async def handler(request: HttpRequest) -> HttpResponse:
        future: asyncio.Future[HttpResponse] = asyncio.get_running_loop().create_future()

        def respond(response: HttpResponse) -> None:
            if not future.done():
                future.set_result(response)

        forget = immediate(request, respond)
        try:
            return await future
        finally:
            # Cancelled (the client left): the task's cancel cancels the future, so no response came.
            if forget is not None and (not future.done() or future.cancelled()):
                forget()

    return handler


@attrs.frozen
class ChannelRoute:
    """A bidirectional channel endpoint at an exact path."""

    path: str
    handler: ChannelHandler
    max_message_size: int = 64 * 1024


@attrs.frozen
class ExchangeRoute:
    """A request/response exchange at an exact path (``methods`` empty means any method)."""

    path: str
    handler: ExchangeHandler
    methods: frozenset[str] = frozenset()
    max_body_size: int = 100_000
    too_large_status: int = 400  # Go's MaxBytesReader brokers answer 400; others prefer 413
    #: the same handler in callback form, for carriers that can run it without a task (the
    #: native server); build such a route with :meth:`immediate_route`
    immediate: ImmediateHandler | None = None

    @classmethod
    def immediate_route(cls, path: str, immediate: ImmediateHandler, methods: frozenset[str] = frozenset(),
                        max_body_size: int = 100_000, too_large_status: int = 400) -> ExchangeRoute:
        """A route whose handler is ``immediate``; carriers without a callback path await it."""
        return cls(path, awaitable(immediate), methods, max_body_size, too_large_status, immediate)

    def refusal(self, method: str) -> HttpResponse | None:
        """The answer to a request this route does not take by its method (405), else None."""
        if self.methods and method not in self.methods:
            return METHOD_NOT_ALLOWED
        return None


@attrs.frozen
class SessionRoute:
    """A WebTransport session handed to ``handler`` whole, streams and all (for protocols that
    use QUIC streams directly, such as wasimoff's generation A). Only WebTransport carries it."""

    path: str
    handler: Callable[[Any], Awaitable[None]]


Route = ChannelRoute | ExchangeRoute | SessionRoute
