"""The ImageNet-layout prep job: source folder -> one prepared split per ImageNet split.

Each sample is ``<key>.jpg`` (normalised RGB JPEG), ``<key>.cls`` (class index as ASCII) and
``<key>.json`` (wnid, source path, sizes). ``OUT/classes.json`` lists the wnids in index order with
their names, for the training, evaluation and report stages.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.image_encode import normalize_image
from data_prep.imagenet_layout import ImageItem, LayoutError, read_layout
from data_prep.plan import plan_shards
from data_prep.ray_job import prepare_split, ray_session
from data_prep.shard_format import atomic_write_text
from data_prep.writer import Sample

CLASSES = "classes.json"


@dataclass
class ImagePrepConfig:
    """``prep`` section: where the raw ImageNet-layout corpus is and how to shard it."""

    source: str = "???"
    out: str = "???"
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    shorter_side: int = 256
    jpeg_quality: int = 90
    samples_per_shard: int = 1000
    seed: int = 0
    num_cpus: int | None = None  # local Ray head size; None = every core
    ray_address: str | None = None  # join a running Ray cluster instead of a local head

    def problems(self):
        if self.shorter_side < 16:
            yield ("shorter_side", f"an int >= 16 (pixels), got {self.shorter_side}")
        if not 1 <= self.jpeg_quality <= 100:
            yield ("jpeg_quality", f"an int in [1, 100], got {self.jpeg_quality}")
        if self.samples_per_shard < 1:
            yield ("samples_per_shard", f"an int >= 1, got {self.samples_per_shard}")
        if self.num_cpus is not None and self.num_cpus < 1:
            yield ("num_cpus", f"an int >= 1 or null, got {self.num_cpus}")
        if not self.splits or any(s not in ("train", "val") for s in self.splits):
            yield ("splits", f"a non-empty list of 'train' and/or 'val', got {self.splits}")


def prep_imagenet(cfg: ImagePrepConfig) -> dict[str, dict]:
    """Prepare every configured split; returns ``{split: stats}``. Fails fast on a bad source."""
    layout = read_layout(cfg.source)
    items = {split: layout.items(split) for split in cfg.splits}
    for split, split_items in items.items():
        if not split_items:
            raise LayoutError(f"{Path(cfg.source) / split} holds no image files")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = [
        {"index": i, "wnid": w, "name": layout.names.get(w, w)} for i, w in enumerate(layout.wnids)
    ]
    atomic_write_text(out / CLASSES, json.dumps(classes, indent=1) + "\n")
    encode = functools.partial(
        encode_image_item,
        root=str(Path(cfg.source).resolve()),
        shorter_side=cfg.shorter_side,
        quality=cfg.jpeg_quality,
    )
    stats = {}
    with ray_session(cfg.num_cpus, cfg.ray_address):
        for split, split_items in items.items():
            units = plan_shards(split_items, cfg.samples_per_shard, cfg.seed)
            stats[split] = prepare_split(units, out / split, encode, desc=f"prep {split}")
    return stats


def encode_image_item(item: ImageItem, root: str, shorter_side: int, quality: int) -> Sample:
    """Read one source image and return its sample (raises SkipSample on bad input)."""
    path = Path(root) / item.path
    image = normalize_image(path.read_bytes(), shorter_side, quality)
    meta = {
        "wnid": item.wnid,
        "label": item.label,
        "source": item.path,
        "width": image.width,
        "height": image.height,
        "source_size": list(image.source_size),
        "source_format": image.source_format,
        "source_mode": image.source_mode,
        "passthrough": image.passthrough,
    }
    return Sample(
        key=sample_key(item.path),
        members={
            "jpg": image.jpeg,
            "cls": str(item.label).encode(),
            "json": json.dumps(meta, sort_keys=True).encode(),
        },
    )


def sample_key(relative_path: str) -> str:
    """A dot-free WebDataset key from a source path: ``train/n01/n01_7.JPEG`` -> ``n01_7``."""
    return Path(relative_path).stem.replace(".", "_")


def summary_line(split: str, stats: dict) -> str:
    skipped = ", ".join(f"{k}: {v}" for k, v in stats["skipped"].items()) or "none"
    return (
        f"prep {split}: {stats['inputs']} inputs -> {stats['samples']} samples in "
        f"{stats['shards']} shards ({stats['bytes'] / 1e6:.1f} MB, {stats['seconds']:.1f}s); "
        f"skipped {stats['skipped_total']} ({skipped})"
    )
