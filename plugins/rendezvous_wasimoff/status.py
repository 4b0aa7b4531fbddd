"""wasimoff's numbers on the status page (``/status``): providers and their free slots, the
queue, tasks running, tasks completed per second, failures (tasks given up after their last
attempt, and transport failures retried) and the median time from submission to result.

Everything exact: the dispatcher's own state, the broker's exact counters, and a count of the
tasks that failed, which the broker feeds (:meth:`WasimoffStatus.task_failed`).
"""

from __future__ import annotations

from typing import Any

from rendezvous.observe.status import Counter, Gauge, Reading, histogram_latency


class WasimoffStatus:
    """``runtime.status``: read each second by the server's status sampler.

    ``dispatch``: the broker's :class:`rendezvous.core.Dispatch`; ``metrics``: its Prometheus
    metrics (``completed``, ``retries``, ``execution``)."""

    def __init__(self, dispatch: Any, metrics: Any) -> None:
        self.dispatch = dispatch
        self.metrics = metrics
        self.failed = 0

    def task_failed(self) -> None:
        """A task failed for good (its last attempt's transport error): its client gets an error."""
        self.failed += 1

    def __call__(self) -> Reading:
        dispatch, metrics = self.dispatch, self.metrics
        return {
            "providers": Gauge("providers", dispatch.workers),
            "free_slots": Gauge("free slots", dispatch.free_slots()),
            "queued": Gauge("queue length", dispatch.queued),
            "running": Gauge("tasks running", dispatch.in_flight),
            "tasks": Counter("tasks completed", metrics.completed.value, per=1.0, window=10.0),
            "failed": Counter("tasks failed", self.failed),
            "retries": Counter("tasks retried", sum(metrics.retries.counts.values())),
            "task_time": histogram_latency(metrics.execution, "task time (p50)"),
        }
