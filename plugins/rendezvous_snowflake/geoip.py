"""Tor-format GeoIP files (``/usr/share/tor/geoip{,6}``): ranges to country codes."""

from __future__ import annotations

import bisect
import ipaddress
import pathlib

from rendezvous.errors import ConfigError

UNKNOWN_COUNTRY = "??"


class GeoIP:
    def __init__(self) -> None:
        self._v4: tuple[list[int], list[int], list[str]] = ([], [], [])
        self._v6: tuple[list[int], list[int], list[str]] = ([], [], [])

    @classmethod
    def load(cls, v4_path: pathlib.Path, v6_path: pathlib.Path) -> GeoIP:
        geo = cls()
        geo._v4 = _load(v4_path, v6=False)
        geo._v6 = _load(v6_path, v6=True)
        return geo

    def country(self, ip: str | None) -> str:
        if not ip:
            return UNKNOWN_COUNTRY
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return UNKNOWN_COUNTRY
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        lows, highs, codes = self._v4 if address.version == 4 else self._v6
        value = int(address)
        i = bisect.bisect_right(lows, value) - 1
        if i >= 0 and value <= highs[i]:
            return codes[i]
        return UNKNOWN_COUNTRY


def _load(path: pathlib.Path, v6: bool) -> tuple[list[int], list[int], list[str]]:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"failed to load geoip database {path}: {exc.strerror} (use --disable-geoip)") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(",")
        if len(parts) != 3:
            raise ConfigError(f"geoip database {path} line {number}: expected LOW,HIGH,CC")
        try:
            if v6:
                low, high = int(ipaddress.IPv6Address(parts[0])), int(ipaddress.IPv6Address(parts[1]))
            else:
                low, high = int(parts[0]), int(parts[1])
        except ValueError:
            raise ConfigError(f"geoip database {path} line {number}: bad address range") from None
        rows.append((low, high, parts[2].strip().upper() or UNKNOWN_COUNTRY))
    rows.sort()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
