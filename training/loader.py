"""Batches from prepared shards of any modality, built from ``webdataset`` pipeline stages.

What a sample decodes to is the modality's (``Modality.decode``); this module owns the order:

Training stream (:func:`train_loader`):

* **Explicit node and worker splitting.** Each epoch the shard list is permuted with the run
  seed and dealt to ``world_size x workers`` slots; every slot gets the same number of shards
  (the list wraps around when there are fewer shards than slots), so no rank runs dry early.
  The order within a slot is ``training.stream_order``'s: shard order through a shuffle buffer
  that restarts each epoch.
* **Same number of batches on every rank.** The stream is endless (epoch after epoch); the
  training loop takes exactly ``steps x grad_accum`` batches, so uneven shard counts cannot hang
  a collective.
* **Exact resume without re-reading.** Shuffle buffers and augmentations draw from generators
  seeded by (seed, slot, epoch) and (seed, slot, sample index), so a resumed run sees the same
  batches an uninterrupted run would. Finished epochs are skipped by arithmetic on the
  manifest's sample counts, shards of the current epoch with nothing left to emit are never
  opened, and only emitted samples are decoded (``stream_order.resume_point``).
* **Nothing is unpickled**: members are decoded by the modality's own functions.
* **Lean shard reading**: shards are opened by ``read_shard_samples`` (our own shards are plain
  ustar), which skips the members training does not read; ``tarfile``'s full header parsing
  took a third of the loader's time (``python -m benchmarks.data_path``).

Evaluation stream (:func:`eval_batches`): every sample once, in manifest order, decoded without
augmentation.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import webdataset as wds

from data_prep.shard_format import indexed_shard_samples, read_manifest, shard_urls
from training.config import LoaderConfig
from training.modalities import Example, modality
from training.stream_order import epoch_order, resume_point

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]  # collated inputs, labels, keys


def split_skip(batches: int, workers: int) -> tuple[int, int]:
    """Skipping ``batches`` as (batches each worker skips, batches the main process drops).

    The DataLoader takes batches from its workers in turn, always starting with worker 0, so
    workers can only skip whole rounds; the remainder is decoded and dropped.
    """
    workers = max(1, workers)
    return batches // workers, batches % workers


@dataclass(frozen=True)
class TrainStreamSpec:
    """Everything a loader worker needs (it is pickled to each one): plain data only."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]  # samples per shard, from the manifest
    modality: str
    input: Any  # the modality's input config
    batch_size: int
    rank: int
    world_size: int
    seed: int
    skip_batches: int
    loader: LoaderConfig


class TrainStream(torch.utils.data.IterableDataset):
    """Endless stream of augmented training batches for one rank (see module docstring)."""

    def __init__(self, spec: TrainStreamSpec):
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[Batch]:
        s = self.spec
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slot, slots = s.rank * workers + worker, s.world_size * workers
        skip = split_skip(s.skip_batches, workers)[0] * s.batch_size
        m = modality(s.modality)
        pipeline = wds.DataPipeline(
            functools.partial(_slot_samples, s, slot, slots, skip, m.members),
            # Augmentation seeded by the sample's place in the stream: a resumed run redraws it.
            wds.map(
                lambda item: m.ops.decode(
                    s.input, item[1], random.Random(f"{s.seed}:{slot}:{item[0]}")
                )
            ),
            wds.select(lambda example: example is not None),
            wds.batched(s.batch_size, collation_fn=_collate, partial=False),
        )
        return iter(pipeline)


def train_loader(spec: TrainStreamSpec, pin_memory: bool = False) -> Iterator[Batch]:
    """An endless iterator of ``(inputs [B, ...], labels [B], keys)`` for one rank."""
    workers = spec.loader.workers
    loader = torch.utils.data.DataLoader(
        TrainStream(spec),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=spec.loader.prefetch_factor if workers else None,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )
    return itertools.islice(iter(loader), split_skip(spec.skip_batches, workers)[1], None)


def eval_batches(split_dir: str, modality_name: str, input_cfg, batch_size: int) -> Iterator[Batch]:
    """Every sample of a split once, in manifest order, decoded without augmentation."""
    m = modality(modality_name)
    dataset = wds.DataPipeline(
        wds.SimpleShardList(shard_urls(split_dir)),
        wds.tarfile_to_samples(),
        wds.map(lambda sample: m.ops.decode(input_cfg, sample, None)),
        wds.select(lambda example: example is not None),
        wds.batched(batch_size, collation_fn=_collate, partial=True),
    )
    return iter(dataset)


def train_spec_for(
    split_dir: str,
    modality_name: str,
    input_cfg,
    loader: LoaderConfig,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    skip_batches: int = 0,
) -> TrainStreamSpec:
    """The training stream of one rank over a prepared split (pretraining and fine-tuning)."""
    return TrainStreamSpec(
        urls=tuple(shard_urls(split_dir)),
        counts=tuple(r.samples for r in read_manifest(split_dir)),
        modality=modality_name,
        input=input_cfg,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        skip_batches=skip_batches,
        loader=loader,
    )


def _slot_samples(
    s: TrainStreamSpec, slot: int, slots: int, skip: int, members: tuple[str, ...]
) -> Iterator[tuple[int, dict]]:
    """``(index in the slot's stream, sample)`` from ``skip`` on, epoch after epoch."""
    first_epoch, into = resume_point(s.counts, slot, slots, s.seed, skip)
    index = skip
    for epoch in itertools.count(first_epoch):
        shards, sizes, order = epoch_order(
            s.counts, slot, slots, s.seed, epoch, s.loader.shuffle_buffer
        )
        order.skip(into if epoch == first_epoch else 0)
        samples = _EpochSamples([s.urls[i] for i in shards], sizes, order.pending(), members)
        for position in order:
            yield index, samples.take(position)
            index += 1


class _EpochSamples:
    """One epoch's samples by position: shards are read forward, keeping only pending positions
    until the shuffle asks for them; a shard with none pending is not opened."""

    def __init__(self, urls: list[str], sizes: list[int], pending, members: tuple[str, ...]):
        self.held: dict[int, dict] = {}
        self.reading = self._read(urls, sizes, pending, members)

    def take(self, position: int) -> dict:
        while position not in self.held:
            got, sample = next(self.reading)
            self.held[got] = sample
        return self.held.pop(position)

    @staticmethod
    def _read(urls, sizes, pending, members) -> Iterator[tuple[int, dict]]:
        start = 0
        for url, size in zip(urls, sizes):
            if pending.any_in(start, start + size):
                wanted = functools.partial(_is_pending, pending, start)
                for ordinal, sample in indexed_shard_samples(url, members, wanted):
                    if ordinal < size:
                        yield start + ordinal, sample
            start += size


def _is_pending(pending, start: int, ordinal: int) -> bool:
    return start + ordinal in pending


def _collate(examples: list[Example]) -> Batch:
    return (
        stack_in_memory_order([e.x for e in examples]),
        torch.tensor([e.label for e in examples]),
        [e.key for e in examples],
    )


def stack_in_memory_order(xs: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(xs)``, keeping the samples' memory order: an image decoded as HWC and seen
    as ``[3, S, S]`` is copied whole rather than gathered channel by channel (10x quicker for a
    batch of 64 at 224 px); the batch is then a channels-last view of ``[B, 3, S, S]``."""
    first = xs[0]
    if first.is_contiguous():
        return torch.stack(xs)
    order = sorted(range(first.dim()), key=lambda d: -first.stride(d))
    stacked = torch.stack([x.permute(order) for x in xs])
    return stacked.permute(0, *(1 + order.index(d) for d in range(first.dim())))
