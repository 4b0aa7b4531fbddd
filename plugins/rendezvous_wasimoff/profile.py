"""wasimoff profile (generation C): provider and client sockets, ConnectRPC, HTTP exec, storage,
all driving the core's dispatch matcher."""

from __future__ import annotations

import base64
import fnmatch
import itertools
import json
import pathlib
import re
import shlex
import time
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qs, quote, urlsplit

import anyio
import anyio.to_thread
import attrs
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from prometheus_client import Gauge, Histogram
from prometheus_client.core import Metric

from rendezvous.core import Deliver, Dispatch, Failed, Policy, QueueFull, Revoke
from rendezvous.core.driver import Driver
from rendezvous.errors import ConfigError
from rendezvous.observe.metrics import ExactCounter
from rendezvous.profile import ProfileContext
from rendezvous.settings import positive, setting
from rendezvous.transports.base import (Channel, ChannelClosed, ChannelRoute, ExchangeRoute, HttpRequest, HttpResponse,
                                       SendTimeout)
from rendezvous_wasimoff import schema
from rendezvous_wasimoff.codec import SUBPROTOCOLS, BadFrame, Codec, pack, unpack
from rendezvous_wasimoff.gena import GenAProvider, GenerationA
from rendezvous_wasimoff.storage import Unsupported, open_storage

VERSION = "rendezvous-wasimoff 0.1.0 (gen C wire protocol)"
CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED, CLOSE_POLICY, CLOSE_INTERNAL = 1002, 1003, 1008, 1011
# A provider's name (?id=) goes into logs, a metric label and the X-Wasimoff-Provider header:
# printable ASCII without leading or trailing spaces, at most 256 characters (real providers send a nanoid).
PROVIDER_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7f) if chr(c) != "%")
SEND_SECONDS_PER_MIB = 1.0  # on top of send_timeout: a big task may take longer to reach a provider
TEXT = ("content-type", "text/plain; charset=utf-8")
CORS = ("access-control-allow-origin", "*")
CONNECT_STATUS = {"invalid_argument": 400, "not_found": 404, "resource_exhausted": 429, "unknown": 500,
                  "internal": 500, "unimplemented": 501, "unavailable": 503, "canceled": 499}


def _parse_listen(value: str, what: str = "WASIMOFF_HTTP_LISTEN") -> tuple[str, int]:
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
        _parse_listen(self.http_listen)
        if self.quic_listen:
            _parse_listen(self.quic_listen, "WASIMOFF_QUIC_LISTEN")
        if (self.quic_cert is None) != (self.quic_key is None):
            raise ValueError("WASIMOFF_QUIC_CERT and WASIMOFF_QUIC_KEY: give both or neither")
        if self.https and self.quic_cert is None:
            raise ValueError("WASIMOFF_HTTPS needs WASIMOFF_QUIC_CERT and WASIMOFF_QUIC_KEY (not supported with the ephemeral certificate)")


class WasimoffProfile:
    name = "wasimoff"
    summary = "wasimoff broker: WebAssembly tasks dispatched to providers (gen C: WebSocket + protobuf; gen A: WebTransport + MessagePack)"
    settings = WasimoffSettings
    default_port = 4080
    server_env: Mapping[str, Sequence[str]] = {"cert": ("WASIMOFF_HTTP_CERT",), "key": ("WASIMOFF_HTTP_KEY",)}
    # The profile serves its own /healthz ("OK\n"); /metrics only with WASIMOFF_METRICS.
    server_defaults: Mapping[str, Any] = {"metrics_path": "", "healthz_path": ""}

    def server_values(self, settings: WasimoffSettings) -> Mapping[str, tuple[Any, str]]:
        host, port = _parse_listen(settings.http_listen)
        values: dict[str, tuple[Any, str]] = {"host": (host, "WASIMOFF_HTTP_LISTEN"), "port": (port, "WASIMOFF_HTTP_LISTEN")}
        if settings.metrics:
            values["metrics_path"] = ("/metrics", "WASIMOFF_METRICS")
        if settings.quic_listen:
            values["webtransport_port"] = (_parse_listen(settings.quic_listen, "WASIMOFF_QUIC_LISTEN")[1], "WASIMOFF_QUIC_LISTEN")
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

    def create(self, context: ProfileContext) -> "WasimoffRuntime":
        return WasimoffRuntime(context)


class RpcError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TaskHandle:
    """One client request while it is queued, running or retried."""

    __slots__ = ("id", "request", "kind", "needs", "event", "result", "error", "started", "attempts")

    def __init__(self, task_id: str, request: Message, kind: str, needs: frozenset[str]) -> None:
        self.id = task_id
        self.request = request
        self.kind = kind  # "wasip1" | "pyodide"
        self.needs = needs
        self.event = anyio.Event()
        self.result: Message | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self.attempts = 0  # times sent to a provider


class _Metrics:
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

    def collect(self):  # type: ignore[no-untyped-def]
        metric = Metric(self.name, "number of retries across all scheduled tasks", "unknown")
        for number, count in sorted(self.counts.items()):
            metric.add_sample(self.name, {"attempt": str(number)}, float(count))
        yield metric

    def describe(self):  # type: ignore[no-untyped-def]
        return list(self.collect())


class ProviderSession:
    """One connected provider: its socket, sequence numbers and pending requests."""

    def __init__(self, runtime: "WasimoffRuntime", channel: Channel, codec: Codec, name: str) -> None:
        self.runtime = runtime
        self.channel = channel
        self.codec = codec
        self.name = name
        self._seq = itertools.count(1)
        self.pending: dict[int, tuple[str, Any]] = {}
        self.listing: anyio.Event = anyio.Event()
        self.files: list[str] | None = None
        self.ping_misses = 0
        self.completed_recently = 0
        self.capacity = 0  # announced by ProviderResources, possibly before the Listing answer

    async def send(self, kind: int, payload: Message, sequence: int | None = None, error: str = "") -> int:
        envelope = schema.Envelope(sequence=next(self._seq) if sequence is None else sequence, type=kind)
        if error:
            envelope.error = error
        if payload is not None:
            pack(envelope, payload)
        await self._send(self.codec.encode(envelope))
        return envelope.sequence

    async def request(self, payload: Message, what: str, obj: Any = None) -> None:
        sequence = next(self._seq)
        self.pending[sequence] = (what, obj)
        envelope = schema.Envelope(sequence=sequence, type=schema.REQUEST)
        pack(envelope, payload)
        await self._send(self.codec.encode(envelope))

    async def _send(self, frame: str | bytes) -> None:
        """Send with a deadline: a provider that stops reading (a frozen tab) is closed 1008 and
        treated as disconnected (``ChannelClosed``), so its tasks retry elsewhere."""
        timeout = self.runtime.settings.send_timeout + len(frame) / (1 << 20) * SEND_SECONDS_PER_MIB
        try:
            await self.channel.send(frame, timeout)
        except SendTimeout:
            self.runtime.log.warning("provider stopped reading", provider=self.name)
            await self.channel.close(CLOSE_POLICY, "not reading fast enough")
            raise ChannelClosed(CLOSE_POLICY) from None


class WasimoffRuntime:
    def __init__(self, context: ProfileContext) -> None:
        s: WasimoffSettings = context.settings
        self.settings = s
        self.log = context.log
        self.clock = context.clock
        self.storage = open_storage(s.filestorage)
        self.dispatch = Dispatch(policy=s.scheduler, queue_limit=s.queue_limit, max_attempts=s.max_attempts)
        self.driver = Driver(self.dispatch, self.execute, context.clock)
        self.metrics = _Metrics(context.metrics)
        self.providers: dict[ProviderSession, None] = {}
        self.gen_a = GenerationA(self, context.webtransport)
        self._tasks: Any = None  # the run() task group (gen-A tasks run as RPC calls in it)
        self._task_ids = itertools.count(1)
        self._completions = 0
        cap = s.max_message_size
        rpc = "/api/client/wasimoff.v1.Tasks/"
        self.routes = [
            ChannelRoute("/api/provider/ws", self.provider_socket, cap),
            ChannelRoute("/api/client/ws", self.client_socket, cap),
            ExchangeRoute(rpc + "RunWasip1", self.rpc_run_wasip1, frozenset(), s.max_upload, 413),
            ExchangeRoute(rpc + "RunPyodide", self.rpc_run_pyodide, frozenset(), s.max_upload, 413),
            ExchangeRoute(rpc + "Upload", self.rpc_upload, frozenset(), s.max_upload, 413),
            ExchangeRoute("/api/client/run/*", self.http_exec, frozenset(), s.max_upload, 413),
            ExchangeRoute("/api/storage/upload", self.upload, frozenset(), s.max_upload, 413),
            ExchangeRoute("/api/storage/*", self.download, frozenset({"GET", "HEAD"})),
            ExchangeRoute("/healthz", self.healthz, frozenset({"GET", "HEAD"})),
            ExchangeRoute("/api/version", self.version, frozenset({"GET", "HEAD"})),
            *self.gen_a.routes,
        ]
        static = s.static_files
        self.static_dir = static if static is not None and static.is_dir() else None
        if static is not None and self.static_dir is None:
            self.log.info("no static provider app served", static_files=str(static))

    def describe(self, url: str) -> list[tuple[str, dict[str, str]]]:
        ws = "ws" + url[4:]
        return [("providers connect", {"url": f"{ws}/api/provider/ws"}), ("clients submit", {"url": f"{url}/api/client/"})]

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            tg.start_soon(self.driver.run)
            tg.start_soon(self._throughput_forever)

    # -- effects ---------------------------------------------------------------------------
    async def execute(self, effects: Sequence[Any]) -> None:
        for effect in effects:
            if type(effect) is Deliver:
                if isinstance(effect.to, (ProviderSession, GenAProvider)):
                    effect.payload.attempts += 1
                    if effect.payload.attempts > 1:
                        self.metrics.retries.attempt(effect.payload.attempts)
                if isinstance(effect.to, ProviderSession):
                    await self._start_task(effect.to, effect.payload)
                elif isinstance(effect.to, GenAProvider):
                    self.metrics.scheduled.inc()
                    self._tasks.start_soon(self.gen_a.start_task, effect.to, effect.payload)
                else:
                    task: TaskHandle = effect.to
                    task.result = effect.payload
                    task.event.set()
                    self._completions += 1
                    self.metrics.completed.inc()
                    self.metrics.execution.observe(time.monotonic() - task.started)
            elif type(effect) is Failed:
                effect.task.error = "\n".join(effect.errors)
                effect.task.event.set()
            elif type(effect) is Revoke:
                if isinstance(effect.worker, GenAProvider):
                    continue  # gen A has no cancel; the result is ignored when it comes
                session: ProviderSession = effect.worker
                try:
                    await session.request(schema.Cancel(id=effect.task.id, reason="client cancelled"), "cancel")
                except ChannelClosed:
                    pass
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.queued.set(self.dispatch.queued)
        self.metrics.dispatching.set(self.dispatch.in_flight)

    async def _start_task(self, session: ProviderSession, task: TaskHandle) -> None:
        request = type(task.request)()
        request.CopyFrom(task.request)
        request.info.id = task.id
        request.info.provider = session.name
        self.metrics.scheduled.inc()
        try:
            await session.request(request, "task", task)
        except ChannelClosed:
            await self.execute(self.dispatch.transport_error(self.clock(), task, session, "provider socket closed"))
            self.driver.poke()

    # -- providers ---------------------------------------------------------------------------
    async def provider_socket(self, channel: Channel) -> None:
        info = channel.info
        if not info.headers.get("user-agent"):
            await channel.refuse(400, b"no user-agent\n")
            return
        if not self._origin_allowed(info.headers):
            await channel.refuse(403, b"origin not allowed\n")
            return
        codec = await self._negotiate(channel)
        if codec is None:
            return
        name = parse_qs(info.query).get("id", ["anonymous"])[0] or "anonymous"
        if not PROVIDER_ID.fullmatch(name):
            self.log.info("provider refused: invalid id", id=name[:64])
            await channel.close(CLOSE_POLICY, "invalid provider id: printable ASCII, at most 256 characters")
            return
        session = ProviderSession(self, channel, codec, name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._receive_from_provider, session, tg.cancel_scope)
            try:
                await session.request(schema.ListingRequest(), "listing")
                with anyio.move_on_after(self.settings.listing_timeout):
                    await session.listing.wait()
                if session.files is None:
                    await channel.close(CLOSE_INTERNAL, "no answer to the Listing request")
                    return
                await self.admit_provider(session, name, self.providers, session.files, session.capacity)
                await self._ping_forever(session)
            except ChannelClosed:
                pass
            finally:
                with anyio.CancelScope(shield=True):
                    tg.cancel_scope.cancel()
                    await self.retire_provider(session, name, self.providers)
                    await channel.close(1000)

    @staticmethod
    async def _negotiate(channel: Channel) -> Codec | None:
        """Accept with the first of our subprotocols the peer offers; none → close 1002, as the original."""
        chosen = next((p for p in SUBPROTOCOLS if p in channel.info.subprotocols), None)
        if chosen is None:
            await channel.accept()
            await channel.close(CLOSE_PROTOCOL_ERROR, "unsupported subprotocol")
            return None
        await channel.accept(chosen)
        return Codec(chosen)

    def _origin_allowed(self, headers: Mapping[str, str]) -> bool:
        origin = headers.get("origin")
        if not origin:
            return True
        origin_host = urlsplit(origin).netloc.lower()
        if origin_host == headers.get("host", "").lower():
            return True  # same origin
        return any(fnmatch.fnmatch(origin_host, pattern.strip().lower()) for pattern in self.settings.allowed_origins)

    async def _ping_forever(self, session: ProviderSession) -> None:
        while True:
            await anyio.sleep(self.settings.ping_interval)
            if session.ping_misses >= self.settings.ping_misses:
                self.log.warning("provider stopped answering pings", provider=session.name)
                await session.channel.close(CLOSE_INTERNAL, "provider stopped answering")
                raise ChannelClosed(CLOSE_INTERNAL)
            session.ping_misses += 1
            await session.request(schema.Ping(), "ping")

    async def _receive_from_provider(self, session: ProviderSession, scope: anyio.CancelScope) -> None:
        try:
            while True:
                frame = await session.channel.receive()
                try:
                    envelope = session.codec.decode(frame)
                except BadFrame as exc:
                    self.log.info("bad frame from provider", provider=session.name, error=str(exc))
                    await session.channel.close(exc.close_code, str(exc)[:100])
                    break
                await self._on_provider_envelope(session, envelope)
        except ChannelClosed:
            pass
        finally:
            scope.cancel()

    async def _on_provider_envelope(self, session: ProviderSession, envelope: Message) -> None:
        kind = envelope.type
        if kind == schema.REQUEST:
            await session.send(schema.RESPONSE, None, envelope.sequence, "requests not supported on provider socket")
            return
        try:
            payload = unpack(envelope)
        except KeyError as exc:
            payload = exc  # an unknown type: an error for a Response, ignored for an Event
        except BadFrame as exc:
            await session.channel.close(exc.close_code, str(exc)[:100])
            raise ChannelClosed(exc.close_code) from None
        if kind == schema.EVENT:
            await self._on_event(session, payload)
        elif kind == schema.RESPONSE:
            await self._on_response(session, envelope, payload)

    async def _on_event(self, session: ProviderSession, payload: Any) -> None:
        now = self.clock()
        if isinstance(payload, schema.ProviderResources):
            session.capacity = payload.concurrency
            self.metrics.workers.labels(session.name).set(payload.concurrency)
            await self.execute(self.dispatch.set_capacity(now, session, payload.concurrency))
        elif isinstance(payload, schema.FileSystemUpdate):
            if session.files is not None:
                session.files = [f for f in session.files if f not in payload.removed] + list(payload.added)
            self.dispatch.update_files(now, session, payload.added, payload.removed)
        elif isinstance(payload, schema.GenericMessage):
            self.log.info("provider says", provider=session.name, message=payload.message[:200])

    async def _on_response(self, session: ProviderSession, envelope: Message, payload: Any) -> None:
        entry = session.pending.pop(envelope.sequence, None)
        if entry is None:
            return
        what, obj = entry
        now = self.clock()
        if what == "listing":
            if not envelope.error and isinstance(payload, schema.ListingResponse):
                session.files = list(payload.files)
            session.listing.set()
        elif what == "ping":
            session.ping_misses = 0
        elif what == "task":
            task: TaskHandle = obj
            expected = schema.Wasip1Response if task.kind == "wasip1" else schema.PyodideResponse
            if envelope.error or not isinstance(payload, expected):
                error = envelope.error or f"unexpected response type from provider {session.name}"
                effects = self.dispatch.transport_error(now, task, session, error)
            else:
                sent = task.request.info
                payload.info.id = task.id
                for field in ("reference", "requester"):
                    if sent.HasField(field):
                        setattr(payload.info, field, getattr(sent, field))
                    else:
                        payload.info.ClearField(field)
                payload.info.provider = session.name  # who ran it is the broker's word, not the provider's
                session.completed_recently += 1
                effects = self.dispatch.completed(now, task, session, payload)
            await self.execute(effects)
            self.driver.poke()

    async def admit_provider(self, party: Any, name: str, table: dict[Any, None], files: Sequence[str], capacity: int,
                             provides: Any = None, **log: Any) -> None:
        """A provider of either generation is ready: into ``table`` and the dispatcher."""
        table[party] = None
        self.log.info("provider connected", provider=name, providers=self.provider_count(), **log)
        now = self.clock()
        await self.execute(self.dispatch.add_worker(now, party, name, files, provides))
        await self.execute(self.dispatch.set_capacity(now, party, capacity))
        self.metrics.workers.labels(name).set(capacity)
        await self.provider_count_changed()

    async def retire_provider(self, party: Any, name: str, table: dict[Any, None], **log: Any) -> None:
        """A provider left: its slots go, and the tasks it was running retry elsewhere."""
        if party not in table:
            return
        del table[party]
        self.metrics.workers.labels(name).set(0)
        await self.execute(self.dispatch.remove_worker(self.clock(), party))
        self.driver.poke()
        self.log.info("provider disconnected", provider=name, providers=self.provider_count(), **log)
        await self.provider_count_changed()

    def provider_count(self) -> int:
        """Providers of both generations."""
        return len(self.providers) + len(self.gen_a.providers)

    async def provider_count_changed(self) -> None:
        self.metrics.providers.set(self.provider_count())
        await self._broadcast_cluster_info()

    async def _broadcast_cluster_info(self) -> None:
        event = schema.ClusterInfo(providers=self.provider_count())
        for session in list(self.providers):
            try:
                await session.send(schema.EVENT, event)
            except ChannelClosed:
                pass

    async def _throughput_forever(self) -> None:
        while True:
            await anyio.sleep(1.0)
            overall, self._completions = self._completions, 0
            for session in list(self.providers):
                yours, session.completed_recently = session.completed_recently, 0
                try:
                    await session.send(schema.EVENT, schema.Throughput(overall=overall, yours=yours))
                except ChannelClosed:
                    pass

    # -- tasks -------------------------------------------------------------------------------
    def _resolve_file(self, file: Message, what: str) -> str | None:
        """Exactly one of ref/blob; a name or ref becomes the canonical sha256 ref."""
        has_ref, has_blob = file.HasField("ref") and file.ref != "", file.HasField("blob")
        if has_ref and has_blob:
            raise RpcError("invalid_argument", f"{what}: don't use both Blob and Ref together")
        if not has_ref and not has_blob:
            raise RpcError("invalid_argument", f"{what}: both Blob and Ref are nil")
        if has_blob:
            return None
        ref = self.storage.resolve(file.ref)
        if ref is None:
            raise RpcError("invalid_argument", f"{what}: Ref not found in storage")
        file.ref = ref
        return ref

    async def submit(self, request: Message, kind: str, requester: str | None, gen_a: str | None = None) -> Message:
        """Run one task to its end; raises :class:`RpcError` for what is not an application result.

        ``gen_a``: the task came from the generation-A API (its loadfs/datafile, which gen-A
        providers run natively, are also in the request as rootfs/artifacts for gen-C ones)."""
        params = request.params
        needs: list[str] = []
        requires: set[str] = set()
        if kind == "pyodide":
            requires.add("pyodide")
        elif gen_a is None and (params.HasField("rootfs") or len(params.artifacts)):
            requires.add("rootfs")
        if kind == "wasip1":
            if not request.HasField("params") or not params.HasField("binary"):
                raise RpcError("invalid_argument", "binary: both Blob and Ref are nil")
            ref = self._resolve_file(params.binary, "binary")
            if ref:
                needs.append(ref)
            if params.HasField("rootfs"):
                ref = self._resolve_file(params.rootfs, "rootfs")
                if ref:
                    needs.append(ref)
        task = TaskHandle(str(next(self._task_ids)), request, kind, frozenset(needs))
        reference, trace = request.info.reference, request.info.trace if request.info.HasField("trace") else None
        request.info.Clear()
        request.info.id = task.id
        if requester:
            request.info.requester = requester
        if reference:
            request.info.reference = reference
        if trace is not None:
            request.info.trace.CopyFrom(trace)
        try:
            effects = self.dispatch.submit(self.clock(), task, task.needs, requires)
        except QueueFull:
            raise RpcError("resource_exhausted", "Queue Full") from None
        try:
            await self.execute(effects)
            await task.event.wait()
        finally:
            if not task.event.is_set():  # the client went away: revoke it
                with anyio.CancelScope(shield=True):
                    await self.execute(self.dispatch.cancel(self.clock(), task))
        if task.error is not None:
            raise RpcError("unknown", task.error)
        return task.result

    # -- ConnectRPC ----------------------------------------------------------------------------
    async def _connect_unary(self, request: HttpRequest, request_cls: type, handler: Any) -> HttpResponse:
        if request.method != "POST":
            return _connect_error("unimplemented", f"{request.method} is not supported (POST)", 405)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/proto", "application/json"):
            return HttpResponse(415, b"", (("accept-post", "application/json, application/proto"),))
        message = request_cls()
        try:
            if content_type == "application/proto":
                message.ParseFromString(request.body)
            else:
                json_format.Parse(request.body.decode("utf-8") or "{}", message, descriptor_pool=schema.POOL)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            return _connect_error("invalid_argument", f"unmarshal request: {exc}")
        try:
            reply = await handler(message, request)
        except RpcError as exc:
            return _connect_error(exc.code, exc.message)
        if content_type == "application/proto":
            return HttpResponse(200, reply.SerializeToString(), (("content-type", "application/proto"),))
        body = json_format.MessageToJson(reply, descriptor_pool=schema.POOL, indent=None).encode()
        return HttpResponse(200, body, (("content-type", "application/json"),))

    async def rpc_run_wasip1(self, request: HttpRequest) -> HttpResponse:
        return await self._connect_unary(request, schema.Wasip1Request,
                                         lambda m, r: self.submit(m, "wasip1", r.client_host))

    async def rpc_run_pyodide(self, request: HttpRequest) -> HttpResponse:
        return await self._connect_unary(request, schema.PyodideRequest,
                                         lambda m, r: self.submit(m, "pyodide", r.client_host))

    async def rpc_upload(self, request: HttpRequest) -> HttpResponse:
        return await self._connect_unary(request, schema.UploadRequest, lambda m, r: self._upload_message(m))

    async def _upload_message(self, message: Message) -> Message:
        upload = message.upload
        if upload.media not in ("application/wasm", "application/zip"):
            raise RpcError("invalid_argument", "unsupported filetype (application/wasm or application/zip)")
        try:
            ref = await anyio.to_thread.run_sync(self.storage.put, upload.blob, upload.ref or None, upload.media)
        except Unsupported as exc:
            raise RpcError("invalid_argument", str(exc)) from None
        return schema.UploadResponse(ref=ref)

    # -- HTTP exec -------------------------------------------------------------------------------
    async def http_exec(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse.text(405, "Method Not Allowed\n")
        wasm = request.path[len("/api/client/run/"):]
        headers = request.headers
        try:
            args = shlex.split(headers.get("x-args", ""))
        except ValueError as exc:
            return HttpResponse.text(400, f"X-Args: {exc}\n")
        task = schema.Wasip1Request()
        params = task.params
        params.binary.ref = wasm
        params.args.extend([wasm, *args])
        for name, value in headers.items():
            if name.startswith("x-env-") and len(name) > 6:
                params.envs.append(f"{name[6:].upper().replace('-', '_')}={value}")
        params.envs.append(f"CONTENT_LENGTH={len(request.body)}")
        if "content-type" in headers:
            params.envs.append(f"CONTENT_TYPE={headers['content-type']}")
        if headers.get("x-rootfs-ref"):
            params.rootfs.ref = headers["x-rootfs-ref"]
        for artifact in headers.get("x-artifact", "").split(","):
            if artifact.strip():
                params.artifacts.append(artifact.strip())
        params.stdin = request.body
        try:
            result = await self.submit(task, "wasip1", request.client_host)
        except RpcError as exc:
            return HttpResponse.text(500, exc.message + "\n")
        reply_headers = [("x-wasimoff-provider", _header_value(result.info.provider))] if result.info.provider else []
        if result.WhichOneof("result") == "error":
            return HttpResponse(200, result.error.encode(), (*reply_headers, ("x-wasimoff-result", "Error"), TEXT))
        ok = result.ok
        reply_headers += [("x-wasimoff-result", "Ok"), ("x-wasimoff-status", str(ok.status)), TEXT]
        if ok.HasField("artifacts") and ok.artifacts.blob:
            reply_headers.append(("x-wasimoff-artifacts", base64.b64encode(ok.artifacts.blob).decode()))
        return HttpResponse(200, ok.stderr + ok.stdout, tuple(reply_headers))

    # -- client socket ---------------------------------------------------------------------------
    async def client_socket(self, channel: Channel) -> None:
        codec = await self._negotiate(channel)
        if codec is None:
            return

        async def reply(sequence: int, payload: Message | None, error: str = "") -> None:
            envelope = schema.Envelope(sequence=sequence, type=schema.RESPONSE)
            if error:
                envelope.error = error
            if payload is not None:
                pack(envelope, payload)
            try:
                await channel.send(codec.encode(envelope))
            except ChannelClosed:
                pass

        async def handle(sequence: int, payload: Message) -> None:
            try:
                if isinstance(payload, schema.Wasip1Request):
                    result = await self.submit(payload, "wasip1", channel.info.client_host)
                elif isinstance(payload, schema.PyodideRequest):
                    result = await self.submit(payload, "pyodide", channel.info.client_host)
                else:
                    result = await self._upload_message(payload)
            except RpcError as exc:
                await reply(sequence, None, exc.message)
                return
            await reply(sequence, result)

        async with anyio.create_task_group() as tg:
            try:
                while True:
                    frame = await channel.receive()
                    try:
                        envelope = codec.decode(frame)
                    except BadFrame as exc:
                        await channel.close(exc.close_code, str(exc)[:100])
                        break
                    if envelope.type != schema.REQUEST:
                        continue  # client events are only logged by the original
                    try:
                        payload = unpack(envelope)
                    except (KeyError, BadFrame):
                        payload = None
                    if not isinstance(payload, (schema.Wasip1Request, schema.PyodideRequest, schema.UploadRequest)):
                        await reply(envelope.sequence, None, "expecting only Task_Request/Upload messages on this socket")
                        continue
                    tg.start_soon(handle, envelope.sequence, payload)
            except ChannelClosed:
                pass
            finally:
                tg.cancel_scope.cancel()  # a client that leaves cancels its tasks

    # -- storage -------------------------------------------------------------------------------
    async def upload(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse.text(405, "Method Not Allowed\n")
        name = parse_qs(request.query).get("name", [None])[0]
        try:
            ref = await anyio.to_thread.run_sync(self.storage.put, request.body, name)  # hashing, fsync
        except Unsupported:
            return HttpResponse.text(415, "unsupported filetype\n")
        return HttpResponse(200, f"{ref}\n".encode(), (TEXT,))

    async def download(self, request: HttpRequest) -> HttpResponse:
        found = self.storage.get(request.path[len("/api/storage/"):])
        if found is None:
            return HttpResponse.text(404, "File not Found in storage\n")
        data, media, ref = found
        headers = [("content-type", media), ("x-wasimoff-ref", ref), CORS, ("accept-ranges", "bytes")]
        byte_range = _parse_range(request.headers.get("range"), len(data))
        if byte_range is None:
            return HttpResponse(200, data, tuple(headers))
        if byte_range == "invalid":
            return HttpResponse(416, b"", (*headers, ("content-range", f"bytes */{len(data)}")))
        start, end = byte_range
        return HttpResponse(206, data[start:end + 1], (*headers, ("content-range", f"bytes {start}-{end}/{len(data)}")))

    async def healthz(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"OK\n", (TEXT,))

    async def version(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, json.dumps({"version": VERSION, "protocol": "wasimoff.v1"}).encode(), (("content-type", "application/json"),))


def _header_value(text: str) -> str:
    """Peer text fit for a header: printable ASCII as it is, anything else percent-encoded."""
    return text if _PRINTABLE.fullmatch(text) else quote(text, safe=_HEADER_SAFE)


def _connect_error(code: str, message: str, status: int | None = None) -> HttpResponse:
    body = json.dumps({"code": code, "message": message}).encode()
    return HttpResponse(status or CONNECT_STATUS.get(code, 500), body, (("content-type", "application/json"),))


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """A single ``bytes=a-b`` / ``a-`` / ``-n`` range (what http.ServeContent serves)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    first, _, last = spec.partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "invalid"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "invalid"
    return start, min(end, size - 1)
