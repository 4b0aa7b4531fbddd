import json

import pytest

from rendezvous_overlay.codec import BadFrame, Opaque, Signal, decode, encode


def test_object_keeps_key_order_and_origin_is_appended_or_overwritten():
    s = decode('{"destination":null,"signal":{"type":"offer"},"rank":0}')
    assert isinstance(s, Signal) and s.destination is None
    assert encode(s.message, "abc") == '{"destination":null,"signal":{"type":"offer"},"rank":0,"origin":"abc"}'
    s = decode('{"origin":"spoofed","destination":null}')
    assert encode(s.message, "abc") == '{"origin":"abc","destination":null}'


@pytest.mark.parametrize("dest", ['""', "0", "false", "null"])
def test_falsy_destinations_mean_root(dest):
    s = decode('{"destination":%s}' % dest)
    assert s.destination is None and s.destination_valid


def test_truthy_non_string_destination_can_never_match():
    for dest in ("1", "true", "{}", "[]"):
        s = decode('{"destination":%s}' % dest)
        assert s.destination is None and not s.destination_valid


def test_bytes_are_decoded_as_utf8():
    s = decode(b'{"destination":"x","t":"\xc3\xa9"}')
    assert s.destination == "x" and s.message["t"] == "é"


@pytest.mark.parametrize("frame,reason", [("not json", "bad_json"), ("null", "null"), ("NaN", "bad_json"), ("[" * 100000, "bad_json")])
def test_bad_frames(frame, reason):
    with pytest.raises(BadFrame) as info:
        decode(frame)
    assert info.value.reason == reason


def test_primitives_and_arrays_are_opaque_and_forwarded_verbatim():
    assert decode("5") == Opaque(5)
    assert encode(decode('"str"').value, "abc") == '"str"'
    assert encode(decode("[1, 2]").value, "abc") == "[1,2]"


def test_non_ascii_passes_through_unescaped():
    assert json.loads(encode({"a": "é"}, "x")) == {"a": "é", "origin": "x"}
    assert "é" in encode({"a": "é"}, "x")
