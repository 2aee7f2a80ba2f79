"""A set of prompt ids in bounded memory: 64-bit hashes in an open-addressing table.

Validation must refuse a duplicate id among up to millions of prompts without keeping the
ids. :class:`IdHashSet` keeps one 64-bit hash per id in an ``array`` of unsigned 64-bit
slots (linear probing, at most half full): 8 to 16 bytes an id (10M ids: at most 256 MiB,
briefly 384 MiB while it grows), against about 100 bytes for a Python ``set`` of strings.

The price is a false "duplicate" when two different ids share a hash: for n ids the chance
is about n^2 / 2^65 (1M ids: 3e-8; 10M: 3e-6). Python's own string hash (64-bit SipHash,
salted per process) is the hash: fast, and as good as a fresh random function for this.
"""

from __future__ import annotations

from array import array

_MASK64 = (1 << 64) - 1


class IdHashSet:
    """``add(id) -> bool``: False when the id (most probably) was added before."""

    def __init__(self, capacity: int = 1024) -> None:
        size = 1
        while size < max(2, capacity):
            size *= 2
        self._slots = array("Q", [0]) * size
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return len(self._slots) * 8

    def add(self, key: str) -> bool:
        value = (hash(key) & _MASK64) or 1  # 0 marks an empty slot
        if not self._insert(value):
            return False
        self._count += 1
        if 2 * self._count > len(self._slots):
            self._grow()
        return True

    def _insert(self, value: int) -> bool:
        slots, mask = self._slots, self._mask
        index = value & mask
        while True:
            found = slots[index]
            if found == 0:
                slots[index] = value
                return True
            if found == value:
                return False
            index = (index + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", [0]) * (2 * len(old))  # no temporary bytes
        self._mask = len(self._slots) - 1
        for value in old:
            if value:
                self._insert(value)
