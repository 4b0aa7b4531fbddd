"""Settings: attrs classes whose fields say how they are configured.

A field made with :func:`setting` carries its help text and, optionally, extra env vars
and CLI flags (the names an operator of the original system knows), the values it may take
(``choices``) and what a path names (``file``). Every field can also be set from a TOML table,
from ``RENDEZVOUS_[<PROFILE>_]<FIELD>`` and from ``--<field-name>``. Values are converted and
validated here, at the boundary, and nowhere else; the files a setting names are checked at
load too (:func:`file_problem`), so that a wrong path never gets as far as a running server.
"""

from __future__ import annotations

import enum
import os
import pathlib
import stat
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from rendezvous.errors import ConfigError

_META = "rendezvous"


@attrs.frozen
class SettingMeta:
    help: str
    env: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    secret: bool = False  # never logged
    choices: tuple[str, ...] = ()  # the values a str setting may take (an Enum type says it itself)
    #: what a path names, checked at load: CERTIFICATE, PRIVATE_KEY or APPENDED; "" infers it from the name
    file: str = ""


#: ``file=`` values. A ``pathlib.Path`` setting named ``cert``/``*_cert`` is a certificate (PEM, its key in
#: the ``key``/``*_key`` setting beside it), ``key``/``*_key`` a private key, ``*_log`` a file the server
#: appends to; ``file=NOT_A_FILE`` opts out.
CERTIFICATE, PRIVATE_KEY, APPENDED, NOT_A_FILE = "certificate", "private key", "appended", "none"


def setting(default: Any = attrs.NOTHING, *, help: str, env: Sequence[str] = (), flags: Sequence[str] = (),
            secret: bool = False, validator: Any = None, factory: Any = None, choices: Sequence[str] = (),
            file: str = "") -> Any:
    meta = SettingMeta(help=help, env=tuple(env), flags=tuple(flags), secret=secret, choices=tuple(choices), file=file)
    if factory is not None:
        return attrs.field(factory=factory, metadata={_META: meta}, validator=validator)
    return attrs.field(default=default, metadata={_META: meta}, validator=validator)


def meta_of(field: attrs.Attribute) -> SettingMeta:
    return field.metadata.get(_META) or SettingMeta(help="")


def positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name}: must be positive, got {value!r}")


def non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name}: must not be negative, got {value!r}")


def _resolve_type(cls: type, field: attrs.Attribute) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[field.name]


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert(value: Any, tp: Any, name: str, source: str) -> Any:
    """Convert a TOML/env/CLI value to ``tp``, or raise a one-line :class:`ConfigError`."""
    inner, optional = _optional_inner(tp)
    where = f"{name} (from {source})"
    if value is None or (optional and inner is not str and isinstance(value, str) and value == ""):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if inner is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if isinstance(value, str):
                return int(value.replace("_", ""), 10)
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError
        if inner is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if inner is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if inner is pathlib.Path:
            if not isinstance(value, (str, pathlib.Path)):
                raise ValueError
            return pathlib.Path(value)
        if isinstance(inner, type) and issubclass(inner, enum.Enum):
            try:
                return inner(value)
            except ValueError:
                choices = ", ".join(repr(m.value) for m in inner)
                raise ConfigError(f"{where}: expected one of {choices}, got {value!r}") from None
        if typing.get_origin(inner) is tuple:
            parts = [value] if isinstance(value, str) else list(value)
            items = [item for part in parts for item in (part.split(",") if isinstance(part, str) else [part])]
            (item_tp, _) = typing.get_args(inner)
            return tuple(convert(v.strip() if isinstance(v, str) else v, item_tp, name, source) for v in items if v != "")
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError):
        pass
    label = getattr(inner, "__name__", str(inner))
    raise ConfigError(f"{where}: expected {_describe(label)}, got {value!r}")


def _describe(label: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "Path": "a path"}.get(
        label, label
    )


def build(cls: type, values: Mapping[str, tuple[Any, str]], section: str) -> Any:
    """Make ``cls`` from ``{field: (raw value, source)}``; unknown keys and bad values are errors."""
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, (raw, source) in values.items():
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{section}.{key} (from {source}): unknown setting; known: {known}")
        kwargs[key] = convert(raw, _resolve_type(cls, field), f"{section}.{key}", source)
        choices = meta_of(field).choices
        if choices and kwargs[key] not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{section}.{key} (from {source}): expected one of {allowed}, got {kwargs[key]!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{section}: {exc}") from None


def fields_of(cls: type) -> list[tuple[attrs.Attribute, SettingMeta, Any]]:
    return [(f, meta_of(f), _resolve_type(cls, f)) for f in attrs.fields(cls)]


def file_kind(field: attrs.Attribute, meta: SettingMeta, tp: Any) -> str:
    """What the path in this setting names (:data:`CERTIFICATE`, ...), or "" for none of those."""
    if meta.file:
        return "" if meta.file == NOT_A_FILE else meta.file
    if _optional_inner(tp)[0] is not pathlib.Path:
        return ""
    name = field.name
    if name == "cert" or name.endswith("_cert"):
        return CERTIFICATE
    if name == "key" or name.endswith("_key"):
        return PRIVATE_KEY
    if name.endswith("_log"):
        return APPENDED
    return ""


def check_files(instance: Any, section: str, sources: Mapping[str, str]) -> None:
    """Raise a one-line :class:`ConfigError` for the first file named by ``instance``'s settings
    that the server could not use: a certificate or key that cannot be read, is not PEM or does
    not match its partner; a file to append to whose directory is missing or not writable."""
    from rendezvous.tls import pem_problem

    kinds = {field.name: file_kind(field, meta, tp) for field, meta, tp in fields_of(type(instance))}

    def where(name: str) -> str:
        return f"{section}.{name} (from {sources.get(name, 'default')}): {getattr(instance, name)}"

    for name, kind in kinds.items():
        path = getattr(instance, name)
        if path is None or kind not in (CERTIFICATE, PRIVATE_KEY, APPENDED):
            continue
        if kind == APPENDED:
            reason = append_problem(pathlib.Path(path))
            if reason is not None:
                raise ConfigError(f"{where(name)}: cannot append to it: {reason}")
            continue
        partner = _partner(name)
        paired = bool(kinds.get(partner)) and getattr(instance, partner) is not None
        if kind == PRIVATE_KEY and paired:
            continue  # checked with its certificate
        cert_name, key_name = (name, partner if paired else None) if kind == CERTIFICATE else (None, name)
        cert = _read(getattr(instance, cert_name), where(cert_name)) if cert_name else None
        key = _read(getattr(instance, key_name), where(key_name)) if key_name else None
        problem = pem_problem(cert, key)
        if problem is not None:
            blamed = key_name if problem[0] == "key" and key_name else cert_name or name
            raise ConfigError(f"{where(blamed)}: {problem[1]}")


def _partner(name: str) -> str:
    """The other half of a certificate/key pair: ``quic_key`` for ``quic_cert``, ``cert`` for ``key``."""
    for mine, other in (("cert", "key"), ("key", "cert")):
        if name == mine:
            return other
        if name.endswith("_" + mine):
            return name[: -len(mine)] + other
    return ""


def _read(path: Any, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)  # a PEM chain is a few KiB
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None


def append_problem(path: pathlib.Path) -> str | None:
    """Why the server could not append to ``path`` (None: it can). Creates nothing."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        parent = path.parent
        if not parent.is_dir():
            return f"no directory {parent}"
        return None if os.access(parent, os.W_OK | os.X_OK) else f"directory {parent} is not writable"
    except OSError as exc:
        return exc.strerror
    if stat.S_ISDIR(mode):
        return "it is a directory"
    return None if os.access(path, os.W_OK) else "not writable"
