"""The wasimoff profile's settings: the original's environment variables and our own knobs."""

from __future__ import annotations

import pathlib

import attrs

from rendezvous.core import Policy
from rendezvous.settings import positive, setting


def parse_listen(value: str, what: str = "WASIMOFF_HTTP_LISTEN") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{what}: expected [host]:port, got {value!r}")
    return host.strip("[]") or "::", int(port)


@attrs.frozen
class WasimoffSettings:
    http_listen: str = setting("localhost:4080", help="TCP listener, [host]:port", env=["WASIMOFF_HTTP_LISTEN"])
    allowed_origins: tuple[str, ...] = setting((), help="Origin host patterns allowed on the provider socket (comma list)", env=["WASIMOFF_ALLOWED_ORIGINS"])
    static_files: pathlib.Path | None = setting(pathlib.Path("../webprovider/dist/"), help="directory served on / (a provider web app)", env=["WASIMOFF_STATIC_FILES"])
    filestorage: str = setting(":memory:", help=":memory:, dirfs://PATH or a plain PATH (persistent)", env=["WASIMOFF_FILESTORAGE"])
    metrics: bool = setting(False, help="serve Prometheus metrics at /metrics", env=["WASIMOFF_METRICS"])
    cloud_credentials: str = setting("", help="Cloud Run offload credentials (not supported yet)", env=["WASIMOFF_CLOUD_CREDENTIALS"])
    cloud_function: str = setting("", help="Cloud Run offload function (not supported yet)", env=["WASIMOFF_CLOUD_FUNCTION"])
    benchmode: int = setting(0, help="broker-generated tsp load (not supported yet; use bench/wasimoff.py)", env=["WASIMOFF_BENCHMODE"])
    scheduler: Policy = setting(Policy.SIMPLE_MATCH, help="simplematch (original default), roundrobin or anyfree")
    queue_limit: int = setting(2048, help="queued tasks before submissions fail with 429 Queue Full", validator=positive)
    max_attempts: int = setting(10, help="attempts per task on transport errors", validator=positive)
    max_upload: int = setting(128 * 1024 * 1024, help="largest upload / request body, bytes (bigger: 413 / 400)", validator=positive)
    max_message_size: int = setting(128 * 1024 * 1024, help="largest socket message, bytes (bigger: close 1009)", validator=positive)
    ping_interval: float = setting(5.0, help="seconds between Ping requests to each provider", validator=positive)
    ping_misses: int = setting(3, help="unanswered Pings in a row before a provider is dropped (its tasks retry elsewhere)", validator=positive)
    listing_timeout: float = setting(10.0, help="seconds a new provider has to answer the Listing request", validator=positive)
    send_timeout: float = setting(5.0, help="seconds a message to a provider may wait for it to read (plus 1 s per MiB); "
                                            "then it is closed 1008 and its tasks retry elsewhere", validator=positive)
    # generation A (WebTransport): spec wasimoff.md §1
    quic_listen: str = setting(":4443", help="UDP listener for WebTransport providers (generation A), [host]:port; '' turns it off", env=["WASIMOFF_QUIC_LISTEN"])
    quic_cert: pathlib.Path | None = setting(None, help="WebTransport certificate (PEM); unset: an ephemeral one, renewed while running", env=["WASIMOFF_QUIC_CERT"])
    quic_key: pathlib.Path | None = setting(None, help="WebTransport private key (PEM), with quic_cert", env=["WASIMOFF_QUIC_KEY"])
    https: bool = setting(False, help="serve the HTTP listener with the QUIC certificate too (HTTPS)", env=["WASIMOFF_HTTPS"])
    transport_url: str = setting("", help="WebTransport URL given to providers by /api/broker/v1/config (unset: https://<host the page used>:<quic port>/transport)", env=["WASIMOFF_TRANSPORT_URL"])

    def __attrs_post_init__(self) -> None:
        parse_listen(self.http_listen)
        if self.quic_listen:
            parse_listen(self.quic_listen, "WASIMOFF_QUIC_LISTEN")
        if (self.quic_cert is None) != (self.quic_key is None):
            raise ValueError("WASIMOFF_QUIC_CERT and WASIMOFF_QUIC_KEY: give both or neither")
        if self.https and self.quic_cert is None:
            raise ValueError("WASIMOFF_HTTPS needs WASIMOFF_QUIC_CERT and WASIMOFF_QUIC_KEY (not supported with the ephemeral certificate)")
