"""Running a server: profiles + transports + an HTTP server plugin, under anyio."""

from __future__ import annotations

import contextlib
import errno
import inspect
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio
import attrs
import structlog

from rendezvous import hooks, plugins
from rendezvous.app import App, DuplicateRoute
from rendezvous.backends import serving as backends
from rendezvous.config import Config, load_config
from rendezvous.errors import ConfigError
from rendezvous.observe import logging as rlog
from rendezvous.observe.metrics import ProfileLabelled, healthz, metrics_handler, new_registry
from rendezvous.observe.status import StatusPage
from rendezvous.profile import ProfileContext
from rendezvous.servers import ServeOptions
from rendezvous.transports.base import ExchangeRoute
from rendezvous.transports.bridges import Bridges

log = rlog.get_logger("rendezvous.server")


@attrs.frozen
class RunningServer:
    """A server started by :func:`running`."""

    url: str  # http(s)://host:port, with a connectable host
    host: str
    port: int
    config: Config
    runtimes: Mapping[str, Any]  # profile name -> its runtime
    metrics: Any  # the prometheus CollectorRegistry
    webtransport: Any = None  # the WebTransportTransport, when a webtransport_port is set
    webtransport_url: str | None = None  # https://host:udp-port (append a channel route's path)
    app: Any = None  # the rendezvous.app.App of the main listener (routes, transports)
    urls: Mapping[str, str] = attrs.field(factory=dict)  # profile -> where it is served (listener URL + prefix)
    acme: Any = None  # the rendezvous.acme.AcmeManager, when acme_hostnames are set
    acme_http_url: str | None = None  # where the HTTP-01 challenge listener is
    #: exactly what is bound, for the log (``http://[::]:8080``: every interface): ``http`` (the
    #: main listener), ``webtransport``, ``acme_http``; and each profile's place
    listening: Mapping[str, str] = attrs.field(factory=dict)
    bound_urls: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """A listening TCP socket where asked: ``::`` (or ``""``) every interface, IPv6 and IPv4 (IPv4 only
    on a host without IPv6), ``0.0.0.0`` every IPv4 interface, an address, or a name's first address."""
    return [_bind(host, port, socket.SOCK_STREAM)]


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound as :func:`bind_sockets` binds TCP (the WebTransport listener's)."""
    return _bind(host, port, socket.SOCK_DGRAM)


def _bind(host: str, port: int, kind: int) -> socket.socket:
    host = host.strip("[]")
    if host in ("", "::"):
        try:
            return _bound(socket.AF_INET6, ("::", port), kind, dualstack=True)
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise  # in use, say: not a reason to listen on IPv4 alone
        host = "0.0.0.0"
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    return _bound(family, address, kind)


def _bound(family: int, address: Any, kind: int, dualstack: bool = False) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if dualstack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket) -> str:
    """Where ``sock`` is bound, exactly: ``[::]:8080``, ``0.0.0.0:8080``, ``127.0.0.1:8080``."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connectable(host: str, sock: socket.socket) -> str:
    """A host to reach ``sock`` from here: loopback for a wildcard, the name if one was given."""
    bound = sock.getsockname()[0]
    if bound in ("0.0.0.0", "::"):
        return "127.0.0.1" if bound == "0.0.0.0" else "[::1]"
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, host.strip("[]"))
    except OSError:
        return host  # a name (TLS certificates name it)
    return f"[{bound}]" if ":" in bound else bound


def listen_error(setting: str, what: str, address: str, exc: OSError, purpose: str = "") -> str:
    """The line for a listener that cannot be bound: the setting, the address and the system's reason."""
    reason = exc.strerror or str(exc)
    return f"{setting}: cannot listen on {what} {address}{' for ' + purpose if purpose else ''}: {reason}"


@attrs.define
class _Listener:
    """One TCP listener and the app behind it: the shared one, or a profile's own (``NAME=:PORT``)."""

    port: int | None  # as mounted; None: the server's port
    profiles: list[str] = attrs.field(factory=list)
    routes: list[tuple[str, Any]] = attrs.field(factory=list)
    static_dirs: list[tuple[str, Any]] = attrs.field(factory=list)  # (prefix, directory)
    default_port: int | None = None
    app: Any = None
    sockets: list[socket.socket] = attrs.field(factory=list)
    url: str = ""  # connectable (RunningServer.url)
    bound: str = ""  # exactly what was bound, for the log
    done: Any = None


class _Apps:
    """Route lookup across every listener's app (the WebTransport listener serves them all)."""

    def __init__(self, apps: Sequence[App]) -> None:
        self.apps = list(apps)

    def resolve(self, kind: str, path: str) -> Any:
        for app in self.apps:
            route = app.resolve(kind, path)
            if route is not None:
                return route
        return None


def _setting_naming(name: str, settings: Any, value: Any, several: bool) -> str:
    """How to name the profile setting that holds ``value`` (``overlay.public (--overlay-public)``)."""
    for field in attrs.fields(type(settings)):
        if getattr(settings, field.name) == value:
            flag = "--" + (f"{name}-" if several else "") + field.name.replace("_", "-")
            return f"{name}.{field.name} ({flag})"
    return f"{name}'s static directory"


@contextlib.asynccontextmanager
async def running(config: Config, *, clock: Callable[[], float] = time.monotonic) -> AsyncIterator[RunningServer]:
    """Start every configured profile and the HTTP server(s); stop them all on exit.

    Everything that can fail on the operator's configuration fails before anything starts: the
    profiles are created and their routes checked for collisions, then every socket (TCP
    listeners, the WebTransport UDP listener, the ACME challenge listener) is bound; a failure is
    a one-line :class:`ConfigError` naming the setting. Only then do the servers start.

    On exit, open channels are closed with 1001 (going away), the HTTP servers are asked to
    stop, and anything still running after the grace period is cancelled.
    """
    settings = config.server
    if not structlog.is_configured():
        # Embedded without a logging setup of the embedder's own: keep the safe defaults
        # (IP addresses scrubbed) rather than structlog's unscrubbed ones.
        rlog.configure(unsafe_logging=settings.unsafe_logging, log_format=settings.log_format, level=settings.log_level)
    registry = new_registry()
    # Where shared state lives (memory, or redis for a cluster): made and checked against the
    # profiles before anything starts, run before the profiles, stopped after them.
    backend = backends.for_server(settings, {name: plugins.load_profile(name) for name in config.profiles})
    transports = [ep.load()() for ep in plugins.available(plugins.TRANSPORTS).values()]
    runtimes: dict[str, Any] = {}
    late: dict[str, Any] = {}  # what starts after the profiles are created
    mounts = settings.mounts()
    several = len(config.profiles) > 1
    shared = _Listener(None)
    own: dict[int, _Listener] = {}
    listener_of: dict[str, _Listener] = {}
    static_of: dict[Any, str] = {}  # static directory -> the setting that names it
    for name, profile_settings in config.profiles.items():
        profile = plugins.load_profile(name)
        port, prefix = mounts.get(name, (None, ""))
        listener = shared if port is None else own.setdefault(port, _Listener(port))
        listener.profiles.append(name)
        listener.default_port = listener.default_port if listener.default_port is not None else profile.default_port
        listener_of[name] = listener
        # With several profiles each gets a registry of its own, shown on /metrics labelled by profile.
        profile_registry = new_registry() if several else registry
        if several:
            registry.register(ProfileLabelled(name, profile_registry))
        context = ProfileContext(name, profile_settings, profile_registry, rlog.get_logger(f"rendezvous.{name}").bind(), clock,
                                 lambda: late.get("webtransport"), backend)
        runtime = profile.create(context)
        runtimes[name] = runtime
        listener.routes.extend((prefix, route) for route in runtime.routes)
        if runtime.static_dir is not None:
            listener.static_dirs.append((prefix, runtime.static_dir))
            static_of[runtime.static_dir] = _setting_naming(name, profile_settings, runtime.static_dir, several)
    listeners = ([shared] if shared.profiles or not own else []) + list(own.values())
    main = listeners[0]
    if settings.metrics_path:
        main.routes.append(("", ExchangeRoute(settings.metrics_path, metrics_handler(registry), frozenset({"GET", "HEAD"}))))
    if settings.healthz_path:
        main.routes.append(("", ExchangeRoute(settings.healthz_path, healthz, frozenset({"GET", "HEAD"}))))
    if settings.readyz_path:
        main.routes.append(("", ExchangeRoute(settings.readyz_path, backends.readyz(backend), frozenset({"GET", "HEAD"}))))
    status = StatusPage(runtimes, clock) if settings.status_path else None  # every profile's numbers, sampled each second
    if status is not None:
        main.routes.extend(("", route) for route in status.routes(settings.status_path))
    for listener in listeners:
        bridges = Bridges(settings.longpoll_wait, settings.longpoll_idle) if settings.bridges else None
        try:
            listener.app = App(listener.routes, transports, listener.static_dirs, bridges)
        except DuplicateRoute as exc:
            prefixes = [prefix for prefix, _ in listener.static_dirs]
            claimed = " and ".join(static_of[d] for prefix, d in listener.static_dirs if prefixes.count(prefix) > 1)
            raise ConfigError(f"{exc}{' (' + claimed + ')' if claimed else ''}: serve the profiles under different "
                              "prefixes or ports (--mount NAME=/prefix or NAME=:PORT)") from None
    scheme = "https" if settings.cert or settings.acme_hostnames else "http"
    acme, wt_socket, webtransport = None, None, None
    acme_sockets: list[socket.socket] = []
    try:
        for listener in listeners:
            _bind_listener(listener, config, scheme)
        if settings.acme_hostnames:
            acme_host, acme_sockets = _bind_acme(config)
        if settings.webtransport_port is not None:
            wt_host = settings.webtransport_host if settings.webtransport_host is not None else settings.host
            try:
                wt_socket = bind_udp(wt_host, settings.webtransport_port)
            except OSError as exc:
                line = listen_error(config.source("webtransport_port"), "UDP", _address(wt_host, settings.webtransport_port),
                                    exc, "WebTransport")
                if exc.errno == errno.EADDRINUSE:
                    line += " (give it another port, or '' for no WebTransport)"
                raise ConfigError(line) from None
        # Nothing has started yet, and nothing is logged before this point but what profiles log when created.
        if acme_sockets:
            acme = _acme(settings)
        http_server = plugins.load(plugins.SERVERS, settings.http_server)
        shutdown = anyio.Event()
        apps = [listener.app for listener in listeners]
        webtransport, webtransport_url, webtransport_bound, rotation = None, None, None, None
        if wt_socket is not None:
            webtransport, rotation = _webtransport(_Apps(apps), settings)
            wt_port = await webtransport.start(sock=wt_socket)
            webtransport_url = f"https://{_connectable(wt_host, wt_socket)}:{wt_port}"
            webtransport_bound = f"https://{bound_address(wt_socket)}"
            late["webtransport"] = webtransport

        async def run_http(listener: _Listener) -> None:
            certfile, keyfile = settings.cert, settings.key
            try:
                if acme is not None:
                    # HTTPS starts once there is a certificate; until then connections wait in the backlog.
                    if not await _first_of(acme.ready, shutdown):
                        return
                    certfile, keyfile = acme.certfile, None  # key and chain in one file
                options = ServeOptions(max_message_size=listener.app.max_message_size, grace=settings.shutdown_grace,
                                       certfile=certfile, keyfile=keyfile)
                await http_server.serve(listener.app, listener.sockets, options, shutdown)
            finally:
                listener.done.set()

        urls = {name: listener_of[name].url + mounts.get(name, (None, ""))[1] for name in runtimes}
        bound = {name: listener_of[name].bound + mounts.get(name, (None, ""))[1] for name in runtimes}
        async with backends.one_error(), anyio.create_task_group() as tg:
            await tg.start(backends.run, backend)
            for runtime in runtimes.values():
                tg.start_soon(runtime.run)
            for listener in listeners:
                tg.start_soon(run_http, listener)
            if status is not None:
                tg.start_soon(status.run)
            if rotation is not None:
                tg.start_soon(_rotate_certificates, rotation, webtransport)
            acme_http_url = None
            if acme is not None:
                from rendezvous.acme import challenge

                https_port = main.sockets[0].getsockname()[1]
                tg.start_soon(challenge.serve, acme_sockets, lambda method, target, host: challenge.answer(
                    method, target, host, acme.tokens, acme.hostnames, https_port))
                tg.start_soon(acme.run)
                acme_http_url = f"http://{_connectable(acme_host, acme_sockets[0])}:{acme_sockets[0].getsockname()[1]}"
            listening = {"http": main.bound, "webtransport": webtransport_bound,
                         "acme_http": f"http://{bound_address(acme_sockets[0])}" if acme_sockets else None}
            try:
                yield RunningServer(main.url, settings.host, main.sockets[0].getsockname()[1], config, runtimes, registry,
                                    webtransport, webtransport_url, main.app, urls, acme, acme_http_url,
                                    {k: v for k, v in listening.items() if v is not None}, bound)
            finally:
                with anyio.CancelScope(shield=True):
                    for runtime in runtimes.values():
                        # Let profiles answer what is waiting (long-polls) before the server stops.
                        if isinstance(runtime, hooks.ShutsDown):
                            await runtime.shutdown()
                    unique = {id(t): t for app in apps for t in app.transports}
                    if webtransport is not None:
                        unique[id(webtransport)] = webtransport
                    for transport in unique.values():
                        await transport.shutdown(1001)
                    shutdown.set()
                    with anyio.move_on_after(settings.shutdown_grace + 1):
                        for listener in listeners:
                            await listener.done.wait()
                tg.cancel_scope.cancel()
    finally:
        for sock in [*acme_sockets, *(s for listener in listeners for s in listener.sockets)]:
            sock.close()
        if wt_socket is not None and (webtransport is None or webtransport.port is None):
            wt_socket.close()  # else closed with the listener


def _address(host: str, port: int) -> str:
    host = host.strip("[]") or "::"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_listener(listener: _Listener, config: Config, scheme: str) -> None:
    settings = config.server
    if listener.port is not None:
        port, setting = listener.port, f"server.mount (from {config.sources.get('mount', 'default')})"
    elif settings.port is not None:
        port, setting = settings.port, config.source("port")
    else:
        port = listener.default_port or 8000
        setting = f"server.port (from {listener.profiles[0]}'s default port)" if listener.default_port else config.source("port")
    try:
        listener.sockets = bind_sockets(settings.host, port)
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            setting = config.source("host")  # the address is the problem, not the port
        raise ConfigError(listen_error(setting, "TCP", _address(settings.host, port), exc)) from None
    listener.url = f"{scheme}://{_connectable(settings.host, listener.sockets[0])}:{listener.sockets[0].getsockname()[1]}"
    listener.bound = f"{scheme}://{bound_address(listener.sockets[0])}"
    listener.done = anyio.Event()


def _bind_acme(config: Config) -> tuple[str, list[socket.socket]]:
    from rendezvous.acme.policy import parse_listen_address

    host, port = parse_listen_address(config.server.acme_http_addr)
    try:
        return host or "::", bind_sockets(host or "::", port)
    except OSError as exc:
        raise ConfigError(listen_error(config.source("acme_http_addr"), "TCP", _address(host, port), exc,
                                       "ACME HTTP-01 challenges")) from None


def _acme(settings: Any) -> Any:
    """The ACME manager, serving the cached certificate if there is one."""
    from rendezvous.acme import AcmeManager

    manager = AcmeManager.from_settings(settings, rlog.get_logger("rendezvous.acme"))
    manager.load_cached()
    return manager


async def _first_of(wanted: anyio.Event, other: anyio.Event) -> bool:
    """Wait until either event is set; whether ``wanted`` is."""
    async with anyio.create_task_group() as tg:
        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wait, wanted)
        tg.start_soon(wait, other)
    return wanted.is_set()


def _webtransport(app: Any, settings: Any) -> tuple[Any, Any]:
    import datetime

    from rendezvous.tls import CertificateRotation, certificate_from_files
    from rendezvous.transports.webtransport import WebTransportTransport

    if settings.webtransport_cert is not None:
        return WebTransportTransport(app, certificate_from_files(settings.webtransport_cert, settings.webtransport_key)), None
    if settings.cert is not None:
        return WebTransportTransport(app, certificate_from_files(settings.cert, settings.key)), None
    rotation = CertificateRotation(datetime.datetime.now(datetime.UTC))
    return WebTransportTransport(app, rotation.current), rotation


async def _rotate_certificates(rotation: Any, webtransport: Any) -> None:
    """Replace the ephemeral certificate before it expires; live sessions keep theirs."""
    import datetime

    while True:
        now = datetime.datetime.now(datetime.UTC)
        await anyio.sleep(max(1.0, (rotation.renew_at() - now).total_seconds()))
        renewed = rotation.advance(datetime.datetime.now(datetime.UTC))
        if renewed is not None:
            webtransport.use_certificate(renewed)
            log.info("webtransport certificate renewed", sha256=renewed.sha256)


async def serve(config: Config, *, ready: Callable[[RunningServer], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with running(config) as server:
            # What was bound, exactly: http://[::]:8080 is every interface (IPv6 and IPv4), not loopback.
            log.info("serving", url=server.listening["http"], profiles=list(config.profiles),
                     http_server=config.server.http_server)
            if server.acme is not None:
                log.info("acme", hostnames=list(server.acme.hostnames), listen=server.listening["acme_http"],
                         directory=server.acme.directory_url, cache=str(server.acme.cache.directory),
                         https="serving" if server.acme.ready.is_set() else "waiting for the first certificate")
            if server.webtransport is not None:
                log.info("webtransport", url=server.listening["webtransport"], sha256=server.webtransport.certificate.sha256,
                         ephemeral=server.webtransport.certificate.ephemeral)
            for name, runtime in server.runtimes.items():
                if isinstance(runtime, hooks.Describes):
                    for event, fields in runtime.describe(server.bound_urls[name]):
                        log.info(event, profile=name, **fields)
            if ready is not None:
                ready(server)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    # Profiles re-read what their original re-reads on SIGHUP (Snowflake: GeoIP).
                    for runtime in server.runtimes.values():
                        if isinstance(runtime, hooks.Reloads):
                            result = runtime.reload()
                            if inspect.isawaitable(result):
                                await result
                    log.info("reloaded", signal="SIGHUP")
                    continue
                log.info("shutting down", signal=signal.Signals(signum).name)
                break
    log.info("stopped")


def make_config(
    profiles: str | Sequence[str] = (),
    *,
    config_file: str | None = None,
    server: Mapping[str, Any] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a :class:`Config` from Python values (embedding). ``environ`` defaults to empty."""
    names = [profiles] if isinstance(profiles, str) else list(profiles)
    names = names or list((settings or {}).keys())
    return load_config(
        names,
        config_file,
        environ={} if environ is None else environ,
        server_overrides={k: (v, "python") for k, v in (server or {}).items()},
        profile_overrides={p: {k: (v, "python") for k, v in vals.items()} for p, vals in (settings or {}).items()},
    )
