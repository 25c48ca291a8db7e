"""The slot's stream order from sample counts alone: shuffle, epochs, resume arithmetic."""

import itertools
import random

from training.stream_order import (
    ShuffleOrder,
    assign_shards,
    epoch_order,
    resume_point,
    subset_ordinals,
)


def test_shuffle_order_emits_every_position_once_and_mixes():
    order = list(ShuffleOrder(100, 10, random.Random(0)))
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert all(p < i + 10 for i, p in enumerate(order))  # never ahead of what the buffer holds


def test_a_skipped_order_continues_as_the_uninterrupted_one():
    straight = list(ShuffleOrder(57, 8, random.Random("s")))
    resumed = ShuffleOrder(57, 8, random.Random("s"))
    resumed.skip(20)
    pending = resumed.pending()
    assert list(resumed) == straight[20:]
    assert {p for p in range(57) if p in pending} == set(straight[20:])
    assert not pending.any_in(0, 5) or any(p < 5 for p in straight[20:])


def test_resume_point_skips_whole_epochs_by_their_sample_counts():
    counts = [10, 7, 12, 9, 11]
    epoch_sizes = [
        sum(counts[i] for i in assign_shards(5, 1, 2, seed=3, epoch=e)) for e in range(4)
    ]
    skip = epoch_sizes[0] + epoch_sizes[1] + epoch_sizes[2] + 4
    assert resume_point(counts, 1, 2, 3, skip) == (3, 4)
    assert resume_point(counts, 1, 2, 3, 0) == (0, 0)
    assert resume_point(counts, 1, 2, 3, epoch_sizes[0]) == (1, 0)


def test_each_epoch_has_its_own_shuffle():
    counts = [5] * 6
    first = list(epoch_order(counts, 0, 1, 0, 0, 4)[2])
    second = list(epoch_order(counts, 0, 1, 0, 1, 4)[2])
    assert sorted(first) == sorted(second) == list(range(30)) and first != second
    assert list(itertools.islice(epoch_order(counts, 0, 1, 0, 0, 4)[2], 30)) == first


def test_a_label_subset_is_seeded_about_its_fraction_and_never_empty():
    counts = [400, 0, 250, 350]
    tenth = subset_ordinals(counts, 0.1, seed=0)
    assert tenth == subset_ordinals(counts, 0.1, seed=0)  # drawn from the counts and seed alone
    assert tenth != subset_ordinals(counts, 0.1, seed=1)
    assert 70 <= sum(map(len, tenth)) <= 130 and tenth[1] == ()
    assert all(list(kept) == sorted(set(kept)) and all(0 <= o < n for o in kept)
               for kept, n in zip(tenth, counts))  # fmt: skip
    # a larger fraction holds the smaller one's samples: the same draws, a higher bar
    half = subset_ordinals(counts, 0.5, seed=0)
    assert all(set(a) <= set(b) for a, b in zip(tenth, half))
    assert subset_ordinals([0, 3], 1e-9, seed=0) == ((), (0,))  # one sample at least
