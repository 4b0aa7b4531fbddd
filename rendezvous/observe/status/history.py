"""A profile's status numbers over the last minutes, sans-IO: given readings and the time.

:class:`StatusHistory` keeps one sample per :meth:`~StatusHistory.add` (the sampler adds one a
second) for ``keep`` seconds. Each sample holds what the page shows at that moment:

- a :class:`~.readings.Gauge` as it was;
- a :class:`~.readings.Counter` as a rate: what the total grew by over its window, divided by
  the window (or by the time its increments cover, when sampling stalled for longer);
- a :class:`~.readings.Latency` as the median of the observations made in its window (the
  per-bucket increments summed, interpolated within the median's bucket).

:meth:`~StatusHistory.view` is the JSON form: each number's latest value and its series, every
sample of the last ``fine`` seconds and before that one point per ``step`` seconds (the last
sample of each step: the points stay put as time goes on), so ten minutes are ~170 points per
number whatever the sampling rate.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any

from rendezvous.observe.status.readings import Counter, Gauge, Latency, Reading, quantile


class _Window:
    """The increments of a total (one number per bucket) over the last ``length`` seconds."""

    def __init__(self, length: float) -> None:
        self.length = length
        self.items: collections.deque[tuple[float, float, list[float]]] = collections.deque()  # (from, to, increment)
        self.sum: list[float] = []
        self.last: list[float] | None = None
        self.last_time = 0.0

    def add(self, now: float, totals: Sequence[float]) -> None:
        totals = [float(t) for t in totals]
        if self.last is None or len(totals) != len(self.last):
            # The first reading (or a new bucket layout): nothing counted yet.
            self.items.clear()
            self.sum = [0.0] * len(totals)
        else:
            increment = [t - p for t, p in zip(totals, self.last, strict=True)]
            if any(d < 0 for d in increment):
                increment = totals  # reset: everything it holds came since
            self.items.append((self.last_time, now, increment))
            self.sum = [s + d for s, d in zip(self.sum, increment, strict=True)]
        self.last, self.last_time = totals, now
        while self.items and self.items[0][1] <= now - self.length:
            _, _, old = self.items.popleft()
            self.sum = [s - d for s, d in zip(self.sum, old, strict=True)]
        if not self.items:
            self.sum = [0.0] * len(totals)  # no float residue once the window is empty

    def span(self, now: float) -> float:
        """How many seconds the increments in the window cover."""
        return now - self.items[0][0] if self.items else 0.0


def _unit(item: Any) -> str:
    if type(item) is Counter:
        return {1.0: "/s", 60.0: "/min", 3600.0: "/h"}.get(float(item.per), f"/{item.per:g} s")
    if type(item) is Latency:
        return "s"
    return item.unit


def _kind(item: Any) -> str:
    return {Gauge: "gauge", Counter: "rate", Latency: "latency"}[type(item)]


def _rounded(value: float | None) -> float | int | None:
    """Four significant digits (the JSON stays small), integers as integers, nothing not finite."""
    if value is None or not math.isfinite(value):
        return None
    value = float(f"{value:.4g}")
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


class StatusHistory:
    """One profile's samples for the last ``keep`` seconds (see the module's docstring)."""

    def __init__(self, keep: float = 600.0, step: float = 5.0, interval: float = 1.0, fine: float = 60.0) -> None:
        self.keep = keep
        self.step = step
        self.fine = fine
        # Bounded by count as well as by time: a caller adding faster than ``interval`` shortens
        # the history instead of growing it.
        self._samples: collections.deque[tuple[float, dict[str, float | int | None]]] = collections.deque(
            maxlen=math.ceil(keep / interval) + 1)
        self._windows: dict[str, _Window] = {}
        self._meta: dict[str, dict[str, Any]] = {}  # the latest reading's numbers: label, kind, unit, window

    def add(self, now: float, reading: Reading) -> None:
        values: dict[str, float | None] = {}
        meta: dict[str, dict[str, Any]] = {}
        for key, item in reading.items():
            meta[key] = {"label": item.label, "kind": _kind(item), "unit": _unit(item)}
            if isinstance(item, Gauge):
                values[key] = float(item.value)
                continue
            window = self._windows.get(key)
            if window is None or window.length != item.window:
                window = self._windows[key] = _Window(item.window)
            meta[key]["window"] = item.window
            if isinstance(item, Counter):
                window.add(now, (item.total,))
                # Over the whole window even when less has passed: the server counted nothing
                # before it started, so a fresh start shows no spike.
                values[key] = window.sum[0] / max(item.window, window.span(now)) * item.per
            else:
                window.add(now, item.counts)
                values[key] = quantile(0.5, item.bounds, window.sum)
                meta[key]["count"] = sum(window.sum)
        for key in [k for k in self._windows if k not in meta]:
            del self._windows[key]  # a number no longer reported
        self._meta = meta
        self._samples.append((now, {key: _rounded(v) for key, v in values.items()}))  # rounded once, shown often
        while self._samples and self._samples[0][0] <= now - self.keep:
            self._samples.popleft()

    def latest(self) -> dict[str, float | int | None]:
        """The newest sample's values, as shown (empty before the first)."""
        return dict(self._samples[-1][1]) if self._samples else {}

    def view(self) -> dict[str, Any]:
        """``{"times": [seconds before the newest sample, ...], "metrics": {id: {label, kind, unit,
        value, series, ...}}}``: the numbers of the latest reading, each with its series."""
        samples = self._samples
        if not samples:
            return {"times": [], "metrics": {}}
        newest = samples[-1][0]
        picked = [sample for i, sample in enumerate(samples)
                  if sample[0] > newest - self.fine or i == len(samples) - 1
                  or math.floor(sample[0] / self.step) != math.floor(samples[i + 1][0] / self.step)]
        metrics: dict[str, Any] = {}
        for key, meta in self._meta.items():
            entry = dict(meta)
            if "count" in entry:
                entry["count"] = _rounded(entry["count"])
            entry["value"] = samples[-1][1].get(key)
            entry["series"] = [values.get(key) for _, values in picked]
            metrics[key] = entry
        return {"times": [round(t - newest, 1) for t, _ in picked], "metrics": metrics}
