"""HyperLogLog++ with the state and serialisation of the Go library the Snowflake broker uses.

The broker's proxy IP-count log (``--ip-count-prefix``) stores, per interval, the state of a
HyperLogLog++ counter (precision 18, sparse precision 25) as the Go library
``github.com/clarkduvall/hyperloglog`` encodes it with ``encoding/gob``. Upstream's reader
(``distinctcounter``) merges those states to count distinct proxies over any span. So this
counter keeps the *same* state as that library, step for step (the sparse list of encoded
hashes, the set of not yet merged hashes, the moment it turns dense), and :meth:`gob` writes
the bytes that library's ``GobDecode`` reads; :meth:`from_gob` reads them back.

Counting follows the library where it needs no empirical tables: the sparse estimate, and
linear counting up to its threshold (350 000 at precision 18). Above that the library
subtracts an empirical bias (tables from the HyperLogLog++ paper) which is not reproduced
here: linear counting is used up to 5 m instead (its error stays under 0.5 % at precision
18), the raw estimate beyond, where the library corrects nothing either.
"""

from __future__ import annotations

import builtins
import collections
import math
from collections.abc import Iterable

P = 18
P_SPARSE = 25
M = 1 << P
M_SPARSE = 1 << (P_SPARSE - 1)  # sic: the library's sparse linear counting uses 2**24
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


def _clz(value: int, bits: int) -> int:
    return bits - value.bit_length()


def encode_hash(x: int) -> int:
    """A 64-bit hash → its 32-bit sparse-list entry (index at precision 25, and the rank
    when the bits between precision 18 and 25 are all zero, flagged by the low bit)."""
    index = x >> (64 - P_SPARSE)
    if (x >> (64 - P_SPARSE)) & ((1 << (P_SPARSE - P)) - 1) == 0:
        rest = ((x & ((1 << (64 - P_SPARSE)) - 1)) << P_SPARSE | ((1 << P_SPARSE) - 1)) & _MASK64
        zeros = _clz(rest, 64) + 1
        return (index << 7 | zeros << 1 | 1) & _MASK32
    return index << 1


def decode_hash(k: int) -> tuple[int, int]:
    """A sparse-list entry → (register index at precision 18, rank)."""
    if k & 1:
        return k >> (32 - P), ((k >> 1) & 0x3F) + P_SPARSE - P
    return (k >> (P_SPARSE - P + 1)) & (M - 1), _clz((k << (32 - P_SPARSE + P - 1)) & _MASK32, 32) + 1


def _varint_len(delta: int) -> int:
    return max(1, (delta.bit_length() + 6) // 7)


def _varints(values: list[int]) -> bytes:
    out = bytearray()
    last = 0
    for value in values:
        delta = value - last
        last = value
        while delta & ~0x7F:
            out.append((delta & 0x7F) | 0x80)
            delta >>= 7
        out.append(delta)
    return bytes(out)


def _from_varints(data: bytes) -> list[int]:
    values, value, shift, last = [], 0, 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        last += value
        values.append(last & _MASK32)
        value, shift = 0, 0
    if shift:
        raise ValueError("truncated sparse list")
    return values


class HyperLogLogPlus:
    """Distinct counting of 64-bit hashes; ``add`` takes the hash (the caller hashes)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.sparse = True
        self.registers: bytearray | None = None
        self.pending: set[int] = set()  # the library's tmpSet
        self.entries: list[int] = []  # the library's sparse list, decoded: sorted, unique
        self.encoded_size = 0  # bytes of the sparse list's varint encoding

    def add(self, x: int) -> None:
        if self.sparse:
            self.pending.add(encode_hash(x))
            if len(self.pending) * 100 > M:
                self._merge_sparse()
            return
        index = x >> (64 - P)
        rank = _clz(((x << P) & _MASK64) | (1 << (P - 1)), 64) + 1
        if rank > self.registers[index]:  # type: ignore[index]
            self.registers[index] = rank  # type: ignore[index]

    def add_all(self, hashes: Iterable[int]) -> None:
        for x in hashes:
            self.add(x)

    def _merge_sparse(self) -> None:
        merged = sorted(self.pending.union(self.entries)) if self.pending else self.entries
        self.pending = set()
        self.entries = merged
        size, last = 0, 0
        for value in merged:
            size += _varint_len(value - last)
            last = value
        self.encoded_size = size
        if size > M:  # the library compares the encoded list's length in bytes with m
            self._to_dense()

    def _to_dense(self) -> None:
        registers = bytearray(M)
        for k in self.entries:
            index, rank = decode_hash(k)
            if rank > registers[index]:
                registers[index] = rank
        self.registers = registers
        self.sparse = False
        self.pending = set()
        self.entries = []
        self.encoded_size = 0

    def merge(self, other: HyperLogLogPlus) -> None:
        """Fold ``other`` in, as the library's ``Merge`` (upstream's reader sums chunks so)."""
        if self.sparse and other.sparse:
            self.pending.update(other.pending)
            self.pending.update(other.entries)
            if len(self.pending) * 100 > M:
                self._merge_sparse()
            return
        if self.sparse:
            self._merge_sparse()
            if self.sparse:
                self._to_dense()
        registers = self.registers
        assert registers is not None
        if other.sparse:
            for k in (*other.pending, *other.entries):
                index, rank = decode_hash(k)
                if rank > registers[index]:
                    registers[index] = rank
        else:
            assert other.registers is not None
            for index, rank in enumerate(other.registers):
                if rank > registers[index]:
                    registers[index] = rank

    def count(self) -> int:
        if self.sparse:
            self._merge_sparse()
        if self.sparse:
            return int(M_SPARSE * math.log(M_SPARSE / (M_SPARSE - len(self.entries))))
        assert self.registers is not None
        histogram = collections.Counter(self.registers)
        zeros = histogram.get(0, 0)
        if zeros:
            linear = M * math.log(M / zeros)
            if linear <= 5 * M:  # the library's threshold (350 000) or beyond, where it corrects bias
                return int(linear)
        alpha = 0.7213 / (1 + 1.079 / M)
        total = sum(n * 2.0 ** -rank for rank, n in histogram.items())
        return int(alpha * M * M / total)

    # -- encoding/gob, as the library's GobEncode/GobDecode -----------------------------------
    def gob(self) -> bytes:
        """The library's ``GobEncode`` output (a map's entries in ascending order; Go's own
        order is random, and its decoder takes any)."""
        out = bytearray()
        out += _message(_BYTES, _gob_bytes(self.registers or b""))
        out += _message(_UINT, _gob_uint(M))
        out += _message(_UINT, _gob_uint(P))
        out += _message(_BOOL, _gob_uint(1 if self.sparse else 0))
        if self.sparse:
            out += _SET_TYPE_DEFINITION
            items = b"".join(_gob_uint(k) + b"\x01" for k in sorted(self.pending))
            out += _message(_SET, _gob_uint(len(self.pending)) + items)
            out += _message(_UINT, _gob_uint(len(self.entries)))
            out += _message(_BYTES, _gob_bytes(_varints(self.entries)))
            out += _message(_UINT, _gob_uint(self.entries[-1] if self.entries else 0))
        return bytes(out)

    @classmethod
    def from_gob(cls, data: bytes) -> HyperLogLogPlus:
        reader = _GobReader(data)
        registers = reader.value(_BYTES, reader.bytes)
        m = reader.value(_UINT, reader.uint)
        p = reader.value(_UINT, reader.uint)
        if (m, p) != (M, P):
            raise ValueError(f"precision {p} (m={m}); this counter is precision {P}")
        hll = cls()
        hll.sparse = bool(reader.value(_BOOL, reader.uint))
        if not hll.sparse:
            if len(registers) != M:
                raise ValueError(f"{len(registers)} registers, expected {M}")
            hll.registers = bytearray(registers)
            return hll
        hll.pending = set(reader.value(None, reader.uint_bool_map))
        count = reader.value(_UINT, reader.uint)
        entries = _from_varints(reader.value(_BYTES, reader.bytes))
        last = reader.value(_UINT, reader.uint)
        if count != len(entries) or (entries and entries[-1] != last):
            raise ValueError("inconsistent sparse list")
        hll.entries = entries
        hll.encoded_size = len(_varints(entries))
        return hll


# -- the little of encoding/gob this needs ----------------------------------------------------
_BOOL, _UINT, _BYTES = 1, 3, 5  # gob's predefined type ids
_SET = 65  # the first user type id: the library's `type set map[uint32]bool`


def _gob_uint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes((256 - len(raw),)) + raw


def _gob_int(value: int) -> bytes:
    return _gob_uint(value << 1 if value >= 0 else (~value << 1) | 1)


def _gob_bytes(data: bytes | bytearray) -> bytes:
    return _gob_uint(len(data)) + data


def _message(type_id: int, value: bytes) -> bytes:
    body = _gob_int(type_id) + b"\x00" + value  # a non-struct value: field delta 0, then the value
    return _gob_uint(len(body)) + body


def _type_definition(type_id: int, name: str, key: int, elem: int) -> bytes:
    # wireType{MapT: &mapType{CommonType{Name, Id}, Key, Elem}}: field deltas, then ends (0).
    common = b"\x01" + _gob_bytes(name.encode()) + b"\x01" + _gob_int(type_id) + b"\x00"
    map_type = b"\x01" + common + b"\x01" + _gob_int(key) + b"\x01" + _gob_int(elem) + b"\x00"
    body = _gob_int(-type_id) + b"\x04" + map_type + b"\x00"
    return _gob_uint(len(body)) + body


_SET_TYPE_DEFINITION = _type_definition(_SET, "set", _UINT, _BOOL)


class _GobReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = 0

    def _byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("truncated gob message")
        byte = self.data[self.pos]
        self.pos += 1
        return byte

    def uint(self) -> int:
        first = self._byte()
        if first < 0x80:
            return first
        n = 256 - first
        if n > 8 or self.pos + n > self.end:
            raise ValueError("bad gob uint")
        value = int.from_bytes(self.data[self.pos:self.pos + n], "big")
        self.pos += n
        return value

    def int(self) -> int:
        u = self.uint()
        return ~(u >> 1) if u & 1 else u >> 1

    def bytes(self) -> builtins.bytes:  # (the class's own ``int``/``bytes`` shadow the builtins here)
        n = self.uint()
        if self.pos + n > self.end:
            raise ValueError("truncated gob bytes")
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value

    def uint_bool_map(self) -> list[builtins.int]:
        keys = []
        for _ in range(self.uint()):
            key = self.uint()
            if self.uint():
                keys.append(key)
        return keys

    def value(self, type_id: builtins.int | None, read):
        """The next value message (type definitions before it are skipped); ``None``: any
        user-defined type id."""
        while True:
            self.end = len(self.data)
            length = self.uint()
            self.end = self.pos + length
            if self.end > len(self.data):
                raise ValueError("truncated gob stream")
            got = self.int()
            if got < 0:  # a type definition
                self.pos = self.end
                continue
            if (got != type_id) if type_id is not None else got < 64:
                raise ValueError(f"gob type id {got}, expected {type_id}")
            if self.uint() != 0:
                raise ValueError("gob value is not a singleton")
            value = read()
            if self.pos != self.end:
                raise ValueError("trailing bytes in gob message")
            self.pos = self.end
            return value
