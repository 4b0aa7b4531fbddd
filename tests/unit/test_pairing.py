"""Offer/answer pairing rules (Snowflake's matcher), with a fake clock."""

from rendezvous.core import Deliver, Dropped, Expired, Pairing


def test_no_waiter_means_immediate_drop():
    p = Pairing()
    assert p.ask(0.0, "client", ["unrestricted"], "offer") == (None, [Dropped("no_waiter")])


def test_match_answer_and_late_answer_gets_gone():
    p = Pairing()
    p.wait(0.0, "sid1", "proxy", "unrestricted", 0, info={"nat": "unrestricted"})
    info, effects = p.ask(1.0, "client", ["unrestricted"], "offer")
    assert info == {"nat": "unrestricted"} and effects == [Deliver("proxy", "offer")]
    assert p.answer(2.0, "sid1", "answer") == [Deliver("client", "answer")]
    assert p.answer(2.1, "sid1", "again") == [Dropped("asker_gone")]
    assert p.next_deadline() is None


def test_pools_are_min_heaps_on_order_key():
    p = Pairing()
    for sid, clients in (("a", 4), ("b", 5), ("c", 3), ("d", 1)):
        p.wait(0.0, sid, "proxy-" + sid, "pool", clients)
    drawn = [p.ask(0.0, f"client{i}", ["pool"], "o")[1][0].to for i in range(4)]
    assert drawn == ["proxy-d", "proxy-c", "proxy-a", "proxy-b"]


def test_pools_tried_in_order():
    p = Pairing()
    p.wait(0.0, "u", "unrestricted-proxy", "unrestricted", 0)
    assert p.ask(0.0, "c1", ["restricted", "unrestricted"], "o")[1] == [Deliver("unrestricted-proxy", "o")]
    assert p.ask(0.0, "c2", ["restricted"], "o")[1] == [Dropped("no_waiter")]


def test_hold_timeout_expires_waiter():
    p = Pairing(hold_timeout=10.0)
    p.wait(0.0, "s", "proxy", "pool", 0)
    assert p.next_deadline() == 10.0
    assert p.advance(9.9) == []
    assert p.advance(10.0) == [Expired("proxy", "hold")]
    assert p.ask(10.0, "c", ["pool"], "o")[1] == [Dropped("no_waiter")]
    assert p.known() == []


def test_answer_timeout_expires_asker_and_frees_sid():
    p = Pairing(hold_timeout=10.0, answer_timeout=5.0)
    p.wait(0.0, "s", "proxy", "pool", 0)
    p.ask(1.0, "client", ["pool"], "o")
    assert p.advance(5.9) == []  # the proxy's hold deadline (10 s) no longer counts
    assert p.advance(6.0) == [Expired("client", "answer")]
    assert p.answer(6.1, "s", "late") == [Dropped("asker_gone")]
    assert p.advance(20.0) == []


def test_waiter_disconnect_leaves_pool():
    p = Pairing()
    p.wait(0.0, "s", "proxy", "pool", 0)
    assert p.gone(1.0, "proxy") == [Dropped("waiter_gone")]
    assert p.ask(1.0, "c", ["pool"], "o")[1] == [Dropped("no_waiter")]
    assert p.next_deadline() is None


def test_asker_disconnect_makes_answer_client_gone():
    p = Pairing()
    p.wait(0.0, "s", "proxy", "pool", 0)
    p.ask(0.0, "client", ["pool"], "o")
    assert p.gone(1.0, "client") == [Dropped("asker_gone")]
    assert p.answer(1.0, "s", "a") == [Dropped("asker_gone")]
    assert p.next_deadline() is None


def test_reused_sid_replaces_waiting_entry():
    p = Pairing()
    p.wait(0.0, "s", "poll1", "pool", 0)
    assert p.wait(1.0, "s", "poll2", "pool", 0) == [Expired("poll1", "replaced")]
    assert p.ask(1.0, "c", ["pool"], "o")[1] == [Deliver("poll2", "o")]
    assert p.ask(1.0, "c2", ["pool"], "o")[1] == [Dropped("no_waiter")]
    assert len(p.known()) == 1


def test_reused_sid_while_matched_still_times_out_the_asker():
    p = Pairing(answer_timeout=5.0)
    p.wait(0.0, "s", "poll1", "pool", 0)
    p.ask(0.0, "client", ["pool"], "o")
    p.wait(1.0, "s", "poll2", "pool", 0)
    assert Expired("client", "answer") in p.advance(5.0)


def test_one_match_per_poll_and_known_counts_matched_until_finished():
    p = Pairing()
    p.wait(0.0, "s", "proxy", "pool", 0, info="standalone")
    p.ask(0.0, "c1", ["pool"], "o")
    assert p.ask(0.0, "c2", ["pool"], "o")[1] == [Dropped("no_waiter")]
    assert p.known() == ["standalone"]
    p.answer(0.5, "s", "a")
    assert p.known() == []


def test_many_waiters_and_askers():
    p = Pairing()
    for i in range(1000):
        p.wait(0.0, f"s{i}", f"p{i}", "pool", i % 7)
    matched = [p.ask(0.0, f"c{i}", ["pool"], "o")[1][0] for i in range(500)]
    assert all(isinstance(e, Deliver) for e in matched)
    assert len({e.to for e in matched}) == 500
    assert p.waiting("pool") == 500


def test_drain_expires_everyone_waiting():
    p = Pairing()
    p.wait(0.0, "s1", "proxy1", "pool", 0)
    p.wait(0.0, "s2", "proxy2", "pool", 0)
    p.ask(0.0, "client", ["pool"], "o")
    effects = p.drain(1.0)
    assert set(effects) == {Expired("proxy2", "hold"), Expired("client", "answer")}
    assert p.next_deadline() is None and p.known() == []
