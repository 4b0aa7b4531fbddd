"""Snowflake broker messages: decoding as Go's encoding/json does, encoding byte for byte.

Go matches JSON keys to struct fields case-insensitively (an exact match is not needed) and
the last occurrence wins; ``null`` leaves a field at its zero value; a value of the wrong type
fails the whole decode. Replies are Go ``json.Marshal`` output: struct field order, no spaces,
``<``, ``>`` and ``&`` escaped as ``\\u003c`` etc.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from rendezvous import gojson

KNOWN_PROXY_TYPES = frozenset({"standalone", "webext", "badge", "iptproxy"})
NAT_UNKNOWN, NAT_RESTRICTED, NAT_UNRESTRICTED = "unknown", "restricted", "unrestricted"
NAT_TYPES = frozenset({NAT_UNKNOWN, NAT_RESTRICTED, NAT_UNRESTRICTED})
DEFAULT_FINGERPRINT = "2B280B23E1107BB62ABFC40DDCC8824814F80A72"

STR_NO_PROXIES = "no snowflake proxies currently available"
STR_TIMED_OUT = "timed out waiting for answer!"
STATUS_MATCH, STATUS_NO_MATCH, STATUS_BAD_RELAY = "client match", "no match", "incorrect relay pattern"


class BadRequest(ValueError):
    """The request does not decode; ``str()`` is the error text the Go broker would give."""


# A JSON string (what ``json.dumps(text, ensure_ascii=False)`` writes), in C.
_string: Any = json.encoder.encode_basestring


def go_marshal(fields: list[tuple[str, Any]]) -> bytes:
    """``json.Marshal`` of a Go struct: keys in field order, compact, Go's escaping."""
    body = ",".join([f"{_string(k)}:{json.dumps(v, ensure_ascii=False)}" for k, v in fields])
    return gojson.escape("{" + body + "}").encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


# The C scanner, refusing NaN and Infinity (Go does), objects as their pairs.
_scan = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=tuple).scan_once  # type: ignore[attr-defined]


def _plain_fields(data: bytes, schema: dict[str, type], names: dict[str, str]) -> dict[str, Any] | None:
    """The common request decoded in C: UTF-8, exactly one object (nothing around it) whose
    known keys are spelled as the struct's fields, each once, with a value of the right type
    and no lone surrogate (a ``\\ud800`` escape: Go's replacement rules). None for anything
    else, which :func:`decode_object` then decodes as Go does (the same result for every input
    this accepts: these are the cases where Go's rules and :mod:`json`'s agree). A surrogate
    can only come from an escape (strict UTF-8 refuses encoded ones), so it is looked for in
    the decoded strings that are kept, and only in those that are not ASCII (an O(1) test):
    not in the whole body, whose SDP is full of backslashes."""
    try:
        text = data.decode("utf-8")
        pairs, end = _scan(text, 0)
    except (ValueError, RecursionError, StopIteration):
        return None
    if type(pairs) is not tuple or end != len(text):
        return None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        return None  # a key twice (Go reads each pair in turn)
    for key, item in pairs:
        want = schema.get(key)
        if want is None:
            if not key.isascii() or key.lower() in names:
                return None  # another spelling of a field (Go folds case)
            continue
        if want is str or want is type(None):
            if type(item) is not str or (not item.isascii() and gojson.SURROGATE.search(item)):
                return None
        elif not _is_int64(item):
            return None
    return fields


def _go_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, gojson.Number)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list) and not isinstance(value, gojson.Object):
        return "array"
    return "object"


def _is_int64(value: Any) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63


_LOWERED: dict[int, dict[str, str]] = {}


def _lowered(schema: dict[str, type]) -> dict[str, str]:
    """Field names by their lower case (per schema, kept: the schemas are module constants)."""
    names = _LOWERED.get(id(schema))
    if names is None:
        names = _LOWERED[id(schema)] = {name.lower(): name for name in schema}
    return names


def decode_object(data: bytes | str, schema: dict[str, type], struct: str, *, plain: bool = True) -> dict[str, Any]:
    """Decode a JSON object into ``schema``'s fields the way Go does; errors carry Go's text.

    Go reads the pairs in order: a value of the wrong type leaves its field alone and the first
    such error is the one returned; a number that does not fit an int field (``1.5``, ``1e999``,
    2**63) is such an error, with the number's text in it.
    """
    names = _lowered(schema)
    if plain and type(data) is bytes and (fields := _plain_fields(data, schema, names)) is not None:
        return fields
    try:
        value = gojson.loads(data, pairs=True)
    except gojson.DecodeError as exc:
        raise BadRequest(str(exc)) from None
    out: dict[str, Any] = {}
    if value is None:
        return out
    if not isinstance(value, gojson.Object):
        raise BadRequest(f"json: cannot unmarshal {_go_type_name(value)} into Go value of type messages.{struct}")
    error = None
    for key, item in value:
        name = names.get(key.lower())
        if name is None:
            continue
        if item is None:
            if schema[name] is type(None):  # pointer field: null means absent
                out.pop(name, None)
            continue
        want = str if schema[name] is type(None) else schema[name]
        ok = _is_int64(item) if want is int else isinstance(item, want)
        if ok:
            out[name] = item
        elif error is None:
            found = _go_type_name(item)
            if want is int and found == "number":
                found += f" {item}"  # Go names the number it could not store in an int
            kind = "int" if want is int else "string"
            error = f"json: cannot unmarshal {found} into Go struct field {struct}.{name} of type {kind}"
    if error is not None:
        raise BadRequest(error)
    return out


def _major_version_ok(version: str) -> bool:
    return version.split(".", 1)[0] == "1"


@attrs.frozen
class ProxyPoll:
    sid: str
    type: str
    nat: str
    clients: int
    accepted_relay_pattern: str | None  # None: the proxy predates the relay-URL extension


# AcceptedRelayPattern is a *string in Go: type(None) marks "pointer, null means absent".
_POLL_SCHEMA = {"Sid": str, "Version": str, "Type": str, "NAT": str, "Clients": int, "AcceptedRelayPattern": type(None)}


def decode_proxy_poll(body: bytes) -> ProxyPoll:
    fields = decode_object(body, _POLL_SCHEMA, "ProxyPollRequest")
    if not _major_version_ok(fields.get("Version", "")):
        raise BadRequest("using unknown version")
    sid = fields.get("Sid", "")
    if not sid:
        raise BadRequest("no supplied session id")
    nat = fields.get("NAT", "") or NAT_UNKNOWN
    if nat not in NAT_TYPES:
        raise BadRequest("invalid NAT type")
    proxy_type = fields.get("Type", "")
    if proxy_type not in KNOWN_PROXY_TYPES:
        proxy_type = "unknown"
    return ProxyPoll(sid, proxy_type, nat, fields.get("Clients", 0), fields.get("AcceptedRelayPattern"))


def encode_poll_reply(status: str, offer: str = "", nat: str = "", relay_url: str = "") -> bytes:
    # go_marshal's output, written out (the hot reply)
    text = f'{{"Status":{_string(status)},"Offer":{_string(offer)},"NAT":{_string(nat)},"RelayURL":{_string(relay_url)}}}'
    return gojson.escape(text).encode()


@attrs.frozen
class ProxyAnswer:
    sid: str
    answer: str


_ANSWER_SCHEMA: dict[str, type] = {"Version": str, "Sid": str, "Answer": str}


def decode_proxy_answer(body: bytes) -> ProxyAnswer:
    fields = decode_object(body, _ANSWER_SCHEMA, "ProxyAnswerRequest")
    if not _major_version_ok(fields.get("Version", "")):
        raise BadRequest("using unknown version")
    sid, answer = fields.get("Sid", ""), fields.get("Answer", "")
    if not sid or not answer:
        raise BadRequest("no supplied sid or answer")
    return ProxyAnswer(sid, answer)


_ANSWER_REPLIES = {success: go_marshal([("Status", "success" if success else "client gone")]) for success in (True, False)}


def encode_answer_reply(success: bool) -> bytes:
    return _ANSWER_REPLIES[success]


@attrs.frozen
class ClientPoll:
    offer: str
    nat: str
    fingerprint: str  # upper-case hex, 40 or 64 characters


_HEX = re.compile("[0-9a-fA-F]*")


def _go_hex_error(text: str) -> str | None:
    """hex.DecodeString's error: the first invalid byte (``%#U``), else an odd length."""
    if _HEX.fullmatch(text):
        return "encoding/hex: odd length hex string" if len(text) % 2 else None
    for byte in text.encode("utf-8"):
        if chr(byte) not in "0123456789abcdefABCDEF":
            return f"encoding/hex: invalid byte: U+{byte:04X} '{chr(byte)}'"
    if len(text) % 2:
        return "encoding/hex: odd length hex string"
    return None


_CLIENT_SCHEMA: dict[str, type] = {"offer": str, "nat": str, "fingerprint": str}


def decode_client_poll(body: bytes) -> ClientPoll:
    """The v1.0 client format: ``1.0\\n{json}``. Errors carry the Go broker's texts."""
    version, newline, rest = body.partition(b"\n")
    if not newline or version != b"1.0":
        raise BadRequest("unsupported message version")
    fields = decode_object(rest, _CLIENT_SCHEMA, "ClientPollRequest")
    offer = fields.get("offer", "")
    if not offer:
        raise BadRequest("no supplied offer")
    fingerprint = fields.get("fingerprint", "") or DEFAULT_FINGERPRINT
    problem = _go_hex_error(fingerprint)
    if problem:
        raise BadRequest(problem)
    if len(fingerprint) not in (40, 64):
        raise BadRequest("cannot decode fingerprint")
    nat = fields.get("nat", "") or NAT_UNKNOWN
    if nat not in NAT_TYPES:
        raise BadRequest("invalid NAT type")
    return ClientPoll(offer, nat, fingerprint.upper())


def encode_client_request(offer: str, nat: str, fingerprint: str = DEFAULT_FINGERPRINT) -> bytes:
    """What a v1.0 client sends (used by the legacy shim, AMP tests and the bench)."""
    return b"1.0\n" + go_marshal([("offer", offer), ("nat", nat), ("fingerprint", fingerprint)])


def encode_client_reply(answer: str | None = None, error: str | None = None) -> bytes:
    # `omitempty` on both fields: exactly one key.
    if answer:
        return gojson.escape(f'{{"answer":{_string(answer)}}}').encode()
    return go_marshal([("error", error or "")])
