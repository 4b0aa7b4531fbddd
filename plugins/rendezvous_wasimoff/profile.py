"""The wasimoff profile: a broker for WebAssembly tasks (generations C and A), as the
``rendezvous.profiles`` entry point sees it: its settings, what they mean for the server, and
the runtime it creates (:mod:`rendezvous_wasimoff.runtime`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rendezvous.errors import ConfigError
from rendezvous.profile import ProfileContext
from rendezvous_wasimoff.runtime import WasimoffRuntime
from rendezvous_wasimoff.settings import WasimoffSettings, parse_listen
from rendezvous_wasimoff.tasks import TaskHandle

# TaskHandle and WasimoffRuntime lived here before the split; kept importable from here.
__all__ = ["TaskHandle", "WasimoffProfile", "WasimoffRuntime", "WasimoffSettings"]


class WasimoffProfile:
    name = "wasimoff"
    distributed = True  # nodes of a cluster share the task queue (backend = "redis"): clients and providers on any node
    summary = "wasimoff broker: WebAssembly tasks dispatched to providers (gen C: WebSocket + protobuf; gen A: WebTransport + MessagePack)"
    settings = WasimoffSettings
    default_port = 4080
    server_env: Mapping[str, Sequence[str]] = {"cert": ("WASIMOFF_HTTP_CERT",), "key": ("WASIMOFF_HTTP_KEY",)}
    # The profile serves its own /healthz ("OK\n"); /metrics only with WASIMOFF_METRICS.
    server_defaults: Mapping[str, Any] = {"metrics_path": "", "healthz_path": ""}

    def server_values(self, settings: WasimoffSettings) -> Mapping[str, tuple[Any, str]]:
        host, port = parse_listen(settings.http_listen)
        values: dict[str, tuple[Any, str]] = {"host": (host, "WASIMOFF_HTTP_LISTEN"), "port": (port, "WASIMOFF_HTTP_LISTEN")}
        if settings.metrics:
            values["metrics_path"] = ("/metrics", "WASIMOFF_METRICS")
        if settings.quic_listen:
            quic_host, quic_port = parse_listen(settings.quic_listen, "WASIMOFF_QUIC_LISTEN")
            values["webtransport_port"] = (quic_port, "WASIMOFF_QUIC_LISTEN")
            values["webtransport_host"] = (quic_host, "WASIMOFF_QUIC_LISTEN")  # ":4443" is every interface, as Go
        if settings.quic_cert is not None:
            values["webtransport_cert"] = (settings.quic_cert, "WASIMOFF_QUIC_CERT")
            values["webtransport_key"] = (settings.quic_key, "WASIMOFF_QUIC_KEY")
            if settings.https:
                values["cert"] = (settings.quic_cert, "WASIMOFF_HTTPS")
                values["key"] = (settings.quic_key, "WASIMOFF_HTTPS")
        return values

    def validate(self, settings: WasimoffSettings, server: Any) -> None:
        if settings.cloud_credentials or settings.cloud_function:
            raise ConfigError("WASIMOFF_CLOUD_*: Cloud Run offload is not supported yet")
        if settings.benchmode:
            raise ConfigError("WASIMOFF_BENCHMODE: not supported yet (bench/wasimoff.py generates load instead)")

    def create(self, context: ProfileContext) -> WasimoffRuntime:
        return WasimoffRuntime(context)
