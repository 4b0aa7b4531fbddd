"""Configuration: embedded defaults < TOML file < environment < command line.

Profiles may add server defaults (``server_defaults``), translate their own options into
server settings (``server_values``, e.g. Snowflake's ``--addr``) and check the whole
(``validate``). A TOML file has a ``[server]`` table and one table per profile (``[overlay]``); it may name
its profiles with a top-level ``profiles = [...]``. Env vars are ``RENDEZVOUS_<FIELD>`` for
server settings, ``RENDEZVOUS_<PROFILE>_<FIELD>`` for profile settings, plus the names the
original systems use (``SECRET``, ``PORT``, ...) as each profile declares them.
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from rendezvous import hooks, plugins
from rendezvous.acme.issue import LETS_ENCRYPT
from rendezvous.acme.policy import check_hostname, parse_listen_address
from rendezvous.errors import ConfigError
from rendezvous.settings import build, check_files, fields_of, positive, setting


@attrs.frozen
class ServerSettings:
    host: str = setting("0.0.0.0", help="address to listen on (:: for every interface, IPv6 and IPv4)")
    port: int | None = setting(None, help="TCP port, 0 for an ephemeral one (unset: the first profile's original port)")
    http_server: str = setting(
        "native", help="HTTP server plugin: native (HTTP/1.1 + WebSocket, fastest), hypercorn (adds HTTP/2) or uvicorn"
    )
    metrics_path: str = setting("/metrics", help="path of the Prometheus metrics ('' to disable)")
    healthz_path: str = setting("/healthz", help="path of the health check ('' to disable)")
    status_path: str = setting("/status", help="path of the live status page, its JSON at <path>.json ('' to disable)")
    unsafe_logging: bool = setting(False, help="log client IP addresses instead of scrubbing them")
    log_format: str = setting("auto", help="console in a terminal, json otherwise (auto), or as named",
                              choices=("auto", "console", "json"))
    log_level: str = setting("info", help="the least important events logged", choices=("debug", "info", "warning", "error"))
    cert: pathlib.Path | None = setting(None, help="TLS certificate (PEM); with --key, serve HTTPS")
    key: pathlib.Path | None = setting(None, help="TLS private key (PEM)")
    shutdown_grace: float = setting(5.0, help="seconds to let connections finish on shutdown", validator=positive)
    webtransport_port: int | None = setting(None, help="UDP port for WebTransport (HTTP/3); unset: off, 0: ephemeral")
    webtransport_host: str | None = setting(None, help="address of the WebTransport UDP listener (unset: --host)")
    webtransport_cert: pathlib.Path | None = setting(None, help="certificate (PEM) for WebTransport only (unset: --cert, else an ephemeral one)")
    webtransport_key: pathlib.Path | None = setting(None, help="private key (PEM) for --webtransport-cert")
    bridges: bool = setting(True, help="also carry channel routes over HTTP long-poll and request/response routes over WebSocket/WebTransport")
    longpoll_wait: float = setting(25.0, help="seconds a long-poll GET for a channel's next message waits", validator=positive)
    longpoll_idle: float = setting(60.0, help="a long-poll channel nobody polls for this many seconds closes (1006)", validator=positive)
    mount: tuple[str, ...] = setting((), help="where a profile is served: NAME=/prefix, NAME=:PORT (a listener of its own) or NAME=:PORT/prefix (repeatable)")
    acme_hostnames: tuple[str, ...] = setting((), help="hostnames to get a certificate for over ACME (comma-separated); serve HTTPS with it")
    acme_email: str = setting("", help="contact e-mail for the ACME account")
    acme_cert_cache: pathlib.Path = setting(pathlib.Path("acme-cert-cache"), help="directory of the ACME account key and certificates")
    acme_directory_url: str = setting(LETS_ENCRYPT, help="the ACME CA's directory URL (Let's Encrypt's by default)")
    acme_http_addr: str = setting(":80", help="[host]:port of the HTTP-01 challenge listener (also redirects HTTP to HTTPS)")
    # Scale-out (docs/scale-out.md, docs/operations.md "Running a cluster").
    backend: str = setting("memory", help="where shared rendezvous state lives: memory (this process alone) or redis "
                                          "(a cluster of equal nodes sharing one Redis; pip install 'rendezvous[redis]')")
    backend_url: str = setting("redis://127.0.0.1:6379/0", secret=True,
                               help="the backend's server: redis://[[user]:password@]host[:port][/db], rediss:// (TLS), unix:///path or "
                                    "redis+sentinel://host[:port][,host[:port]...]/<service>[/db]")
    node_id: str = setting("", help="this node's name in a cluster, unique among live nodes (unset: 8 random hex digits per start)")
    node_ttl: float = setting(3.0, help="seconds after which a node that stopped renewing its liveness key counts as dead", validator=positive)
    backend_prefix: str = setting("rdv", help="first part of every backend key and channel (clusters sharing one Redis need their own)")
    readyz_path: str = setting("/readyz", help="path of the readiness check: 503 while the backend is unreachable ('' to disable)")

    def __attrs_post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        if (self.webtransport_cert is None) != (self.webtransport_key is None):
            raise ValueError("webtransport_cert and webtransport_key must be given together")
        for name in ("port", "webtransport_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name}: must be 0..65535, got {value}")
        self.mounts()  # checks the format
        if self.cert is not None and (self.acme_hostnames or self.acme_email):
            raise ValueError("cert and key are not allowed with acme_hostnames or acme_email: choose one source of certificates")
        if self.acme_hostnames:
            self._check_acme()
        for name in ("metrics_path", "healthz_path", "readyz_path", "status_path"):
            value = getattr(self, name)
            if value and not value.startswith("/"):
                raise ValueError(f"{name}: must start with '/', got {value!r}")

    def _check_acme(self) -> None:
        if self.http_server != "native":
            raise ValueError(f"acme_hostnames: the {self.http_server} server reads its certificate only at start, so "
                             "renewed ACME certificates would not reach it; use http_server = native")
        for name in self.acme_hostnames:
            try:
                check_hostname(name)
            except ValueError as exc:
                raise ValueError(f"acme_hostnames: {exc}") from None
        try:
            parse_listen_address(self.acme_http_addr)
        except ValueError as exc:
            raise ValueError(f"acme_http_addr: {exc}") from None
        if not self.acme_directory_url.startswith(("https://", "http://")):
            raise ValueError(f"acme_directory_url: expected an http(s) URL, got {self.acme_directory_url!r}")

    def mounts(self) -> dict[str, tuple[int | None, str]]:
        """``mount`` as ``{profile: (port or None, "/prefix" or "")}``.

        Each item is ``NAME=/prefix`` (on the shared listener), ``NAME=:PORT`` (a listener of its
        own) or ``NAME=:PORT/prefix``."""
        out: dict[str, tuple[int | None, str]] = {}
        for item in self.mount:
            name, sep, where = item.partition("=")
            name, where = name.strip(), where.strip()
            port: int | None = None
            if where.startswith(":"):
                digits, slash, rest = where[1:].partition("/")
                if not digits.isdigit() or not 0 <= int(digits) <= 65535:
                    raise ValueError(f"mount: expected NAME=/prefix, NAME=:PORT or NAME=:PORT/prefix, got {item!r}")
                port, where = int(digits), slash + rest
            if not sep or not name or (where and not where.startswith("/")) or (port is None and not where):
                raise ValueError(f"mount: expected NAME=/prefix, NAME=:PORT or NAME=:PORT/prefix, got {item!r}")
            out[name] = (port, where.rstrip("/"))
        return out


@attrs.frozen
class Config:
    server: ServerSettings
    profiles: Mapping[str, Any]  # name -> profile settings instance
    #: server setting -> where its value came from ("command line", "env PORT", "default", ...)
    sources: Mapping[str, str] = attrs.field(factory=dict)

    def source(self, field: str) -> str:
        """``server.<field> (from <source>)``: how an error line names a server setting."""
        return f"server.{field} (from {self.sources.get(field, 'default')})"


Values = dict[str, tuple[Any, str]]


def read_toml(path: pathlib.Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None


def env_values(cls: type, prefix: str, environ: Mapping[str, str], aliases: Mapping[str, Sequence[str]] = {}) -> Values:
    values: Values = {}
    for field, meta, _ in fields_of(cls):
        names = [*meta.env, *aliases.get(field.name, ()), f"{prefix}{field.name.upper()}"]
        for name in names:  # later names win: the generic RENDEZVOUS_ name last
            if name in environ:
                values[field.name] = (environ[name], f"env {name}")
    return values


def table(data: Mapping[str, Any], key: str, path: pathlib.Path) -> Values:
    section = data.get(key, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [{key}] must be a table")
    return {k: (v, f"{path}") for k, v in section.items()}


def load_config(
    profile_names: Sequence[str] = (),
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    server_overrides: Mapping[str, tuple[Any, str]] | None = None,
    profile_overrides: Mapping[str, Mapping[str, tuple[Any, str]]] | None = None,
) -> Config:
    """Merge every source into a validated :class:`Config`, or raise :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = pathlib.Path(config_file) if config_file is not None else None
    if path is not None:
        data = read_toml(path)
    names = list(profile_names)
    if not names and path is not None:
        listed = data.get("profiles", data.get("profile", []))
        names = [listed] if isinstance(listed, str) else list(listed)
    if not names:
        raise ConfigError("no profile given: use --profile NAME (see `rendezvous profiles`)")
    if path is not None:
        known = {"server", "profiles", "profile", *names}
        for key in data:
            if key not in known:
                raise ConfigError(f"config file {path}: unknown table or key {key!r}")

    loaded: dict[str, Any] = {}
    for name in names:
        try:
            loaded[name] = plugins.load_profile(name)
        except plugins.PluginError as exc:
            raise ConfigError(str(exc)) from None
    server_aliases: dict[str, list[str]] = {}
    for profile in loaded.values():
        for field, env_names in hooks.server_env(profile).items():
            server_aliases.setdefault(field, []).extend(env_names)
    server_from_profiles: Values = {}
    profiles: dict[str, Any] = {}
    for name, profile in loaded.items():
        values: Values = {}
        if path is not None:
            values.update(table(data, name, path))
        values.update(env_values(profile.settings, f"RENDEZVOUS_{name.upper()}_", environ))
        values.update((profile_overrides or {}).get(name, {}))
        profiles[name] = build(profile.settings, values, name)
        check_files(profiles[name], name, {k: source for k, (_, source) in values.items()})
        # Profiles whose original takes server options in its own terms (Snowflake's --addr).
        server_from_profiles.update(_split_server_values(profile, profiles[name], name)[1])

    server_values = profile_server_defaults(loaded, profiles)
    if path is not None:
        server_values.update(table(data, "server", path))
    server_values.update(env_values(ServerSettings, "RENDEZVOUS_", environ, server_aliases))
    server_values.update(server_from_profiles)
    server_values.update(server_overrides or {})
    server = build(ServerSettings, server_values, "server")
    known_backends = plugins.available("rendezvous.backends")
    if server.backend not in known_backends:
        raise ConfigError(f"server.backend (from {server_values.get('backend', (None, 'default'))[1]}): no backend named "
                          f"{server.backend!r} is installed (installed: {', '.join(sorted(known_backends))})")
    sources = {k: source for k, (_, source) in server_values.items()}
    known_servers = plugins.available(plugins.SERVERS)
    if server.http_server not in known_servers:
        raise ConfigError(f"server.http_server (from {sources.get('http_server', 'default')}): no server named "
                          f"{server.http_server!r} is installed (installed: {', '.join(sorted(known_servers))})")
    for mounted in server.mounts():
        if mounted not in profiles:
            raise ConfigError(f"server.mount: {mounted!r} is not one of the profiles served ({', '.join(profiles)})")
    for name, profile in loaded.items():
        if isinstance(profile, hooks.Validates):
            try:
                profile.validate(profiles[name], server)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
    check_files(server, "server", sources)
    return Config(server=server, profiles=profiles, sources=sources)


def _server_values(profile: Any, settings: Any, name: str) -> Values:
    if not isinstance(profile, hooks.ServerValues):
        return {}
    try:
        return dict(profile.server_values(settings))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _untouched_server_values(profile: Any, name: str) -> Values:
    """What the profile's own defaults make of the server settings (Snowflake's ``:443``)."""
    try:
        return _server_values(profile, build(profile.settings, {}, name), name)
    except ConfigError:
        return {}


def _split_server_values(profile: Any, settings: Any, name: str) -> tuple[Values, Values]:
    """The server values ``settings`` give, as (defaults, explicit choices): a value is explicit
    when the profile setting it comes from (its source: ``snowflake.addr``) is not the profile's
    default, so ``-addr :8080`` makes both the port and the host (``::``) explicit."""
    untouched = _untouched_server_values(profile, name)
    given = _server_values(profile, settings, name)
    changed = {source for field, (value, source) in given.items() if field not in untouched or untouched[field][0] != value}
    return ({f: v for f, v in given.items() if v[1] not in changed}, {f: v for f, v in given.items() if v[1] in changed})


#: Server settings that say where the shared listener is: with several profiles, a profile's
#: default for them is used only if every profile has the same one.
LISTENER = ("host", "port")


def profile_server_defaults(loaded: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> Values:
    """The server defaults the profiles ask for: ``server_defaults`` (Snowflake's ``/prometheus``)
    and what their own defaults translate to (wasimoff's ``localhost:4080``), as far as their
    ``settings`` still give them (``WASIMOFF_QUIC_LISTEN=''`` gives no WebTransport port). Where two
    profiles disagree, and for the listener's address where not every profile gives the same, the
    framework's own default stays (``0.0.0.0``, docs/operations.md)."""
    wanted: dict[str, dict[str, tuple[Any, str]]] = {}
    for name, profile in loaded.items():
        for field, value in hooks.server_defaults(profile).items():
            wanted.setdefault(field, {})[name] = (value, f"{name}'s default")
        defaults = _untouched_server_values(profile, name) if settings is None else (
            _split_server_values(profile, settings[name], name)[0])
        for field, (value, source) in defaults.items():
            # Named by the profile's setting (WASIMOFF_QUIC_LISTEN), true whether it was given or not.
            wanted.setdefault(field, {})[name] = (value, f"{name}'s default" if source in ("default", name) else source)
    out: Values = {}
    for field, by_profile in wanted.items():
        values = {value for value, _ in by_profile.values()}
        if len(values) > 1 or (field in LISTENER and len(by_profile) < len(loaded)):
            continue
        out[field] = next(iter(by_profile.values()))
    return out


