"""JSON as Go's ``encoding/json`` reads and writes it, for profiles whose original is a Go server
(Snowflake, wasimoff).

Writing (:func:`marshal`, :func:`escape`): compact, non-ASCII kept, and ``<``, ``>``, ``&``, U+2028
and U+2029 escaped (``\\u003c`` ...), which clients comparing bytes can tell apart; a string
that is not valid Unicode (a lone surrogate) is written as Go writes invalid UTF-8: ``\\ufffd``.

Reading (:func:`loads`): what Go accepts, decoded as Go decodes it, so that nothing decoded is
unencodable later:

- invalid UTF-8 becomes one U+FFFD per bad byte, and a ``\\uXXXX`` escape of a lone surrogate
  becomes U+FFFD (a valid pair is one character);
- ``NaN``, ``Infinity`` and ``-Infinity`` are syntax errors, with Go's text;
- a number with a fraction or exponent, or an integer longer than Python converts (4300
  digits), is a :class:`Number` holding its text (Go's ``json.Number``): whether ``1e999`` or
  ``1.5`` fits a field is the field's business, and an ignored field may hold any number;
- errors are :class:`DecodeError` with Go's wording.

:func:`encoder` makes a JSON encoder that writes a :class:`Number` as its text, and values nested
deeper than :mod:`json` recurses (for relaying what was decoded, however hostile).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import Any

_ASCII_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"))
_ESCAPES = (*_ASCII_ESCAPES, ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
SURROGATE = re.compile("[\ud800-\udfff]")


def escape(text: str) -> str:
    """Go's escaping applied to serialised JSON (those characters only occur inside strings)."""
    # (``in`` first: it finds a character with memchr, where ``replace`` by a longer text counts
    # the occurrences one character at a time, ten times slower when there are none.)
    plain = text.isascii()  # (an O(1) test) no U+2028/U+2029, no surrogate
    for char, escaped in _ASCII_ESCAPES if plain else _ESCAPES:
        if char in text:
            text = text.replace(char, escaped)
    if not plain and SURROGATE.search(text):
        text = SURROGATE.sub(lambda _: "\\ufffd", text)
    return text


def marshal(value: Any) -> bytes:
    """``json.Marshal(value)`` for maps, lists and scalars (Python's key order is kept)."""
    return escape(json.dumps(value, ensure_ascii=False, separators=(",", ":"))).encode()


# -- reading ---------------------------------------------------------------------------------------
class DecodeError(ValueError):
    """Not JSON as Go reads it; ``str()`` is Go's error text."""


class Number:
    """A JSON number as written (Go's ``json.Number``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Number({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Number) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class Object(list):
    """A decoded object as its ``(key, value)`` pairs in document order, duplicates kept."""

    __slots__ = ()


def _go_replace(error: UnicodeError) -> tuple[str, int]:
    """Go decodes each byte of an invalid sequence as U+FFFD (Python's "replace" may merge them)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "\ufffd" * (error.end - error.start), error.end


codecs.register_error("rendezvous.gojson", _go_replace)

# An escaped backslash (skipped), a valid surrogate pair (kept), or a lone surrogate (group 1).
_ESCAPED_SURROGATE = re.compile(
    r"\\(?:\\|u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(u[dD][89a-fA-F][0-9a-fA-F]{2}))"
)
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # cheaper than two ``in`` over SDP's many backslashes


def _unpaired_to_replacement(match: re.Match[str]) -> str:
    return "\\ufffd" if match.group(1) else match.group(0)


class _Constant(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


def _integer(text: str) -> Any:
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        return Number(text)


_decoders = {
    pairs: json.JSONDecoder(parse_float=Number, parse_int=_integer, parse_constant=_reject_constant,
                            object_pairs_hook=Object if pairs else None)
    for pairs in (False, True)
}
_GO_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
}
# Outside strings, a text that parsed up to a constant holds no other "NaN" or "Infinity".
_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)', re.DOTALL)


def _go_char(ch: str) -> str:
    return "'\\''" if ch == "'" else f"'{ch}'"


def _go_syntax_error(exc: json.JSONDecodeError) -> str:
    """Go's encoding/json wording for the common syntax errors."""
    if exc.pos >= len(exc.doc) or exc.msg.startswith("Unterminated"):
        return "unexpected end of JSON input"
    context = _GO_CONTEXT.get(exc.msg, "looking for beginning of value")
    return f"invalid character {_go_char(exc.doc[exc.pos])} {context}"


def _go_constant_error(text: str) -> str:
    """Go's error for the first ``NaN``/``Infinity``/``-Infinity`` in ``text`` (Python took it as a value)."""
    constant = next((m.group(1) for m in _CONSTANT.finditer(text) if m.group(1)), "NaN")
    if constant[0] == "-":
        return "invalid character 'I' in numeric literal"
    return f"invalid character {_go_char(constant[0])} looking for beginning of value"


def loads(data: bytes | str, *, pairs: bool = False) -> Any:
    """``json.Unmarshal`` into an ``interface{}``-like value (see the module doc).

    With ``pairs``, objects are :class:`Object` s (their pairs, in order), for decoding into a
    struct as Go does: each pair in turn, the first error being the one reported.
    """
    if isinstance(data, bytes):
        text = data.decode("utf-8", "rendezvous.gojson")
    else:  # a str holding surrogates themselves (the wire never gives one): U+FFFD too
        text = data if data.isascii() or not SURROGATE.search(data) else SURROGATE.sub("\ufffd", data)
    if _MAYBE_SURROGATE.search(text):
        text = _ESCAPED_SURROGATE.sub(_unpaired_to_replacement, text)
    stripped = text.strip(" \t\r\n")
    if not stripped:
        raise DecodeError("unexpected end of JSON input")
    try:
        value, end = _decoders[pairs].raw_decode(stripped)
    except json.JSONDecodeError as exc:
        raise DecodeError(_go_syntax_error(exc)) from None
    except _Constant:
        raise DecodeError(_go_constant_error(stripped)) from None
    except RecursionError:
        raise DecodeError("exceeded max depth") from None
    if end != len(stripped):
        extra = stripped[end:].lstrip(" \t\r\n")  # not empty: stripped ends in a non-space
        raise DecodeError(f"invalid character {_go_char(extra[0])} after top-level value")
    return value


# -- writing Numbers, at any depth ------------------------------------------------------------------
class _Raw(str):
    """Text queued between the values :func:`stringify` has still to write."""


def stringify(value: Any, scalar: Callable[[Any], str], separators: tuple[str, str] = (",", ":")) -> str:
    """JSON of dicts and lists (key order kept) without recursion; ``scalar`` writes everything else."""
    comma, colon = separators
    close_object, close_array, next_item = _Raw("}"), _Raw("]"), _Raw(comma)
    out: list[str] = []
    todo: list[Any] = [value]
    while todo:
        item = todo.pop()
        if type(item) is _Raw:
            out.append(item)
        elif isinstance(item, dict):
            out.append("{")
            todo.append(close_object)
            members = list(item.items())
            for index in range(len(members) - 1, -1, -1):
                key, member = members[index]
                todo.append(member)
                todo.append(_Raw((comma if index else "") + scalar(str(key)) + colon))
        elif isinstance(item, (list, tuple)):
            out.append("[")
            todo.append(close_array)
            for index in range(len(item) - 1, -1, -1):
                todo.append(item[index])
                if index:
                    todo.append(next_item)
        else:
            out.append(scalar(item))
    return "".join(out)


class _NotPlain(Exception):
    pass


def _not_plain(value: Any) -> Any:
    raise _NotPlain()


def _one_shot(options: json.JSONEncoder) -> Callable[[Any], str]:
    """``options.encode`` with the C encoder built once, not per call (as ``encode`` does), for
    the compact, non-indented encoders here. Without the circular-reference check: what we
    encode was decoded from JSON (no cycles), and a structure too deep raises RecursionError."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None or options.indent is not None:
        return options.encode
    strings = json.encoder.encode_basestring_ascii if options.ensure_ascii else json.encoder.encode_basestring
    chunks = make(None, options.default, strings, None, options.key_separator, options.item_separator,
                  options.sort_keys, options.skipkeys, options.allow_nan)

    def encode(value: Any) -> str:
        if type(value) is str:
            return strings(value)
        return "".join(chunks(value, 0))

    return encode


def encoder(**options: Any) -> Callable[[Any], str]:
    """``json.JSONEncoder(**options).encode`` that also writes a :class:`Number` as its text and
    values nested deeper than :mod:`json` recurses (the plain, fast encoder does the rest)."""
    plain = _one_shot(json.JSONEncoder(default=_not_plain, **options))
    separators = options.get("separators") or (", ", ": ")

    def scalar(value: Any) -> str:
        return value.text if isinstance(value, Number) else plain(value)

    def encode(value: Any) -> str:
        try:
            return plain(value)
        except (_NotPlain, RecursionError):
            return stringify(value, scalar, separators)

    return encode
