"""Endpoint id sources: 128-bit random hex by default, a seeded sequence for tests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator

IdSource = Callable[[], str]

_M = 0xFFFFFFFF


class _Urandom:
    """The OS CSPRNG read 4 KiB at a time: one ``getrandom`` system call per 256 ids instead of
    one per id (a join makes two). Bytes are handed out once; a forked child starts afresh."""

    SIZE = 4096

    def __init__(self) -> None:
        self.buffer = b""
        self.at = 0
        os.register_at_fork(after_in_child=self.discard)

    def discard(self) -> None:
        self.buffer, self.at = b"", 0

    def take(self, n: int) -> bytes:
        at = self.at
        if at + n > len(self.buffer):
            self.buffer, at = os.urandom(max(self.SIZE, n)), 0
        self.at = at + n
        return self.buffer[at:at + n]


_URANDOM = _Urandom()


def token_hex(nbytes: int) -> str:
    """``secrets.token_hex(nbytes)`` from the buffered CSPRNG."""
    return _URANDOM.take(nbytes).hex()


def random_ids() -> IdSource:
    """32 lowercase hex characters from the OS CSPRNG (the original's ``randomBytes(16)``)."""
    return lambda: token_hex(16)


def jenkins32(s: int) -> int:
    """Robert Jenkins' 32-bit integer hash, exactly as webrtc-bootstrap's ``random.next``."""
    s &= _M
    s = ((s + 0x7ED55D16) + (s << 12)) & _M
    s = ((s ^ 0xC761C23C) ^ (s >> 19)) & _M
    s = ((s + 0x165667B1) + (s << 5)) & _M
    s = ((s + 0xD3A2646C) ^ (s << 9)) & _M
    s = ((s + 0xFD7046C5) + (s << 3)) & _M
    s = ((s ^ 0xB55A4F09) ^ (s >> 16)) & _M
    return s


def _seeded(seed: int) -> Iterator[str]:
    s = seed & _M
    while True:
        s = jenkins32(s)
        signed = s - 2**32 if s >= 2**31 else s
        yield hashlib.md5(str(signed).encode()).hexdigest()


def seeded_ids(seed: int) -> IdSource:
    """The original's seeded ids (``md5(decimal(signed jenkins^k(seed)))``), but per instance.

    The original keeps the seed module-global, so two servers in one process share one
    sequence; here each call makes an independent sequence.
    """
    if not seed:
        raise ValueError("seed must be non-zero (the original treats 0 as 'not seeded')")
    return _seeded(seed).__next__
