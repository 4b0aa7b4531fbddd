"""Prometheus metrics: one registry per running server, so servers in one process never clash."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rendezvous.transports.base import HttpRequest, HttpResponse


# The originals export no *_created series; neither do we.
disable_created_metrics()


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def metrics_handler(registry: CollectorRegistry):
    async def handle(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, generate_latest(registry), (("content-type", CONTENT_TYPE_LATEST),))

    return handle


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse.text(200, "ok\n")
