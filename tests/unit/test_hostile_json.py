"""Hostile JSON (issue 14): lone surrogates, 5 000-digit integers, 1e999, NaN, deep nesting.

Each decoder decides as its original does (Go's encoding/json for Snowflake and wasimoff gen A,
node's JSON.parse/JSON.stringify for the overlay), and nothing decoded makes an encoder raise.
The expected texts were taken from Go 1.19's encoding/json and node 20.
"""

from __future__ import annotations

import json

import pytest

from rendezvous import gojson
from rendezvous.transports import bridges
from rendezvous_overlay.codec import Opaque, Signal, decode, encode
from rendezvous_snowflake import messages
from rendezvous_snowflake.messages import BadRequest
from rendezvous_wasimoff.gena import BadReply, read_listing

BIG = "1" * 5000
POLL = '{"Sid":"s","Version":"1.3","Type":"standalone","NAT":"unrestricted",%s"AcceptedRelayPattern":"p"}'


# -- Go's decoding (rendezvous.gojson) -------------------------------------------------------------
def test_lone_surrogates_decode_as_go_does():
    # Go replaces each unpaired \uD8xx..\uDFxx escape with U+FFFD; a valid pair stays one character.
    value = gojson.loads(r'{"a":"\ud800x\udc00\ud800\udc00\ud800\ud800\udc00","b":"\uDBFF\u0041","c":"\\ud800"}')
    assert value == {"a": "\ufffdx\ufffd\U00010000\ufffd\U00010000", "b": "\ufffdA", "c": "\\ud800"}
    assert json.dumps(value, ensure_ascii=False).encode()  # encodable
    assert gojson.loads('"a\ud800"') == "a\ufffd"  # a str already holding one


def test_invalid_utf8_is_one_replacement_per_byte_as_in_go():
    assert gojson.loads(b'"\xe2\x82A\xed\xa0\x80\xff"') == "\ufffd\ufffdA\ufffd\ufffd\ufffd\ufffd"


def test_numbers_python_cannot_hold_are_kept_as_written():
    value = gojson.loads('{"big":%s,"inf":1e999,"f":1.5,"i":-7}' % BIG)
    assert value == {"big": gojson.Number(BIG), "inf": gojson.Number("1e999"), "f": gojson.Number("1.5"), "i": -7}


@pytest.mark.parametrize("text,error", [
    ('{"x":NaN}', "invalid character 'N' looking for beginning of value"),
    ('{"x":"NaN","y":Infinity}', "invalid character 'I' looking for beginning of value"),
    ('{"a":"-Infinity\\"","b":-Infinity}', "invalid character 'I' in numeric literal"),
    ("", "unexpected end of JSON input"),
    ('{"a":1} x', "invalid character 'x' after top-level value"),
])
def test_what_go_rejects_is_a_decode_error_with_its_text(text, error):
    with pytest.raises(gojson.DecodeError) as info:
        gojson.loads(text)
    assert str(info.value) == error


def test_marshal_writes_a_lone_surrogate_as_go_writes_invalid_utf8():
    assert gojson.marshal({"a": "x\ud800<"}) == b'{"a":"x\\ufffd\\u003c"}'
    assert messages.encode_poll_reply("client match", "\udc00") == \
        b'{"Status":"client match","Offer":"\\ufffd","NAT":"","RelayURL":""}'


def test_encoder_writes_numbers_as_written_at_any_depth():
    encode_ = gojson.encoder(separators=(",", ":"))
    assert encode_({"id": gojson.Number("1e999"), "n": [gojson.Number(BIG)]}) == '{"id":1e999,"n":[%s]}' % BIG
    deep = [[]]
    for _ in range(50_000):
        deep = [deep]
    assert encode_(deep) == "[" * 50_001 + "[]" + "]" * 50_001


# -- Snowflake: the Go broker's decisions -------------------------------------------------------------
@pytest.mark.parametrize("clients,number", [("1e999", "1e999"), (BIG, BIG), ("1.5", "1.5"), ("1e2", "1e2"),
                                            ("9223372036854775808", "9223372036854775808")])
def test_a_number_that_does_not_fit_clients_is_gos_type_error(clients, number):
    with pytest.raises(BadRequest) as info:
        messages.decode_proxy_poll((POLL % f'"Clients":{clients},').encode())
    assert str(info.value) == \
        f"json: cannot unmarshal number {number} into Go struct field ProxyPollRequest.Clients of type int"


@pytest.mark.parametrize("value", ["1e999", BIG, "-1e-999", '"\\ud800"'])
def test_any_number_or_string_in_an_unknown_field_is_ignored_as_go_ignores_it(value):
    assert messages.decode_proxy_poll((POLL % f'"Clients":3,"extra":{value},').encode()).clients == 3
    assert messages.decode_proxy_answer(b'{"Version":"1.0","Sid":"x","Answer":"a","z":%s}' % value.encode()).sid == "x"


def test_client_offer_with_lone_surrogates_is_decoded_as_go_decodes_it():
    poll = messages.decode_client_poll(b'1.0\n{"offer":"\\ud800 sdp \\udfff","nat":"unknown"}')
    assert poll.offer == "\ufffd sdp \ufffd"
    assert messages.encode_poll_reply("client match", poll.offer).decode() == \
        '{"Status":"client match","Offer":"\ufffd sdp \ufffd","NAT":"","RelayURL":""}'


@pytest.mark.parametrize("body,error", [
    (b'{"offer":1e999}', "json: cannot unmarshal number into Go struct field ClientPollRequest.offer of type string"),
    (b'{"offer":"x","f":NaN}', "invalid character 'N' looking for beginning of value"),
    (b'{"offer":"x","f":-Infinity}', "invalid character 'I' in numeric literal"),
    # Go reads the pairs in order and reports the first error, even if a later pair is fine.
    (b'{"offer":5,"offer":"x"}', "json: cannot unmarshal number into Go struct field ClientPollRequest.offer of type string"),
    (b'{"nat":[1],"offer":{"a":1}}', "json: cannot unmarshal array into Go struct field ClientPollRequest.nat of type string"),
])
def test_client_poll_errors_carry_gos_text(body, error):
    with pytest.raises(BadRequest) as info:
        messages.decode_client_poll(b"1.0\n" + body)
    assert str(info.value) == error


# -- the overlay: what node forwards ------------------------------------------------------------------
@pytest.mark.parametrize("frame,forwarded", [
    # node 20: JSON.stringify(JSON.parse(frame))
    ('{"x":1e999,"y":-1e999,"z":%s}' % BIG, '{"x":null,"y":null,"z":null}'),
    ('{"a":"\\ud800","b":"\\udc00\\ud800\\udc00","c":"\\uDBFF"}', '{"a":"\\ud800","b":"\\udc00\U00010000","c":"\\udbff"}'),
    ("[1.0,1e16,1e21,1.5e-7,1e-6,0.000015,-0.0,100.5,9007199254740993,1152921504606846976,123456789012345678901234]",
     "[1,10000000000000000,1e+21,1.5e-7,0.000001,0.000015,0,100.5,9007199254740992,1152921504606847000,"
     "1.2345678901234569e+23]"),
    ("[1E5,1e+2,2.50,-1.25e-10,1e-7,123e-20,-12345678901234567890]",
     "[100000,100,2.5,-1.25e-10,1e-7,1.23e-18,-12345678901234567000]"),
    ("1e999", "null"),
    ('"\\ud800"', '"\\ud800"'),
])
def test_overlay_forwards_what_node_would(frame, forwarded):
    parsed = decode(frame)
    value = parsed.value if isinstance(parsed, Opaque) else parsed.message
    text = encode(value, None)
    assert text == forwarded
    text.encode("utf-8")  # what the channel sends


def test_overlay_infinity_is_truthy_as_a_destination_and_stamped_objects_still_encode():
    parsed = decode('{"destination":1e999,"s":"\\ud800"}')
    assert isinstance(parsed, Signal) and parsed.destination is None and not parsed.destination_valid
    assert encode(parsed.message, "abc") == '{"destination":null,"s":"\\ud800","origin":"abc"}'


def deepest(decodes) -> int:
    """The deepest nesting of arrays ``decodes(text)`` takes here (json's C recursion limit)."""
    low, high = 1, 100_000
    while low < high:
        middle = (low + high + 1) // 2
        try:
            decodes("[" * middle + "]" * middle)
        except Exception:
            high = middle - 1
        else:
            low = middle
    return low


def deeper(frames: int, call):
    """``call()`` from ``frames`` frames further down the stack (as the profile encodes, below where it decoded)."""
    return call() if frames == 0 else deeper(frames - 1, call)


def test_overlay_encodes_whatever_it_decoded_however_deep():
    depth = deepest(decode) - 1
    nested = decode("[" * depth + "]" * depth).value
    assert deeper(100, lambda: encode(nested, None)) == "[" * depth + "]" * depth
    depth -= 20  # room for the number hooks' own frames
    nested = decode("[" * depth + "1e999" + "]" * depth).value
    assert deeper(100, lambda: encode(nested, None)) == "[" * depth + "null" + "]" * depth


# -- the bridges' envelopes -------------------------------------------------------------------------------
def test_bridge_envelope_ids_come_back_as_written():
    depth = deepest(bridges._decode_envelope) - 2
    for request_id in ("1e999", BIG, '"\\ud800"', "[" * depth + "1" + "]" * depth):
        envelope = bridges._decode_envelope('{"id":%s}' % request_id)
        assert bridges._dumps({"id": envelope["id"], "status": 200}).replace(" ", "") == '{"id":%s,"status":200}' % request_id


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_bridge_envelopes_are_json(constant):
    with pytest.raises(ValueError):
        bridges._decode_envelope('{"id":%s}' % constant)


# -- wasimoff gen A: fs:list -------------------------------------------------------------------------------
@pytest.mark.parametrize("listing", [5, 1.5, True, False, "files", {"filename": "x"}, [1], [{"filename": "a"}, "b"]])
def test_an_fs_list_reply_that_is_not_a_list_of_files_is_a_bad_reply(listing):
    with pytest.raises(BadReply):
        read_listing(listing)


def test_fs_list_replies_that_are_files():
    digest = bytes(range(32))
    assert read_listing(None) == {}
    assert read_listing([]) == {}
    assert read_listing([{"filename": "a.wasm", "hash": digest, "length": 1}, {"filename": 7}]) == {"a.wasm": digest.hex()}


def test_the_one_shot_encoder_writes_what_json_writes():
    import random

    rng = random.Random(7)
    leaves = [None, True, False, 0, -1, 2**70, 1.5, -0.0, 1e300, "", "x", "é\u2028<&>", "\n\t\"\\", "\U0001f600"]

    def value(depth):
        kind = rng.randrange(4) if depth < 5 else 0
        if kind == 0:
            return rng.choice(leaves)
        if kind == 1:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["a", "b", "é", "origin", ""]): value(depth + 1) for _ in range(rng.randrange(4))}

    for options in ({"ensure_ascii": False, "separators": (",", ":"), "allow_nan": False}, {}):
        ours, reference = gojson.encoder(**options), json.JSONEncoder(**options).encode
        for _ in range(2000):
            v = value(0)
            assert ours(v) == reference(v)
