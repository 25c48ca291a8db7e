"""Which source each sample of a mixed training stream comes from (pure: no data is read here).

A mixture of ``k`` prepared splits with weights is drawn **per sample**, in blocks of
:data:`BLOCK` samples of the one global stream. Each block holds every source's quota (the
weights times the block, rounded by largest remainder so the quotas sum to the block), in an
order shuffled with (seed, block). So:

* the realised proportions are the weights to within one sample per block and source (0.7 / 0.3
  is exactly 7,000 / 3,000 of every 10,000 samples);
* each source is its own stream (its own shard order and shuffle buffer, ``training.loader``),
  and where each stands after ``n`` samples of the mixture is arithmetic (:meth:`MixPlan.position`):
  a run resumes exactly at any world size or worker count, as the unmixed stream does;
* sample-level, not shard-level: with sample-level partitioning a rank reads single samples
  anyway, so mixing by sample costs no extra reads, and every global batch holds the weights'
  proportions rather than whichever shards the dealing put together (open_clip's shard-level
  mixing won over sample-level there because their loader read whole shards).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

BLOCK = 10_000  # samples per block: the smallest weight a mixture can hold is 1 / BLOCK


def quotas(weights: Sequence[float], block: int = BLOCK) -> tuple[int, ...]:
    """Each source's samples per block: ``weights`` (any positive scale) times ``block``,
    rounded by largest remainder (ties to the earlier source) so they sum to ``block``."""
    total = sum(weights)
    exact = [w / total * block for w in weights]
    floors = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (floors[i] - exact[i], i))
    for i in by_remainder[: block - sum(floors)]:
        floors[i] += 1
    return tuple(floors)


@dataclass(frozen=True)
class MixPlan:
    """The source of every sample of a mixed stream."""

    quotas: tuple[int, ...]
    seed: int

    @property
    def block(self) -> int:
        return sum(self.quotas)

    def position(self, n: int) -> tuple[int, ...]:
        """How many samples of each source the first ``n`` samples of the stream hold."""
        full, into = divmod(n, self.block)
        counts = [full * q for q in self.quotas]
        for source in _labels(self, full)[:into]:
            counts[source] += 1
        return tuple(counts)

    def sources(self, start: int) -> Iterator[tuple[int, int, int]]:
        """``(stream index, source, index in that source's stream)`` from ``start`` on."""
        place = list(self.position(start))
        index = start
        block, into = divmod(start, self.block)
        while True:
            for source in _labels(self, block)[into:]:
                yield index, source, place[source]
                place[source] += 1
                index += 1
            block, into = block + 1, 0

    def stream_index(self, source: int, j: int) -> int:
        """The stream index of sample ``j`` of ``source``'s own stream."""
        block, nth = divmod(j, self.quotas[source])
        return block * self.block + _places(self, block)[source][nth]


@functools.lru_cache(maxsize=8)
def _labels(plan: MixPlan, block: int) -> tuple[int, ...]:
    """The source of each place of ``block``: every quota, in a seeded order."""
    labels = [s for s, q in enumerate(plan.quotas) for _ in range(q)]
    random.Random(f"{plan.seed}:mix:{block}").shuffle(labels)
    return tuple(labels)


@functools.lru_cache(maxsize=8)
def _places(plan: MixPlan, block: int) -> tuple[tuple[int, ...], ...]:
    """Each source's places in ``block``, rising."""
    places: list[list[int]] = [[] for _ in plan.quotas]
    for place, source in enumerate(_labels(plan, block)):
        places[source].append(place)
    return tuple(tuple(p) for p in places)


def shares(plan: MixPlan, n: int) -> tuple[float, ...]:
    """The realised share of each source in the first ``n`` samples."""
    counts = plan.position(n)
    return tuple(c / max(1, n) for c in counts)
