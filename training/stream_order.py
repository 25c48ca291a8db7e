"""The order one loader slot (a rank's worker) reads a split in, and where a resumed run picks it
up, from shard sample counts alone (pure functions: no data is read here).

A slot's stream is epoch after epoch. Each epoch the shard list is permuted with the run seed and
dealt to the ``ranks x workers`` slots (:func:`assign_shards`); the slot's samples, in shard
order, go through a shuffle buffer seeded by (seed, slot, epoch) that starts empty and drains at
the epoch's end (:class:`ShuffleOrder`). Sample ``i`` of the slot's whole stream is augmented with
a generator seeded by (seed, slot, i).

Because every epoch starts afresh, resuming after ``n`` samples costs nothing per finished epoch:
:func:`resume_point` subtracts whole epochs' sample counts from ``n``, and within the last epoch
replays only the shuffle's random draws over positions (microseconds per sample, no I/O). What
it leaves is :meth:`ShuffleOrder.pending`: the positions still in the buffer plus those not read
yet. The loader opens only shards holding pending positions and decodes only samples it emits.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def assign_shards(num_shards: int, slot: int, slots: int, seed: int, epoch: int) -> list[int]:
    """Shard indices read by ``slot`` (of ``slots`` = ranks x workers) in ``epoch``.

    Every slot gets ``ceil(num_shards / slots)`` shards; with fewer shards than slots some shards
    are read by more than one slot in that epoch, rather than leaving a slot empty.
    """
    order = list(range(num_shards))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    per_slot = math.ceil(num_shards / slots)
    return [order[(slot + k * slots) % num_shards] for k in range(per_slot)]


class ShuffleOrder:
    """Positions ``0..count-1`` in the order a shuffle buffer of ``size`` emits them: fill it,
    then emit a random member and take in the next position, until all are out."""

    def __init__(self, count: int, size: int, rng: random.Random):
        self.count, self.rng = count, rng
        self.buffer = list(range(min(count, max(1, size))))
        self.next_input = len(self.buffer)

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if not self.buffer:
            raise StopIteration
        k = self.rng.randrange(len(self.buffer))
        self.buffer[k], self.buffer[-1] = self.buffer[-1], self.buffer[k]
        position = self.buffer.pop()
        if self.next_input < self.count:
            self.buffer.append(self.next_input)
            self.next_input += 1
        return position

    def skip(self, n: int) -> None:
        """Advance past ``n`` positions without anyone reading them."""
        for _ in itertools.islice(self, n):
            pass

    def pending(self) -> Pending:
        return Pending(frozenset(self.buffer), self.next_input)


@dataclass(frozen=True)
class Pending:
    """Positions an epoch still emits: those in the buffer and all from ``next_input`` on."""

    buffered: frozenset[int]
    next_input: int

    def __contains__(self, position: int) -> bool:
        return position >= self.next_input or position in self.buffered

    def any_in(self, start: int, stop: int) -> bool:
        """Whether any position in ``[start, stop)`` is pending (a shard worth opening)."""
        return stop > self.next_input or any(start <= p < stop for p in self.buffered)


@dataclass(frozen=True)
class Kept:
    """The positions of an epoch one reader keeps (a rank's rows, its worker's batches): what it
    reads, and all it reads. A pending set that leaves out the other ranks' samples, so a rank
    reads ~1/world of the split's bytes rather than all of them."""

    sorted_positions: tuple[int, ...]

    def __contains__(self, position: int) -> bool:
        i = bisect.bisect_left(self.sorted_positions, position)
        return i < len(self.sorted_positions) and self.sorted_positions[i] == position

    def any_in(self, start: int, stop: int) -> bool:
        i = bisect.bisect_left(self.sorted_positions, start)
        return i < len(self.sorted_positions) and self.sorted_positions[i] < stop


def kept_positions(order: ShuffleOrder, first_index: int, keep) -> Kept:
    """The positions ``order`` emits at stream indices ``keep`` accepts (the first emitted is
    index ``first_index``), from a replay of its draws: no data is read, and only the kept
    positions are held (~1/slots of the epoch), so memory stays at a rank's share."""
    kept = [p for i, p in enumerate(order, start=first_index) if keep(i)]
    return Kept(tuple(sorted(kept)))


def subset_ordinals(
    counts: Sequence[int], fraction: float, seed: int
) -> tuple[tuple[int, ...], ...]:
    """The ordinals of each shard's samples in a seeded subset of a split holding about
    ``fraction`` of it (a low-label fine-tune: MAE's and SimCLR's 1% / 10% protocols). Sample
    ``j`` of shard ``i`` is in it when the ``j``-th uniform of a generator seeded by (seed, i) is
    below ``fraction``: drawn from the counts alone (no data is read), so every encoder fine-tuned
    with the seed gets the same subset, at any world size. A subset that would be empty is the
    split's first sample (a caller asks for at least one)."""
    kept = tuple(
        tuple(np.flatnonzero(np.random.default_rng([seed, SUBSET_STREAM, i]).random(n) < fraction)
              .tolist())
        for i, n in enumerate(counts)
    )  # fmt: skip
    if not any(kept) and sum(counts):
        first = next(i for i, n in enumerate(counts) if n)
        kept = tuple((0,) if i == first else () for i in range(len(counts)))
    return kept


SUBSET_STREAM = 0x5B5E7  # keeps the subset's draws apart from any other use of (seed, shard)


def epoch_order(counts: Sequence[int], slot: int, slots: int, seed: int, epoch: int, buffer: int):
    """(shard indices, their sample counts, the shuffle order) of ``slot`` in ``epoch``."""
    shards = assign_shards(len(counts), slot, slots, seed, epoch)
    sizes = [counts[i] for i in shards]
    order = ShuffleOrder(sum(sizes), buffer, random.Random(f"{seed}:{slot}:{epoch}:shuffle"))
    return shards, sizes, order


def resume_point(
    counts: Sequence[int], slot: int, slots: int, seed: int, skip: int
) -> tuple[int, int]:
    """(epoch, samples into it) where ``slot``'s stream stands after ``skip`` samples."""
    for epoch in itertools.count():
        size = sum(counts[i] for i in assign_shards(len(counts), slot, slots, seed, epoch))
        if size == 0:
            raise ValueError("the split's shards hold no samples")
        if skip < size:
            return epoch, skip
        skip -= size
    raise AssertionError("unreachable")


def split_share(
    counts: Sequence[int], rank: int, world_size: int, limit: int | None = None
) -> list[tuple[int, int, int, int]]:
    """A rank's contiguous share of a split's first ``limit`` samples (all by default), for a
    pass that scores every sample once: ``(shard index, first ordinal, stop ordinal, place of
    the first)`` per shard it touches. Shares differ by at most one sample, and a rank opens
    only the shards its places lie in: ~1/world of the split's bytes."""
    total = sum(counts) if limit is None else min(limit, sum(counts))
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    pieces, start = [], 0
    for shard, count in enumerate(counts):
        first, stop = max(lo, start), min(hi, start + count)
        if first < stop:
            pieces.append((shard, first - start, stop - start, first))
        start += count
    return pieces
