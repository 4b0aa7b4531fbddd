"""What a profile reports to the status page: a *reading*, ``{id: Gauge | Counter | Latency}``.

A runtime's ``status()`` returns one each second (the ids are stable: they are the keys of
``/status.json``; the order is the page's). Readings hold totals and values as they are now; what
the page shows over time (rates, medians) is worked out by
:class:`rendezvous.observe.status.history.StatusHistory`. Exact numbers, please: a profile whose
exported metrics are rounded (Snowflake's, to multiples of 8) reads its own exact counts.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs


@attrs.frozen
class Gauge:
    """A number as it is now (proxies waiting, free slots)."""

    label: str
    value: float
    unit: str = ""


@attrs.frozen
class Counter:
    """A running total (clients matched, tasks completed), shown as a rate: what it grew by in
    the last ``window`` seconds, per ``per`` seconds (60: per minute, 1: per second). A total
    that goes down was reset; it then counts from zero."""

    label: str
    total: float
    per: float = 60.0
    window: float = 60.0


@attrs.frozen
class Latency:
    """Durations observed so far (seconds) as counts per bucket: ``counts[i]`` fell in
    ``(bounds[i-1], bounds[i]]``, the last count above every bound. Shown as the median of
    what was observed in the last ``window`` seconds."""

    label: str
    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    window: float = 60.0

    def __attrs_post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError("a Latency needs a count per bound and one above them all")


Reading = Mapping[str, "Gauge | Counter | Latency"]


def log_bounds(low: float = 0.001, high: float = 60.0, factor: float = 1.25) -> tuple[float, ...]:
    """Bucket bounds from ``low`` up to at least ``high``, each ``factor`` times the last."""
    count = math.ceil(math.log(high / low) / math.log(factor)) + 1
    return tuple(low * factor**i for i in range(count))


class LatencyHistogram:
    """Durations counted in fixed buckets, for a profile that has no histogram of its own.

    1 ms to 60 s, each bucket 25 % wider than the one before: observing is a bisect and an
    increment, the whole is 51 counts, and a median read from it is within about 12 %.
    """

    def __init__(self, bounds: Sequence[float] = log_bounds()) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1

    def reading(self, label: str, window: float = 60.0) -> Latency:
        return Latency(label, self.bounds, tuple(self.counts), window)


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q`` quantile of per-bucket ``counts``, interpolated linearly within its bucket (as
    Prometheus' ``histogram_quantile``); above every bound, the largest bound. None: no counts."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if count > 0 and seen + count >= rank:
            if i == len(bounds):
                return bounds[-1] if bounds else None
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (rank - seen) / count
        seen += count
    return bounds[-1] if bounds else None


# -- from prometheus_client metrics (their public collect()) -------------------------------------
def metric_value(metric: Any) -> float:
    """The sum of a prometheus_client metric's samples without a suffix (an unlabelled Gauge's or
    Counter's value; a labelled one's summed over its labels)."""
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name or sample.name == family.name + "_total":
                total += sample.value
    return total


def metric_values(metric: Any, label: str) -> dict[str, float]:
    """A labelled prometheus_client Gauge or Counter summed by one of its labels."""
    out: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name or sample.name == family.name + "_total":
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def histogram_latency(histogram: Any, label: str, window: float = 60.0) -> Latency:
    """A prometheus_client Histogram (unlabelled) as a :class:`Latency`: its cumulative buckets
    (``le``) turned into counts per bucket."""
    bounds: list[float] = []
    cumulative: list[float] = []
    everything = 0.0
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                if math.isinf(le):
                    everything = sample.value
                else:
                    bounds.append(le)
                    cumulative.append(sample.value)
    below = [0.0, *cumulative]
    counts = [high - low for low, high in zip(below, cumulative, strict=False)]  # (below: one longer)
    counts.append(max(0.0, everything - below[-1]))
    return Latency(label, tuple(bounds), tuple(counts), window)
