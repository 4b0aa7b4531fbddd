"""Snowflake's numbers on the status page (``/status``): proxies waiting per NAT pool (this
node's held polls), clients matched / denied / timed out per minute, and the rendezvous latency
(a client's offer to the proxy's answer handed back, the median of the last minute).

Exact counts: the Prometheus counters round up to multiples of 8 (as the Go broker's), so the
client outcomes come from the descriptor's exact counts (reset at each descriptor dump, which
the status history takes as a counter reset) and the latency from a histogram of our own,
which the runtime feeds (:meth:`SnowflakeStatus.rendezvous_done`).
"""

from __future__ import annotations

from typing import Any

from rendezvous.observe.status import Counter, Gauge, LatencyHistogram, Reading, metric_values

MATCHED, DENIED, TIMED_OUT = "client-snowflake-match-count", "client-denied-count", "client-snowflake-timeout-count"


class SnowflakeStatus:
    """``runtime.status``: read each second by the server's status sampler."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.latency = LatencyHistogram()

    def rendezvous_done(self, seconds: float) -> None:
        """A client got its proxy's answer ``seconds`` after its offer arrived."""
        self.latency.observe(seconds)

    def __call__(self) -> Reading:
        runtime = self.runtime
        waiting = {"restricted": 0.0, "unrestricted": 0.0}
        for nat, count in metric_values(runtime.prom.available_proxies, "nat").items():
            # The pools as the broker keeps them: unrestricted proxies, and all the others.
            waiting["unrestricted" if nat == "unrestricted" else "restricted"] += count
        counts = runtime.descriptor.counts
        return {
            "proxies_restricted": Gauge("proxies waiting · restricted", waiting["restricted"]),
            "proxies_unrestricted": Gauge("proxies waiting · unrestricted", waiting["unrestricted"]),
            "clients_matched": Counter("clients matched", counts[MATCHED]),
            "clients_denied": Counter("clients denied", counts[DENIED]),
            "clients_timed_out": Counter("clients timed out", counts[TIMED_OUT]),
            "rendezvous_latency": self.latency.reading("rendezvous latency (p50)"),
        }
