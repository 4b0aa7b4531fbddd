"""The status page's sampling, sans-IO: readings given the time, rates, medians, the JSON form."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from prometheus_client import CollectorRegistry, Histogram

from rendezvous.observe.status import (
    Counter,
    Gauge,
    Latency,
    LatencyHistogram,
    StatusHistory,
    StatusPage,
    histogram_latency,
    quantile,
)
from rendezvous.observe.status.page import SCRIPT, STYLE
from rendezvous.observe.status.service import CSP, render_page
from rendezvous.testing import FakeClock


def fill(history, clock, seconds, reading):
    """One sample a second for ``seconds`` seconds; ``reading(t)`` at each."""
    for _ in range(seconds):
        clock.advance(1.0)
        history.add(clock(), reading(clock()))


# -- counters ----------------------------------------------------------------------------------
def test_a_counter_is_a_rate_over_its_window():
    clock, history = FakeClock(0.0), StatusHistory()
    total = 0

    def reading(now):
        return {"matched": Counter("clients matched", total)}

    history.add(clock(), reading(0))
    assert history.latest() == {"matched": 0.0}
    # 3 per second for two minutes: 180 a minute once the minute is full.
    for _ in range(120):
        total += 3
        clock.advance(1.0)
        history.add(clock(), reading(clock()))
    assert history.latest()["matched"] == pytest.approx(180.0)
    # Then nothing: the rate falls as the minute empties, to 0 once it is over.
    fill(history, clock, 30, reading)
    assert history.latest()["matched"] == pytest.approx(90.0)
    fill(history, clock, 30, reading)
    assert history.latest()["matched"] == 0.0


def test_a_fresh_start_shows_no_spike():
    """One event in the first second is one a minute, not sixty: nothing was counted before."""
    clock, history = FakeClock(0.0), StatusHistory()
    history.add(clock(), {"c": Counter("c", 0)})
    clock.advance(1.0)
    history.add(clock(), {"c": Counter("c", 1)})
    assert history.latest()["c"] == pytest.approx(1.0)


def test_per_second_counter_with_a_short_window():
    clock, history = FakeClock(0.0), StatusHistory()
    total = 0
    history.add(clock(), {"tasks": Counter("tasks", 0, per=1.0, window=10.0)})
    for _ in range(20):
        total += 5
        clock.advance(1.0)
        history.add(clock(), {"tasks": Counter("tasks", total, per=1.0, window=10.0)})
    assert history.latest()["tasks"] == pytest.approx(5.0)
    assert history.view()["metrics"]["tasks"]["unit"] == "/s"


def test_a_counter_that_goes_down_was_reset():
    """Snowflake's descriptor counts restart from 0 at each dump: what they hold then is new."""
    clock, history = FakeClock(0.0), StatusHistory()
    for total in (0, 50, 100):
        history.add(clock(), {"c": Counter("c", total)})
        clock.advance(1.0)
    history.add(clock(), {"c": Counter("c", 2)})  # reset, then 2 more
    assert history.latest()["c"] == pytest.approx(102.0)


def test_a_stalled_sampler_divides_by_the_time_covered():
    clock, history = FakeClock(0.0), StatusHistory()
    history.add(clock(), {"c": Counter("c", 0)})
    clock.advance(120.0)  # the loop was blocked for two minutes
    history.add(clock(), {"c": Counter("c", 240)})
    assert history.latest()["c"] == pytest.approx(120.0)


# -- latency -----------------------------------------------------------------------------------
def test_quantile_interpolates_within_the_bucket():
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.5, bounds, (0, 0, 0, 0)) is None
    assert quantile(0.5, bounds, (0, 2, 0, 0)) == pytest.approx(0.15)  # the bucket's middle
    assert quantile(0.5, bounds, (1, 0, 3, 0)) == pytest.approx(0.2 + 0.2 * 1 / 3)
    assert quantile(0.5, bounds, (0, 0, 0, 5)) == 0.4  # above every bound: the largest bound


def test_latency_histogram_buckets():
    h = LatencyHistogram()
    assert h.bounds[0] == 0.001 and h.bounds[-1] >= 60.0 and len(h.counts) == len(h.bounds) + 1
    for seconds in (0.0, 0.001, 0.0011, 1.0, 3600.0):
        h.observe(seconds)
    assert h.counts[0] == 2 and h.counts[1] == 1 and h.counts[-1] == 1
    # The median of many equal observations is within its bucket: ~12 % at most.
    h = LatencyHistogram()
    for _ in range(99):
        h.observe(0.25)
    assert quantile(0.5, h.bounds, h.counts) == pytest.approx(0.25, rel=0.12)


def test_latency_is_the_median_of_the_last_window():
    clock, history, h = FakeClock(0.0), StatusHistory(), LatencyHistogram()
    history.add(clock(), {"lat": h.reading("latency")})
    assert history.latest()["lat"] is None  # nothing observed yet
    for _ in range(30):
        for _ in range(3):
            h.observe(0.05)
        clock.advance(1.0)
        history.add(clock(), {"lat": h.reading("latency")})
    assert history.latest()["lat"] == pytest.approx(0.05, rel=0.12)
    for _ in range(50):  # now slower: the old observations leave the minute
        h.observe(2.0)
        clock.advance(1.0)
        history.add(clock(), {"lat": h.reading("latency")})
    assert history.latest()["lat"] == pytest.approx(2.0, rel=0.12)
    view = history.view()["metrics"]["lat"]
    assert view["kind"] == "latency" and view["unit"] == "s" and view["window"] == 60.0
    assert view["count"] == 50 + 10 * 3
    fill(history, clock, 61, lambda now: {"lat": h.reading("latency")})
    assert history.latest()["lat"] is None  # nothing in the last minute


def test_latency_needs_a_count_per_bucket():
    with pytest.raises(ValueError):
        Latency("x", (0.1, 0.2), (1, 2))


def test_a_prometheus_histogram_as_latency():
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", buckets=(0.01, 0.1, 1.0), registry=registry)
    for seconds in (0.005, 0.05, 0.05, 0.5, 5.0):
        histogram.observe(seconds)
    reading = histogram_latency(histogram, "latency")
    assert reading.bounds == (0.01, 0.1, 1.0)
    assert reading.counts == (1, 2, 1, 1)


# -- gauges, the view ------------------------------------------------------------------------
def test_gauges_and_the_view():
    clock, history = FakeClock(1000.0), StatusHistory(keep=600.0, step=5.0)
    fill(history, clock, 700, lambda now: {"w": Gauge("proxies waiting", now % 7, unit="proxies")})
    view = history.view()
    times, metric = view["times"], view["metrics"]["w"]
    # Ten minutes kept: every second of the last minute, one point per 5 s before, ~170 in all.
    assert times[-1] == 0.0 and -600.0 < times[0] <= -595.0
    assert times[-60:] == [float(t) for t in range(-59, 1)] and times[-61] <= -60.0
    assert 165 <= len(times) <= 171 and len(metric["series"]) == len(times)
    assert all(b - a == 5.0 for a, b in itertools.pairwise(times[:100]))
    assert metric == {**metric, "label": "proxies waiting", "kind": "gauge", "unit": "proxies", "value": 1700 % 7}
    assert all(b > a for a, b in itertools.pairwise(times))


def test_points_stay_put_as_samples_arrive():
    """The step grid is fixed in time: as samples arrive, older points do not shimmer."""
    clock, history = FakeClock(0.0), StatusHistory(step=5.0, fine=60.0)
    fill(history, clock, 200, lambda now: {"g": Gauge("g", now)})
    before = history.view()["metrics"]["g"]["series"]
    fill(history, clock, 1, lambda now: {"g": Gauge("g", now)})
    after = history.view()["metrics"]["g"]["series"]
    coarse = [v for v in before if v <= 200 - 60]
    assert coarse == [v for v in after if v <= 200 - 60] and all(v % 5 == 4 for v in coarse)  # the last second of each step
    assert after[-1] == 201


def test_history_is_bounded_however_often_it_is_fed():
    clock, history = FakeClock(0.0), StatusHistory(keep=600.0, interval=1.0)
    for _ in range(5000):
        clock.advance(0.01)
        history.add(clock(), {"g": Gauge("g", 1)})
    assert len(history._samples) <= 601


def test_numbers_come_and_go_with_the_reading():
    clock, history = FakeClock(0.0), StatusHistory()
    history.add(clock(), {"a": Gauge("a", 1), "b": Counter("b", 0)})
    clock.advance(1.0)
    history.add(clock(), {"a": Gauge("a", 2)})
    view = history.view()
    assert list(view["metrics"]) == ["a"] and view["metrics"]["a"]["series"][-1] == 2
    assert "b" not in history._windows
    clock.advance(1.0)
    history.add(clock(), {"a": Gauge("a", 3), "c": Gauge("c", 1)})
    assert history.view()["metrics"]["c"]["series"][-1] == 1


def test_values_are_rounded_and_never_nan():
    clock, history = FakeClock(0.0), StatusHistory()
    history.add(clock(), {"x": Gauge("x", 1 / 3), "n": Gauge("n", float("nan")), "i": Gauge("i", 5.0)})
    metrics = history.view()["metrics"]
    assert metrics["x"]["value"] == 0.3333 and metrics["n"]["value"] is None and metrics["i"]["value"] == 5
    assert isinstance(metrics["i"]["value"], int)


# -- the service -------------------------------------------------------------------------------
class _Runtime:
    def __init__(self):
        self.total = 0

    def status(self):
        return {"events": Counter("events", self.total), "open": Gauge("open", 3)}


class _Broken:
    calls = 0

    def status(self):
        self.calls += 1
        raise RuntimeError("boom")


class _Silent:
    pass


def test_status_page_samples_every_profile():
    import io

    import structlog

    from rendezvous.observe import logging as rlog

    stream = io.StringIO()  # this test's own log (others configure theirs: capturing stdout depends on order)
    rlog.configure(log_format="json", stream=stream)
    clock, wall = FakeClock(0.0), FakeClock(1.7e9)
    ok, broken = _Runtime(), _Broken()
    page = StatusPage({"ok": ok, "broken": broken, "silent": _Silent()}, clock, wall=wall)
    first = json.loads(page.body)
    assert first["time"] is None and set(first["profiles"]) == {"ok", "broken", "silent"}
    for _ in range(3):
        ok.total += 60
        clock.advance(1.0)
        wall.advance(1.0)
        page.sample()
    doc = json.loads(page.body)
    assert doc["time"] == 1.7e9 + 3 and doc["interval"] == 1.0
    assert doc["profiles"]["ok"]["metrics"]["events"]["value"] == 120  # 120 in the last minute
    assert doc["profiles"]["ok"]["metrics"]["open"]["series"][-1] == 3
    # A profile whose numbers cannot be read shows none (and is logged once, not every second);
    # one without a status() shows none either.
    assert doc["profiles"]["broken"] == {"times": [], "metrics": {}} == doc["profiles"]["silent"]
    assert broken.calls == 3
    assert stream.getvalue().count("could not be read") == 1
    structlog.reset_defaults()


def test_status_json_is_bounded():
    class Many:
        def status(self):
            return {f"n{i}": Gauge(f"number {i}", 123456.789 * i) for i in range(10)}

    clock = FakeClock(0.0)
    page = StatusPage({"a": Many(), "b": Many()}, clock)
    for _ in range(2000):
        clock.advance(1.0)
        page.sample()
    # 2 profiles x 10 numbers x ~121 points: tens of KiB, whatever the uptime.
    assert len(page.body) < 40_000


@pytest.mark.anyio
async def test_routes_serve_the_page_and_the_json():
    page = StatusPage({"ok": _Runtime()}, FakeClock(0.0))
    html_route, json_route = page.routes("/ops/status")
    assert (html_route.path, json_route.path) == ("/ops/status", "/ops/status.json")
    assert html_route.methods == json_route.methods == frozenset({"GET", "HEAD"})
    reply = await html_route.handler(None)
    headers = dict(reply.headers)
    assert headers["content-security-policy"] == CSP and headers["cache-control"] == "no-store"
    # The page asks for its JSON relative to itself: it works under any prefix.
    assert b'data-json="status.json"' in reply.body
    page.sample()
    reply = await json_route.handler(None)
    assert dict(reply.headers)["content-type"] == "application/json" and reply.body == page.body


def test_the_page_loads_nothing_from_elsewhere():
    page = render_page("status.json").decode()
    assert not re.search(r"(src|href)\s*=", page)
    assert "http" not in page.replace('"http://www.w3.org/2000/svg"', "")  # (the SVG namespace is a name, not a load)
    assert "@import" not in page and "url(" not in page
    # Only the page's own script and style may run: their hashes are in the policy.
    assert page.count("<script>") == 1 and page.count("<style>") == 1
    assert f"<script>{SCRIPT}</script>" in page and f"<style>{STYLE}</style>" in page
    assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP
    assert "innerHTML" not in SCRIPT  # the JSON's text never becomes markup


def test_the_json_url_is_escaped_into_the_page():
    assert b'data-json="a&quot;&gt;.json"' in render_page('a">.json')
