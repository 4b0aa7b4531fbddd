"""Endpoint id sources: 128-bit random hex by default, a seeded sequence for tests."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator

IdSource = Callable[[], str]

_M = 0xFFFFFFFF


def random_ids() -> IdSource:
    """32 lowercase hex characters from the OS CSPRNG (the original's ``randomBytes(16)``)."""
    return lambda: secrets.token_hex(16)


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
