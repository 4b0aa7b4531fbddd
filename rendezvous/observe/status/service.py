"""``/status`` and ``/status.json``: every profile's numbers, sampled once a second.

Each runtime with a ``status()`` method (see :class:`rendezvous.profile.ProfileStatus`) is read
once per ``interval`` into a :class:`~.history.StatusHistory`; right after, the JSON document is
rendered once and kept. A request costs a lookup and a write, whatever the number of viewers, and
the document's size is bounded (a fixed set of numbers, each ``keep / step`` points): the page is
not a way to make the broker work. Nothing on it names a peer (no addresses, no ids, no secrets):
only counts, rates and durations.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from rendezvous import hooks
from rendezvous.observe import logging as rlog
from rendezvous.observe.status.history import StatusHistory
from rendezvous.observe.status.page import SCRIPT, STYLE, TEMPLATE
from rendezvous.transports.base import ExchangeRoute, HttpRequest, HttpResponse

log = rlog.get_logger("rendezvous.status")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only the page's own script and style run; it may fetch from its origin and nothing else.
CSP = ("default-src 'none'; " f"script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_COMMON = (("cache-control", "no-store"), ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer"))


def render_page(json_url: str) -> bytes:
    """The page, fetching ``json_url`` (relative to the page)."""
    page = TEMPLATE.replace("{style}", STYLE).replace("{script}", SCRIPT)
    return page.replace("{json}", html.escape(json_url, quote=True)).encode()


class StatusPage:
    """The status page of one server: its routes and the sampler (:meth:`run`)."""

    def __init__(self, runtimes: Mapping[str, Any], clock: Callable[[], float] = time.monotonic, *,
                 interval: float = 1.0, keep: float = 600.0, step: float = 5.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.sources = {name: runtime.status if isinstance(runtime, hooks.HasStatus) else None
                        for name, runtime in runtimes.items()}
        self.histories = {name: StatusHistory(keep, step, interval) for name in runtimes}
        self.clock, self.wall = clock, wall
        self.interval, self.keep, self.step = interval, keep, step
        self._failing: set[str] = set()
        self.body = self._render(None)

    def routes(self, path: str) -> list[ExchangeRoute]:
        """The page at ``path`` and its JSON at ``path + ".json"``."""
        page = render_page(path.rpartition("/")[2] + ".json")
        page_headers = (("content-type", "text/html; charset=utf-8"), ("content-security-policy", CSP), *_COMMON)
        json_headers = (("content-type", "application/json"), *_COMMON)

        async def serve_page(request: HttpRequest) -> HttpResponse:
            return HttpResponse(200, page, page_headers)

        async def serve_json(request: HttpRequest) -> HttpResponse:
            return HttpResponse(200, self.body, json_headers)

        methods = frozenset({"GET", "HEAD"})
        return [ExchangeRoute(path, serve_page, methods, 1024, 413), ExchangeRoute(path + ".json", serve_json, methods, 1024, 413)]

    def sample(self) -> None:
        """Read every profile once and render the JSON."""
        now = self.clock()
        for name, source in self.sources.items():
            if source is None:
                continue
            try:
                reading = source()
            except Exception:
                if name not in self._failing:  # once, not every second
                    log.exception("status: the profile's numbers could not be read", profile=name)
                    self._failing.add(name)
                continue
            self._failing.discard(name)
            self.histories[name].add(now, reading)
        self.body = self._render(self.wall())

    def _render(self, at: float | None) -> bytes:
        document = {
            "time": round(at, 3) if at is not None else None,  # when the newest sample was taken (Unix time)
            "interval": self.interval, "keep": self.keep, "step": self.step,
            "profiles": {name: history.view() for name, history in self.histories.items()},
        }
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        deadline = anyio.current_time()
        while True:
            self.sample()
            deadline = max(deadline + self.interval, anyio.current_time())
            await anyio.sleep_until(deadline)
