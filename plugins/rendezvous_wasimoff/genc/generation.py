"""Generation C's routes, put together: the provider and client sockets, ConnectRPC, HTTP exec,
``/healthz`` and ``/api/version``."""

from __future__ import annotations

import json

from rendezvous.transports.base import Channel, ChannelRoute, ExchangeRoute, HttpRequest, HttpResponse
from rendezvous_wasimoff.broker import Broker
from rendezvous_wasimoff.genc.client_socket import client_socket
from rendezvous_wasimoff.genc.connect import ConnectRpc
from rendezvous_wasimoff.genc.http_exec import PATH as EXEC_PATH
from rendezvous_wasimoff.genc.http_exec import http_exec
from rendezvous_wasimoff.genc.providers import ProviderSockets

VERSION = "rendezvous-wasimoff 0.1.0 (gen C wire protocol)"
TEXT = ("content-type", "text/plain; charset=utf-8")


class GenerationC:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.provider_sockets = ProviderSockets(broker)
        self.providers = self.provider_sockets.sessions  # admitted, in order
        settings = broker.settings
        cap = settings.max_message_size
        self.routes = [
            ChannelRoute("/api/provider/ws", self.provider_sockets.handle, cap),
            ChannelRoute("/api/client/ws", self.client_socket, cap),
            *ConnectRpc(broker).routes,
            ExchangeRoute(EXEC_PATH + "*", self.http_exec, frozenset(), settings.max_upload, 413),
            ExchangeRoute("/healthz", self.healthz, frozenset({"GET", "HEAD"})),
            ExchangeRoute("/api/version", self.version, frozenset({"GET", "HEAD"})),
        ]

    async def run(self) -> None:
        await self.provider_sockets.throughput_forever()

    async def client_socket(self, channel: Channel) -> None:
        await client_socket(self.broker, channel)

    async def http_exec(self, request: HttpRequest) -> HttpResponse:
        return await http_exec(self.broker, request)

    async def healthz(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"OK\n", (TEXT,))

    async def version(self, request: HttpRequest) -> HttpResponse:
        body = json.dumps({"version": VERSION, "protocol": "wasimoff.v1"}).encode()
        return HttpResponse(200, body, (("content-type", "application/json"),))
