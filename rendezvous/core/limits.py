"""Rate limits as pure state: token buckets per key, given the time."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class KeyedRateLimiter:
    """A token bucket per key (e.g. per client IP), with a bounded number of keys.

    ``rate`` tokens per second, bursts of up to ``burst``. The key table is bounded by
    ``max_keys``; when full, the least recently used key is forgotten (which can only make
    the limiter more lenient for that key, never block an innocent one).
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def allow(self, key: Hashable, now: float) -> bool:
        tokens, stamp = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
