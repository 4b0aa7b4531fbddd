"""Envelope framing for the provider and client sockets: binary protobuf or protojson text."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from rendezvous_wasimoff import schema

SUBPROTOCOL_PROTOBUF = "wasimoff_provider_v1_protobuf"
SUBPROTOCOL_JSON = "wasimoff_provider_v1_json"
SUBPROTOCOLS = (SUBPROTOCOL_PROTOBUF, SUBPROTOCOL_JSON)  # the server's order of preference


class BadFrame(ValueError):
    """An undecodable frame; ``close_code`` is what to close the socket with."""

    def __init__(self, message: str, close_code: int = 1007) -> None:
        super().__init__(message)
        self.close_code = close_code


class Codec:
    def __init__(self, subprotocol: str) -> None:
        self.json = subprotocol == SUBPROTOCOL_JSON

    def encode(self, envelope: Message) -> str | bytes:
        if self.json:
            return json_format.MessageToJson(envelope, descriptor_pool=schema.POOL, indent=None)
        return envelope.SerializeToString()

    def decode(self, frame: str | bytes) -> Message:
        envelope = schema.Envelope()
        if self.json:
            if not isinstance(frame, str):
                raise BadFrame("binary frame on a JSON socket", 1003)
            try:
                json_format.Parse(frame, envelope, descriptor_pool=schema.POOL)
            except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
                raise BadFrame(f"bad JSON envelope: {exc}") from None
        else:
            if not isinstance(frame, bytes):
                raise BadFrame("text frame on a protobuf socket", 1003)
            try:
                envelope.ParseFromString(frame)
            except (DecodeError, RecursionError) as exc:
                raise BadFrame(f"bad protobuf envelope: {exc}") from None
        return envelope


def pack(envelope: Message, payload: Message) -> None:
    envelope.payload.Pack(payload, type_url_prefix=schema.TYPE_URL_PREFIX)


def unpack(envelope: Message) -> Any:
    """The payload as its message class (resolved by the name after the last ``/``), or None.

    Raises :class:`KeyError` for a type this schema does not know, :class:`BadFrame` for a
    payload that does not decode.
    """
    if not envelope.HasField("payload"):
        return None
    name = envelope.payload.type_url.rsplit("/", 1)[-1]
    try:
        descriptor = schema.POOL.FindMessageTypeByName(name)
    except KeyError:
        raise KeyError(name) from None
    cls = schema.message_class(name[len(schema.PACKAGE) + 1:]) if name.startswith(schema.PACKAGE + ".") else None
    if cls is None:
        raise KeyError(name)
    message = cls()
    try:
        message.ParseFromString(envelope.payload.value)
    except DecodeError as exc:
        raise BadFrame(f"bad {descriptor.full_name}: {exc}") from None
    return message


def type_name(message: Message) -> str:
    return message.DESCRIPTOR.full_name
