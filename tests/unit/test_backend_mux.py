"""The redis backend's mux against a scripted connection (no server): one write per loop step,
replies in FIFO order whatever the callers do, nothing ever sent twice but the one command
that did not run (NOSCRIPT), and a lost connection fails what was pending without resending it."""

from __future__ import annotations

import ast
import asyncio

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from rendezvous.backends import BackendUnavailable
from rendezvous.backends.redis.mux import Mux, Script

pytestmark = pytest.mark.anyio
SCRIPT = Script("test", "return ARGV[1]")


class FakeConnection:
    """Replies to what is written: ECHO x → x; EVALSHA → NOSCRIPT while the server's scripts are
    flushed; EVAL → its first argument (and the script is cached again); anything else → an error
    reply. ``hold`` keeps replies back (the server is slow) until ``release``."""

    def __init__(self, server: "FakeServer") -> None:
        self.server = server
        self.replies: asyncio.Queue = asyncio.Queue()
        self.held: list = []
        self.holding = False
        self._writer = self

    async def connect(self) -> None:
        if self.server.down:
            raise OSError("connection refused")
        self.server.connections.append(self)

    async def send_command(self, *args) -> None:  # SCRIPT LOAD at connect
        self.server.flushed = False
        self.replies.put_nowait(b"sha1")

    def pack_command(self, *args) -> list[bytes]:
        return [repr(args).encode() + b"\n"]

    def write(self, data: bytes) -> None:
        commands = [ast.literal_eval(line.decode()) for line in data.splitlines()]
        self.server.writes.append(commands)
        for command in commands:
            self.held.append(self._answer(command))
        if not self.holding:
            self.release()

    def release(self) -> None:
        for reply in self.held:
            self.replies.put_nowait(reply)
        self.held.clear()

    def lose(self) -> None:
        self.replies.put_nowait(RedisConnectionError("connection lost"))

    async def read_response(self, disable_decoding: bool = False, timeout: float | None = None):
        reply = await self.replies.get()
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def disconnect(self, nowait: bool = False) -> None:
        pass

    def _answer(self, command: tuple):
        name, args = command[0], command[1:]
        if name == "ECHO":
            return args[0].encode()
        if name == "EVALSHA":
            return NoScriptError("NOSCRIPT No matching script") if self.server.flushed else args[2].encode()
        if name == "EVAL":
            self.server.flushed = False
            return args[2].encode()
        return ResponseError(f"ERR unknown command '{name}'")


class FakeServer:
    def __init__(self) -> None:
        self.writes: list[list[tuple]] = []
        self.connections: list[FakeConnection] = []
        self.flushed = False
        self.down = False

    def sent(self) -> list[tuple]:
        return [command for write in self.writes for command in write]


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def mux(server):
    mux = Mux(lambda: FakeConnection(server), [SCRIPT], on_late=lambda late, reply: late(reply))
    async with anyio.create_task_group() as tg:
        await tg.start(mux.run)
        yield mux
        tg.cancel_scope.cancel()


async def test_calls_of_one_loop_step_leave_as_one_write_and_get_their_own_replies(mux, server):
    futures = [mux.call("ECHO", str(i)) for i in range(50)] + [mux.eval(SCRIPT, "x")]
    replies = [await f for f in futures]
    assert replies == [str(i).encode() for i in range(50)] + [b"x"]
    assert len(server.writes) == 1 and len(server.writes[0]) == 51


async def test_an_error_reply_fails_its_own_call_only(mux):
    bad, good = mux.call("NOPE"), mux.call("ECHO", "fine")
    with pytest.raises(ResponseError):
        await bad
    assert await good == b"fine"


async def test_a_cancelled_caller_leaves_the_replies_in_step_and_its_own_goes_to_late(mux, server):
    conn = server.connections[-1]
    conn.holding = True
    late = []
    results = {}

    async def call(i: int) -> None:
        results[i] = await mux.call("ECHO", str(i), late=late.append)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(call, i)
        await anyio.sleep(0.01)  # all six on the wire, no reply yet
        tg.cancel_scope.cancel()  # every caller is cancelled...
    async with anyio.create_task_group() as tg:
        for i in range(6, 9):
            tg.start_soon(call, i)
        await anyio.sleep(0.01)
        conn.release()  # ... their replies come, then the next callers'
    assert late == [str(i).encode() for i in range(6)]
    assert results == {i: str(i).encode() for i in range(6, 9)}


async def test_nothing_is_sent_again_after_a_lost_connection(mux, server):
    conn = server.connections[-1]
    conn.holding = True
    pending = [mux.eval(SCRIPT, "once"), mux.call("ECHO", "too")]
    await anyio.sleep(0.01)
    conn.lose()
    for future in pending:
        with pytest.raises(BackendUnavailable):
            await future
    with pytest.raises(BackendUnavailable):  # fails at once while there is no connection
        await mux.call("ECHO", "meanwhile")
    with anyio.fail_after(2):
        while not mux.connected:
            await anyio.sleep(0.01)
    assert await mux.call("ECHO", "after") == b"after"
    assert [c for c in server.sent() if c[0] != "ECHO" or c[1] != "after"] == [("EVALSHA", SCRIPT.sha, 0, "once"), ("ECHO", "too")]


async def test_a_script_the_server_lost_is_sent_in_full_once(mux, server):
    server.flushed = True
    assert await mux.eval(SCRIPT, "a") == b"a"
    assert await mux.eval(SCRIPT, "b") == b"b"
    assert server.sent() == [("EVALSHA", SCRIPT.sha, 0, "a"), ("EVAL", SCRIPT.source, 0, "a"), ("EVALSHA", SCRIPT.sha, 0, "b")]


async def test_the_first_connection_failing_is_an_error_at_start(server):
    server.down = True
    mux = Mux(lambda: FakeConnection(server), [], on_late=lambda late, reply: None, name="fake redis")
    with pytest.raises(BackendUnavailable, match="cannot connect to fake redis"):
        await mux.run()
