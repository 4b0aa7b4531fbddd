"""Task dispatch rules (wasimoff's matcher), with a fake clock."""

import weakref

import pytest

from rendezvous.core import Deliver, Dispatch, Failed, Policy, QueueFull, Revoke
from rendezvous.core.dispatch import wasimoff_retry_delay


def test_no_capacity_no_task_then_capacity_takes_queued_tasks():
    d = Dispatch()
    assert d.add_worker(0.0, "w", "w") == []
    assert d.submit(0.0, "t1") == []  # capacity 0 until announced
    assert d.submit(0.0, "t2") == []
    assert d.queued == 2
    assert d.set_capacity(1.0, "w", 1) == [Deliver("w", "t1")]
    assert d.completed(2.0, "t1", "w", "r1") == [Deliver("t1", "r1"), Deliver("w", "t2")]


def test_at_most_capacity_in_flight():
    d = Dispatch()
    d.add_worker(0.0, "w", "w")
    d.set_capacity(0.0, "w", 2)
    effects = [e for i in range(5) for e in d.submit(0.0, f"t{i}")]
    assert effects == [Deliver("w", "t0"), Deliver("w", "t1")]
    assert d.in_flight == 2 and d.queued == 3


def test_task_with_no_worker_waits_until_one_comes():
    d = Dispatch()
    assert d.submit(0.0, "t") == []
    d.add_worker(5.0, "w", "w")
    assert d.set_capacity(5.0, "w", 4) == [Deliver("w", "t")]


def test_queue_bound():
    d = Dispatch(queue_limit=2)
    d.submit(0.0, "a")
    d.submit(0.0, "b")
    with pytest.raises(QueueFull):
        d.submit(0.0, "c")


def test_simple_match_prefers_workers_holding_the_files():
    d = Dispatch(policy=Policy.SIMPLE_MATCH)
    d.add_worker(0.0, "w1", "w1")
    d.add_worker(0.0, "w2", "w2", files=["sha256:aa"])
    d.set_capacity(0.0, "w1", 1)
    d.set_capacity(0.0, "w2", 1)
    assert d.submit(0.0, "t", needs=["sha256:aa"]) == [Deliver("w2", "t")]
    assert d.submit(0.0, "u", needs=["sha256:aa"]) == [Deliver("w1", "u")]  # fallback: any free worker
    d.update_files(0.0, "w1", added=["sha256:bb"])
    d.completed(0.0, "t", "w2", "r")
    d.completed(0.0, "u", "w1", "r")
    assert d.submit(0.0, "v", needs=["sha256:bb"]) == [Deliver("w1", "v")]


def test_round_robin_takes_turns_in_name_order():
    d = Dispatch(policy=Policy.ROUND_ROBIN)
    for name in ("b", "a", "c"):
        d.add_worker(0.0, name, name)
        d.set_capacity(0.0, name, 10)
    got = [d.submit(0.0, f"t{i}")[0].to for i in range(6)]
    assert got == ["a", "b", "c", "a", "b", "c"]


def test_any_free_uses_connection_order():
    d = Dispatch(policy=Policy.ANY_FREE)
    for name in ("b", "a"):
        d.add_worker(0.0, name, name)
        d.set_capacity(0.0, name, 1)
    assert [d.submit(0.0, f"t{i}")[0].to for i in range(2)] == ["b", "a"]


def test_worker_dies_mid_task_and_task_is_retried_elsewhere():
    d = Dispatch()
    d.add_worker(0.0, "w1", "w1")
    d.set_capacity(0.0, "w1", 1)
    d.submit(0.0, "t")
    d.add_worker(0.0, "w2", "w2")
    d.set_capacity(0.0, "w2", 1)
    assert d.remove_worker(1.0, "w1") == []  # retry after the backoff delay
    delay = wasimoff_retry_delay(1)
    assert d.next_deadline() == pytest.approx(1.0 + delay)
    assert d.advance(1.0 + delay) == [Deliver("w2", "t")]
    assert d.completed(2.0, "t", "w2", "ok") == [Deliver("t", "ok")]


def test_transport_errors_retry_up_to_max_attempts_then_fail_with_all_errors():
    d = Dispatch(max_attempts=3, retry_delay=lambda i: 0.5)
    d.add_worker(0.0, "w", "w")
    d.set_capacity(0.0, "w", 1)
    d.submit(0.0, "t")
    now = 0.0
    for i in range(2):
        assert d.transport_error(now, "t", "w", f"e{i}") == []
        now += 0.5
        assert d.advance(now) == [Deliver("w", "t")]
    assert d.transport_error(now, "t", "w", "e2") == [Failed("t", ("e0", "e1", "e2"))]
    assert d.in_flight == 0


def test_first_result_wins_and_stale_results_are_ignored():
    d = Dispatch(retry_delay=lambda i: 0.0)
    d.add_worker(0.0, "w1", "w1")
    d.add_worker(0.0, "w2", "w2")
    d.set_capacity(0.0, "w1", 1)
    d.submit(0.0, "t")
    d.transport_error(0.0, "t", "w1", "flaky")
    d.set_capacity(0.0, "w2", 1)
    d.set_capacity(0.0, "w1", 0)
    assert d.advance(0.0) == [Deliver("w2", "t")]
    assert d.completed(0.1, "t", "w1", "late") == []  # not leased to w1 any more
    assert d.completed(0.2, "t", "w2", "ok") == [Deliver("t", "ok")]
    assert d.completed(0.3, "t", "w2", "again") == []


def test_cancel_revokes_running_task_and_slot_frees_when_worker_answers():
    d = Dispatch()
    d.add_worker(0.0, "w", "w")
    d.set_capacity(0.0, "w", 1)
    d.submit(0.0, "t")
    d.submit(0.0, "u")
    assert d.cancel(1.0, "t") == [Revoke("t", "w")]
    assert d.in_flight == 1  # the worker is still busy with it
    assert d.completed(1.5, "t", "w", "undefined") == [Deliver("w", "u")]
    assert d.cancel(2.0, "nothing") == []


def test_cancel_queued_task_frees_queue_space():
    d = Dispatch(queue_limit=1)
    d.submit(0.0, "t")
    d.cancel(0.0, "t")
    assert d.queued == 0
    d.submit(0.0, "u")
    d.add_worker(0.0, "w", "w")
    assert d.set_capacity(0.0, "w", 1) == [Deliver("w", "u")]


def test_retry_delay_matches_the_original_range():
    assert wasimoff_retry_delay(1) == pytest.approx(0.00563, rel=0.01)
    assert wasimoff_retry_delay(10) == pytest.approx(1.0, rel=0.001)
    assert wasimoff_retry_delay(20) == 1.0


def test_capabilities_a_task_requires_are_hard_and_others_pass_it():
    d = Dispatch()
    d.add_worker(0, "gen-a", "a", provides={"wasip1"})
    d.set_capacity(0, "gen-a", 1)
    assert d.submit(0, "py", requires={"pyodide"}) == []  # no worker may take it
    assert d.submit(0, "w", requires={"wasip1"}) == [Deliver("gen-a", "w")]  # passes the waiting one
    assert d.queued == 1
    d.add_worker(0, "gen-c", "c")  # provides everything
    assert d.set_capacity(0, "gen-c", 1) == [Deliver("gen-c", "py")]


class Request:
    """A task handle as a profile has one: it holds the request's payload."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.body = bytes(1024)

    def __repr__(self) -> str:
        return self.name


def test_cancelled_tasks_behind_a_live_one_free_their_place_and_payload_at_once():
    d = Dispatch(queue_limit=301)
    head = Request("head")
    d.submit(0.0, head)  # no worker: it heads the queue for good
    abandoned = [Request(f"t{i}") for i in range(300)]
    for t in abandoned:
        d.submit(0.0, t)
    with pytest.raises(QueueFull):
        d.submit(0.0, Request("one too many"))
    for t in abandoned:
        d.cancel(1.0, t)
    assert d.queued == 1
    gone = [weakref.ref(t) for t in abandoned]
    del abandoned, t
    assert [r for r in gone if r() is not None] == []  # the dispatcher holds none of them
    fresh = [Request(f"u{i}") for i in range(300)]
    for t in fresh:
        d.submit(2.0, t)  # their places are free again
    with pytest.raises(QueueFull):
        d.submit(2.0, Request("one too many"))
    d.add_worker(3.0, "w", "w")
    assert d.set_capacity(3.0, "w", 1000) == [Deliver("w", t) for t in [head, *fresh]]


def test_cancelling_queued_tasks_keeps_the_order_of_the_others():
    d = Dispatch()
    for name in "abcde":
        d.submit(0.0, name)
    d.cancel(0.0, "b")
    d.cancel(0.0, "d")
    d.cancel(0.0, "d")
    assert d.queued == 3
    d.add_worker(0.0, "w", "w")
    assert d.set_capacity(0.0, "w", 10) == [Deliver("w", "a"), Deliver("w", "c"), Deliver("w", "e")]
    assert d.queued == 0


def test_a_retried_task_goes_ahead_of_the_queue():
    d = Dispatch(retry_delay=lambda i: 0.5)
    d.add_worker(0.0, "w1", "w1")
    d.set_capacity(0.0, "w1", 1)
    d.submit(0.0, "t")
    d.submit(0.0, "u")
    d.submit(0.0, "v")
    assert d.transport_error(1.0, "t", "w1", "broken") == [Deliver("w1", "u")]
    assert d.advance(1.5) == []  # t is queued again, first
    assert d.queued == 2
    d.add_worker(2.0, "w2", "w2")
    assert d.set_capacity(2.0, "w2", 1) == [Deliver("w2", "t")]


def test_free_slots_by_capability_and_the_queued_tasks_in_order():
    d = Dispatch()
    d.add_worker(0.0, "any", "any")  # every capability
    d.add_worker(0.0, "plain", "plain", provides=())
    d.add_worker(0.0, "py", "py", provides=["pyodide"])
    for worker, capacity in (("any", 1), ("plain", 2), ("py", 3)):
        d.set_capacity(0.0, worker, capacity)
    assert d.free_slots() == 6 and d.free_slots(()) == 6
    assert d.free_slots({"pyodide"}) == 4  # "any" and "py"
    assert d.free_slots({"pyodide", "rootfs"}) == 1  # "any" alone
    d.submit(0.0, "t1", requires={"pyodide", "rootfs"})  # takes "any"
    assert d.free_slots({"pyodide", "rootfs"}) == 0 and d.free_slots({"pyodide"}) == 3
    assert d.queued_parties() == []
    d.submit(0.0, "t2", requires={"pyodide", "rootfs"})
    d.submit(0.0, "t3", requires={"rootfs", "pyodide"})
    assert d.queued_parties() == ["t2", "t3"]
    d.cancel(0.0, "t2")
    assert d.queued_parties() == ["t3"]
