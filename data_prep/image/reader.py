"""The image modality's corpus reader: an ImageNet-layout folder -> one prepared split per split.

Each sample is ``<key>.jpg`` (normalised RGB JPEG), ``<key>.cls`` (class index as ASCII) and
``<key>.json`` (wnid, source path, sizes). ``OUT/labels.json`` lists the wnids in index order with
their names, for the training, evaluation and report stages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.corpus import SHARD_BYTES, CorpusReader, prep_problems
from data_prep.image.demo import DemoCorpusConfig, write_demo_corpus
from data_prep.image.encode import EncodedImage, normalize_image
from data_prep.image.layout import IMAGE_SUFFIXES, SYNSETS, VAL_CSV, ImageItem, read_layout
from data_prep.job import run_prep
from data_prep.store import location
from data_prep.writer import Converted, Sample, SkipSample


@dataclass
class ImagePrepConfig:
    """``prep`` section: where the raw ImageNet-layout corpus is and how to shard it."""

    # (image) ImageNet-layout folder: train/<wnid>/*.JPEG, val/ + LOC_val_solution.csv (or per-class
    # val/<wnid>/), optional LOC_synset_mapping.txt
    source: str = "???"
    # one prepared split per ImageNet split
    out: str = "???"
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    # images are shrunk so their shorter side is at most this
    shorter_side: int = 256
    # for re-encoded images (RGB JPEGs already small enough are passed through byte for byte)
    jpeg_quality: int = 90
    samples_per_shard: int = 1000
    # a shard reaching this size is closed and its unit goes on in a next part (0: no limit)
    shard_bytes: int = SHARD_BYTES
    # memory each Ray task reserves (MB; 0: none): Ray runs no more tasks on a node than fit
    task_memory_mb: int = 0
    # shuffles inputs before sharding (ImageNet is sorted by class)
    seed: int = 0
    num_cpus: int | None = None  # local Ray head size; None = every core
    # A split whose inputs failed with unexpected errors (listed in failures.jsonl) beyond
    # this share fails the prep; below it they are counted and the prep goes on.
    max_failed_share: float = 0.01
    ray_address: str | None = None  # join a running Ray cluster instead of a local head

    def problems(self):
        yield from prep_problems(self)
        if self.shorter_side < 16:
            yield ("shorter_side", f"an int >= 16 (pixels), got {self.shorter_side}")
        if not 1 <= self.jpeg_quality <= 100:
            yield ("jpeg_quality", f"an int in [1, 100], got {self.jpeg_quality}")
        if any(s not in ("train", "val") for s in self.splits):
            yield ("splits", f"a non-empty list of 'train' and/or 'val', got {self.splits}")


def items(cfg: ImagePrepConfig, split: str) -> Iterable[ImageItem]:
    return read_layout(cfg.source).items(split)


def labels(cfg: ImagePrepConfig) -> list[dict]:
    layout = read_layout(cfg.source)
    return [
        {"index": i, "wnid": w, "name": layout.names.get(w, w)} for i, w in enumerate(layout.wnids)
    ]


def encode(cfg: ImagePrepConfig, state: None, item: ImageItem) -> Iterator[Sample]:
    """One source image -> its sample (``SkipSample`` raised on bad input)."""
    image = normalize_image(_source_bytes(cfg, item), cfg.shorter_side, cfg.jpeg_quality)
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
    yield from (Converted(reason) for reason in conversions(image))
    yield Sample(
        key=item.key,
        members={
            "jpg": image.jpeg,
            "cls": str(item.label).encode(),
            "json": json.dumps(meta, sort_keys=True).encode(),
        },
    )


# Pillow's modes, as `converted` in stats.json names what they were converted from.
MODE_NAMES = {"CMYK": "cmyk", "L": "grayscale", "LA": "grayscale", "P": "palette", "PA": "palette",
              "RGBA": "rgba", "1": "bilevel", "YCbCr": "ycbcr", "I": "32bit_grayscale",
              "I;16": "16bit_grayscale", "I;16B": "16bit_grayscale", "I;16L": "16bit_grayscale",
              "I;16N": "16bit_grayscale", "F": "float_grayscale"}  # fmt: skip


def conversions(image: EncodedImage) -> list[str]:
    """What normalising changed beyond size, as counted reasons: ``png_to_jpeg``,
    ``cmyk_to_rgb``, ...; none for a JPEG passed through or only resized."""
    reasons = []
    if image.source_format != "JPEG":
        reasons.append(f"{image.source_format.lower()}_to_jpeg")
    if image.source_mode != "RGB":
        reasons.append(f"{MODE_NAMES.get(image.source_mode, image.source_mode.lower())}_to_rgb")
    return reasons


def _source_bytes(cfg: ImagePrepConfig, item: ImageItem) -> bytes:
    """The file's bytes, or a counted skip: a val image without a row in the label CSV, a folder
    named like an image, a link that loops or dangles, a file that cannot be read."""
    if item.label < 0:
        raise SkipSample("no_label_row", f"{item} has no row in LOC_val_solution.csv")
    path = location(cfg.source) / item.path
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise SkipSample("not_a_file", f"{item} is a folder") from None
    except OSError as err:  # ELOOP, a dangling link, EACCES, EIO
        raise SkipSample("unreadable_file", f"{item}: {err.strerror or err}") from None


READER = CorpusReader(
    modality="image",
    layout="ImageNet layout: train/<wnid>/*.JPEG, val/ + LOC_val_solution.csv or val/<wnid>/",
    config=ImagePrepConfig,
    items=items,
    fit=lambda cfg, train_items: None,
    encode=encode,
    labels=labels,
    demo_config=DemoCorpusConfig,
    write_demo=write_demo_corpus,
    aliases=("imagenet",),  # the layout's name, the form before modalities
    input_file=lambda cfg, item: os.path.join(cfg.source, item.path),
    reads_format=lambda name: Path(name).suffix.lower() in IMAGE_SUFFIXES,
    layout_file=lambda rel: rel in (VAL_CSV, SYNSETS),
    reads_stores=True,  # the layout is walked and each image read through fsspec
)


def prep_imagenet(cfg: ImagePrepConfig) -> dict[str, dict]:
    """Prepare every configured split; returns ``{split: stats}``. Fails fast on a bad source."""
    return run_prep(READER, cfg)
