"""The ``memory`` backend's pairing store: :class:`Pairing` behind the store interface (the
rules themselves are the contract suite's, tests/integration/test_redis_pairing_contract.py)."""

from __future__ import annotations

import anyio
import pytest

from rendezvous.backends import create_backend
from rendezvous.core import Deliver, Dropped, Expired
from rendezvous.testing import FakeClock

pytestmark = pytest.mark.anyio


def store(clock=None, **timeouts):
    return create_backend("memory").pairing("sf", **({"hold_timeout": 10.0, "answer_timeout": 10.0} | timeouts),
                                            **({"clock": clock} if clock else {}))


async def test_its_own_timers_deliver_through_the_attached_executor():
    s = store(hold_timeout=0.05, answer_timeout=0.05)
    told = []

    async def execute(effects):
        told.extend(effects)

    s.attach(execute)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        now = anyio.current_time()
        await s.wait(now, "s1", "proxy1", "pool", 0)
        await s.wait(now, "s2", "proxy2", "pool", 0)
        await s.ask(now, "client", ["pool"], "o")  # proxy1 is matched; its client waits for the answer
        with anyio.fail_after(2):
            while len(told) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert told == [Expired("proxy2", "hold"), Expired("client", "answer")]


async def test_answer_reports_the_waiters_info_and_forgets_it_on_every_exit():
    clock = FakeClock(0.0)
    s = store(clock, answer_timeout=5.0)
    clients = ["c0", "c1", "c2", "c3"]  # (Pairing tells parties apart by identity)
    for i, client in enumerate(clients):
        await s.wait(0.0, f"s{i}", f"p{i}", "pool", i, info=("standalone", f"nat{i}"))
        await s.ask(0.0, client, ["pool"], "o")
    assert await s.answer(1.0, "s0", "a") == (("standalone", "nat0"), [Deliver("c0", "a")])  # answered
    assert await s.gone(1.0, clients[1]) == [Dropped("asker_gone")]  # hung up
    assert await s.advance(5.0) == [Expired("c2", "answer"), Expired("c3", "answer")]  # timed out
    assert await s.answer(5.0, "s2", "late") == (None, [Dropped("asker_gone")])
    assert s._asker_info == {}
