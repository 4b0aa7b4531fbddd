"""The wasimoff broker's Prometheus metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge, Histogram
from prometheus_client.core import Metric

from rendezvous.observe.metrics import ExactCounter


class Metrics:
    """The original broker's metrics, under its names."""

    def __init__(self, registry: Any) -> None:
        # The original's counters carry no _total suffix.
        self.completed = ExactCounter("wasimoff_tasks_completed", "tasks completed", registry)
        self.scheduled = ExactCounter("wasimoff_tasks_scheduled", "tasks sent to a provider", registry)
        self.execution = Histogram("wasimoff_tasks_execution", "seconds from submission to result", registry=registry)
        self.retries = RetryCounter(registry)
        self.queued = Gauge("wasimoff_tasks_queued", "tasks waiting for a provider", registry=registry)
        self.dispatching = Gauge("wasimoff_tasks_dispatching", "tasks running on providers", registry=registry)
        self.workers = Gauge("wasimoff_available_workers", "free task slots", ["provider"], registry=registry)
        self.providers = Gauge("wasimoff_connected_providers", "connected providers", registry=registry)


class RetryCounter:
    """``wasimoff_task_retries_count{attempt}`` as the original's CounterVec: one sample per
    attempt number (2, 3, ...) that was made, counted when the retry is sent to a provider.
    Exposed untyped under exactly that name, like :class:`ExactCounter` (no ``_total``)."""

    name = "wasimoff_task_retries_count"

    def __init__(self, registry: Any) -> None:
        self.counts: dict[int, int] = {}
        if registry is not None:
            registry.register(self)

    def attempt(self, number: int) -> None:
        self.counts[number] = self.counts.get(number, 0) + 1

    def collect(self):
        metric = Metric(self.name, "number of retries across all scheduled tasks", "unknown")
        for number, count in sorted(self.counts.items()):
            metric.add_sample(self.name, {"attempt": str(number)}, float(count))
        yield metric

    def describe(self):
        return list(self.collect())
