"""When to ask the CA, and what a usable certificate is: plain state given the time, no I/O.

Renewal follows Go's autocert (30 days before expiry) for Let's Encrypt's 90-day certificates;
a shorter-lived certificate is renewed at two thirds of its life, so a 6-day certificate is not
renewed the moment it is issued. Failures are retried with a doubling delay (1 min .. 1 h):
Let's Encrypt allows 5 failed validations per hostname and hour.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

import attrs

RENEW_BEFORE = datetime.timedelta(days=30)  # Go autocert's default RenewBefore
RETRY_FIRST = datetime.timedelta(minutes=1)
RETRY_MOST = datetime.timedelta(hours=1)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def check_hostname(name: str) -> str:
    """``name`` lower-cased if the CA can validate it over HTTP-01, else ValueError saying why."""
    host = name.strip().rstrip(".").lower()
    if host.startswith("*."):
        raise ValueError(f"{name!r}: HTTP-01 cannot validate wildcard names")
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{name!r} is not a DNS name")
    if labels[-1].isdigit():
        raise ValueError(f"{name!r}: IP addresses cannot be validated over HTTP-01")
    return host


def parse_listen_address(addr: str) -> tuple[str, int]:
    """Go's ``[host]:port`` (``:80`` = every interface) → (host, port); host ``''`` = every interface."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected [host]:port, got {addr!r}")
    return host.strip("[]"), int(port)


@attrs.frozen
class Held:
    """The dates and names of a certificate on hand."""

    not_before: datetime.datetime
    not_after: datetime.datetime
    names: frozenset[str]
    serial: int = 0

    def covers(self, hostnames: Iterable[str]) -> bool:
        return set(hostnames) <= self.names


def renew_at(held: Held, renew_before: datetime.timedelta = RENEW_BEFORE) -> datetime.datetime:
    """``renew_before`` ahead of expiry, or at two thirds of the life of a shorter-lived certificate."""
    return held.not_after - min(renew_before, (held.not_after - held.not_before) / 3)


def retry_delay(failures: int, first: datetime.timedelta = RETRY_FIRST,
                most: datetime.timedelta = RETRY_MOST) -> datetime.timedelta:
    """The wait after ``failures`` (>= 1) failures in a row: first, 2×first, 4×first, ... at most ``most``."""
    return min(most, first * 2 ** min(max(failures - 1, 0), 32))


class RenewalPlan:
    """The certificate held for ``hostnames`` and when to ask the CA next."""

    def __init__(self, hostnames: Iterable[str], renew_before: datetime.timedelta = RENEW_BEFORE,
                 retry_first: datetime.timedelta = RETRY_FIRST, retry_most: datetime.timedelta = RETRY_MOST) -> None:
        self.hostnames = tuple(hostnames)
        self.renew_before = renew_before
        self.retry_first = retry_first
        self.retry_most = retry_most
        self.held: Held | None = None
        self.failures = 0
        self._retry_at: datetime.datetime | None = None

    def usable(self, held: Held | None) -> bool:
        """Worth serving (expired or not): it names every hostname."""
        return held is not None and held.covers(self.hostnames)

    def next_attempt(self, now: datetime.datetime) -> datetime.datetime:
        """When to ask the CA for a certificate: ``now`` or earlier means now."""
        if self._retry_at is not None:
            return self._retry_at
        if not self.usable(self.held):
            return now
        assert self.held is not None
        return renew_at(self.held, self.renew_before)

    def due(self, now: datetime.datetime) -> bool:
        return self.next_attempt(now) <= now

    def use(self, held: Held) -> None:
        """A certificate was obtained (or found in the cache): the next attempt is its renewal."""
        self.held = held
        self.failures = 0
        self._retry_at = None

    def failed(self, now: datetime.datetime) -> datetime.timedelta:
        """An attempt failed at ``now``: the wait before the next one."""
        self.failures += 1
        delay = retry_delay(self.failures, self.retry_first, self.retry_most)
        self._retry_at = now + delay
        return delay
