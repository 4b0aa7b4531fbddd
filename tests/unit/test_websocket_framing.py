"""The native server's sans-IO WebSocket framing (RFC 6455 §5, §7), in memory, and the same
streams fed to wsproto must mean the same thing (differential test)."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from rendezvous.servers.native.websocket import (
    Close,
    FrameReader,
    Ping,
    Pong,
    ProtocolError,
    close_frame,
    frame,
    unmask,
)

BIG = 1 << 64  # no cap: wsproto has none


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = b"abcd", rsv: int = 0,
                 length_bytes: int | None = None) -> bytes:
    """A frame as a client sends it (masked unless ``mask`` is None); ``length_bytes`` forces
    the 2- or 8-byte length form."""
    n = len(payload)
    mbit = 0x80 if mask is not None else 0
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    form = length_bytes if length_bytes is not None else (0 if n < 126 else 2 if n < 65536 else 8)
    if form == 0:
        head += bytes([mbit | n])
    elif form == 2:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + unmask(payload, mask)


def events(data: bytes, limit: int = BIG, chunk: int | None = None) -> list:
    reader = FrameReader(limit)
    out: list = []
    if chunk is None:
        return reader.feed(data)
    for i in range(0, len(data), chunk):
        out += reader.feed(data[i : i + chunk])
    return out


def fails(data: bytes, limit: int = BIG) -> int:
    with pytest.raises(ProtocolError) as caught:
        events(data, limit)
    return caught.value.code


def test_messages_text_binary_and_fragments():
    stream = (
        client_frame(0x1, "héllo".encode())
        + client_frame(0x2, b"\x00\x01")
        + client_frame(0x1, b'{"a":', fin=False)
        + client_frame(0x9, b"ping!")
        + client_frame(0x0, b"", fin=False)
        + client_frame(0x0, b'"b"}')
        + client_frame(0xA, b"pong")
        + client_frame(0x2, b"x" * 70000)
    )
    for chunk in (None, 1, 7, 4096):
        got = events(stream, chunk=chunk)
        assert [e if isinstance(e, (str, bytes)) else (type(e).__name__, e.payload) for e in got] == [
            "héllo", b"\x00\x01", ("Ping", b"ping!"), '{"a":"b"}', ("Pong", b"pong"), b"x" * 70000
        ]


def test_multibyte_character_split_across_frames_and_reads():
    data = "€uro".encode()
    stream = client_frame(0x1, data[:1], fin=False) + client_frame(0x0, data[1:2], fin=False) + client_frame(0x0, data[2:])
    assert events(stream, chunk=1) == ["€uro"]


@pytest.mark.parametrize("bad", [
    client_frame(0x1, b"{}", mask=None),  # unmasked
    client_frame(0x1, b"{}", rsv=0x40),  # reserved bit
    client_frame(0x3, b"x"),  # unknown opcode
    client_frame(0xB, b"x"),
    client_frame(0x9, b"x" * 126),  # control frame over 125 bytes
    client_frame(0x9, b"x", fin=False),  # fragmented control frame
    client_frame(0x0, b"x"),  # continuation without a message
    client_frame(0x1, b"a", fin=False) + client_frame(0x1, b"b"),  # new message inside a message
    client_frame(0x1, b"x" * 10, length_bytes=2),  # length not minimally encoded
    client_frame(0x1, b"x" * 300, length_bytes=8),
    bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + b"abcd",  # top bit of a 64-bit length
])
def test_protocol_violations_are_1002(bad):
    assert fails(bad) == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535])
def test_close_codes_a_peer_may_not_send_are_1002(code):
    assert fails(client_frame(0x8, struct.pack("!H", code))) == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999])
def test_close_codes_a_peer_may_send(code):
    (close,) = events(client_frame(0x8, struct.pack("!H", code) + "bye ✓".encode()))
    assert isinstance(close, Close) and (close.code, close.reason) == (code, "bye ✓")


def test_close_payload_of_one_byte_is_1002_and_empty_is_1005():
    assert fails(client_frame(0x8, b"\x03")) == 1002
    (close,) = events(client_frame(0x8, b""))
    assert close.code == 1005


def test_close_reason_must_be_utf8():
    assert fails(client_frame(0x8, struct.pack("!H", 1000) + b"\xff")) == 1007


def test_bytes_after_a_close_are_ignored():
    reader = FrameReader(BIG)
    got = reader.feed(client_frame(0x8, struct.pack("!H", 1000)) + b"\xff\xff garbage")
    assert [type(e) for e in got] == [Close] and reader.closed
    assert reader.feed(b"more garbage") == []


def test_invalid_utf8_fails_before_the_frame_is_complete():
    reader = FrameReader(BIG)
    whole = client_frame(0x1, b"ok \xff" + b"x" * 1000)
    with pytest.raises(ProtocolError) as caught:
        reader.feed(whole[:20])  # the rest never needs to arrive
    assert caught.value.code == 1007


def test_a_message_over_the_cap_is_refused_on_the_frame_header():
    reader = FrameReader(64 * 1024)
    header = bytes([0x82, 0xFF]) + struct.pack("!Q", 64 * 1024 * 1024) + b"abcd"
    with pytest.raises(ProtocolError) as caught:
        reader.feed(header)  # no payload sent at all
    assert caught.value.code == 1009
    fragmented = client_frame(0x1, b"x" * 40000, fin=False) + client_frame(0x0, b"x" * 40000)
    assert fails(fragmented, 64 * 1024) == 1009


def test_payload_is_not_held_unparsed():
    reader = FrameReader(BIG)
    whole = client_frame(0x2, os.urandom(200_000))
    for i in range(0, len(whole) - 1000, 1000):
        assert reader.feed(whole[i : i + 1000]) == []
        assert len(reader._buf) < 16  # consumed as it arrives (the message parts hold it)


def test_empty_continuation_frames_count():
    reader = FrameReader(BIG, max_fragments=100)
    reader.feed(client_frame(0x1, b"a", fin=False) + client_frame(0x0, b"", fin=False) * 98)
    with pytest.raises(ProtocolError) as caught:
        reader.feed(client_frame(0x0, b"", fin=False) * 2)
    assert caught.value.code == 1009
    ok = FrameReader(BIG, max_fragments=100)
    assert ok.feed(client_frame(0x1, b"a", fin=False) + client_frame(0x0, b"", fin=False) * 98 + client_frame(0x0, b"b")) == ["ab"]


def test_server_frames():
    assert frame(0x1, b"hi") == b"\x81\x02hi"
    assert frame(0x2, b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"
    assert frame(0x2, b"x" * 70000)[:10] == b"\x82\x7f" + struct.pack("!Q", 70000)
    assert close_frame(1005) == b"\x88\x00"
    long_reason = close_frame(1000, "é" * 100)  # cut to 123 bytes on a character boundary
    assert len(long_reason) == 2 + 2 + 122
    (close,) = events(_as_client(long_reason))
    assert close.reason == "é" * 61


def _as_client(server_frame: bytes) -> bytes:
    """Re-mask a short server frame as a client would send it."""
    n = server_frame[1] & 0x7F
    return bytes([server_frame[0], 0x80 | n]) + b"\x00\x00\x00\x00" + server_frame[2:]


# -- differential: the same bytes into wsproto ------------------------------------------------


def ours(stream: bytes) -> tuple[list, int | None]:
    reader = FrameReader(BIG)
    try:
        got = reader.feed(stream)
    except ProtocolError as error:
        return [], error.code  # events before an error are not compared (wsproto yields them lazily)
    return [_normal(e) for e in got], None


def _normal(event):
    if isinstance(event, (str, bytes)):
        return event
    if isinstance(event, Close):
        return ("close", event.code, event.reason)
    return (type(event).__name__.lower(), event.payload)


def theirs(stream: bytes) -> tuple[list, int | None]:
    protocol = FrameProtocol(client=False, extensions=[])
    protocol.receive_bytes(stream)
    out: list = []
    parts: list = []
    try:
        for f in protocol.received_frames():
            if f.opcode is Opcode.PING:
                out.append(("ping", f.payload))
            elif f.opcode is Opcode.PONG:
                out.append(("pong", f.payload))
            elif f.opcode is Opcode.CLOSE:
                code, reason = f.payload
                out.append(("close", int(code), reason))
            else:
                parts.append(f.payload)
                if f.message_finished:
                    out.append("".join(parts) if f.opcode is Opcode.TEXT else b"".join(parts))
                    parts = []
    except ParseFailed as error:
        return [], int(error.code)
    return out, None


_OPS = st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB])
_PAYLOADS = st.one_of(
    st.binary(max_size=140),
    st.text(max_size=40).map(str.encode),
    st.integers(0, 5100).map(lambda c: struct.pack("!H", c)) | st.builds(
        lambda c, r: struct.pack("!H", c) + r, st.sampled_from([1000, 1001, 1005, 1014, 3000, 4999]), st.binary(max_size=6)),
)
_FRAMES = st.builds(
    lambda op, payload, fin, masked, rsv, form: client_frame(
        op, payload, fin=fin, mask=b"\x12\x34\x56\x78" if masked else None, rsv=rsv, length_bytes=form),
    _OPS, _PAYLOADS, st.booleans() | st.just(True), st.booleans() | st.just(True) | st.just(True),
    st.sampled_from([0, 0, 0, 0, 0x40, 0x10]), st.sampled_from([None, None, None, 2, 8]),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FRAMES, max_size=8), st.integers(0, 400), st.binary(max_size=3))
def test_same_meaning_as_wsproto_for_generated_streams(frames, cut, noise):
    stream = b"".join(frames)
    stream = stream[: len(stream) - cut] if cut < len(stream) else stream  # truncated streams too
    stream = stream[: len(stream) // 2] + noise + stream[len(stream) // 2 :] if noise else stream
    assert ours(stream) == theirs(stream)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            data += bytes([rng.randrange(256)])
        kind = rng.randrange(4)
        at = rng.randrange(len(data))
        if kind == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at] = rng.randrange(256)
        elif kind == 2:
            del data[at : at + rng.randint(1, 8)]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(data)


def test_same_meaning_as_wsproto_for_100k_mutated_streams():
    """100 000 streams: valid conversations mutated by bit flips, byte changes, cuts and
    insertions (seeded, so a failure is reproducible)."""
    rng = random.Random(6455)
    seeds = [
        client_frame(0x1, b'{"a":1}') + client_frame(0x9, b"p") + client_frame(0x2, b"\x00" * 130),
        client_frame(0x1, "ünï".encode(), fin=False) + client_frame(0x0, "cødé".encode()) + client_frame(0x8, struct.pack("!H", 1000) + b"ok"),
        client_frame(0x2, b"x" * 300, fin=False) + client_frame(0xA, b"") + client_frame(0x0, b"y" * 200),
        client_frame(0x8, struct.pack("!H", 4000) + "fin ✓".encode()),
    ]
    disagreements = []
    for i in range(100_000):
        stream = _mutate(rng, seeds[i % len(seeds)])
        if ours(stream) != theirs(stream):
            disagreements.append(stream)
    assert disagreements == []


def test_status_lines_carry_the_standard_reason_phrase():
    from rendezvous.servers.native.connection import status_line

    assert status_line(308) == b"HTTP/1.1 308 Permanent Redirect\r\n"  # was "308 Unknown"
    assert status_line(431) == b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"  # no phrase for a code without one


def test_a_channel_that_takes_one_kind_refuses_the_other_on_the_header():
    reader = FrameReader(BIG)
    reader.only = 0x2  # binary only
    assert reader.feed(client_frame(0x2, b"ok") + client_frame(0x9, b""))[0] == b"ok"
    with pytest.raises(ProtocolError) as caught:
        reader.feed(bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 26) + b"mask")  # header only
    assert caught.value.code == 1003
