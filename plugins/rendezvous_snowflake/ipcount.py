"""The proxy IP-count log: distinct proxy addresses per interval, never the addresses.

As upstream's ``common/ipsetsink``: each polling proxy's address is masked with
HMAC-SHA3-256 under a key, the first 8 bytes of the MAC (big-endian) go into a HyperLogLog++
counter (:mod:`rendezvous_snowflake.hll`), and when an address arrives more than an interval
after the last write, every sink appends one JSON line and starts afresh::

    {"recordingStart":"2025-11-20T10:00:00.123456789Z","recordingEnd":"…","recorded":"<base64 of the counter's gob>"}

HEAD (``--ip-count-prefix``): a random key per start (so counts join only within one run)
and one file per pool, ``<prefix>-restricted-<start time>.log`` and
``<prefix>-unrestricted-<start time>.log``. v2.5.1 (``--ip-count-log``/``--ip-count-mask``): one
file for every proxy, appended to, the key given by the operator.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import IO

from rendezvous_snowflake.hll import HyperLogLogPlus

_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (``1h``, ``90m``, ``1h30m``, ``1.5s``, ``500ms``) → seconds."""
    rest = text.strip()
    sign = 1.0
    if rest[:1] in "+-" and rest:
        sign, rest = (-1.0 if rest[0] == "-" else 1.0), rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    while rest:
        number = ""
        while rest and (rest[0].isdigit() or rest[0] == "."):
            number, rest = number + rest[0], rest[1:]
        unit = ""
        while rest and not (rest[0].isdigit() or rest[0] == "."):
            unit, rest = unit + rest[0], rest[1:]
        if number in ("", ".") or number.count(".") > 1 or unit not in _GO_DURATION_UNITS:
            raise ValueError(f"invalid duration {text!r}")
        total += float(number) * _GO_DURATION_UNITS[unit]
    return sign * total


def go_time(ns: int, fraction: bool = True) -> str:
    """A Unix time in ns as Go formats ``time.Now()`` in RFC 3339 (local zone; ``Z`` at UTC;
    with ``fraction``, RFC3339Nano's trimmed nanoseconds, as Go's JSON encoding of a time)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    local = time.localtime(seconds)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", local)
    if fraction and nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    offset = local.tm_gmtoff
    if offset == 0:
        return text + "Z"
    sign = "+" if offset > 0 else "-"
    offset = abs(offset)
    return f"{text}{sign}{offset // 3600:02d}:{offset % 3600 // 60:02d}"


class IPSetSink:
    """Distinct masked addresses since the last write."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.counter = HyperLogLogPlus()

    def add(self, ip: str) -> None:
        mac = hmac.new(self.key, ip.encode(), hashlib.sha3_256).digest()
        self.counter.add(int.from_bytes(mac[:8], "big"))


class IPCountLog:
    """Named sinks writing JSON lines (upstream's ``sinkcluster.ClusterWriter``)."""

    def __init__(self, files: Mapping[str, IO[str]], key: bytes, interval: float,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.files = dict(files)
        self.sinks = {name: IPSetSink(key) for name in files}
        self.interval_ns = int(interval * 1e9)
        self.clock = clock
        self.last_write = clock()

    @classmethod
    def per_pool(cls, prefix: str, interval: float) -> IPCountLog:
        """HEAD's ``--ip-count-prefix``: a file per pool named by the start time, a random key."""
        files = {}
        for pool in ("restricted", "unrestricted"):
            path = f"{prefix}-{pool}-{go_time(time.time_ns(), fraction=False)}.log"
            try:
                files[pool] = open(path, "w", encoding="ascii")  # noqa: SIM115 -- held until close()
            except OSError as exc:
                for f in files.values():
                    f.close()
                raise OSError(f"cannot open {path}: {exc.strerror}") from None
        return cls(files, secrets.token_bytes(32), interval)

    @classmethod
    def single(cls, path: str, mask: str, interval: float) -> IPCountLog:
        """v2.5.1's ``--ip-count-log``/``--ip-count-mask``: one file appended to, the key given."""
        try:
            f = open(path, "a", encoding="ascii")  # noqa: SIM115 -- held until close()
        except OSError as exc:
            raise OSError(f"cannot open {path}: {exc.strerror}") from None
        return cls({"all": f}, mask.encode(), interval)

    def add(self, name: str, ip: str) -> None:
        now = self.clock()
        if self.last_write + self.interval_ns < now:
            self.write(now)
        self.sinks[name].add(ip)

    def write(self, now: int | None = None) -> None:
        """Append one line per sink for the chunk that ends now, and start the next chunk."""
        now = self.clock() if now is None else now
        start, end = go_time(self.last_write), go_time(now)
        for name, sink in self.sinks.items():
            recorded = base64.b64encode(sink.counter.gob()).decode()
            f = self.files[name]
            f.write(json.dumps({"recordingStart": start, "recordingEnd": end, "recorded": recorded},
                               separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
            sink.counter.clear()
        self.last_write = now

    def close(self, write: bool = True) -> None:
        if write:
            self.write()
        for f in self.files.values():
            f.close()


def read_chunks(lines: list[str]) -> list[tuple[str, str, HyperLogLogPlus]]:
    """Parse an IP-count log: (recordingStart, recordingEnd, counter) per line."""
    chunks = []
    for line in lines:
        if line.strip():
            entry = json.loads(line)
            chunks.append((entry["recordingStart"], entry["recordingEnd"],
                           HyperLogLogPlus.from_gob(base64.b64decode(entry["recorded"]))))
    return chunks
