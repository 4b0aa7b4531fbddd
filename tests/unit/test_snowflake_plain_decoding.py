"""The Snowflake messages' fast decoding path (the C :mod:`json` decoder for the common request)
must decide exactly as the Go-exact path does: a differential test over mutated requests."""

from __future__ import annotations

import random

from rendezvous_snowflake import messages
from rendezvous_snowflake.messages import BadRequest

SCHEMAS = [
    (messages._POLL_SCHEMA, "ProxyPollRequest",
     '{"Sid":"s1","Version":"1.3","Type":"standalone","NAT":"unrestricted","Clients":0,"AcceptedRelayPattern":"p$"}'),
    (messages._ANSWER_SCHEMA, "ProxyAnswerRequest", '{"Version":"1.3","Sid":"s1","Answer":"v=0 a=candidate"}'),
    (messages._CLIENT_SCHEMA, "ClientPollRequest",
     '{"offer":"v=0\\r\\na=candidate <&>","nat":"restricted","fingerprint":"2B280B23E1107BB62ABFC40DDCC8824814F80A72"}'),
]
VALUES = ['"x"', '""', "0", "-1", "7", "1.5", "1e999", "9223372036854775808", "-9223372036854775808", "1" * 5000,
          "null", "true", "[]", "{}", '["a",1]', '{"Sid":"in"}', "NaN", "Infinity", '"\\ud800"', '"\\u0041"',
          '"a\\udc00"', '"\\ud83d\\ude00"', '"\\ud83d"', '"x\\ud83d\\u0041"', '"caf\u00e9"', '"\\"Sid\\""', "[" * 50 + "]" * 50, "[" * 5000 + "]" * 5000, '"<&>\u2028"']
KEYS = ["Sid", "sid", "SID", "Version", "Type", "NAT", "nat", "Clients", "clients", "AcceptedRelayPattern",
        "acceptedrelaypattern", "Answer", "offer", "Offer", "fingerprint", "unknown", "ſid", "S\\u0069d", ""]


def mutate(rng: random.Random, text: str) -> bytes:
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(9)
        if choice == 0:  # another key/value pair up front
            text = "{" + f'"{rng.choice(KEYS)}":{rng.choice(VALUES)},' + text[1:]
        elif choice == 1:  # at the end
            text = text[:-1] + f',"{rng.choice(KEYS)}":{rng.choice(VALUES)}' + "}"
        elif choice == 2:  # a value replaced
            key = rng.choice(KEYS)
            start = text.find(f'"{key}":')
            if start >= 0:
                end = text.find(",", start)
                end = len(text) - 1 if end < 0 else end
                text = text[: start + len(key) + 3] + rng.choice(VALUES) + text[end:]
        elif choice == 3:
            text = rng.choice([" ", "\n", "\t", "\r", "\ufeff", "\u00a0"]) + text + rng.choice(["", " ", "x", "{}", "\n"])
        elif choice == 4:  # truncated
            text = text[: rng.randrange(len(text) + 1)]
        elif choice == 5:
            text = rng.choice(["null", "[]", '"s"', "1", "[" + text + "]", text])
        elif choice == 6:  # a key in another case
            text = text.replace('"Sid"', '"sId"').replace('"offer"', '"OFFER"')
        elif choice == 7:
            text = text.replace(":", " : ", rng.randint(0, 2))
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.05:
        at = rng.randrange(len(raw) + 1)
        raw = raw[:at] + rng.choice([b"\xff", b"\xed\xa0\x80", b"\xe2\x82"]) + raw[at:]
    return raw


def outcome(body: bytes, schema: dict, struct: str, plain: bool) -> object:
    try:
        fields = messages.decode_object(body, schema, struct, plain=plain)
    except BadRequest as exc:
        return ("error", str(exc))
    return {name: fields.get(name) for name in schema}


def test_the_fast_path_agrees_with_the_go_exact_decoder():
    rng = random.Random(1234)
    fast = 0
    for n in range(20_000):
        schema, struct, base = SCHEMAS[n % len(SCHEMAS)]
        body = mutate(rng, base)
        names = messages._lowered(schema)
        took = messages._plain_fields(body, schema, names) is not None
        fast += took
        assert outcome(body, schema, struct, True) == outcome(body, schema, struct, False), body[:300]
    assert fast > 2_000  # the comparison covered the fast path, not only the fallback


def test_the_requests_real_peers_send_take_the_fast_path():
    for schema, _, base in SCHEMAS:
        assert messages._plain_fields(base.encode(), schema, messages._lowered(schema)) is not None


def test_what_the_fast_path_must_not_take():
    schema, names = messages._POLL_SCHEMA, messages._lowered(messages._POLL_SCHEMA)
    for body in [b'{"Sid":5,"Sid":"a","Version":"1.3"}', b'{"Sid":"a","sid":"b"}', b'{"Sid":"\\ud800"}',
                 b'{"Sid":"\\u00e9\\udfff"}', b'{"AcceptedRelayPattern":"\\ud800"}',
                 b'{"Sid":"a","x":NaN}', b'{"Clients":1.0}', b'{"Clients":9223372036854775808}', b"[]",
                 b'{"Sid":null}', b'{"Sid":"a"} x', b'\xff{"Sid":"a"}']:
        assert messages._plain_fields(body, schema, names) is None, body
