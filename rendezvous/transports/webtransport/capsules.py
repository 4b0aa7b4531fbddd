"""The WebTransport wire formats aioquic leaves to us, sans-IO: capsules and stream prefixes.

*Capsules* (RFC 9297) travel on a session's CONNECT stream as ``type (varint) | length (varint)
| payload``. The one that matters is ``CLOSE_WEBTRANSPORT_SESSION`` (0x2843: ``u32 code |
UTF-8 reason``, at most 1024 bytes of reason); Chromium also sends GREASE capsules of random
types, which are read and ignored. A capsule may arrive in pieces: the parser waits for the
rest. One that announces more than ``MAX_CAPSULE_SIZE`` bytes is refused at once rather than
buffered (:class:`CapsuleError`).

*Stream prefixes*: a WebTransport bidirectional stream starts with ``0x41 | session id`` and a
unidirectional one with ``0x54 | session id`` (draft-02, both varints). aioquic parses them
itself, but emits no event for a stream that so far carried only its prefix, and Chromium
opens streams exactly like that; :class:`PeerStreams` spots them from the raw stream bytes.
"""

from __future__ import annotations

import struct

import attrs
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var

CLOSE_WEBTRANSPORT_SESSION = 0x2843
DRAIN_WEBTRANSPORT_SESSION = 0x78AE
MAX_CLOSE_REASON = 1024  # bytes
MAX_CAPSULE_SIZE = 64 * 1024  # a close capsule needs 1028; GREASE capsules are small

BIDI_STREAM_SIGNAL = 0x41  # HTTP/3 frame type WEBTRANSPORT_STREAM
UNI_STREAM_TYPE = 0x54  # HTTP/3 stream type WEBTRANSPORT
_MAX_PREFIX = 16  # two varints of at most 8 bytes


class CapsuleError(Exception):
    """The peer sent a capsule we refuse (one larger than the reader's limit)."""


@attrs.frozen
class Capsule:
    type: int
    payload: bytes


def close_capsule(code: int, reason: str = "") -> bytes:
    """A ``CLOSE_WEBTRANSPORT_SESSION`` capsule (the reason cut to 1024 bytes)."""
    payload = struct.pack("!I", code) + reason.encode()[:MAX_CLOSE_REASON]
    return encode_uint_var(CLOSE_WEBTRANSPORT_SESSION) + encode_uint_var(len(payload)) + payload


def parse_close(payload: bytes) -> tuple[int, str] | None:
    """``(code, reason)`` of a close capsule's payload; None if it is too short to hold a code."""
    if len(payload) < 4:
        return None
    return struct.unpack_from("!I", payload)[0], payload[4:4 + MAX_CLOSE_REASON].decode("utf-8", "replace")


def parse_capsules(buffer: bytearray, max_size: int | None = None) -> list[tuple[int, bytes]]:
    """Whole capsules at the front of ``buffer`` (removed from it), as ``(type, payload)``.

    A capsule cut short stays in ``buffer`` for the next call. With ``max_size``, a capsule whose
    header announces a longer payload raises :class:`CapsuleError` without waiting for it.
    """
    out = []
    while buffer:
        buf = Buffer(data=bytes(buffer[:_MAX_PREFIX]))
        try:
            kind = buf.pull_uint_var()
            length = buf.pull_uint_var()
        except BufferReadError:
            break
        if max_size is not None and length > max_size:
            raise CapsuleError(f"capsule 0x{kind:x} of {length} bytes (limit {max_size})")
        start = buf.tell()
        if len(buffer) < start + length:
            break
        out.append((kind, bytes(buffer[start:start + length])))
        del buffer[: start + length]
    return out


class CapsuleReader:
    """Capsules from a CONNECT stream's bytes, fed as they arrive."""

    def __init__(self, max_size: int = MAX_CAPSULE_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of a capsule not yet whole."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Capsule]:
        """The capsules ``data`` completed; raises :class:`CapsuleError` for an oversized one."""
        self._buffer += data
        return [Capsule(kind, payload) for kind, payload in parse_capsules(self._buffer, self.max_size)]


@attrs.frozen
class StreamPrefix:
    session_id: int | None  # None: not a WebTransport stream (an HTTP/3 request, a control stream, ...)
    size: int  # bytes of the prefix


def parse_stream_prefix(data: bytes, unidirectional: bool = False) -> StreamPrefix | None:
    """What the first bytes of a stream say; None while they are too few to tell."""
    buf = Buffer(data=bytes(data[:_MAX_PREFIX]))
    try:
        kind = buf.pull_uint_var()
        if kind != (UNI_STREAM_TYPE if unidirectional else BIDI_STREAM_SIGNAL):
            return StreamPrefix(None, buf.tell())
        session_id = buf.pull_uint_var()
    except BufferReadError:
        return None
    return StreamPrefix(session_id, buf.tell())


class PeerStreams:
    """Spots the bidirectional WebTransport streams the peer opens, from their first bytes.

    ``feed(stream_id, data, ended)`` with every chunk of stream data received; it returns the
    session id once, the first time a peer-opened bidirectional stream is known to be a
    WebTransport stream (even if it carried nothing but its prefix), and None otherwise. A
    stream is forgotten when it ends (or on :meth:`forget`, for a reset).
    """

    def __init__(self, is_client: bool) -> None:
        self._peer_bidi = 1 if is_client else 0  # stream_id & 0x3 of a bidirectional stream the peer opened
        self._pending: dict[int, bytes] = {}  # streams whose prefix is not whole yet
        self._known: set[int] = set()  # streams already told apart

    def feed(self, stream_id: int, data: bytes, ended: bool = False) -> int | None:
        if stream_id & 0x3 != self._peer_bidi:
            return None
        if stream_id in self._known:
            if ended:
                self._known.discard(stream_id)
            return None
        head = self._pending.pop(stream_id, b"") + data[:_MAX_PREFIX]
        prefix = parse_stream_prefix(head)
        if prefix is None:
            if not ended:
                self._pending[stream_id] = head
            return None
        if not ended:
            self._known.add(stream_id)
        return prefix.session_id

    def forget(self, stream_id: int) -> None:
        self._pending.pop(stream_id, None)
        self._known.discard(stream_id)
