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
from typing import Any, Mapping, Sequence

import attrs

from rendezvous import plugins
from rendezvous.acme.issue import LETS_ENCRYPT
from rendezvous.acme.policy import check_hostname, parse_listen_address
from rendezvous.errors import ConfigError
from rendezvous.settings import build, fields_of, positive, setting


@attrs.frozen
class ServerSettings:
    host: str = setting("0.0.0.0", help="address to listen on (use :: for dual-stack)")
    port: int | None = setting(None, help="TCP port (default: the profile's original port; 0 = ephemeral)")
    http_server: str = setting(
        "native", help="HTTP server plugin: native (HTTP/1.1 + WebSocket, fastest), hypercorn (adds HTTP/2) or uvicorn"
    )
    metrics_path: str = setting("/metrics", help="path of the Prometheus metrics ('' to disable)")
    healthz_path: str = setting("/healthz", help="path of the health check ('' to disable)")
    unsafe_logging: bool = setting(False, help="log client IP addresses instead of scrubbing them")
    log_format: str = setting("auto", help="auto, console or json")
    log_level: str = setting("info", help="debug, info, warning or error")
    cert: pathlib.Path | None = setting(None, help="TLS certificate (PEM); with --key, serve HTTPS")
    key: pathlib.Path | None = setting(None, help="TLS private key (PEM)")
    shutdown_grace: float = setting(5.0, help="seconds to let connections finish on shutdown", validator=positive)
    webtransport_port: int | None = setting(None, help="UDP port for WebTransport (HTTP/3); unset: off, 0: ephemeral")
    webtransport_cert: pathlib.Path | None = setting(None, help="certificate (PEM) for WebTransport only (default: --cert, else an ephemeral one)")
    webtransport_key: pathlib.Path | None = setting(None, help="private key (PEM) for --webtransport-cert")
    bridges: bool = setting(True, help="also carry channel routes over HTTP long-poll and request/response routes over WebSocket/WebTransport")
    longpoll_wait: float = setting(25.0, help="seconds a long-poll GET for a channel's next message waits", validator=positive)
    longpoll_idle: float = setting(60.0, help="a long-poll channel nobody polls for this many seconds closes (1006)", validator=positive)
    mount: tuple[str, ...] = setting((), help="where a profile is served: NAME=/prefix, NAME=:PORT (a listener of its own) or NAME=:PORT/prefix (repeatable)")
    acme_hostnames: tuple[str, ...] = setting((), help="hostnames to get a certificate for over ACME (comma-separated); serve HTTPS with it")
    acme_email: str = setting("", help="contact e-mail for the ACME account")
    acme_cert_cache: pathlib.Path = setting(pathlib.Path("acme-cert-cache"), help="directory of the ACME account key and certificates")
    acme_directory_url: str = setting(LETS_ENCRYPT, help="the ACME CA's directory URL (default: Let's Encrypt)")
    acme_http_addr: str = setting(":80", help="[host]:port of the HTTP-01 challenge listener (also redirects HTTP to HTTPS)")

    def __attrs_post_init__(self) -> None:
        if self.log_format not in ("auto", "console", "json"):
            raise ValueError(f"log_format: expected auto, console or json, got {self.log_format!r}")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        if (self.webtransport_cert is None) != (self.webtransport_key is None):
            raise ValueError("webtransport_cert and webtransport_key must be given together")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be 0..65535, got {self.port}")
        self.mounts()  # checks the format
        if self.cert is not None and (self.acme_hostnames or self.acme_email):
            raise ValueError("cert and key are not allowed with acme_hostnames or acme_email: choose one source of certificates")
        if self.acme_hostnames:
            self._check_acme()
        for name in ("metrics_path", "healthz_path"):
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

    server_aliases: dict[str, list[str]] = {}
    server_defaults: Values = {}
    server_from_profiles: Values = {}
    profiles: dict[str, Any] = {}
    loaded: dict[str, Any] = {}
    disagreeing: set[str] = set()
    for name in names:
        try:
            profile = plugins.load_profile(name)
        except plugins.PluginError as exc:
            raise ConfigError(str(exc)) from None
        loaded[name] = profile
        for field, env_names in getattr(profile, "server_env", {}).items():
            server_aliases.setdefault(field, []).extend(env_names)
        for field, value in getattr(profile, "server_defaults", {}).items():
            if field in server_defaults and server_defaults[field][0] != value:
                disagreeing.add(field)  # two profiles want different defaults: keep the framework's
            server_defaults.setdefault(field, (value, f"profile {name} default"))
        values: Values = {}
        if path is not None:
            values.update(table(data, name, path))
        values.update(env_values(profile.settings, f"RENDEZVOUS_{name.upper()}_", environ))
        values.update((profile_overrides or {}).get(name, {}))
        profiles[name] = build(profile.settings, values, name)
        # Profiles whose original takes server options in its own terms (Snowflake's --addr).
        if hasattr(profile, "server_values"):
            try:
                given = profile.server_values(profiles[name])
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            try:
                untouched = profile.server_values(build(profile.settings, {}, name))
            except (ValueError, ConfigError):
                untouched = {}
            for field, (value, source) in given.items():
                if field in untouched and untouched[field][0] == value:
                    # The profile's default (Snowflake's :443): only a default for the server,
                    # so [server], RENDEZVOUS_* and another profile's explicit value win over it.
                    if field in server_defaults and server_defaults[field][0] != value:
                        disagreeing.add(field)
                    server_defaults.setdefault(field, (value, f"profile {name} default"))
                else:
                    server_from_profiles[field] = (value, source)

    server_values: Values = {k: v for k, v in server_defaults.items() if k not in disagreeing}
    if path is not None:
        server_values.update(table(data, "server", path))
    server_values.update(env_values(ServerSettings, "RENDEZVOUS_", environ, server_aliases))
    server_values.update(server_from_profiles)
    server_values.update(server_overrides or {})
    server = build(ServerSettings, server_values, "server")
    for mounted in server.mounts():
        if mounted not in profiles:
            raise ConfigError(f"server.mount: {mounted!r} is not one of the profiles served ({', '.join(profiles)})")
    for name, profile in loaded.items():
        if hasattr(profile, "validate"):
            try:
                profile.validate(profiles[name], server)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
    return Config(server=server, profiles=profiles)
