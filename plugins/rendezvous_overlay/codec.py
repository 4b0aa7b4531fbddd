"""webrtc-bootstrap's JSON frames: parsing with JS semantics where they matter, and stamping.

The original does ``m = JSON.parse(frame); m.origin = id; JSON.stringify(m)``. Objects keep
their key order and get ``origin`` set (appended if absent); arrays and primitives can't hold
a property, so they are forwarded verbatim without an origin.

Whatever ``JSON.parse`` accepts is forwarded as ``JSON.stringify`` writes it: numbers are
doubles (``1e999`` and a 5 000-digit integer are ``Infinity``, written ``null``; ``1.0`` is
``1``, ``1e-7`` is ``1e-7``, 2**60 is ``1152921504606847000``), and a lone surrogate from a
``\\ud800`` escape is written back as that escape (well-formed ``JSON.stringify``).
"""

from __future__ import annotations

import decimal
import json
import math
from typing import Any

import attrs

from rendezvous import gojson

HEARTBEAT = '"heartbeat"'


def js_number_text(x: float) -> str:
    """ECMAScript Number::toString of a double (shortest round-trip digits, as ``repr``)."""
    if not math.isfinite(x):
        return "null"  # JSON.stringify(Infinity)
    if x == 0:
        return "0"
    sign, digit_tuple, exponent = decimal.Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    k = len(digits)
    n = int(exponent) + len(digit_tuple)  # x = 0.<digits> * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if n > 0 else "-") + str(abs(n - 1))
    return "-" + text if sign else text


def _js_number(x: float) -> Any:
    """``x`` as a value whose JSON text is JSON.stringify's: an int, a float, or else that text
    (a :class:`rendezvous.gojson.Number`; ``null`` for Infinity, which stays truthy as in JS)."""
    text = js_number_text(x)
    if text.lstrip("-").isdigit():
        return int(text)
    if text == repr(x):
        return x
    return gojson.Number(text)


def _parse_int(text: str) -> Any:
    # Up to 15 digits an integer is exactly a double; beyond, JSON.parse rounds it (or overflows).
    return int(text) if len(text) <= 15 else _js_number(float(text))


def _parse_float(text: str) -> Any:
    return _js_number(float(text))


_encode = gojson.encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class BadFrame(ValueError):
    """A frame that is not JSON, or JSON ``null`` (the original crashes on both)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every frame: json.loads(..., parse_constant=...) would build a new one each call.
_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float).decode


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


class Stamped:
    """A message already stamped and serialised, by the node that took it from its sender (a
    cluster: the receiver's node sends these characters as they are)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class Frames:
    """The overlay's :class:`rendezvous.backends.base.FrameCodec`: a message crosses nodes as
    the frame its receiver gets (stamped and encoded once, on the sender's node)."""

    def dumps(self, payload: Any, origin: str | None) -> bytes:
        return encode(payload, origin).encode()

    def loads(self, data: bytes) -> Stamped:
        return Stamped(data.decode())


def encode(payload: Any, origin: str | None) -> str:
    """Serialise for the wire; objects get ``origin`` (overwriting any spoofed one)."""
    if type(payload) is Stamped:
        return payload.text
    if origin is not None and isinstance(payload, dict):
        payload["origin"] = origin
    text = _encode(payload)
    if not text.isascii() and gojson.SURROGATE.search(text):
        text = gojson.SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text
