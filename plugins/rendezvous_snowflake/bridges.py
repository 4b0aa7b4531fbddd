"""Bridge list (newline-delimited JSON, strict) and relay-pattern matching (Go's namematcher)."""

from __future__ import annotations

import functools
import json
import pathlib
import re

import attrs

from rendezvous.errors import ConfigError
from rendezvous_snowflake.messages import DEFAULT_FINGERPRINT

UNKNOWN_BRIDGE = "bridge with requested fingerprint is unknown to the broker"
_HEX = re.compile(r"[0-9A-Fa-f]+")


@attrs.frozen
class BridgeInfo:
    display_name: str
    websocket_address: str
    fingerprint: str  # upper-case hex


DEFAULT_BRIDGES = {DEFAULT_FINGERPRINT: BridgeInfo("default", "wss://snowflake.torproject.net/", DEFAULT_FINGERPRINT)}


def parse_bridge_list(text: str, source: str = "bridge list") -> dict[str, BridgeInfo]:
    """Each non-empty line: exactly ``displayName``, ``webSocketAddress``, ``fingerprint``.
    One bad line rejects the whole list, as the Go broker does at startup."""
    bridges: dict[str, BridgeInfo] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            entry = json.loads(line)
        except ValueError as exc:  # a JSONDecodeError, or e.g. an integer past the digit limit
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise ConfigError(f"{where}: invalid JSON: {detail}") from None
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        keys = set(entry)
        expected = {"displayName", "webSocketAddress", "fingerprint"}
        if keys - expected:
            raise ConfigError(f"{where}: unknown field {sorted(keys - expected)[0]!r}")
        if not all(isinstance(entry.get(k), str) for k in expected):
            raise ConfigError(f"{where}: displayName, webSocketAddress and fingerprint must be strings")
        fingerprint = entry["fingerprint"]
        if not _HEX.fullmatch(fingerprint) or len(fingerprint) not in (40, 64):
            raise ConfigError(f"{where}: fingerprint must be 40 or 64 hex characters")
        bridges[fingerprint.upper()] = BridgeInfo(entry["displayName"], entry["webSocketAddress"], fingerprint.upper())
    return bridges


def load_bridge_list(path: pathlib.Path) -> dict[str, BridgeInfo]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"bridge list {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"bridge list {path}: not UTF-8") from None
    return parse_bridge_list(text, f"bridge list {path}")


@attrs.frozen
class NameMatcher:
    """A relay hostname pattern: ``^name$`` exact, otherwise a plain string suffix."""

    rule: str
    exact: bool

    @classmethod
    def parse(cls, pattern: str) -> NameMatcher:
        rule = pattern[:-1] if pattern.endswith("$") else pattern
        exact = rule.startswith("^")
        return cls(rule[1:] if exact else rule, exact)

    def is_superset_of(self, other: NameMatcher) -> bool:
        if self.exact:
            return other.exact and self.rule == other.rule
        return other.rule.endswith(self.rule)


@functools.lru_cache(maxsize=1024)  # (every proxy of a kind sends the same pattern)
def relay_pattern_accepted(proxy_pattern: str, broker_pattern: str) -> bool:
    """The proxy's accepted pattern must cover the broker's allowed pattern."""
    return NameMatcher.parse(proxy_pattern).is_superset_of(NameMatcher.parse(broker_pattern))
