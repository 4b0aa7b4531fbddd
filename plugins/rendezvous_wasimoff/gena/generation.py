"""Generation A's routes, put together: ``/transport`` for providers, ``/api/broker/v1/*`` for clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rendezvous.transports.base import ExchangeRoute, SessionRoute
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.gena.api import ClientApi
from rendezvous_wasimoff.gena.provider import GenAProvider
from rendezvous_wasimoff.gena.transport import ProviderTransport

API = "/api/broker/v1"


class GenerationA:
    def __init__(self, broker: Broker, webtransport: Callable[[], Any]) -> None:
        self.providers: dict[GenAProvider, None] = {}  # admitted, in order
        transport = ProviderTransport(broker, self.providers)
        api = ClientApi(broker, self.providers, webtransport)
        cap = broker.settings.max_upload
        self.routes = [
            SessionRoute("/transport", transport.handle),
            ExchangeRoute(API + "/healthz", api.healthz),
            ExchangeRoute(API + "/config", api.config),
            ExchangeRoute(API + "/upload", api.upload, frozenset(), cap, 413),
            ExchangeRoute(API + "/run", api.run, frozenset(), cap, 413),
        ]
