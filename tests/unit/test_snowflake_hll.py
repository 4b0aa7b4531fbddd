"""The HyperLogLog++ behind the IP-count log: the Go library's state and gob, and its error.

Vectors come from github.com/clarkduvall/hyperloglog (the library upstream's broker uses), run
with Go 1.19 on the same splitmix64 hashes: its counts, and the sha256 of its GobEncode output
after Count (when its map of pending hashes is empty, so the bytes do not depend on Go's map
order).
"""

from __future__ import annotations

import hashlib
import random

import pytest

from rendezvous_snowflake.hll import M, HyperLogLogPlus
from rendezvous_snowflake.ipcount import IPSetSink

_MASK = (1 << 64) - 1


def splitmix64(n, seed=1):
    state = seed
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        yield z ^ (z >> 31)


# n: (Go's Count(), sha256 of Go's GobEncode() after Count(), sparse?)
GO_VECTORS = {
    3: (3, "c0b1542366cb518738445e6345613a1a5f10bd05d7a1a0c76ca936dde26736e9", True),
    2622: (2621, "57b50745e69fa85248540a3453425a7b10debeaf5615c980e6ff5b53c75d2b5d", True),
    90000: (90133, "2843ece4713b68bb92aea4e68822acbefb8ab285b4ca74a3069940cec069d2a4", True),
    150000: (149896, "f65ce952a1ed726cb493d00e4925c2a0659db09d40cee93a756997c17fb5ef0a", False),
    300000: (299647, "43fd0e868624699ca2810106af7a51ec90118a47d9ab49f7bd19c193efebcb46", False),
}

# Go's GobEncode() of 3 hashes before Count(): 3 pending hashes in a gob map, the list empty
GO_SPARSE_PENDING = bytes.fromhex(
    "030a0000060600fd040000030600120302000113ff810401010373657401ff820001060102000016ff820003fc02fbae36"
    "01fc03e24e8a01fc024428b60103060000030a000003060000")


@pytest.mark.parametrize("n", sorted(GO_VECTORS))
def test_same_state_count_and_gob_as_the_go_library(n):
    count, digest, sparse = GO_VECTORS[n]
    hll = HyperLogLogPlus()
    hll.add_all(splitmix64(n))
    # the state Go would encode now decodes back to ours
    assert HyperLogLogPlus.from_gob(hll.gob()).gob() == hll.gob()
    assert hll.count() == count
    assert hll.sparse is sparse
    assert hashlib.sha256(hll.gob()).hexdigest() == digest


def test_reads_gob_that_go_wrote_with_pending_hashes():
    go = HyperLogLogPlus.from_gob(GO_SPARSE_PENDING)
    ours = HyperLogLogPlus()
    ours.add_all(splitmix64(3))
    assert go.sparse and go.pending == ours.pending and go.entries == []
    assert go.count() == 3


def test_bad_gob_is_refused():
    for data in (b"", GO_SPARSE_PENDING[:-3], b"\x03\x06\x00\x00" * 4):
        with pytest.raises(ValueError):
            HyperLogLogPlus.from_gob(data)


def test_merge_of_chunks_counts_the_union():  # what upstream's reader does with a file's lines
    first, second, both = HyperLogLogPlus(), HyperLogLogPlus(), HyperLogLogPlus()
    hashes = list(splitmix64(200_000))
    first.add_all(hashes[:120_000])
    second.add_all(hashes[80_000:])
    both.add_all(hashes)
    first.merge(second)
    assert abs(first.count() - 200_000) / 200_000 < 0.01
    assert first.count() == both.count()


@pytest.mark.parametrize("n", [1, 100, 1_000, 10_000, 50_000, 200_000, 400_000, 1_000_000])
def test_estimate_error_is_under_one_percent(n):
    hll = HyperLogLogPlus()
    rng = random.Random(n)
    hll.add_all(rng.getrandbits(64) for _ in range(n))
    assert abs(hll.count() - n) / n < 0.01, hll.count()


def test_estimate_error_beyond_five_m_raw_estimate():
    hll = HyperLogLogPlus()
    rng = random.Random(7)
    hll.add_all(rng.getrandbits(64) for _ in range(6 * M))
    assert not hll.sparse
    assert abs(hll.count() - 6 * M) / (6 * M) < 0.01


def test_sink_counting_as_upstream_test():  # common/ipsetsink TestSinkCounting: HMAC-masked, within 1 %
    for item_count in range(300, 10_001, 200):
        sink = IPSetSink(b"demo")
        for _ in range(2):  # every item twice
            for i in range(item_count + 1):
                sink.add(f"demo{i}")
        assert abs(sink.counter.count() / item_count - 1.0) <= 0.01, item_count
