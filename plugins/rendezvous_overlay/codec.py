"""webrtc-bootstrap's JSON frames: parsing with JS semantics where they matter, and stamping.

The original does ``m = JSON.parse(frame); m.origin = id; JSON.stringify(m)``. Objects keep
their key order and get ``origin`` set (appended if absent); arrays and primitives can't hold
a property, so they are forwarded verbatim without an origin.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

HEARTBEAT = '"heartbeat"'
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class BadFrame(ValueError):
    """A frame that is not JSON, or JSON ``null`` (the original crashes on both)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every frame: json.loads(..., parse_constant=...) would build a new one each call.
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


@attrs.frozen
class Signal:
    """A JSON object frame: routed by ``destination`` (a non-empty string, else to the root)."""

    message: dict[str, Any]
    destination: str | None
    destination_valid: bool  # False for truthy non-strings: they can never name an id


@attrs.frozen
class Opaque:
    """An array or primitive frame: forwarded to the root verbatim (original quirk)."""

    value: Any


def _js_truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True  # true, objects and arrays (even empty ones) are truthy in JS


def decode(frame: str | bytes) -> Signal | Opaque:
    if isinstance(frame, bytes):
        # JSON.parse(Buffer) stringifies the buffer as UTF-8 first.
        frame = frame.decode("utf-8", "replace")
    try:
        value = _decode(frame)
    except (ValueError, RecursionError):
        raise BadFrame("bad_json") from None
    if value is None:
        raise BadFrame("null")
    if isinstance(value, dict):
        destination = value.get("destination")
        if not _js_truthy(destination):
            return Signal(value, None, True)
        if isinstance(destination, str):
            return Signal(value, destination, True)
        return Signal(value, None, False)
    return Opaque(value)


def encode(payload: Any, origin: str | None) -> str:
    """Serialise for the wire; objects get ``origin`` (overwriting any spoofed one)."""
    if origin is not None and isinstance(payload, dict):
        payload["origin"] = origin
    return _encode(payload)
