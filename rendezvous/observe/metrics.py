"""Prometheus metrics: one registry per running server, so servers in one process never clash."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from rendezvous.transports.base import HttpRequest, HttpResponse

# The originals export no *_created series; neither do we.
disable_created_metrics()


class ExactCounter(Collector):
    """A monotonic count exposed under exactly ``name``, for originals whose counters carry no
    ``_total`` (Go's client adds none), so their dashboards and queries keep working.

    prometheus_client's text format always appends ``_total`` to *counter* families, so this
    one is exposed untyped; the samples and their names are what the original serves.
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def collect(self):
        metric = Metric(self.name, self.documentation, "unknown")
        metric.add_sample(self.name, {}, self.value)
        yield metric

    def describe(self):
        return list(self.collect())


class ProfileLabelled(Collector):
    """Every metric of one profile's registry, with a ``profile="<name>"`` label added.

    Used when one process serves several profiles: each profile registers its metrics in
    a registry of its own (so a profile's own exposition, e.g. Snowflake's ``/prometheus``, stays
    unlabelled), and the server's ``/metrics`` shows all of them labelled by profile.
    """

    def __init__(self, name: str, source: CollectorRegistry) -> None:
        self.name = name
        self.source = source

    def collect(self):
        for metric in self.source.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            for sample in metric.samples:
                labelled.add_sample(sample.name, {**sample.labels, "profile": self.name}, sample.value,
                                    sample.timestamp, sample.exemplar)
            yield labelled

    def describe(self):
        return []


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def metrics_handler(registry: CollectorRegistry):
    async def handle(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, generate_latest(registry), (("content-type", CONTENT_TYPE_LATEST),))

    return handle


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse.text(200, "ok\n")
