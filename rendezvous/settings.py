"""Settings: attrs classes whose fields say how they are configured.

A field made with :func:`setting` carries its help text and, optionally, extra env vars
and CLI flags (the names an operator of the original system knows). Every field can also be
set from a TOML table, from ``RENDEZVOUS_[<PROFILE>_]<FIELD>`` and from ``--<field-name>``.
Values are converted and validated here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import enum
import pathlib
import types
import typing
from typing import Any, Mapping, Sequence

import attrs

from rendezvous.errors import ConfigError

_META = "rendezvous"


@attrs.frozen
class SettingMeta:
    help: str
    env: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    secret: bool = False  # never logged


def setting(default: Any = attrs.NOTHING, *, help: str, env: Sequence[str] = (), flags: Sequence[str] = (),
            secret: bool = False, validator: Any = None, factory: Any = None) -> Any:
    meta = SettingMeta(help=help, env=tuple(env), flags=tuple(flags), secret=secret)
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
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{section}: {exc}") from None


def fields_of(cls: type) -> list[tuple[attrs.Attribute, SettingMeta, Any]]:
    return [(f, meta_of(f), _resolve_type(cls, f)) for f in attrs.fields(cls)]
