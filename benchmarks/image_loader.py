"""The training loader's images/s per CPU core on ImageNet-shaped shards, before and after the
OpenCV decode, and the cores an H100 would need.

    python -m benchmarks.image_loader [--images 600] [--batches 20] [--out results/image_loader]

Two corpora in ImageNet layout with 300-500 px sides are prepared by the real prep job at shorter
side 256, JPEG quality 90 (MAE's storage size; the quickstart's 72 px shards hide the cost):

* **demo**: the demo generator's shapes over noisy gradients (what the quickstart draws);
* **textured**: multi-scale noise textures, whose JPEGs are as large as photographs' at that
  size (about 40 KB): entropy decoding, which no resize trick avoids, weighs more here.

Each is read by the real training loader (``train_loader``: shard reading, shuffle buffer,
random-resized crop to 224 at scale 0.2-1, flip, collation) in this process, one thread, so the
rate is per core. **before** is the loader as it was until now, kept here as the baseline: Pillow
decode, convert, ``resize(box=...)`` bicubic, flip, and ``torch.stack`` of the ``[3, S, S]``
views; **after** is today's (``training.modalities.image.ops`` and the loader's
``stack_in_memory_order``). The two interleave, round after round.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import imagenet_sized_demo, machine, median, write_results
from data_prep.image.layout import SYNSETS
from data_prep.image.reader import ImagePrepConfig, prep_imagenet
from training import loader
from training.config import LoaderConfig
from training.loader import train_spec_for
from training.modalities import Example, modality
from training.modalities.image.bundle import ImageInputConfig
from training.modalities.image.ops import random_resized_crop_box

H100_IMAGES_PER_S = 4000  # ViT-B MAE at 0.75 on one H100 (estimate from the step's FLOPs)


def pillow_decode(cfg: ImageInputConfig, sample: dict, rng: random.Random | None):
    """The loader's decode before OpenCV (training samples only), as it was."""
    img = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    box = random_resized_crop_box(img.size, cfg.crop_scale, rng)
    img = img.resize((cfg.image_size, cfg.image_size), Image.Resampling.BICUBIC, box=box)
    if cfg.hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return Example(x, int(sample["cls"]), sample["__key__"])


def textured_corpus(out: Path, images: int, seed: int = 0) -> Path:
    """Noise textures at three scales plus grain, 300-500 px, in ImageNet's train layout."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        w, h = (int(v) for v in rng.integers(300, 501, size=2))
        img = np.zeros((h, w, 3), np.float32)
        for scale in (4, 16, 64):
            noise = rng.normal(size=(h // scale + 2, w // scale + 2, 3))
            noise = ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)
            layer = Image.fromarray(noise).resize((w, h), Image.Resampling.BICUBIC)
            img += np.asarray(layer, np.float32) / (1 + scale / 16)
        img += rng.normal(scale=12, size=img.shape)
        img = (img - img.min()) / (img.max() - img.min()) * 255
        folder = out / "train" / SYNSETS[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(
            folder / f"{SYNSETS[i % 4]}_{i}.JPEG", quality=90
        )
    return out


def shard(source: Path, out: Path) -> Path:
    cfg = ImagePrepConfig(
        source=str(source), out=str(out), splits=["train"], shorter_side=256, jpeg_quality=90,
        samples_per_shard=100, num_cpus=2,
    )  # fmt: skip
    prep_imagenet(cfg)
    return out / "train"


def loader_rate(split: Path, before: bool, batches: int, batch: int = 64) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second) of the loader in this process."""
    image = modality("image")
    ops, stack = image.ops, loader.stack_in_memory_order
    if before:
        image.__dict__["ops"] = dataclasses.replace(ops, decode=pillow_decode)
        loader.stack_in_memory_order = torch.stack
    try:
        spec = train_spec_for(
            str(split), "image", ImageInputConfig(image_size=224, patch_size=16),
            LoaderConfig(workers=0, shuffle_buffer=200), batch_size=batch, seed=0,
        )  # fmt: skip
        stream = loader.train_loader(spec)
        next(stream)  # warm-up: open shards, fill the shuffle buffer
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(batches):
            next(stream)
        images = batches * batch
        return images / (time.process_time() - cpu), images / (time.perf_counter() - wall)
    finally:
        image.__dict__["ops"], loader.stack_in_memory_order = ops, stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=600, help="per corpus")
    parser.add_argument("--batches", type=int, default=20, help="of 64, per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results/image_loader")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = imagenet_sized_demo(tmp / "demo", 4, args.images)
        corpora = {
            "demo": shard(demo, tmp / "demo_shards"),
            "textured": shard(textured_corpus(tmp / "tex", args.images), tmp / "tex_shards"),
        }
        for name, split in corpora.items():
            sizes = [p.stat().st_size for p in split.glob("*.tar")]
            kb = sum(sizes) / args.images / 1024
            runs: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for label in ("before", "after"):
                    runs[label].append(loader_rate(split, label == "before", args.batches)[0])
            before, now = median(runs["before"]), median(runs["after"])
            results[name] = {"kb_per_image": kb, "before": runs["before"], "after": runs["after"]}
            rows.append(
                f"| {name} | {kb:.0f} KB | {before:.0f} | {now:.0f} | {now / before:.2f}x | "
                f"{H100_IMAGES_PER_S / before:.1f} | {H100_IMAGES_PER_S / now:.1f} |"
            )
    table = [
        f"Training loader, images per CPU-second (one thread), median of {args.rounds} rounds of "
        f"{args.batches} x 64; shorter side 256, random-resized crop to 224; {machine()['cpu']}",
        "",
        "| corpus | JPEG size | before (Pillow) | after (OpenCV) | per-core gain | cores per H100 "
        f"at {H100_IMAGES_PER_S}/s before | after |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_results(args.out, "image_loader", results, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
