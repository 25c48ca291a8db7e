"""Shard planning: a pure function from a sequence of inputs to numbered work units.

One work unit becomes one shard. The plan depends only on the inputs, the shard size and the
seed, so a rerun after a crash computes the same plan and rewrites exactly the missing shards.
The inputs are shuffled before chunking: raw layouts are sorted by class or speaker, and shards
holding one class each would defeat any shuffle buffer in the loader.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class WorkUnit(Generic[Item]):
    index: int
    items: tuple[Item, ...]


def plan_shards(items: Sequence[Item], per_shard: int, seed: int) -> list[WorkUnit[Item]]:
    """Split ``items`` into units of at most ``per_shard`` after a seeded shuffle.

    The unit sizes differ by at most one, so no shard ends up with a handful of samples.
    """
    return list(UnitPlan(items, per_shard, seed))


class UnitPlan(Sequence):
    """:func:`plan_shards`, a unit at a time, for a long sequence of items (a
    ``data_prep.listing.Listing`` on the driver's disk) that it does not hold: the seeded order
    is a permutation of positions, 4 bytes an input (``random.shuffle`` draws by length alone,
    so it is the order a shuffle of the items themselves gave), and a unit's items are read
    when the unit is asked for."""

    def __init__(self, items: Sequence[Item], per_shard: int, seed: int):
        if per_shard < 1:
            raise ValueError(f"per_shard must be >= 1, got {per_shard}")
        self.items = items
        n = len(items)
        self.order = array("I" if n < 1 << 32 else "Q", range(n))
        random.Random(seed).shuffle(self.order)
        self.count = max(1, -(-n // per_shard)) if n else 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> WorkUnit[Item]:
        if not 0 <= index < self.count:
            raise IndexError(f"unit {index} of {self.count}")
        n, units = len(self.order), self.count
        start = index * (n // units) + min(index, n % units)
        size = n // units + (1 if index < n % units else 0)
        return WorkUnit(index, tuple(self.items[p] for p in self.order[start : start + size]))

    def __iter__(self) -> Iterator[WorkUnit[Item]]:
        return (self[i] for i in range(self.count))


def pieces_of(size: int, task_bytes: int) -> int:
    """How many tasks read an input of ``size`` bytes: one per ``task_bytes`` of it (0: one)."""
    return max(1, -(-size // task_bytes)) if task_bytes else 1


def piece_range(count: int, part: int, parts: int) -> tuple[int, int]:
    """``[lo, hi)``: the contiguous range of a large input's ``count`` outputs (a chapter's
    segments, a video's clips) that piece ``part`` of ``parts`` cuts; sizes within one, every
    output in exactly one piece."""
    return part * count // parts, (part + 1) * count // parts
