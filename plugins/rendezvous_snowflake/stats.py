"""Snowflake broker metrics: the text descriptor format (``/metrics``) and Prometheus (``/prometheus``).

Both with the Go broker's names, labels and rounding: "binned" counts are rounded up to a
multiple of 8, so 0 stays 0 and 1 becomes 8.
"""

from __future__ import annotations

import datetime
import hashlib
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PROXY_TYPES = ("iptproxy", "standalone", "webext", "badge")
METHODS = ("http", "ampcache", "sqs")


def binned(n: int) -> int:
    return (n + 7) // 8 * 8


def country_list(counts: dict[str, int], bin_counts: bool) -> str:
    """``CC=N,...`` sorted by count descending then country code; client lists binned first."""
    items = [(cc, binned(n) if bin_counts else n) for cc, n in counts.items()]
    items.sort(key=lambda item: (-item[1], item[0]))
    return ",".join(f"{cc}={n}" for cc, n in items)


class RoundedCounter(Collector):
    """A labelled counter whose exposed values are rounded up to a multiple of 8."""

    def __init__(self, name: str, documentation: str, labels: Iterable[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: Tally[tuple[str, ...]] = Tally()

    def inc(self, **labels: str) -> None:
        self.values[tuple(labels[name] for name in self.labels)] += 1

    def inc_values(self, *values: str) -> None:
        """:meth:`inc` with the label values in the counter's label order (the hot path's)."""
        self.values[values] += 1

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in sorted(self.values.items()):
            family.add_metric(list(key), binned(value))
        yield family

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labels)]


class Level:
    """One labelled value of :class:`Levels`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class Levels(Collector):
    """A labelled gauge without prometheus_client's per-value lock (one event loop moves it,
    once or twice per request)."""

    def __init__(self, name: str, documentation: str, labels: Iterable[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.levels: dict[tuple[str, ...], Level] = {}

    def level(self, *values: str) -> Level:
        level = self.levels.get(values)
        if level is None:
            level = self.levels[values] = Level()
        return level

    def collect(self):
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, level in sorted(self.levels.items()):
            family.add_metric(list(key), level.value)
        yield family

    def describe(self):
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labels)]


class Prometheus:
    """The ``snowflake_*`` metrics of the Go broker (HEAD labels)."""

    def __init__(self, registry) -> None:
        self.proxy_total = Counter("snowflake_proxy", "The number of unique snowflake IPs", ["type", "nat", "cc"], registry=registry)
        self.available_proxies = Levels("snowflake_available_proxies", "The number of currently available snowflake proxies", ["type", "nat"])
        self.proxy_poll = RoundedCounter("snowflake_rounded_proxy_poll", "The number of snowflake proxy polls, rounded up to a multiple of 8", ["nat", "type", "status"])
        self.proxy_answer = RoundedCounter("snowflake_rounded_proxy_answer", "The number of snowflake proxy answers, rounded up to a multiple of 8", ["type", "status"])
        self.with_relay = RoundedCounter("snowflake_rounded_proxy_poll_with_relay_url_extension", "The number of snowflake proxy polls with Relay URL Extension, rounded up to a multiple of 8", ["nat", "type"])
        self.without_relay = RoundedCounter("snowflake_rounded_proxy_poll_without_relay_url_extension", "The number of snowflake proxy polls without Relay URL Extension, rounded up to a multiple of 8", ["nat", "type"])
        self.rejected_relay = RoundedCounter("snowflake_rounded_proxy_poll_rejected_relay_url_extension", "The number of snowflake proxy polls rejected by Relay URL Extension, rounded up to a multiple of 8", ["nat", "type"])
        self.client_poll = RoundedCounter("snowflake_rounded_client_poll", "The number of snowflake client polls, rounded up to a multiple of 8", ["nat", "status", "cc", "rendezvous_method"])
        for collector in (self.available_proxies, self.proxy_poll, self.proxy_answer, self.with_relay, self.without_relay, self.rejected_relay, self.client_poll):
            registry.register(collector)


    def available(self, proxy_type: str, nat: str) -> Level:
        """The ``snowflake_available_proxies`` level for these labels."""
        return self.available_proxies.level(proxy_type, nat)


_METHOD_COUNT = {method: f"client-{method}-count" for method in METHODS}


class Descriptor:
    """The counters behind the text descriptor; :meth:`dump` renders and resets them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.proxy_ips: dict[Any, tuple[str, str, str]] = {}  # ip (merged: its hash) -> (cc, type, nat)
        self.counts: Tally[str] = Tally()
        self.client_ips: dict[str, Tally[str]] = {method: Tally() for method in METHODS}

    def proxy_seen(self, ip: str, country: str, proxy_type: str, nat: str) -> bool:
        """Record a polling proxy's IP; True the first time this period."""
        if ip in self.proxy_ips:
            return False
        self.proxy_ips[ip] = (country, proxy_type, nat)
        return True

    def client(self, method: str, country: str, nat: str, status: str) -> None:
        self.counts[_METHOD_COUNT.get(method) or f"client-{method}-count"] += 1
        self.client_ips[method][country] += 1
        if status == "denied":
            self.counts["client-denied-count"] += 1
            side = "unrestricted" if nat == "unrestricted" else "restricted"
            self.counts[f"client-{side}-denied-count"] += 1
        elif status == "matched":
            self.counts["client-snowflake-match-count"] += 1
        elif status == "timeout":
            self.counts["client-snowflake-timeout-count"] += 1

    def export(self, salt: bytes) -> dict[str, Any]:
        """This node's counts as plain values, for a cluster's descriptor (and reset): addresses
        hashed with the period's ``salt`` (the same on every node), so that the same proxy seen
        by two nodes counts once and no address leaves the node."""
        ips = {hashlib.blake2b(ip.encode(), key=salt, digest_size=16).digest(): list(seen) for ip, seen in self.proxy_ips.items()}
        part = {"ips": ips, "counts": dict(self.counts), "clients": {m: dict(t) for m, t in self.client_ips.items()}}
        self.reset()
        return part

    @classmethod
    def merged(cls, parts: Sequence[dict[str, Any]]) -> Descriptor:
        """The cluster's counts: the nodes' :meth:`export` parts summed (unique addresses once)."""
        merged = cls()
        for part in parts:
            for key, seen in part["ips"].items():
                merged.proxy_ips.setdefault(key, tuple(seen))
            merged.counts.update(part["counts"])
            for method, tally in part["clients"].items():
                merged.client_ips.setdefault(method, Tally()).update(tally)
        return merged

    def dump(self, end: datetime.datetime, interval_s: int) -> str:
        countries: Tally[str] = Tally(cc for cc, _, _ in self.proxy_ips.values())
        types: Tally[str] = Tally(t for _, t, _ in self.proxy_ips.values())
        nats: Tally[str] = Tally(n for _, _, n in self.proxy_ips.values())
        c = self.counts
        lines = [
            f"snowflake-stats-end {end.strftime('%Y-%m-%d %H:%M:%S')} ({interval_s} s)",
            f"snowflake-ips {country_list(countries, bin_counts=False)}",
            *(f"snowflake-ips-{t} {types[t]}" for t in PROXY_TYPES),
            f"snowflake-ips-total {len(self.proxy_ips)}",
            f"snowflake-idle-count {binned(c['proxy-idle'])}",
            f"snowflake-proxy-poll-with-relay-url-count {binned(c['proxy-poll-with-relay-url'])}",
            f"snowflake-proxy-poll-without-relay-url-count {binned(c['proxy-poll-without-relay-url'])}",
            f"snowflake-proxy-rejected-for-relay-url-count {binned(c['proxy-poll-rejected-relay-url'])}",
            f"client-denied-count {binned(c['client-denied-count'])}",
            f"client-restricted-denied-count {binned(c['client-restricted-denied-count'])}",
            f"client-unrestricted-denied-count {binned(c['client-unrestricted-denied-count'])}",
            f"client-snowflake-match-count {binned(c['client-snowflake-match-count'])}",
            f"client-snowflake-timeout-count {binned(c['client-snowflake-timeout-count'])}",
        ]
        for method in METHODS:
            lines.append(f"client-{method}-count {binned(c[f'client-{method}-count'])}")
            lines.append(f"client-{method}-ips {country_list(self.client_ips[method], bin_counts=True)}")
        lines += [f"snowflake-ips-nat-{nat} {nats[nat]}" for nat in ("restricted", "unrestricted", "unknown")]
        self.reset()
        return "\n".join(lines) + "\n"
