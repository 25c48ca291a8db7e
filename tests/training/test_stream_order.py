"""The slot's stream order from sample counts alone: shuffle, epochs, resume arithmetic."""

import itertools
import random

from training.stream_order import ShuffleOrder, assign_shards, epoch_order, resume_point


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
