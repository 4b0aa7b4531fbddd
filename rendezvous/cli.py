"""The ``rendezvous`` command: ``serve``, ``profiles``."""

from __future__ import annotations

import argparse
import enum
import functools
import gc
import os
import pathlib
import sys
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NoReturn, TextIO

import anyio
import attrs

from rendezvous import hooks, plugins
from rendezvous.config import ServerSettings, load_config, profile_server_defaults, read_toml
from rendezvous.errors import RendezvousError
from rendezvous.settings import fields_of


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line and exit code 2, as for any invalid configuration.
        self.exit(2, f"rendezvous: error: {message}\n")


def _flag_names(field: Any, meta: Any) -> list[str]:
    return ["--" + field.name.replace("_", "-"), *meta.flags]


def _default_text(value: Any, meta: Any) -> str | None:
    """A setting's default as ``--help`` shows it; None where there is nothing useful to show."""
    if meta.secret or value is None or hasattr(value, "takes_self") or value is attrs.NOTHING or value == ():  # a Factory
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, enum.Enum):
        text = str(value.value)
    elif isinstance(value, tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value) if value != "" else "''"
    return text.replace("%", "%%")  # argparse formats help with %


def _add_settings(group: argparse._ArgumentGroup, cls: type, dest_prefix: str, aliases: dict[str, list[str]] | None = None,
                  qualifier: str | None = None, shared: Collection[str] = frozenset(),
                  defaults: Mapping[str, tuple[Any, str]] | None = None, metavars: Mapping[str, str] | None = None) -> None:
    """One option per setting. With ``qualifier`` (a profile name) every setting also gets
    ``--<profile>-<name>``; names that several served profiles share (``shared``) get only that.
    ``defaults``: the profiles' own defaults for these settings, shown instead of the class's."""
    for field, meta, tp in fields_of(cls):
        given = (defaults or {}).get(field.name)
        shown = _default_text(given[0] if given else field.default, meta)
        help_text = meta.help + (f" (default: {shown}{', from ' + given[1] if given else ''})" if shown is not None else "")
        kwargs: dict[str, Any] = {"dest": dest_prefix + field.name, "default": argparse.SUPPRESS, "help": help_text}
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
        if inner is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif typing.get_origin(inner) is tuple:
            kwargs.update(action="append", metavar=field.name.upper())  # repeatable; each may be comma-separated
        elif isinstance(inner, type) and issubclass(inner, enum.Enum):
            kwargs["metavar"] = "{" + ",".join(m.value for m in inner) + "}"
        elif meta.choices or field.name in (metavars or {}):
            kwargs["metavar"] = (metavars or {}).get(field.name) or "{" + ",".join(meta.choices) + "}"
        else:
            kwargs["metavar"] = field.name.upper()
        names = [n for n in [*_flag_names(field, meta), *(aliases or {}).get(field.name, ())] if n not in shared]
        if qualifier is not None:
            names.append(f"--{qualifier}-{field.name.replace('_', '-')}")
        group.add_argument(*names, **kwargs)


def _collect(args: argparse.Namespace, prefix: str) -> dict[str, tuple[Any, str]]:
    return {k[len(prefix):]: (v, "command line") for k, v in vars(args).items() if k.startswith(prefix)}


def shared_flag_problem(argv: Sequence[str], owners: Mapping[str, Sequence[tuple[str, str]]]) -> str | None:
    """The error line for a flag several served profiles share (``--max-message-size`` with two),
    naming the per-profile spellings; None if ``argv`` has none. ``owners``: flag -> [(profile, field)]."""
    for arg in argv:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if flag in owners and len(owners[flag]) > 1:
            spelled = " or ".join(f"--{profile}-{field.replace('_', '-')}" for profile, field in owners[flag])
            profiles = ", ".join(profile for profile, _ in owners[flag])
            return f"{flag} is a setting of several profiles served ({profiles}): say which, {spelled}"
    return None


class _HeldStream:
    """stderr for the log until the server is up: a configuration error found while starting
    (a port in use, say) is then the only line the operator sees, not the log lines before it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.held: list[str] | None = []

    def write(self, text: str) -> int:
        if self.held is None:
            return self.stream.write(text)
        self.held.append(text)
        return len(text)

    def flush(self) -> None:
        if self.held is None:
            self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def release(self, show: bool = True) -> None:
        held, self.held = self.held or [], None
        if show:
            self.stream.write("".join(held))
        self.stream.flush()


def _serve(argv: Sequence[str]) -> int:
    pre = _Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--profile", "-profile", action="append", default=[])
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    names: list[str] = known.profile
    if not names and known.config:
        # Profiles may be named by the config file; load_config reports a bad file.
        data = read_toml(pathlib.Path(known.config))
        listed = data.get("profiles", data.get("profile", []))
        names = [listed] if isinstance(listed, str) else list(listed)

    parser = _Parser(prog="rendezvous serve", description="Serve one or more profiles.", allow_abbrev=False)
    parser.add_argument("--profile", "-profile", action="append", default=[], metavar="NAME", help="profile to serve (repeatable)")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    profiles = {name: plugins.load_profile(name) for name in names}
    # Profiles may give server settings the flag names their original uses (Go's -cert).
    server_aliases: dict[str, list[str]] = {}
    for profile in profiles.values():
        for setting_name, flags in hooks.server_flags(profile).items():
            aliases = server_aliases.setdefault(setting_name, [])
            aliases.extend(f for f in flags if f not in aliases)
    _add_settings(parser.add_argument_group("server"), ServerSettings, "server.", server_aliases,
                  defaults=profile_server_defaults(profiles),
                  metavars={"http_server": "{" + ",".join(plugins.available(plugins.SERVERS)) + "}"})
    owners: dict[str, list[tuple[str, str]]] = {}
    for name, profile in profiles.items():
        for field, meta, _ in fields_of(profile.settings):
            for flag in _flag_names(field, meta):
                owners.setdefault(flag, []).append((name, field.name))
    shared = {flag for flag, owned in owners.items() if len(owned) > 1}
    for name, profile in profiles.items():
        group = parser.add_argument_group(f"profile {name}")
        _add_settings(group, profile.settings, f"{name}.", qualifier=name if len(profiles) > 1 else None, shared=shared)
        if isinstance(profile, hooks.CliExtras):
            profile.add_arguments(parser)
    if "-h" not in argv and "--help" not in argv:
        problem = shared_flag_problem(argv, owners)
        if problem is not None:
            parser.error(problem)
    args = parser.parse_args(argv)
    profile_values = {}
    for name, profile in profiles.items():
        values = _collect(args, f"{name}.")
        if isinstance(profile, hooks.CliExtras):
            values = {**profile.values_from_arguments(args), **values}
        profile_values[name] = values
    config = load_config(
        names, args.config, environ=os.environ,
        server_overrides=_collect(args, "server."), profile_overrides=profile_values,
    )
    from rendezvous.observe.logging import configure
    from rendezvous.server import serve

    server = config.server
    stderr = _HeldStream(sys.stderr)
    configure(unsafe_logging=server.unsafe_logging, log_format=server.log_format, level=server.log_level, stream=stderr)
    http_server = plugins.load(plugins.SERVERS, server.http_server)
    try:
        anyio.run(functools.partial(serve, config, ready=lambda _: _settled(stderr)), backend="asyncio",
                  backend_options={"use_uvloop": bool(http_server.wants_uvloop)})
    except RendezvousError:
        stderr.release(show=False)  # the error line is all the operator needs
        raise
    finally:
        stderr.release()
    return 0


def _settled(stderr: _HeldStream) -> None:
    """Serving: show what was held back, and tune the cyclic garbage collector for a server.

    The start-up's objects (modules, settings, the app) live as long as the process: frozen,
    no collection looks at them again. And a request's objects die by reference counting
    (the request paths make no cycles), but the long-polls they wait in make the count of
    live objects swing by thousands, which with the default thresholds (700, 10, 10) started
    a collection for every few hundred requests: measured under the Snowflake benchmark, 15 %
    of the broker's CPU went to collections that found nothing. Collections now start after
    50 000 more live objects (a few MB), which measured under 1 %."""
    stderr.release()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _profiles() -> int:
    found = plugins.available(plugins.PROFILES)
    if not found:
        print("no profiles installed")
    for name, ep in sorted(found.items()):
        try:
            summary = ep.load().summary
        except Exception as exc:  # report a broken plugin, keep listing
            summary = f"(fails to load: {type(exc).__name__}: {exc})"
        dist = ep.dist.name if ep.dist else "?"
        print(f"{name:12} {summary}  [{dist}: {ep.value}]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="rendezvous", description="Rendezvous brokers: Snowflake, wasimoff, webrtc-bootstrap overlays.")
    parser.add_argument("command", choices=["serve", "profiles"], help="serve: run a broker; profiles: list installed profiles")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "serve":
            return _serve(rest)
        if command == "profiles":
            return _profiles()
        parser.error(f"unknown command {command!r} (serve, profiles)")
    except RendezvousError as exc:
        print(f"rendezvous: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
