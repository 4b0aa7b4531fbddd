"""WebTransport's sans-IO wire formats: capsules on the CONNECT stream, stream prefixes, and
rendezvous's message framing (rendezvous.transports.webtransport.capsules / .framing)."""

from __future__ import annotations

import struct

import pytest
from aioquic.buffer import encode_uint_var
from hypothesis import given
from hypothesis import strategies as st

from rendezvous.transports.webtransport.capsules import (
    CLOSE_WEBTRANSPORT_SESSION,
    MAX_CAPSULE_SIZE,
    Capsule,
    CapsuleError,
    CapsuleReader,
    PeerStreams,
    StreamPrefix,
    close_capsule,
    parse_capsules,
    parse_close,
    parse_stream_prefix,
)
from rendezvous.transports.webtransport.framing import FramingError, MessageReader, decode_single, frame_message


def capsule(kind: int, payload: bytes) -> bytes:
    return encode_uint_var(kind) + encode_uint_var(len(payload)) + payload


def feed_in_pieces(reader: CapsuleReader, data: bytes, size: int) -> list[Capsule]:
    out: list[Capsule] = []
    for i in range(0, len(data), size):
        out += reader.feed(data[i:i + size])
    return out


# -- capsules ------------------------------------------------------------------------------------------
def test_close_capsule_carries_code_and_reason():
    data = close_capsule(4001, "going home")
    assert CapsuleReader().feed(data) == [Capsule(CLOSE_WEBTRANSPORT_SESSION, struct.pack("!I", 4001) + b"going home")]
    assert parse_close(CapsuleReader().feed(data)[0].payload) == (4001, "going home")


def test_close_reason_is_cut_to_1024_bytes_and_a_short_payload_is_no_close():
    (only,) = CapsuleReader().feed(close_capsule(1000, "é" * 600))  # 1200 bytes of UTF-8
    code, reason = parse_close(only.payload)
    assert code == 1000 and len(only.payload) == 4 + 1024 and reason == "é" * 512
    assert parse_close(b"\x00\x00\x03") is None
    assert parse_close(b"\x00\x00\x03\xe8") == (1000, "")
    assert parse_close(b"\x00\x00\x03\xe8\xff") == (1000, "\ufffd")  # not UTF-8: replaced, not fatal


def test_unknown_capsules_are_read_past():
    grease = capsule(0x2B603742 * 0x1F + 0x21, b"\x01\x02\x03")  # a GREASE-style type, as Chromium sends
    drain = capsule(0x78AE, b"")
    got = CapsuleReader().feed(grease + drain + close_capsule(1000))
    assert [c.type for c in got] == [0x2B603742 * 0x1F + 0x21, 0x78AE, CLOSE_WEBTRANSPORT_SESSION]
    assert parse_close(got[-1].payload) == (1000, "")


def test_a_truncated_capsule_is_waited_for():
    data = capsule(0x41, b"x" * 300) + close_capsule(1001, "bye")
    reader = CapsuleReader()
    assert reader.feed(data[:1]) == []  # type cut short
    assert reader.feed(data[1:3]) == []  # length cut short (300 takes two bytes)
    assert reader.feed(data[3:100]) == [] and reader.buffered == 100
    got = reader.feed(data[100:])
    assert [c.type for c in got] == [0x41, CLOSE_WEBTRANSPORT_SESSION] and reader.buffered == 0


@given(st.lists(st.tuples(st.integers(0, 2**62 - 1), st.binary(max_size=200)), max_size=8), st.integers(1, 50))
def test_any_split_gives_the_same_capsules(capsules, size):
    data = b"".join(capsule(kind, payload) for kind, payload in capsules)
    assert feed_in_pieces(CapsuleReader(), data, size) == [Capsule(kind, payload) for kind, payload in capsules]


def test_an_oversized_capsule_is_refused_from_its_header():
    reader = CapsuleReader(max_size=1000)
    head = encode_uint_var(0x1234) + encode_uint_var(1001)
    with pytest.raises(CapsuleError):
        reader.feed(head)  # refused before any of the payload arrives
    assert CapsuleReader(max_size=1000).feed(capsule(0x1234, b"x" * 1000)) == [Capsule(0x1234, b"x" * 1000)]
    with pytest.raises(CapsuleError):
        CapsuleReader().feed(encode_uint_var(0) + encode_uint_var(2**62 - 1))
    assert MAX_CAPSULE_SIZE >= len(close_capsule(1000, "r" * 5000))


def test_parse_capsules_keeps_its_old_shape():
    buffer = bytearray(close_capsule(1000) + b"\x40")  # and a type byte cut short
    assert parse_capsules(buffer) == [(CLOSE_WEBTRANSPORT_SESSION, struct.pack("!I", 1000))]
    assert buffer == bytearray(b"\x40")


# -- stream prefixes ------------------------------------------------------------------------------------
def test_stream_prefixes():
    bidi = encode_uint_var(0x41) + encode_uint_var(8)
    assert parse_stream_prefix(bidi + b"payload") == StreamPrefix(8, len(bidi))
    assert parse_stream_prefix(bidi[:1]) is None and parse_stream_prefix(b"") is None
    assert parse_stream_prefix(b"\x01\x05headers") == StreamPrefix(None, 1)  # an HTTP/3 HEADERS frame
    uni = encode_uint_var(0x54) + encode_uint_var(2**30)
    assert parse_stream_prefix(uni, unidirectional=True) == StreamPrefix(2**30, len(uni))
    assert parse_stream_prefix(b"\x00", unidirectional=True) == StreamPrefix(None, 1)  # a control stream


def test_peer_streams_spots_a_stream_that_carried_only_its_prefix():
    server = PeerStreams(is_client=False)
    prefix = encode_uint_var(0x41) + encode_uint_var(0)
    assert server.feed(4, prefix[:1]) is None  # not whole yet
    assert server.feed(4, prefix[1:]) == 0  # told once...
    assert server.feed(4, b"more") is None  # ...not again
    assert server.feed(8, b"\x01\x03abc") is None  # a request stream
    assert server.feed(1, prefix) is None and server.feed(2, prefix) is None  # not a bidi stream the client opened
    assert PeerStreams(is_client=True).feed(1, prefix) == 0
    assert server.feed(12, prefix + b"data", ended=True) == 0  # a whole stream in one piece
    server.forget(4)
    assert server.feed(4, prefix) == 0  # (forgotten: a new stream as far as it knows)


# -- message framing -------------------------------------------------------------------------------------
def test_messages_survive_any_split():
    data = frame_message("héllo") + frame_message(b"\x00\xff") + frame_message("")
    for size in (1, 2, 5, 7, len(data)):
        reader, got = MessageReader(100), []
        for i in range(0, len(data), size):
            got += reader.feed(data[i:i + size])
        assert got == ["héllo", b"\x00\xff", ""] and reader.error is None


@pytest.mark.parametrize("bad, code", [
    (struct.pack("!IB", 101, 0), 1009),  # announced over the cap: refused before the payload
    (struct.pack("!IB", 1, 7) + b"x", 1002),  # unknown kind
    (struct.pack("!IB", 2, 0) + b"\xff\xfe", 1007),  # text that is not UTF-8
])
def test_framing_errors_carry_the_close_code_and_keep_what_came_before(bad, code):
    reader = MessageReader(100)
    assert reader.feed(frame_message("first") + bad + frame_message("after")) == ["first"]
    assert reader.error is not None and reader.error.code == code
    assert reader.feed(frame_message("later")) == []


def test_single_messages_of_datagrams_and_unidirectional_streams():
    assert decode_single(b"\x00hi", 10) == "hi" and decode_single(b"\x01\xff", 10) == b"\xff"
    assert decode_single(b"", 10) is None and decode_single(b"\x07junk", 10) is None  # not messages: dropped
    assert decode_single(b"\x01" + b"x" * 10, 10) == b"x" * 10
    with pytest.raises(FramingError) as big:
        decode_single(b"\x01" + b"x" * 11, 10)
    assert big.value.code == 1009
    with pytest.raises(FramingError) as bad:
        decode_single(b"\x00\xff", 10)
    assert bad.value.code == 1007
