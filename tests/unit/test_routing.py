"""Tree-root routing rules, with a fake clock and plain asserts."""

from rendezvous.core import Answered, Close, Deliver, Dropped, Keepalive, RootPolicy, Router
from rendezvous.core.ids import seeded_ids


def make(**kwargs):
    return Router(ids=seeded_ids(42), **kwargs)


def test_endpoint_gets_id_and_messages_go_to_root():
    r = make()
    eid, effects = r.open_endpoint(0.0, "p1")
    assert eid == "334d3ecc3fcf32317545eaff0e1be0c8" and effects == []
    assert r.open_root(0.0, "root") == []
    assert r.route(1.0, "p1", None, {"x": 1}) == [Deliver("root", {"x": 1}, eid)]


def test_no_root_drops_and_later_root_does_not_get_old_messages():
    r = make()
    eid, _ = r.open_endpoint(0.0, "p1")
    assert r.route(0.0, "p1", None, "m") == [Dropped("no_root")]
    r.open_root(1.0, "root")
    assert r.advance(2.0) == []  # nothing queued for the late root


def test_destination_routing_self_echo_and_unknown():
    r = make()
    a, _ = r.open_endpoint(0.0, "a")
    b, _ = r.open_endpoint(0.0, "b")
    assert r.route(0.0, "a", b, "m") == [Deliver("b", "m", a)]
    assert r.route(0.0, "a", a, "m") == [Deliver("a", "m", a)]
    assert r.route(0.0, "a", "hasOwnProperty", "m") == [Dropped("unknown_destination")]


def test_closed_endpoint_is_forgotten():
    r = make()
    a, _ = r.open_endpoint(0.0, "a")
    b, _ = r.open_endpoint(0.0, "b")
    r.closed(1.0, "b")
    assert r.route(1.0, "a", b, "m") == [Dropped("unknown_destination")]
    assert r.endpoint_count == 1
    assert r.route(1.0, "b", None, "m") == [Dropped("unknown_sender")]


def test_endpoint_lifetime_from_connect_not_activity():
    r = make(endpoint_lifetime=30.0)
    r.open_endpoint(0.0, "a")
    r.open_endpoint(10.0, "b")
    assert r.next_deadline() == 30.0
    r.route(29.0, "a", None, "activity does not refresh")
    assert r.advance(29.9) == []
    assert r.advance(30.0) == [Dropped("timeout"), Close("a", 1000, "prospect lifetime over")]
    assert r.next_deadline() == 40.0
    r.closed(30.0, "b")  # closed early: its expiry is skipped
    assert r.next_deadline() is None


def test_roots_get_keepalives_every_interval_and_never_time_out():
    r = make(keepalive_interval=15.0, endpoint_lifetime=30.0)
    r.open_root(0.0, "root")
    assert r.next_deadline() == 15.0
    assert r.advance(15.0) == [Keepalive("root")]
    assert r.advance(29.0) == []
    assert r.advance(30.0) == [Keepalive("root")]
    assert r.advance(1000.0) == [Keepalive("root")]  # late wake-up: one keep-alive, schedule kept
    assert r.next_deadline() == 1005.0
    r.closed(1000.0, "root")
    assert r.next_deadline() is None


def test_latest_root_wins_and_no_fallback_when_it_closes():
    r = make()
    eid, _ = r.open_endpoint(0.0, "p")
    r.open_root(0.0, "old")
    r.open_root(1.0, "new")
    assert r.route(2.0, "p", None, "m") == [Deliver("new", "m", eid)]
    assert set(e.to for e in r.advance(16.0)) == {"old", "new"}  # old one still gets heartbeats
    r.closed(3.0, "new")
    assert r.route(3.0, "p", None, "m") == [Dropped("no_root")]


def test_failover_root_policy_falls_back_to_open_root():
    r = make(root_policy=RootPolicy.FAILOVER)
    eid, _ = r.open_endpoint(0.0, "p")
    r.open_root(0.0, "r1")
    r.open_root(0.0, "r2")
    r.open_root(0.0, "r3")
    r.closed(1.0, "r3")
    assert r.route(1.0, "p", None, "m") == [Deliver("r2", "m", eid)]
    r.closed(1.0, "r1")
    assert r.route(1.0, "p", None, "m") == [Deliver("r2", "m", eid)]
    r.closed(1.0, "r2")
    assert r.route(1.0, "p", None, "m") == [Dropped("no_root")]


def test_reject_root_policy_closes_second_root():
    r = make(root_policy=RootPolicy.REJECT)
    assert r.open_root(0.0, "r1") == []
    assert r.open_root(0.0, "r2") == [Dropped("root_rejected"), Close("r2", 1008, "root already connected")]
    r.closed(0.0, "r2")  # the rejected one's close must not unseat the first
    assert r.root_connected
    r.closed(0.0, "r1")
    assert r.open_root(0.0, "r3") == []


def test_max_endpoints_bound():
    r = make(max_endpoints=2)
    assert r.open_endpoint(0.0, "a")[0] is not None
    assert r.open_endpoint(0.0, "b")[0] is not None
    eid, effects = r.open_endpoint(0.0, "c")
    assert eid is None
    assert effects == [Dropped("endpoints_full"), Close("c", 1013, "too many prospects")]
    r.closed(0.0, "a")
    assert r.open_endpoint(0.0, "c")[0] is not None


def test_answer_latency_reported_once_when_joiner_first_hears_back():
    r = make()
    j, _ = r.open_endpoint(0.0, "joiner")
    a, _ = r.open_endpoint(0.0, "answerer")
    r.open_root(0.0, "root")
    r.route(1.0, "joiner", None, "offer")
    assert r.route(1.25, "answerer", j, "answer") == [Deliver("joiner", "answer", a), Answered(0.25)]
    assert r.route(1.5, "answerer", j, "candidate") == [Deliver("joiner", "candidate", a)]


def test_unstamped_primitives_go_to_root_without_origin():
    r = make()
    r.open_endpoint(0.0, "p")
    assert r.route_unstamped(0.0, "p", 5) == [Dropped("no_root")]
    r.open_root(0.0, "root")
    assert r.route_unstamped(0.0, "p", 5) == [Deliver("root", 5, None)]


def test_route_inbound_is_the_destination_half_of_route():
    r = make()
    j, _ = r.open_endpoint(0.0, "joiner")
    r.open_root(0.0, "root")
    r.route(1.0, "joiner", None, "offer")
    far = "ab" * 16  # an endpoint held by another node
    assert r.route_inbound(1.5, far, j, "answer") == [Deliver("joiner", "answer", far), Answered(0.5)]
    assert r.route_inbound(1.6, far, j, "candidate") == [Deliver("joiner", "candidate", far)]
    assert r.route_inbound(1.6, far, "cd" * 16, "x") == [Dropped("unknown_destination")]
    r.closed(2.0, "joiner")
    assert r.route_inbound(2.0, far, j, "late") == [Dropped("unknown_destination")]


def test_a_current_root_set_from_outside_takes_root_bound_messages():
    r = make()
    eid, _ = r.open_endpoint(0.0, "p")
    elsewhere = object()  # a stand-in for a root on another node
    r.set_current_root(elsewhere)
    assert r.root_connected and r.current_root is elsewhere and not r.is_root(elsewhere)
    assert r.route(0.0, "p", None, "m") == [Deliver(elsewhere, "m", eid)]
    assert r.route_unstamped(0.0, "p", 5) == [Deliver(elsewhere, 5, None)]
    r.open_root(1.0, "local")  # (a router whose policy is decided elsewhere opens roots as "latest")
    r.set_current_root(None)
    assert r.route(1.0, "p", None, "m") == [Dropped("no_root")]
    assert r.advance(16.0) == [Keepalive("local")]  # keep-alives stay with the roots held here


def test_holds_and_parties():
    r = make()
    a, _ = r.open_endpoint(0.0, "a")
    r.open_root(0.0, "root")
    assert r.holds(a) and not r.holds("f" * 32)
    assert r.parties() == ["a", "root"]
    r.closed(0.0, "a")
    assert not r.holds(a) and r.parties() == ["root"]
