"""The node's one connection to Redis: auto-pipelining, replies matched in FIFO order.

Every command issued during one event-loop step is written with one ``write`` when the step
ends (``loop.call_soon``), and one reader task matches replies to calls in order. Callers
await a future and never touch the connection, so a cancelled caller cannot leave the
connection off by one reply (redis-py#2624); its reply still arrives and is handed to the
call's ``late`` callback, so what a script did is never lost. Nothing is retried: when the
connection drops, every pending call fails with :class:`BackendUnavailable` (a script may or
may not have run), calls fail at once until the reader has reconnected, and EVALSHA's
NOSCRIPT (the script did not run) is the one reply answered by sending the command again.

redis-py (with hiredis) does the connecting (URL, AUTH, SELECT, TLS; with Sentinel, asking for the
primary at each connect), the command packing and the reply parsing; its pool, client and retry
machinery are not used: measured, they cost the broker ~60 µs of CPU per call, the batch here ~10 µs.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from redis.asyncio.connection import AbstractConnection, ConnectionPool

try:
    import hiredis
except ImportError:  # (the redis extra brings hiredis; without it, redis-py's packer and reader)
    hiredis = None  # type: ignore[assignment]
from redis._parsers.base import BaseParser
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rendezvous.backends.base import BackendUnavailable
from rendezvous.backends.redis.urls import SENTINEL_SCHEME, SentinelTarget, parse_sentinel_url

Late = Callable[[Any], None]
# A pending call: (future, or None for eval_then and send; the late callback (eval_then: its
# then; send: None); script; its args)
_Entry = tuple[Any, Any, Any, tuple]


class Script:
    """A Lua script, called by its SHA1 (EVALSHA), with every key passed as an argument."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def connection_factory(url: str, *, connect_timeout: float = 2.0) -> Callable[[], AbstractConnection]:
    """Fresh redis-py connections for ``url``: no read timeout (a reader waits as long as it
    must), one connect attempt per call (the caller decides when to try again), and RESP2
    (redis-py 8 defaults to RESP3, where a subscribed connection's frames are push messages
    that its parser hands to callbacks instead of returning them)."""
    options: dict[str, Any] = {"socket_timeout": None, "socket_connect_timeout": connect_timeout, "protocol": 2,
                               "retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
    if url.startswith(SENTINEL_SCHEME + "://"):
        return _sentinel_factory(parse_sentinel_url(url), connect_timeout, options)
    pool = ConnectionPool.from_url(url, **options)
    return pool.make_connection


def _sentinel_factory(target: SentinelTarget, connect_timeout: float, options: dict[str, Any]) -> Callable[[], AbstractConnection]:
    """Connections to the primary the Sentinels name at each connect (redis-py's
    SentinelManagedConnection asks them; none answering, or none knowing a primary, fails the
    connect like an unreachable Redis, and the caller tries again)."""
    sentinel = _Sentinel(target.sentinels, sentinel_kwargs={
        "socket_timeout": connect_timeout, "socket_connect_timeout": connect_timeout, "protocol": 2,
        "retry": Retry(NoBackoff(), 0), "username": target.sentinel_username, "password": target.sentinel_password})
    pool = SentinelConnectionPool(target.service, sentinel, db=target.db, username=target.username,
                                  password=target.password, **options)
    return pool.make_connection


def describe(url: str) -> str:
    """``url`` without its passwords (the user's, and any ``…password=`` option), for messages."""
    scheme, sep, rest = url.partition("://")
    rest, question, query = rest.partition("?")
    if "@" in rest:
        rest = "…@" + rest.rpartition("@")[2]
    if question:
        options = [option.partition("=") for option in query.split("&")]
        query = "&".join(k + eq + ("…" if "password" in k else v) for k, eq, v in options)
    return scheme + sep + rest + question + query


def _packer(conn: AbstractConnection) -> Callable[..., list[bytes]]:
    """hiredis's packer called directly: redis-py's runs every argument through its Python encoder
    first (7 µs for a 15-argument script call against 1 µs; the largest single cost of a call).
    Arguments are str (UTF-8), bytes, int or float."""
    if hiredis is None or not isinstance(conn, AbstractConnection):
        return conn.pack_command
    pack_command = hiredis.pack_command

    def pack(*args: Any) -> list[bytes]:
        return [pack_command(args)]

    return pack


class _Sentinel(Sentinel):
    """redis-py's Sentinel, with a "no primary" error that says in one line what each Sentinel
    answered (redis-py's names every client with its whole configuration)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        problems = []
        for sentinel in self.sentinels:
            options = sentinel.connection_pool.connection_kwargs
            where = f"{options.get('host')}:{options.get('port')}"
            try:
                masters: Any = await sentinel.sentinel_masters()  # {name: state}
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                problems.append(f"{where}: {exc}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                return state["ip"], state["port"]
            problems.append(f"{where}: " + ("its primary is down" if state else f"no primary named {service_name!r}"))
        raise MasterNotFoundError(f"no Sentinel names a primary {service_name!r} ({'; '.join(problems)})")


class _ReplyError(Exception):
    """An error reply as hiredis hands it over (turned into redis-py's exception classes)."""


class Replies(asyncio.Protocol):
    """What a connection receives, parsed as it arrives: once redis-py has connected (AUTH, SELECT,
    TLS), the transport is handed to this protocol, and every reply goes to ``on_reply`` from the
    event loop's own callback: no reader task, stream buffer or coroutine per reply. ``lost``
    completes when the connection is gone."""

    def __init__(self, on_reply: Callable[[Any], None]) -> None:
        self._reader = hiredis.Reader(replyError=_ReplyError)
        self._on_reply = on_reply
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    @classmethod
    def take(cls, conn: AbstractConnection, on_reply: Callable[[Any], None]) -> Replies | None:
        """Take over ``conn``'s transport (None where that cannot be done: no hiredis, or not a
        redis-py connection; then the caller reads with redis-py)."""
        writer = getattr(conn, "_writer", None)
        if hiredis is None or not isinstance(conn, AbstractConnection) or writer is None:
            return None
        protocol = cls(on_reply)
        protocol.transport = writer.transport
        protocol.transport.set_protocol(protocol)
        return protocol

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        reply = reader.gets(False)
        while reply is not False:
            if type(reply) is _ReplyError:
                reply = BaseParser.parse_error(str(reply))
            try:
                self._on_reply(reply)
            except Exception as exc:
                self._fail(exc)
                return
            reply = reader.gets(False)

    def _fail(self, exc: BaseException) -> None:
        """A reply could not be handled (the connection is out of step, or a bug): drop the
        connection, so that its owner starts again on a fresh one and says why."""
        if not self.lost.done():
            self.lost.set_exception(exc if isinstance(exc, RedisError) else RedisError(f"handling a reply failed: {exc!r}"))
        self.transport.close()

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_exception(RedisConnectionError(f"connection lost{': ' + str(exc) if exc else ''}"))


def _not_connected(*args: Any) -> list[bytes]:
    raise BackendUnavailable("not connected")


async def reconnecting(connect: Callable[[], Awaitable[AbstractConnection]],
                       serve: Callable[[AbstractConnection, bool], Awaitable[None]], *, name: str,
                       task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Keep one connection up: ``serve(connection, first)`` uses it until it is lost, then
    connect again (backoff 50 ms doubling to 1 s). Started once the first connection is up; if
    that one fails, :class:`BackendUnavailable`: a node must not start without its backend."""
    started = False
    backoff = 0.05
    while True:
        try:
            conn = await connect()
        except (RedisError, OSError) as exc:
            if not started:
                raise BackendUnavailable(f"cannot connect to {name}: {exc}") from exc
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
            continue
        backoff = 0.05
        if not started:
            task_status.started()
        try:
            await serve(conn, not started)
        except (RedisError, OSError):
            pass  # lost: whoever waited on it was told in serve(); the next connection starts clean
        finally:
            started = True
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
        await anyio.sleep(backoff)


class Mux:
    def __init__(self, connect: Callable[[], AbstractConnection], scripts: Iterable[Script], *,
                 on_late: Callable[[Late, Any], None], name: str = "redis",
                 on_connect: Callable[[bool], None] | None = None) -> None:
        self._new_connection = connect
        self._scripts = tuple(scripts)
        self._on_late = on_late
        self._on_connect = on_connect  # called with ``first`` each time the connection is (re)made
        self.name = name
        self._conn: AbstractConnection | None = None
        self._write: Callable[[bytes], None] | None = None
        self._pack: Callable[..., list[bytes]] = _not_connected
        self._pending: collections.deque[_Entry] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop: Any = None  # the running loop, once run() started
        self.batches = 0  # writes made (calls / batches = the average batch)
        self.calls = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def address(self) -> str:
        """Where the connection goes (with Sentinel: the primary it found), or "" while there is none."""
        conn = self._conn
        if conn is None:
            return ""
        path = getattr(conn, "path", None)
        return str(path) if path else f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"

    # -- calls ------------------------------------------------------------------------------
    def call(self, *args: Any, late: Late | None = None) -> asyncio.Future:
        """Send one command; the future gets its reply (a ``ResponseError`` as the exception)."""
        return self._submit(None, args, late)

    def eval(self, script: Script, *args: Any, late: Late | None = None) -> asyncio.Future:
        """Run ``script`` with ``args`` (as ARGV; no KEYS)."""
        return self._submit(script, args, late)

    def eval_then(self, script: Script, *args: Any, then: Late) -> None:
        """Run ``script`` with ``args`` and hand its reply to ``then`` (through ``on_late``, so
        that a failing callback is logged, not the connection's end): no future, no await, for
        callers without a task. An error reply, a lost connection or none at all is handed over
        as the exception (at once when not connected)."""
        if self._conn is None:
            self._on_late(then, BackendUnavailable(f"not connected to {self.name}"))
            return
        self._enqueue(self._pack_call(script, args), (None, then, script, args))

    def send(self, script: Script, *args: Any) -> None:
        """Run ``script`` and ignore its reply (compensating calls whose outcome nobody waits for)."""
        if self._conn is not None:
            self._enqueue(self._pack_call(script, args), (None, None, script, args))

    def _submit(self, script: Script | None, args: tuple, late: Late | None) -> asyncio.Future:
        loop = self._loop or asyncio.get_running_loop()
        future = loop.create_future()
        if self._conn is None:
            future.set_exception(BackendUnavailable(f"not connected to {self.name}"))
            return future
        self._enqueue(self._pack_call(script, args), (future, late, script, args))
        return future

    def _pack_call(self, script: Script | None, args: tuple) -> list[bytes]:
        if script is None:
            return self._pack(*args)
        return self._pack("EVALSHA", script.sha, 0, *args)

    def _enqueue(self, packed: list[bytes], entry: _Entry) -> None:
        self._out += packed
        self._pending.append(entry)
        self.calls += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._write is not None:
            data = b"".join(self._out)
            self._out.clear()
            self.batches += 1
            self._write(data)

    # -- the connection -----------------------------------------------------------------------
    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, then read replies until cancelled, reconnecting after a loss. Reports started
        once connected; raises :class:`BackendUnavailable` if that first connection fails."""
        self._loop = asyncio.get_running_loop()
        await reconnecting(self._connect, self._serve, name=self.name, task_status=task_status)

    async def _serve(self, conn: AbstractConnection, first: bool) -> None:
        replies = Replies.take(conn, self._reply)
        write = replies.transport.write if replies is not None else conn._writer.write  # type: ignore[union-attr]
        self._conn, self._write, self._pack = conn, write, _packer(conn)
        if self._on_connect is not None:
            self._on_connect(first)
        try:
            if replies is not None:
                await replies.lost
            else:
                await self._read(conn)
        finally:
            self._conn = self._write = None
            self._out.clear()
            self._fail_pending(BackendUnavailable(f"connection to {self.name} lost"))

    async def _connect(self) -> AbstractConnection:
        conn = self._new_connection()
        await conn.connect()
        try:
            for script in self._scripts:  # so that EVALSHA finds them (a restarted server has none)
                await conn.send_command("SCRIPT", "LOAD", script.source)
                await conn.read_response(timeout=math.inf)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    async def _read(self, conn: AbstractConnection) -> None:
        """Replies read with redis-py (where :class:`Replies` cannot take the connection over)."""
        while True:
            try:
                reply = await conn.read_response(disable_decoding=True, timeout=math.inf)
            except ResponseError as exc:
                reply = exc
            self._reply(reply)

    def _reply(self, reply: Any) -> None:
        """The next reply: the oldest pending call's."""
        if not self._pending:
            raise RedisError("a reply came that no call asked for")
        if type(reply) is ReadOnlyError:
            # A replica: this primary was demoted (a failover) and the connection outlived it. The
            # call did not run; drop the connection (it fails with the others as unavailable), and
            # the next one goes where the Sentinels now point.
            raise RedisError("connected to a read-only replica: reconnecting")
        future, late, script, args = self._pending.popleft()
        if type(reply) is NoScriptError and script is not None:
            # Not run (the server lost its script cache): send it in full, same future.
            self._enqueue(self._pack("EVAL", script.source, 0, *args), (future, late, script, args))
            return
        if future is None:
            if late is not None:  # a callback's (eval_then)
                self._on_late(late, reply)
            return
        if future.cancelled():  # its caller was cancelled; the reply still counts
            if late is not None:
                self._on_late(late, reply)
        elif isinstance(reply, ResponseError):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    def _fail_pending(self, error: BackendUnavailable) -> None:
        pending, self._pending = self._pending, collections.deque()
        for future, late, _, _ in pending:
            if future is None or future.cancelled():
                if late is not None:
                    self._on_late(late, error)
            else:
                future.set_exception(error)
