"""JSON as Go's ``encoding/json`` writes it, for profiles whose original is a Go server
(Snowflake, wasimoff): compact, non-ASCII kept, and ``<``, ``>``, ``&``, U+2028 and U+2029 escaped
(``\\u003c`` ...), which clients comparing bytes can tell apart."""

from __future__ import annotations

import json
from typing import Any

_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def escape(text: str) -> str:
    """Go's escaping applied to serialised JSON (those characters only occur inside strings)."""
    for char, escaped in _ESCAPES:
        text = text.replace(char, escaped)
    return text


def marshal(value: Any) -> bytes:
    """``json.Marshal(value)`` for maps, lists and scalars (Python's key order is kept)."""
    return escape(json.dumps(value, ensure_ascii=False, separators=(",", ":"))).encode()
