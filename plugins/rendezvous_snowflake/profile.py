"""Snowflake profile: the Go broker's settings and flags, and the runtime that binds the
messages to the pairing matcher: a store of the server's backend (``memory``: one node;
``redis``: every node of a cluster equal, see docs/scale-out.md)."""

from __future__ import annotations

import asyncio
import datetime
import enum
import ipaddress
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import attrs

from rendezvous.backends import BackendUnavailable, ImmediatePairingStore
from rendezvous.core import Deliver, Expired
from rendezvous.errors import ConfigError
from rendezvous.profile import ProfileContext
from rendezvous.settings import positive, setting
from rendezvous.transports.base import ExchangeRoute, Forget, HttpRequest, HttpResponse, Respond
from rendezvous.transports.handlers import internal_error
from rendezvous_snowflake import amp, candidates, messages
from rendezvous_snowflake.bridges import DEFAULT_BRIDGES, UNKNOWN_BRIDGE, load_bridge_list, relay_pattern_accepted
from rendezvous_snowflake.geoip import UNKNOWN_COUNTRY, GeoIP
from rendezvous_snowflake.ipcount import IPCountLog, parse_go_duration
from rendezvous_snowflake.messages import (
    NAT_RESTRICTED,
    NAT_UNKNOWN,
    NAT_UNRESTRICTED,
    STATUS_BAD_RELAY,
    STATUS_MATCH,
    STATUS_NO_MATCH,
    STR_NO_PROXIES,
    STR_TIMED_OUT,
    BadRequest,
)
from rendezvous_snowflake.stats import Descriptor, Prometheus
from rendezvous_snowflake.status import SnowflakeStatus

READ_LIMIT = 100_000
UNRESTRICTED_POOL, RESTRICTED_POOL = "unrestricted", "restricted"
CORS = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Headers", "Origin, X-Session-ID"))
# Go sniffs a Content-Type for replies that set none: JSON text sniffs as text/plain.
TEXT = ("Content-Type", "text/plain; charset=utf-8")
CORS_TEXT = (*CORS, TEXT)
# The replies of /proxy, /client and /answer carry CORS themselves (no wrapper on the fast path).
PREFLIGHT = HttpResponse(200, b"", CORS)
BAD_REQUEST = HttpResponse(400, b"", CORS)


class Matching(enum.Enum):
    #: v2.8.0 and later: an unrestricted client falls back to unrestricted proxies.
    CURRENT = "current"
    #: v2.5.1: an unrestricted client takes only restricted/unknown proxies.
    V2_5_1 = "2.5.1"


def _go(name: str) -> list[str]:
    return ["-" + name]  # Go's flag package: -x and --x are the same flag


@attrs.frozen
class SnowflakeSettings:
    addr: str = setting(":443", help="address to listen on, Go style: [host]:port", flags=_go("addr"))
    disable_tls: bool = setting(False, help="don't use HTTPS", flags=_go("disable-tls"))
    bridge_list_path: pathlib.Path | None = setting(None, help="file of known bridges (newline-delimited JSON)", flags=_go("bridge-list-path"))
    allowed_relay_pattern: str = setting("", help="pattern proxies must accept for relay URLs (e.g. snowflake.torproject.net$)", flags=_go("allowed-relay-pattern"))
    default_relay_pattern: str = setting("", help="pattern assumed for proxies that send no AcceptedRelayPattern (v2.5.1; gone in HEAD)", flags=_go("default-relay-pattern"))
    relay_pattern_required: bool = setting(False, help="reject proxies that send no AcceptedRelayPattern, as HEAD (after v2.11) does; default: v2.5.1's --default-relay-pattern")
    geoipdb: pathlib.Path = setting(pathlib.Path("/usr/share/tor/geoip"), help="Tor-format IPv4 GeoIP file", flags=_go("geoipdb"))
    geoip6db: pathlib.Path = setting(pathlib.Path("/usr/share/tor/geoip6"), help="Tor-format IPv6 GeoIP file", flags=_go("geoip6db"))
    disable_geoip: bool = setting(False, help="don't use GeoIP (countries show as ??)", flags=_go("disable-geoip"))
    metrics_log: pathlib.Path | None = setting(None, help="file the metrics descriptors are appended to (served at /metrics); unset: stdout", flags=_go("metrics-log"))
    metrics_interval: float = setting(86400.0, help="seconds between metrics descriptor dumps", validator=positive)
    ip_count_prefix: str = setting("", help="path prefix of the distinct proxy IP count logs, one per pool (HEAD)", flags=_go("ip-count-prefix"))
    ip_count_log: str = setting("", help="file of the distinct proxy IP count log, all proxies (v2.5.1)", flags=_go("ip-count-log"))
    ip_count_mask: str = setting("", help="HMAC key masking the addresses of --ip-count-log (v2.5.1)", flags=_go("ip-count-mask"), secret=True)
    ip_count_interval: str = setting("1h", help="Go duration between IP count log chunks", flags=_go("ip-count-interval"))
    broker_sqs_name: str = setting("", help="SQS queue to take client polls from (needs --broker-sqs-region and AWS credentials)", flags=_go("broker-sqs-name"))
    broker_sqs_region: str = setting("", help="AWS region of the --broker-sqs-name queue", flags=_go("broker-sqs-region"))
    client_timeout: float = setting(10.0, help="seconds a matched client waits for the proxy's answer (v2.5.1: 10, HEAD: 5)", validator=positive)
    proxy_timeout: float = setting(10.0, help="seconds a proxy poll is held waiting for a client", validator=positive)
    matching: Matching = setting(Matching.CURRENT, help="pool rule for unrestricted clients: current (fallback) or 2.5.1")

    def __attrs_post_init__(self) -> None:
        parse_addr(self.addr)
        if parse_go_duration(self.ip_count_interval) <= 0:
            raise ValueError(f"ip_count_interval: must be a positive Go duration, got {self.ip_count_interval!r}")
        if self.broker_sqs_name and not self.broker_sqs_region:
            raise ValueError("--broker-sqs-name needs --broker-sqs-region")
        if self.relay_pattern_required and self.default_relay_pattern:
            raise ValueError("--default-relay-pattern does nothing with relay_pattern_required (HEAD rejects those proxies)")


def parse_addr(addr: str) -> tuple[str, int]:
    """Go's ``host:port`` (``:443`` = all interfaces, ``[::1]:80``) → (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"addr: expected [host]:port, got {addr!r}")
    host = host.strip("[]") or "::"
    return host, int(port)


class SnowflakeProfile:
    name = "snowflake"
    summary = "Tor Snowflake broker, drop-in for the Go broker (HTTP long-poll)"
    distributed = True  # every node of a cluster equal (backend = "redis")
    settings = SnowflakeSettings
    default_port = 443
    server_env: Mapping[str, Sequence[str]] = {}
    server_defaults: Mapping[str, Any] = {"metrics_path": "/prometheus"}
    # ACME is a server feature ([server] acme_*); the Go broker's flags are its names here.
    server_flags: Mapping[str, Sequence[str]] = {
        "cert": _go("cert"), "key": _go("key"), "unsafe_logging": _go("unsafe-logging"),
        "acme_hostnames": _go("acme-hostnames"), "acme_email": _go("acme-email"), "acme_cert_cache": _go("acme-cert-cache"),
    }

    def server_values(self, settings: SnowflakeSettings) -> Mapping[str, tuple[Any, str]]:
        host, port = parse_addr(settings.addr)
        return {"host": (host, "snowflake.addr"), "port": (port, "snowflake.addr")}

    def validate(self, settings: SnowflakeSettings, server: Any) -> None:
        if server.cert is None and not server.acme_hostnames and not settings.disable_tls:
            raise ConfigError("the --acme-hostnames, --cert and --key, or --disable-tls option is required")

    def create(self, context: ProfileContext) -> SnowflakeRuntime:
        return SnowflakeRuntime(context)


class _Then:
    """One HTTP request waiting in the matcher without a task: ``then(result)`` answers it
    (``respond`` gets a logged 500 if that fails: it runs in another request's handler)."""

    __slots__ = ("delivered", "path", "respond", "then")

    def __init__(self, then: Any, respond: Respond, path: str) -> None:
        self.then = then
        self.respond = respond
        self.path = path
        self.delivered = False

    def deliver(self, result: Any) -> None:
        if not self.delivered:
            self.delivered = True
            try:
                self.then(result)
            except Exception:
                self.respond(internal_error(self.path))


class _Client:
    """A client's request, decoded and admitted, while it is matched and waits for its answer."""

    __slots__ = ("arrived", "bridge", "country", "ip", "method", "poll")

    def __init__(self, poll: messages.ClientPoll, bridge: Any, country: str, ip: str | None, method: str, arrived: float) -> None:
        self.poll = poll
        self.bridge = bridge
        self.country = country
        self.ip = ip
        self.method = method
        self.arrived = arrived

    @property
    def offer(self) -> tuple[str, str, str]:
        return (self.poll.offer, self.poll.nat, self.bridge.websocket_address)


# What the matcher carries (plain values: a shared backend stores them): a client's offer is
# (sdp, nat, relay_url), a waiting proxy's info (type, nat), a proxy's answer its SDP string.


def _is_public(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return address.is_global


def client_ip(request: HttpRequest) -> str | None:
    """Leftmost public address in ``Forwarded``, then ``X-Forwarded-For``, then the peer."""
    headers = request.headers
    if "forwarded" not in headers and "x-forwarded-for" not in headers:
        return request.client_host  # the common case: no proxy in front
    forwarded = headers.get("forwarded", "")
    for element in forwarded.split(",") if forwarded else ():
        for pair in element.split(";"):
            key, _, value = pair.strip().partition("=")
            if key.lower() == "for":
                value = value.strip('"')
                if value.startswith("["):
                    value = value[1:].partition("]")[0]
                elif value.count(":") == 1:
                    value = value.partition(":")[0]
                if _is_public(value):
                    return value
    for value in headers.get("x-forwarded-for", "").split(","):
        value = value.strip()
        if value and _is_public(value):
            return value
    return request.client_host


class SnowflakeRuntime:
    def __init__(self, context: ProfileContext) -> None:
        s: SnowflakeSettings = context.settings
        self.settings = s
        self.log = context.log
        self.clock = context.clock
        self.bridges = load_bridge_list(s.bridge_list_path) if s.bridge_list_path else dict(DEFAULT_BRIDGES)
        self.geoip = None if s.disable_geoip else GeoIP.load(s.geoipdb, s.geoip6db)
        if not s.allowed_relay_pattern:
            self.log.warning(
                "--allowed-relay-pattern is empty: every proxy that sends a relay pattern (all modern proxies) "
                "will be rejected with 'incorrect relay pattern'"
            )
        self.backend = context.backend
        self.pairing = self.backend.pairing("snowflake", hold_timeout=s.proxy_timeout, answer_timeout=s.client_timeout,
                                            clock=context.clock)
        self.pairing.attach(self._execute_timed)
        self.reports = self.backend.reports("snowflake")
        self.prom = Prometheus(context.metrics)
        self.descriptor = Descriptor()
        self.status = SnowflakeStatus(self)  # the status page's numbers
        self.client_pools = {
            NAT_RESTRICTED: (UNRESTRICTED_POOL,),
            NAT_UNKNOWN: (UNRESTRICTED_POOL,),
            NAT_UNRESTRICTED: (RESTRICTED_POOL, UNRESTRICTED_POOL) if s.matching is Matching.CURRENT else (RESTRICTED_POOL,),
        }
        self.ip_counts = self._open_ip_counts(s)
        self.sqs = None
        if s.broker_sqs_name:
            from rendezvous_snowflake.sqs import SqsRendezvous  # boto3 only when asked for

            self.sqs = SqsRendezvous(s.broker_sqs_name, s.broker_sqs_region, self.sqs_offer, self.log)
        elif s.broker_sqs_region:
            self.log.warning("--broker-sqs-region without --broker-sqs-name: no SQS rendezvous")
        any_method: frozenset[str] = frozenset()
        if not isinstance(self.pairing, ImmediatePairingStore):
            raise ConfigError(f"the {context.backend.name!r} backend's pairing store has no callback form (ImmediatePairingStore)")
        # The hot three answer without a task (a long-poll is a callback parked in the store).
        self.now: ImmediatePairingStore = self.pairing
        hot = [
            ExchangeRoute.immediate_route(path, self._preflight_now(handler), any_method, READ_LIMIT)
            for path, handler in (("/proxy", self.proxy_poll_now), ("/client", self.client_offer_now),
                                  ("/answer", self.proxy_answer_now))
        ]
        self.routes = [
            *hot,
            ExchangeRoute("/debug", self._cors(self.debug), any_method, READ_LIMIT),
            ExchangeRoute("/metrics", self._cors(self.metrics_descriptor), any_method, READ_LIMIT),
            ExchangeRoute("/amp/client/*", self._cors(self.amp_client), any_method, READ_LIMIT),
            ExchangeRoute("/robots.txt", self.robots, any_method, READ_LIMIT),
        ]
        self.static_dir = None

    def describe(self, url: str) -> list[tuple[str, dict[str, str]]]:
        return [("snowflake broker", {"url": url + "/"})]

    @staticmethod
    def _open_ip_counts(s: SnowflakeSettings) -> IPCountLog | None:
        interval = parse_go_duration(s.ip_count_interval)
        try:
            if s.ip_count_prefix:
                return IPCountLog.per_pool(s.ip_count_prefix, interval)
            if s.ip_count_log:
                return IPCountLog.single(s.ip_count_log, s.ip_count_mask, interval)
        except OSError as exc:
            raise ConfigError(f"--ip-count-{'prefix' if s.ip_count_prefix else 'log'}: {exc}") from None
        return None

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.pairing.run)
                tg.start_soon(self._dump_metrics_forever)
                if self.sqs is not None:
                    tg.start_soon(self.sqs.run)
        finally:
            if self.ip_counts is not None:
                self.ip_counts.close()  # the chunk so far is written (the Go broker loses it)
                self.ip_counts = None

    async def shutdown(self) -> None:
        """Answer every held poll ("no match") and waiting client ("timed out") before stopping."""
        if self.sqs is not None:
            self.sqs.stop()
        self._execute(await self.pairing.drain(self.clock()))

    # -- effects ----------------------------------------------------------------------------
    def _then_execute(self, _: Any, effects: Sequence[Any]) -> None:
        if effects:
            self._execute(effects)

    def _execute(self, effects: Sequence[Any]) -> None:
        for effect in effects:
            if type(effect) is Deliver:
                effect.to.deliver(effect.payload)
            elif type(effect) is Expired:
                effect.party.deliver(None)

    async def _execute_timed(self, effects: Sequence[Any]) -> None:
        self._execute(effects)

    def _cors(self, handler: Any) -> Any:
        async def with_cors(request: HttpRequest) -> HttpResponse:
            if request.method == "OPTIONS":
                return HttpResponse(200, b"", CORS)  # CORS preflight
            response = await handler(request)
            return HttpResponse(response.status, response.body, (*CORS, *response.headers))

        return with_cors

    @staticmethod
    def _preflight_now(handler: Any) -> Any:
        def or_preflight(request: HttpRequest, respond: Respond) -> Forget | None:
            if request.method == "OPTIONS":
                respond(PREFLIGHT)
                return None
            return handler(request, respond)

        return or_preflight

    def reload(self) -> None:
        """SIGHUP, as the Go broker: read the GeoIP files again (a failure keeps the tables in use)."""
        s = self.settings
        if s.disable_geoip:
            return
        try:
            self.geoip = GeoIP.load(s.geoipdb, s.geoip6db)
        except Exception as exc:  # a bad file must not take the broker down
            self.log.error("geoip reload failed; keeping the loaded tables", error=str(exc))
            return
        self.log.info("geoip reloaded", geoipdb=str(s.geoipdb), geoip6db=str(s.geoip6db))

    def _country(self, ip: str | None) -> str:
        return self.geoip.country(ip) if self.geoip is not None else UNKNOWN_COUNTRY

    # -- /proxy -----------------------------------------------------------------------------
    def _poll_admit(self, request: HttpRequest) -> HttpResponse | tuple[messages.ProxyPoll, str]:
        """A proxy poll decoded and counted: what it waits with (the poll, its pool), or the reply now."""
        try:
            poll = messages.decode_proxy_poll(request.body)
        except BadRequest as exc:
            self.log.debug("proxy poll refused", reason=str(exc)[:200])
            return BAD_REQUEST
        nat, proxy_type = poll.nat, poll.type
        pattern = poll.accepted_relay_pattern
        if pattern is None:
            self.descriptor.counts["proxy-poll-without-relay-url"] += 1
            self.prom.without_relay.inc_values(nat, proxy_type)
            pattern = None if self.settings.relay_pattern_required else self.settings.default_relay_pattern
        else:
            self.descriptor.counts["proxy-poll-with-relay-url"] += 1
            self.prom.with_relay.inc_values(nat, proxy_type)
        if pattern is None or not relay_pattern_accepted(pattern, self.settings.allowed_relay_pattern):
            self.descriptor.counts["proxy-poll-rejected-relay-url"] += 1
            self.prom.rejected_relay.inc_values(nat, proxy_type)
            self.log.debug("proxy poll refused", reason="relay pattern not allowed", pattern=(pattern or "")[:100])
            return HttpResponse(200, messages.encode_poll_reply(STATUS_BAD_RELAY), CORS_TEXT)
        ip = client_ip(request)
        if ip:
            country = self._country(ip)
            if self.descriptor.proxy_seen(ip, country, proxy_type, nat):
                self.prom.proxy_total.labels(proxy_type, nat, country).inc()
        pool = UNRESTRICTED_POOL if nat == NAT_UNRESTRICTED else RESTRICTED_POOL
        if ip and self.ip_counts is not None:
            # By the proxy's pool. (HEAD passes `nat == unrestricted` as its `restricted`
            # argument, so the Go broker writes each pool into the other's file.)
            self.ip_counts.add(pool if len(self.ip_counts.sinks) > 1 else "all", ip)
        return poll, pool

    def _poll_reply(self, poll: messages.ProxyPoll, offer: tuple[str, str, str] | None) -> HttpResponse:
        if offer is None:
            self.descriptor.counts["proxy-idle"] += 1
            self.prom.proxy_poll.inc_values(poll.nat, poll.type, "idle")
            return HttpResponse(200, messages.encode_poll_reply(STATUS_NO_MATCH), CORS_TEXT)
        self.prom.proxy_poll.inc_values(poll.nat, poll.type, "matched")
        return HttpResponse(200, messages.encode_poll_reply(STATUS_MATCH, *offer), CORS_TEXT)

    def proxy_poll_now(self, request: HttpRequest, respond: Respond) -> Forget | None:
        admitted = self._poll_admit(request)
        if type(admitted) is HttpResponse:
            respond(admitted)
            return None
        poll, pool = admitted  # type: ignore[misc]
        gauge = self.prom.available(poll.type, poll.nat)

        def then(offer: tuple[str, str, str] | None) -> None:
            gauge.dec()
            respond(self._poll_reply(poll, offer))

        waiter = _Then(then, respond, "/proxy")
        gauge.inc()
        self.now.wait_now(self.clock(), poll.sid, waiter, pool, poll.clients, (poll.type, poll.nat), self._then_execute)

        def forget() -> None:  # the proxy hung up while waiting
            if not waiter.delivered:
                waiter.delivered = True
                gauge.dec()
                self.now.gone_now(self.clock(), waiter)

        return forget

    # -- /answer ----------------------------------------------------------------------------
    def _answer_admit(self, request: HttpRequest) -> HttpResponse | messages.ProxyAnswer:
        if b"a=candidate" not in request.body:
            self.log.debug("proxy answer refused", reason="no a=candidate in the answer")
            return BAD_REQUEST
        try:
            return messages.decode_proxy_answer(request.body)
        except BadRequest as exc:
            self.log.debug("proxy answer refused", reason=str(exc)[:200])
            return BAD_REQUEST

    def _answer_reply(self, info: Any, effects: Sequence[Any]) -> HttpResponse:
        if info is None:
            self.prom.proxy_answer.inc_values("", "timeout")
            return HttpResponse(200, messages.encode_answer_reply(False), CORS_TEXT)
        self.prom.proxy_answer.inc_values(info[0], "success")
        self._execute(effects)
        return HttpResponse(200, messages.encode_answer_reply(True), CORS_TEXT)

    def proxy_answer_now(self, request: HttpRequest, respond: Respond) -> None:
        answer = self._answer_admit(request)
        if type(answer) is HttpResponse:
            respond(answer)
            return

        def then(info: Any, effects: list[Any]) -> None:
            respond(self._answer_reply(info, effects))

        # The client may wait on another node: the store delivers it there, and tells the proxy's type here.
        self.now.answer_now(self.clock(), answer.sid, answer.answer, then)  # type: ignore[union-attr]

    # -- /client ----------------------------------------------------------------------------
    def _client_admit(self, body: bytes, method: str, ip: str | None) -> _Client | tuple[None, str, str | None]:
        """A v1.0 client request decoded: the client to match, or (None, error, ip)."""
        arrived = self.clock()
        try:
            poll = messages.decode_client_poll(body)
        except BadRequest as exc:
            self.log.debug("client request refused", method=method, reason=str(exc)[:200])
            return None, str(exc), ip
        if ip is None:  # AMP cache and SQS: the client is where its offer's best ICE candidate is
            ip = candidates.client_address(poll.offer)
        bridge = self.bridges.get(poll.fingerprint)
        if bridge is None:
            self.log.debug("client request refused", method=method, reason=UNKNOWN_BRIDGE)
            return None, UNKNOWN_BRIDGE, ip
        return _Client(poll, bridge, self._country(ip), ip, method, arrived)

    def _client_denied(self, client: _Client) -> tuple[None, str, str | None]:
        self._client_stats(client.method, client.country, client.poll.nat, "denied")
        self.log.info("client denied: no proxies", method=client.method, nat=client.poll.nat)
        return None, STR_NO_PROXIES, client.ip

    def _client_answered(self, client: _Client, answer: str | None) -> tuple[str | None, str | None, str | None]:
        method, nat = client.method, client.poll.nat
        if answer is None:
            self._client_stats(method, client.country, nat, "timeout")
            self.log.info("client timed out waiting for an answer", method=method, nat=nat)
            return None, STR_TIMED_OUT, client.ip
        waited = self.clock() - client.arrived
        self.status.rendezvous_done(waited)
        self._client_stats(method, client.country, nat, "matched")
        self.log.info("client matched", method=method, nat=nat, ms=round(waited * 1000, 1))
        return answer, None, client.ip

    def _rendezvous_now(self, body: bytes, method: str, ip: str | None, done: Any, respond: Respond) -> Forget | None:
        """A v1.0 client request, without a task: ``done(answer, error)`` now or when the answer
        comes (``respond`` gets a logged 500 should that fail); returns what to call if the
        client hangs up first."""
        client = self._client_admit(body, method, ip)
        if type(client) is not _Client:
            done(client[0], client[1])  # type: ignore[index]
            return None

        def answered(answer: str | None) -> None:
            result = self._client_answered(client, answer)
            done(result[0], result[1])

        asker = _Then(answered, respond, "/client")

        def matched(info: Any, effects: list[Any]) -> None:
            if effects:
                self._execute(effects)  # (the offer goes to the proxy even if this client left)
            if info is None and not asker.delivered:
                asker.delivered = True
                done(None, self._client_denied(client)[1])

        self.now.ask_now(self.clock(), asker, self.client_pools[client.poll.nat], client.offer, matched)

        def forget() -> None:  # the client hung up: free the match
            if not asker.delivered:
                asker.delivered = True
                self.now.gone_now(self.clock(), asker)

        return forget

    async def _rendezvous(self, body: bytes, method: str) -> tuple[str | None, str | None]:
        """:meth:`_rendezvous_now` awaited (SQS and the AMP cache: the client's address is in its offer)."""
        future: asyncio.Future[tuple[str | None, str | None]] = asyncio.get_running_loop().create_future()

        def done(answer: str | None, error: str | None) -> None:
            if not future.done():
                future.set_result((answer, error))

        def failed(response: HttpResponse) -> None:
            if not future.done():
                future.set_exception(RuntimeError("answering the client failed"))

        forget = self._rendezvous_now(body, method, None, done, failed)
        try:
            return await future
        finally:
            if forget is not None and (not future.done() or future.cancelled()):
                forget()

    async def sqs_offer(self, body: bytes) -> bytes:
        """A client poll that came as an SQS message → the JSON reply for the client's queue."""
        answer, error = await self._rendezvous(body, "sqs")
        return messages.encode_client_reply(answer, error)

    def _client_stats(self, method: str, country: str, nat: str, status: str) -> None:
        self.descriptor.client(method, country, nat, status)
        self.prom.client_poll.inc_values(nat, status, country, method)

    @staticmethod
    def _client_body(request: HttpRequest) -> tuple[bool, bytes]:
        """(legacy, the v1.0 body): a legacy client sends its bare offer and a NAT header."""
        body = request.body
        if body[:1] != b"{":
            return False, body
        nat = request.headers.get("snowflake-nat-type", "")
        return True, messages.encode_client_request(body.decode("utf-8", "replace"), nat)

    @staticmethod
    def _client_reply(legacy: bool, answer: str | None, error: str | None) -> HttpResponse:
        if not legacy:
            return HttpResponse(200, messages.encode_client_reply(answer, error), CORS_TEXT)
        if error is None and answer is not None:  # (an answer comes without an error)
            return HttpResponse(200, answer.encode(), CORS_TEXT)
        if error == STR_NO_PROXIES:
            return HttpResponse(503, b"", CORS)
        if error == STR_TIMED_OUT:
            return HttpResponse(504, b"", CORS)
        # A request that does not decode (a bad Snowflake-NAT-Type, say): Go's broker panics
        # here and drops the connection; the client's fault is a 400.
        return BAD_REQUEST

    def client_offer_now(self, request: HttpRequest, respond: Respond) -> Forget | None:
        legacy, body = self._client_body(request)

        def done(answer: str | None, error: str | None) -> None:
            respond(self._client_reply(legacy, answer, error))

        return self._rendezvous_now(body, "http", client_ip(request), done, respond)

    async def amp_client(self, request: HttpRequest) -> HttpResponse:
        answer: str | None
        error: str | None
        try:
            body = amp.decode_path(request.path[len("/amp/client/"):])
        except amp.BadPath:
            answer, error = None, "cannot decode URL path"
        else:
            answer, error = await self._rendezvous(body, "ampcache")
        page = amp.armor(messages.encode_client_reply(answer, error))
        return HttpResponse(200, page.encode(), (("Content-Type", "text/html"), ("Cache-Control", "max-age=15")))

    # -- the rest -----------------------------------------------------------------------------
    async def debug(self, request: HttpRequest) -> HttpResponse:
        # This node's proxies (on one node: all of them); a cluster's nodes add up to the whole.
        known = await self.pairing.known(here=True)
        types: dict[str, int] = {}
        unknowns = 0
        nats = {NAT_RESTRICTED: 0, NAT_UNRESTRICTED: 0, NAT_UNKNOWN: 0}
        for proxy_type, nat in known:
            if proxy_type in messages.KNOWN_PROXY_TYPES:
                types[proxy_type] = types.get(proxy_type, 0) + 1
            else:
                unknowns += 1
            nats[nat] = nats.get(nat, 0) + 1
        text = f"current snowflakes available: {len(known)}\n"
        text += "".join(f"\t{t} proxies: {n}\n" for t, n in types.items())
        text += f"\tunknown proxies: {unknowns}"
        text += "\nNAT Types available:"
        text += f"\n\trestricted: {nats[NAT_RESTRICTED]}\n\tunrestricted: {nats[NAT_UNRESTRICTED]}\n\tunknown: {nats[NAT_UNKNOWN]}"
        return HttpResponse(200, text.encode(), (TEXT,))

    async def robots(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"User-agent: *\nDisallow: /\n", (TEXT,))

    async def metrics_descriptor(self, request: HttpRequest) -> HttpResponse:
        not_found = HttpResponse(404, b"404 page not found\n", (TEXT,))
        if self.backend.distributed:  # the cluster's descriptors, whichever node wrote them
            try:
                written = await self.reports.published()
            except BackendUnavailable:
                written = None  # this node's file, if it has one
            if written:
                return HttpResponse(200, "".join(written).encode(), (TEXT,))
        path = self.settings.metrics_log
        if path is None:
            return not_found
        try:
            return HttpResponse(200, path.read_bytes(), (TEXT,))
        except OSError:
            return not_found

    def dump_metrics(self) -> str:
        """Write one descriptor block (and reset the counters), as the Go broker does daily."""
        now = datetime.datetime.now(datetime.UTC)
        text = self.descriptor.dump(now, int(self.settings.metrics_interval))
        self._write_descriptor(text)
        return text

    def _write_descriptor(self, text: str) -> None:
        if self.settings.metrics_log is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            try:
                with open(self.settings.metrics_log, "a", encoding="utf-8") as f:
                    f.write(text)
            except OSError as exc:
                self.log.error("cannot write metrics log", error=exc.strerror)

    async def _dump_metrics_forever(self) -> None:
        interval = self.settings.metrics_interval
        if not self.backend.distributed:
            while True:  # as the Go broker: every interval from the start
                await anyio.sleep(interval)
                self.dump_metrics()
        # A cluster: periods aligned on the wall clock (multiples of the interval since the Unix
        # epoch, daily at 00:00 UTC), the same on every node, and one descriptor per period.
        period = int(time.time() // interval)
        while True:
            await anyio.sleep(max(0.0, (period + 1) * interval - time.time()))
            await self.dump_cluster_metrics(period)
            period = max(period + 1, int(time.time() // interval))  # (a stall skips periods)

    async def dump_cluster_metrics(self, period: int) -> str | None:
        """The end of ``period`` on a cluster: every node hands in its counts (addresses hashed
        with the period's salt), the node that takes the period's lease sums them, writes the
        descriptor to its ``metrics_log`` (or stdout) and keeps it in the backend, where every
        node's ``/metrics`` serves it. The descriptor written, or None (another node writes it, or
        the backend was unreachable: this node's counts of the period are then lost)."""
        interval = self.settings.metrics_interval
        grace = min(interval / 4, 2.0)  # for the other nodes' parts
        ttl = max(interval, 10 * grace)
        end = (period + 1) * interval
        if time.time() > end + ttl / 2:
            self.log.warning("metrics period missed (this node stalled); its counts go into the next one", period=period)
            return None
        try:
            salt = await self.reports.salt(period, ttl)
            part = self.descriptor.export(salt)  # (and reset)
            parts = await self.reports.gather(period, part, grace=grace, ttl=ttl)
            if parts is None:
                return None
            text = Descriptor.merged(parts).dump(datetime.datetime.fromtimestamp(end, datetime.UTC), int(interval))
            await self.reports.publish(text)
        except BackendUnavailable as exc:
            self.log.error("metrics descriptor not written: backend unreachable", period=period, error=str(exc))
            return None
        self._write_descriptor(text)
        return text
