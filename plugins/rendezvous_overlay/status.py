"""The overlay's numbers on the status page (``/status``): roots, open prospects, joins per
second, and how long a root takes to answer a joiner (join → answer, the median of the last
minute, from the ``join_answer_latency_seconds`` histogram's buckets)."""

from __future__ import annotations

from typing import Any

from rendezvous.observe.status import Counter, Gauge, Reading, histogram_latency, metric_value


class OverlayStatus:
    """``runtime.status``: read each second by the server's status sampler."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def __call__(self) -> Reading:
        runtime = self.runtime
        metrics = runtime.metrics
        return {
            "roots": Gauge("roots", runtime.router.root_count),
            "prospects": Gauge("open prospects", runtime.router.endpoint_count),
            "joins": Counter("joins", metric_value(metrics.joins), per=1.0, window=10.0),
            "join_answer_latency": histogram_latency(metrics.latency, "join → answer latency (p50)"),
        }
