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


# -- stale heap entries stay bounded (issue 14) -----------------------------------------------
def assert_heaps_bounded(p, pools=("pool",)):
    """Lazy deletion may leave stale entries, but never more than the live ones (+ a constant)."""
    for pool in pools:
        assert len(p._pools[pool].heap) <= 2 * p.waiting(pool) + 2
    active = len(p.known())  # here every matched or waiting entry is known by its sid
    assert len(p._deadlines) <= 2 * active + 2


def test_expired_polls_do_not_pile_up_in_an_idle_pool():
    p = Pairing(hold_timeout=10.0)
    for second in range(300):  # 100 polls a second, each held 10 s, and no client ever draws
        p.advance(float(second))
        for i in range(100):
            p.wait(float(second), f"s{second}-{i}", f"p{second}-{i}", "pool", (second * 7 + i) % 13)
        assert_heaps_bounded(p)
    assert p.waiting("pool") == 1000
    drawn = [p.ask(300.0, f"c{i}", ["pool"], "o")[0] for i in range(1000)]
    assert len(drawn) == 1000 and p.ask(300.0, "late", ["pool"], "o")[1] == [Dropped("no_waiter")]


def test_abandoned_polls_do_not_pile_up_in_either_heap():
    p = Pairing(hold_timeout=30.0)
    for i in range(10_000):
        proxy = f"p{i}"  # (parties are told apart by identity)
        p.wait(0.0, f"s{i}", proxy, "pool", i % 5)
        if i % 10:
            p.gone(0.0, proxy)  # nine in ten proxies hang up long before their hold timeout
    assert p.waiting("pool") == 1000
    assert_heaps_bounded(p)
    orders = []
    client = "c"
    while True:
        info, effects = p.ask(1.0, client, ["pool"], "o")
        if effects == [Dropped("no_waiter")]:
            break
        orders.append(int(effects[0].to[1:]) % 5)
        p.gone(1.0, client)
    assert len(orders) == 1000 and orders == sorted(orders)  # still fewest Clients first


def test_finished_matches_and_replaced_sids_leave_no_stale_deadlines():
    p = Pairing(hold_timeout=30.0, answer_timeout=30.0)
    p.wait(0.0, "idle", "idle-proxy", "other", 0)
    for i in range(5000):
        poll = f"poll{i}"
        p.wait(0.0, "same", poll, "pool", 0)  # each poll replaces the previous one
    assert p.waiting("pool") == 1
    p.gone(0.0, poll)
    for i in range(5000):
        p.wait(0.0, f"s{i}", f"p{i}", "pool", 0)
        p.ask(0.0, f"c{i}", ["pool"], "o")
        assert p.answer(0.0, f"s{i}", "a") == [Deliver(f"c{i}", "a")]
    assert_heaps_bounded(p, ("pool", "other"))
    assert p.next_deadline() == 30.0 and p.advance(30.0) == [Expired("idle-proxy", "hold")]
    assert p.next_deadline() is None
