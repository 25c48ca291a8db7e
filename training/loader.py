"""Batches from prepared image shards, built from ``webdataset`` pipeline stages.

Training stream (:func:`train_loader`):

* **Explicit node and worker splitting.** Each epoch the shard list is permuted with the run
  seed and dealt to ``world_size x workers`` slots; every slot gets the same number of shards
  (the list wraps around when there are fewer shards than slots), so no rank runs dry early.
* **Same number of batches on every rank.** The stream is endless (epoch after epoch); the
  training loop takes exactly ``steps x grad_accum`` batches, so uneven shard counts cannot hang
  a collective.
* **Exact resume.** Shuffle buffers and augmentations draw from generators seeded by
  (seed, slot, sample index), and a resumed run skips the batches already consumed before
  decoding them, so it sees the same batches an uninterrupted run would.
* **Nothing is unpickled**: members are decoded by our own functions (JPEG, ASCII label).
* **Lean shard reading**: shards are opened by ``read_shard_samples`` (our own shards are plain
  ustar), which skips the members training does not read; ``tarfile``'s full header parsing
  took a third of the loader's time (``python -m benchmarks.data_path``).

Evaluation stream (:func:`eval_batches`): every sample once, in manifest order, resized and
centre-cropped.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from data_prep.shard_format import read_shard_samples, shard_urls
from training.config import LoaderConfig

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]  # uint8 images, labels, keys


def assign_shards(num_shards: int, slot: int, slots: int, seed: int, epoch: int) -> list[int]:
    """Shard indices read by ``slot`` (of ``slots`` = ranks x workers) in ``epoch``.

    Every slot gets ``ceil(num_shards / slots)`` shards; with fewer shards than slots some shards
    are read by more than one slot in that epoch, rather than leaving a slot empty.
    """
    order = list(range(num_shards))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    per_slot = math.ceil(num_shards / slots)
    return [order[(slot + k * slots) % num_shards] for k in range(per_slot)]


def split_skip(batches: int, workers: int) -> tuple[int, int]:
    """Skipping ``batches`` as (batches each worker skips, batches the main process drops).

    The DataLoader takes batches from its workers in turn, always starting with worker 0, so
    workers can only skip whole rounds; the remainder is decoded and dropped.
    """
    workers = max(1, workers)
    return batches // workers, batches % workers


@dataclass(frozen=True)
class TrainStreamSpec:
    urls: tuple[str, ...]
    image_size: int
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
        pipeline = wds.DataPipeline(
            functools.partial(_endless_shards, s.urls, slot, slots, s.seed),
            _shard_samples,
            wds.shuffle(
                s.loader.shuffle_buffer,
                initial=s.loader.shuffle_buffer,
                rng=random.Random(f"{s.seed}:{slot}:shuffle"),
            ),
            _numbered,
            wds.select(lambda item: item[0] >= skip),
            wds.map(lambda item: _train_sample(item[1], s, f"{s.seed}:{slot}:{item[0]}")),
            wds.select(lambda sample: sample is not None),
            wds.batched(s.batch_size, collation_fn=_collate, partial=False),
        )
        return iter(pipeline)


def train_loader(spec: TrainStreamSpec, pin_memory: bool = False) -> Iterator[Batch]:
    """An endless iterator of ``(uint8 images [B,3,S,S], labels [B], keys)`` for one rank."""
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


def eval_batches(split_dir: str, image_size: int, batch_size: int) -> Iterator[Batch]:
    """Every sample of a split once, in manifest order, resized and centre-cropped."""
    dataset = wds.DataPipeline(
        wds.SimpleShardList(shard_urls(split_dir)),
        wds.tarfile_to_samples(),
        wds.map(lambda sample: _eval_sample(sample, image_size)),
        wds.select(lambda sample: sample is not None),
        wds.batched(batch_size, collation_fn=_collate, partial=True),
    )
    return iter(dataset)


def train_spec_for(split_dir: str, **kwargs) -> TrainStreamSpec:
    return TrainStreamSpec(urls=tuple(shard_urls(split_dir)), **kwargs)


def _endless_shards(urls: tuple[str, ...], slot: int, slots: int, seed: int):
    for epoch in itertools.count():
        for index in assign_shards(len(urls), slot, slots, seed, epoch):
            yield {"url": urls[index]}


def _shard_samples(shards):
    """Shards -> samples, keeping only what training reads (see ``read_shard_samples``)."""
    for shard in shards:
        yield from read_shard_samples(shard["url"], members=("jpg", "cls"))


def _numbered(samples):
    yield from enumerate(samples)


def _train_sample(sample: dict, spec: TrainStreamSpec, position: str):
    """Decode + random-resized-crop + flip, seeded by the sample's place in the stream."""
    rng = random.Random(position)
    img = _decode(sample)
    if img is None:
        return None
    box = random_resized_crop_box(img.size, spec.loader.crop_scale, rng)
    img = img.resize((spec.image_size, spec.image_size), Image.Resampling.BICUBIC, box=box)
    if spec.loader.hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _to_tensor(img), int(sample["cls"]), sample["__key__"]


def _eval_sample(sample: dict, image_size: int):
    img = _decode(sample)
    if img is None:
        return None
    w, h = img.size
    # Resize the shorter side to size/0.875 then centre-crop, the usual ImageNet evaluation.
    short = round(image_size / 0.875)
    scale = short / min(w, h)
    img = img.resize(
        (max(image_size, round(w * scale)), max(image_size, round(h * scale))),
        Image.Resampling.BICUBIC,
    )
    w, h = img.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return _to_tensor(img), int(sample["cls"]), sample["__key__"]


def random_resized_crop_box(size: tuple[int, int], scale: list[float], rng: random.Random):
    """Crop box ``(left, top, right, bottom)`` as torchvision's RandomResizedCrop picks it."""
    w, h = size
    area = w * h
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return (left, top, left + cw, top + ch)
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return (left, top, left + side, top + side)


def _decode(sample: dict) -> Image.Image | None:
    try:
        img = Image.open(io.BytesIO(sample["jpg"]))
        return img.convert("RGB")
    except (OSError, KeyError) as err:
        log.warning("cannot decode sample %s: %s", sample.get("__key__"), err)
        return None


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _collate(samples) -> Batch:
    images, labels, keys = zip(*samples)
    return torch.stack(images), torch.tensor(labels), list(keys)
