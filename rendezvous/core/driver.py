"""The small anyio driver that turns a matcher's ``next_deadline()`` into waiting."""

from __future__ import annotations

import math
import time
from typing import Awaitable, Callable, Protocol, Sequence

import anyio

from rendezvous.core.effects import Effect


class Timed(Protocol):
    def advance(self, now: float) -> Sequence[Effect]: ...
    def next_deadline(self) -> float | None: ...


class Driver:
    """Wakes a matcher at its deadlines and hands the due effects to ``execute``.

    Callers that change a matcher's deadlines from outside (opening a party, say) call
    :meth:`poke` so that an earlier deadline is noticed. Deadlines only ever get earlier
    when a party is added, so poking after opens is enough.
    """

    def __init__(
        self,
        matcher: Timed,
        execute: Callable[[Sequence[Effect]], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.matcher = matcher
        self.execute = execute
        self.clock = clock
        self._wake = anyio.Event()
        self._sleeping_until = math.inf

    def poke(self) -> None:
        deadline = self.matcher.next_deadline()
        if deadline is not None and deadline < self._sleeping_until:
            self._wake.set()

    async def run(self) -> None:
        while True:
            now = self.clock()
            effects = self.matcher.advance(now)
            if effects:
                await self.execute(effects)
            deadline = self.matcher.next_deadline()
            self._sleeping_until = math.inf if deadline is None else deadline
            self._wake = anyio.Event()
            delay = None if deadline is None else max(0.0, deadline - self.clock())
            with anyio.move_on_after(delay):
                await self._wake.wait()
