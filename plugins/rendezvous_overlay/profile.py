"""Overlay profile: settings, CLI extras, and the runtime binding the codec to the router."""

from __future__ import annotations

import argparse
import enum
import hashlib
import hmac
import json
import pathlib
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import attrs
from prometheus_client import Counter, Gauge, Histogram

from rendezvous.core import Answered, Close, Deliver, Dropped, Keepalive, RootPolicy, Router
from rendezvous.core.ids import seeded_ids
from rendezvous.core.limits import KeyedRateLimiter
from rendezvous.errors import ConfigError
from rendezvous.profile import ProfileContext
from rendezvous.settings import non_negative, positive, setting
from rendezvous.transports.base import Channel, ChannelClosed, ChannelRoute, SendTimeout
from rendezvous_overlay.codec import HEARTBEAT, BadFrame, Frames, Opaque, decode, encode
from rendezvous_overlay.status import OverlayStatus

ROOT_SUFFIX = "/webrtc-bootstrap-root"
CLOSE_INVALID_DATA = 1007
CLOSE_TRY_AGAIN_LATER = 1013


class BadMessagePolicy(enum.Enum):
    DROP = "drop"  # drop the frame, keep the socket (the real client never sends such frames)
    CLOSE = "close"  # close the sender with 1007


@attrs.frozen
class OverlaySettings:
    secret: str | None = setting(
        None, help="the root's secret (path /<secret>/webrtc-bootstrap-root); generated if unset", env=["SECRET"], secret=True
    )
    timeout: float = setting(30.0, help="seconds after connecting that a /join socket is closed", validator=positive)
    heartbeat_interval: float = setting(15.0, help='seconds between "heartbeat" frames to each root', validator=positive)
    root_policy: RootPolicy = setting(
        RootPolicy.LATEST, help="second root: latest (original: newest wins), reject, or failover"
    )
    max_message_size: int = setting(64 * 1024, help="largest frame accepted, in bytes (bigger: close 1009)", validator=positive)
    max_prospects: int | None = setting(100_000, help="most open /join sockets (more: accepted, then closed 1013)", validator=positive)
    join_rate: float | None = setting(None, help="per-IP /join connections per second (unset: unlimited)", validator=positive)
    join_burst: int = setting(20, help="per-IP burst of /join connections above join_rate", validator=positive)
    send_timeout: float = setting(
        5.0, help="seconds a message may wait for a slow receiver; then that receiver is closed 1008", validator=positive
    )
    bad_message: BadMessagePolicy = setting(BadMessagePolicy.DROP, help="non-JSON or null frames: drop, or close 1007")
    public: pathlib.Path | None = setting(None, help="directory of static files served over plain HTTP GET")
    seed: int | None = setting(
        None, help="testing only: seeded ids as the original's opts.seed (per instance; one node only)", validator=non_negative
    )

    def __attrs_post_init__(self) -> None:
        if self.secret is not None and self.secret == "":
            raise ValueError("secret: must not be empty")
        if self.public is not None and not self.public.is_dir():
            raise ValueError(f"public: {self.public} is not a directory")


class OverlayProfile:
    name = "overlay"
    summary = "webrtc-bootstrap 4.4.1 compatible signalling for WebRTC tree overlays (WebSocket)"
    settings = OverlaySettings
    default_port = 5000
    distributed = True  # nodes of a cluster share the overlay (backend = "redis"): roots and joiners on any node
    server_env: Mapping[str, Sequence[str]] = {"port": ("PORT",)}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "bootstrap_config", nargs="?", metavar="CONFIG_JSON",
            help='JSON file {"secret": "..."}, as the original bin/server takes',
        )

    def values_from_arguments(self, args: argparse.Namespace) -> Mapping[str, tuple[Any, str]]:
        path = getattr(args, "bootstrap_config", None)
        if not path:
            return {}
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("secret"), str):
            raise ConfigError(f'{path}: expected {{"secret": "<string>"}}')
        return {"secret": (data["secret"], path)}

    def create(self, context: ProfileContext) -> OverlayRuntime:
        return OverlayRuntime(context)


class _Metrics:
    def __init__(self, registry: Any) -> None:
        p = "rendezvous_overlay_"
        self.joins = Counter(p + "joins", "/join sockets accepted", registry=registry)
        self.roots = Counter(p + "root_connections", "root sockets accepted", registry=registry)
        self.routed = Counter(p + "routed_messages", "messages delivered", ["to"], registry=registry)
        self.dropped = Counter(p + "dropped", "messages or sockets dropped, by reason", ["reason"], registry=registry)
        self.prospects = Gauge(p + "prospects", "open /join sockets", registry=registry)
        self.root_connected = Gauge(p + "root_connected", "1 if a root receives messages", registry=registry)
        self.latency = Histogram(
            p + "join_answer_latency_seconds", "first message to the root -> first message back to the joiner",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry,
        )
        self.to_root = self.routed.labels("root")
        self.to_prospect = self.routed.labels("prospect")


class OverlayRuntime:
    def __init__(self, context: ProfileContext) -> None:
        settings: OverlaySettings = context.settings
        self.settings = settings
        self.send_timeout = settings.send_timeout
        self.log = context.log
        self.clock = context.clock
        self.generated_secret = settings.secret is None
        self.secret = settings.secret if settings.secret is not None else secrets.token_hex(16)
        self._secret_path = ("/" + self.secret + ROOT_SUFFIX).encode()
        backend = context.backend
        if settings.seed and backend.distributed:
            raise ConfigError(f"overlay.seed: seeded ids cannot work on the {backend.name} backend (its ids name the node "
                              "that holds them); unset seed, or serve one node with backend = \"memory\"")
        if self.generated_secret and backend.distributed:
            raise ConfigError(f"overlay.secret: the nodes of a cluster ({backend.name} backend) must share one secret; "
                              "set SECRET or [overlay] secret")
        # Where the routing state lives: this process (memory), or shared by a cluster's nodes.
        self.store = backend.routing(
            _namespace(self.secret),
            endpoint_lifetime=settings.timeout,
            keepalive_interval=settings.heartbeat_interval,
            root_policy=settings.root_policy,
            max_endpoints=settings.max_prospects,
            ids=seeded_ids(settings.seed) if settings.seed else None,
            clock=context.clock,
            codec=Frames(),
        )
        self.store.attach(self.execute)
        self.router: Router[Channel] = self.store.router  # this node's endpoints and roots
        self.limiter = KeyedRateLimiter(settings.join_rate, settings.join_burst) if settings.join_rate else None
        self.metrics = _Metrics(context.metrics)
        # Read when scraped: on a cluster the current root may change on another node.
        self.metrics.root_connected.set_function(lambda: 1 if self.router.root_connected else 0)
        self.status = OverlayStatus(self)  # the status page's numbers
        self.routes = [
            ChannelRoute("/join", self.join, settings.max_message_size),
            ChannelRoute("/*" + ROOT_SUFFIX, self.root, settings.max_message_size),
        ]
        self.static_dir = settings.public

    def describe(self, url: str) -> list[tuple[str, dict[str, str]]]:
        """Startup log lines: where prospects and the root connect."""
        ws = "ws" + url[4:]
        secret = self.secret if self.generated_secret else "<secret>"
        lines = [("prospects join", {"url": f"{ws}/join"}), ("root connects", {"url": f"{ws}/{secret}{ROOT_SUFFIX}"})]
        if self.generated_secret:
            lines.append(("no secret configured: generated one for this run (set SECRET or [overlay] secret)", {}))
        return lines

    async def run(self) -> None:
        await self.store.run()

    # -- effects -------------------------------------------------------------------------
    async def execute(self, effects: Sequence[Any]) -> None:
        m = self.metrics
        for effect in effects:
            if type(effect) is Deliver:
                if await self._send(effect.to, encode(effect.payload, effect.origin)):
                    (m.to_root if self.router.is_root(effect.to) else m.to_prospect).inc()
            elif type(effect) is Keepalive:
                await self._send(effect.to, HEARTBEAT)
            elif type(effect) is Close:
                await effect.party.close(effect.code, effect.reason)
            elif type(effect) is Dropped:
                m.dropped.labels(effect.reason).inc()
                self.log.debug("message dropped", reason=effect.reason)
            elif type(effect) is Answered:
                m.latency.observe(effect.latency)
                self.log.info("join answered", latency_ms=round(effect.latency * 1000, 1))

    async def _send(self, channel: Channel, text: str) -> bool:
        """Send to another party without letting it stall the sender for long.

        A receiver that does not read (its socket buffer full) for ``send_timeout`` is
        closed with 1008, so one slow peer costs neither unbounded memory nor everyone's time.
        """
        try:
            await channel.send(text, self.send_timeout)
        except ChannelClosed:
            self.metrics.dropped.labels("destination_closed").inc()
            return False
        except SendTimeout:
            self.metrics.dropped.labels("slow_receiver").inc()
            await channel.close(1008, "not reading fast enough")
            return False
        return True

    # -- endpoints -----------------------------------------------------------------------
    @staticmethod
    def _first_subprotocol(channel: Channel) -> str | None:
        # ws 6 echoes the first requested subprotocol; the original enforces none.
        return channel.info.subprotocols[0] if channel.info.subprotocols else None

    async def join(self, channel: Channel) -> None:
        await channel.accept(self._first_subprotocol(channel))
        now = self.clock()
        if self.limiter is not None and not self.limiter.allow(channel.info.client_host, now):
            # Accept, then close: the real client throws if the upgrade itself is refused.
            self.metrics.dropped.labels("rate_limited").inc()
            self.log.debug("join refused: rate limited", client=channel.info.client_host)
            await channel.close(CLOSE_TRY_AGAIN_LATER, "rate limited")
            return
        endpoint_id, effects = await self.store.open_endpoint(now, channel)
        if endpoint_id is None:
            await self.execute(effects)
            return
        self.metrics.joins.inc()
        self.metrics.prospects.inc()
        self.log.debug("prospect connected", id=endpoint_id)
        try:
            await self._pump_prospect(channel)
        finally:
            await self.store.closed(self.clock(), channel)  # (an endpoint's close never suspends)
            self.metrics.prospects.dec()
            self.log.debug("prospect closed", id=endpoint_id)

    async def _pump_prospect(self, channel: Channel) -> None:
        store = self.store
        clock = self.clock
        execute = self.execute
        while True:
            frame = await channel.receive()
            try:
                parsed = decode(frame)
            except BadFrame as exc:
                self.metrics.dropped.labels(exc.reason).inc()
                self.log.debug("bad frame from a prospect", reason=exc.reason)
                if self.settings.bad_message is BadMessagePolicy.CLOSE:
                    await channel.close(CLOSE_INVALID_DATA, "frame is not a JSON object")
                    return
                continue
            if isinstance(parsed, Opaque):
                effects = await store.route_unstamped(clock(), channel, parsed.value)
            elif not parsed.destination_valid:
                effects = [Dropped("unknown_destination")]
            else:
                effects = await store.route(clock(), channel, parsed.destination, parsed.message)
            await execute(effects)

    async def root(self, channel: Channel) -> None:
        path = channel.info.path.encode()
        if not hmac.compare_digest(path, self._secret_path):
            self.metrics.dropped.labels("wrong_secret").inc()
            self.log.info("root refused: wrong secret", client=channel.info.client_host)
            await channel.refuse(403)
            return
        # Registered before its handshake is out, so that a join following the root's open, on
        # any node, finds it (on a cluster the registration is a Redis call); what is sent to it
        # meanwhile waits for the handshake.
        root = _HeldUntilOpen(channel)
        effects = await self.store.open_root(self.clock(), root)
        if effects:  # refused (a root is connected, or the backend is away): said after the handshake
            try:
                await channel.accept(self._first_subprotocol(channel))
            finally:
                root.open()
            await self.execute(effects)
            return
        try:
            await channel.accept(self._first_subprotocol(channel))
            root.open()
            self.metrics.roots.inc()
            self.log.info("root connected", roots=self.router.root_count, client=channel.info.client_host)
            while True:
                # The root's frames are never routed; "heartbeat" in any form is expected.
                frame = await channel.receive()
                if frame not in (HEARTBEAT, "heartbeat", b"heartbeat", HEARTBEAT.encode()):
                    self.metrics.dropped.labels("from_root").inc()
        finally:
            root.open()  # (gone before its handshake: what waits fails as sent to a closed channel)
            with anyio.CancelScope(shield=True):  # a shared store hears of it even if the handler is cancelled
                await self.store.closed(self.clock(), root)
            self.log.info("root closed", roots=self.router.root_count)


class _HeldUntilOpen:
    """A root's channel from its registration until its handshake is out: sends and closes wait
    for :meth:`open`; everything else is the channel's. (Its identity is the root's, in the store.)"""

    __slots__ = ("_channel", "_opened")

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._opened = anyio.Event()

    def open(self) -> None:
        self._opened.set()

    async def send(self, message: str | bytes, timeout: float | None = None) -> None:
        if not self._opened.is_set():
            await self._opened.wait()
        await self._channel.send(message, timeout)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._opened.is_set():
            await self._opened.wait()
        await self._channel.close(code, reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)



def _namespace(secret: str) -> str:
    """The routing store's name: nodes serving one secret share one overlay, and the secret
    itself never becomes a key (a digest of it does)."""
    return "ov:" + hashlib.sha256(secret.encode()).hexdigest()[:16]
