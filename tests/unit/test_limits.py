from rendezvous.core.limits import KeyedRateLimiter


def test_burst_then_rate():
    lim = KeyedRateLimiter(rate=2.0, burst=3)
    assert [lim.allow("ip", 0.0) for _ in range(4)] == [True, True, True, False]
    assert lim.allow("ip", 0.4) is False
    assert lim.allow("ip", 0.5) is True  # one token per 0.5 s
    assert lim.allow("other", 0.5) is True  # keys are independent


def test_key_table_is_bounded():
    lim = KeyedRateLimiter(rate=1.0, burst=1, max_keys=10)
    for i in range(100):
        lim.allow(i, 0.0)
    assert len(lim) == 10
