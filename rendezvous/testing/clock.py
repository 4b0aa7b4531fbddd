"""Time for tests: a clock moved by hand, and waiting for a condition."""

from __future__ import annotations

from typing import Any

import anyio


class FakeClock:
    """A clock you move by hand: pass it as ``clock=`` wherever a ``() -> float`` is taken."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


async def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until it is true; ``TimeoutError`` after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 -- polls an arbitrary predicate: no event to wait on
            await anyio.sleep(interval)
