"""Each rank reads its share once (issue: loading at cluster scale), measured in bytes.

The bytes are the process's own read counter (``rchar`` of /proc/self/io: every byte a read
call returned), around one epoch of a rank's training stream and one scoring pass. Before this,
a rank of 2 read the whole global stream and dropped the other rank's rows after reading them
(the quickstart's fine-tune read 104.3 MB on 2 ranks against 52.3 MB on 1), and a scoring pass
read every shard on every rank.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch

from data_prep.shard_format import SampleSpans, read_manifest
from training.config import LoaderConfig
from training.loader import (
    TrainStream,
    eval_batches,
    indexed_eval_batches,
    train_loader,
    train_spec_for,
)
from training.modalities.image.bundle import ImageInputConfig
from training.stream_order import subset_ordinals

GLOBAL = 16
WORKERS = 2
SEEN = ImageInputConfig(32)


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _spec(split, rank, world, skip=0, workers=0):
    loader = LoaderConfig(workers=workers, shuffle_buffer=50)
    return train_spec_for(str(split), "image", SEEN, loader, batch_size=GLOBAL // world,
                          seed=0, rank=rank, world_size=world, skip_batches=skip)  # fmt: skip


def _epoch_of_rank(split, rank, world, steps) -> tuple[int, list[str]]:
    """Bytes read and keys got by one rank's two loader workers over ``steps`` global batches
    (the workers run here, one after the other, so this process's counter sees their reads)."""
    read, keys = 0, []
    for worker in range(WORKERS):
        stream = TrainStream(_spec(split, rank, world))._rows_of_global_batches(worker, WORKERS)
        before = _rchar()
        for batch in itertools.islice(stream, steps // WORKERS):
            keys += batch[2]
        read += _rchar() - before
    return read, keys


@pytest.fixture(scope="module")
def split(prepared):
    train = prepared / "train"
    for record in read_manifest(train):  # prep writes each shard's index; made here if not
        SampleSpans(train, record).close()
    # The first decode imports the image plugins (module files count as reads too).
    next(TrainStream(_spec(train, 0, 1))._rows_of_global_batches(0, 1))
    return train


@pytest.mark.parametrize("world", [2, 4])
def test_a_rank_reads_its_share_of_an_epoch_and_no_sample_twice(split, world):
    records = read_manifest(split)
    total = sum(r.bytes for r in records)
    steps = sum(r.samples for r in records) // GLOBAL  # one epoch
    assert len(records) < 4 * WORKERS  # at world 4, fewer shards than (rank, worker) slots
    every = []
    for rank in range(world):
        read, keys = _epoch_of_rank(split, rank, world, steps)
        print(f"world {world} rank {rank}: {read} of {total} bytes ({read / total:.3f})")
        assert read <= 1.1 * total / world
        every += keys
    assert len(every) == steps * GLOBAL == len(set(every))  # each sample read once an epoch


@pytest.mark.parametrize("world", [2, 4])
def test_a_scoring_pass_reads_its_share(split, world):
    val = split.parent / "val"
    total = sum(r.bytes for r in read_manifest(val))
    places = []
    for rank in range(world):
        before = _rchar()
        for _, _, _, got in indexed_eval_batches(str(val), "image", SEEN, 8, rank, world):
            places += got
        read = _rchar() - before
        assert read <= 1.1 * total / world, f"rank {rank}: {read} of {total}"
    assert sorted(places) == list(range(len(places)))  # every sample once


def test_a_run_resumes_exactly_at_another_world_size_and_worker_count(split):
    """Uninterrupted: 2 ranks x 2 workers for 6 steps. Resumed after step 3 on 4 ranks x 1
    worker: each step's global batch (the ranks' rows in rank order) is the same samples with
    the same augmentation."""

    def spec_of(rank, world, skip, workers):
        return _spec(split, rank, world, skip, workers)

    straight = global_steps(spec_of, world=2, workers=2, skip=0, count=6)
    resumed = global_steps(spec_of, world=4, workers=1, skip=3, count=3)
    for (keys, images), (want_keys, want_images) in zip(resumed, straight[3:]):
        assert keys == want_keys
        assert torch.equal(images, want_images)


def global_steps(spec_of, world: int, workers: int, skip: int, count: int) -> list:
    """(keys, augmented inputs) of ``count`` global batches from ``skip`` on, the ranks' rows in
    rank order; ``spec_of(rank, world, skip, workers)`` gives each rank's stream."""
    streams = [train_loader(spec_of(r, world, skip, workers)) for r in range(world)]
    batches = [list(itertools.islice(s, count)) for s in streams]
    for s in streams:
        s.close()
    return [
        ([k for b in batches for k in b[i][2]], torch.cat([b[i][0] for b in batches]))
        for i in range(count)
    ]


def test_a_label_subset_is_read_alone_once_an_epoch_in_one_order_at_any_world_size(split):
    """A low-label fine-tune's stream (``finetune.label_fraction``) holds exactly its subset's
    samples, each once an epoch, in the same global batches at world 1 and 2, and a rank reads
    about its share of the subset's bytes, not of the split's."""
    records = read_manifest(split)
    counts = [r.samples for r in records]
    subset = subset_ordinals(counts, 0.3, seed=0)
    batch = 8
    keys = [k for batch in eval_batches(str(split), "image", SEEN, 64) for k in batch[2]]
    starts = list(itertools.accumulate([0, *counts]))
    want = {keys[starts[i] + o] for i, kept in enumerate(subset) for o in kept}
    steps = len(want) // batch
    total = sum(r.bytes for r in records)

    def steps_of(world):
        per_rank = []
        for rank in range(world):
            loader = LoaderConfig(workers=0, shuffle_buffer=50)
            spec = train_spec_for(str(split), "image", SEEN, loader, batch_size=batch // world,
                                  seed=0, rank=rank, world_size=world)  # fmt: skip
            spec = dataclasses.replace(spec, subset=subset)
            before = _rchar()
            stream = TrainStream(spec)._rows_of_global_batches(0, 1)
            per_rank.append([b[2] for b in itertools.islice(stream, steps)])
            read = _rchar() - before
            assert read <= 1.3 * total * len(want) / sum(counts) / world, f"rank {rank}: {read}"
        return [[k for rows in per_rank for k in rows[i]] for i in range(steps)]

    assert steps >= 2
    one, two = steps_of(1), steps_of(2)
    assert one == two
    every = [k for batch in one for k in batch]
    assert len(every) == steps * batch == len(set(every)) and set(every) <= want
