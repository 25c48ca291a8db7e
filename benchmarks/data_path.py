"""The data path: image prep throughput against Pillow alone, and the training loader against a
file-per-sample reader and against what a training step consumes.

    python -m benchmarks.data_path [--images 800] [--out results/data_path]

1. **Prep.** A corpus in ImageNet layout with ImageNet-sized images (300-500 px sides; the demo
   generator's shapes, which decode faster than photographs) is prepared at shorter side 256,
   quality 90, with a local Ray head of 1 and of 2 CPUs. The bound is one plain Python loop that
   does the same image work with Pillow on one core: open, draft-mode decode, convert to RGB,
   bicubic resize, JPEG encode. The loop without draft mode (what a hand-written loop usually does)
   is timed too.
2. **Loader.** The same corpus prepared at shorter side 72 (the quickstart's) is read as training
   batches (random-resized crop to 64, flip, batch 128) by maskmill's webdataset loader, and by
   a torch ``Dataset`` that reads the same JPEG bytes from one file per sample and applies the
   same decode and crop, with equal DataLoader workers. Beside them: images/s that a training step
   of the quickstart model consumes on this machine (bf16, all threads).
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import imagenet_sized_demo, machine, write_results
from data_prep.image.encode import _target_size
from data_prep.image.reader import ImagePrepConfig, prep_imagenet
from data_prep.shard_format import read_stats, shard_urls
from training.config import LoaderConfig, ModelConfig
from training.loader import _collate, train_loader, train_spec_for
from training.modalities import Example
from training.modalities.image.bundle import ImageInputConfig
from training.modalities.image.ops import random_resized_crop_box


def pillow_loop(files: list[Path], shorter: int, quality: int, draft: bool) -> float:
    """Images/s of decode + resize + encode in one plain loop on this core."""
    start = time.perf_counter()
    for path in files:
        img = Image.open(path)
        if draft and img.format == "JPEG" and min(img.size) > shorter:
            img.draft("RGB", _target_size(img.size, shorter))
        img = img.convert("RGB")
        if min(img.size) > shorter:
            img = img.resize(_target_size(img.size, shorter), Image.Resampling.BICUBIC)
        img.save(io.BytesIO(), format="JPEG", quality=quality)
    return len(files) / (time.perf_counter() - start)


def prep_rate(source: Path, out: Path, cpus: int, shorter: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cfg = ImagePrepConfig(
        source=str(source), out=str(out), splits=["train"], shorter_side=shorter,
        samples_per_shard=50, num_cpus=cpus,
    )  # fmt: skip
    prep_imagenet(cfg)
    stats = read_stats(out / "train")
    return stats["inputs"] / stats["seconds"]


class FilePerSample(torch.utils.data.Dataset):
    """One JPEG file per sample, decoded and cropped exactly as the shard loader does."""

    def __init__(self, files: list[Path], size: int, scale: list[float]):
        self.files, self.size, self.scale = files, size, scale

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        rng = random.Random(i)
        img = Image.open(self.files[i]).convert("RGB")
        box = random_resized_crop_box(img.size, self.scale, rng)
        img = img.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return Example(t.view(self.size, self.size, 3).permute(2, 0, 1), 0, self.files[i].stem)


def unpack_shards(split_dir: Path, out: Path) -> list[Path]:
    files = []
    out.mkdir(parents=True, exist_ok=True)
    for url in shard_urls(split_dir):
        with tarfile.open(url) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    path = out / member.name
                    path.write_bytes(tar.extractfile(member).read())
                    files.append(path)
    return files


def batches_per_s(iterator, batches: int) -> float:
    next(iterator)  # workers started, first batch out
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def loader_rates(split: Path, tmp: Path, workers: int, batch: int, batches: int) -> dict:
    loader_cfg = LoaderConfig(workers=workers, shuffle_buffer=256, prefetch_factor=4)
    seen = ImageInputConfig(image_size=64, patch_size=8)
    spec = train_spec_for(str(split), "image", seen, loader_cfg, batch_size=batch, seed=0)
    shards = batches_per_s(train_loader(spec), batches) * batch
    files = unpack_shards(split, tmp / f"files-{workers}")
    dl = torch.utils.data.DataLoader(
        FilePerSample(files, 64, seen.crop_scale), batch_size=batch, shuffle=True,
        num_workers=workers, collate_fn=_collate, prefetch_factor=4, persistent_workers=True,
        drop_last=True,
    )  # fmt: skip

    def endless():
        while True:
            yield from dl

    per_file = batches_per_s(endless(), batches) * batch
    return {"workers": workers, "shards_samples_per_s": shards, "files_samples_per_s": per_file}


def training_consumption(batch: int, steps: int) -> float:
    """Images/s of the quickstart model's training step (bf16 parameters, fp32 master)."""
    from benchmarks.pretrain_vs_hf import maskmill_step

    cfg = ModelConfig(preset="nano", decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3)
    step = maskmill_step(cfg, ImageInputConfig(64, 8), batch, 0.75, bf16=True)
    step(0)
    start = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=800, help="train images in the corpus")
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches")
    parser.add_argument("--out", default="results/data_path")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="maskmill-data-path-"))
    try:
        corpus = imagenet_sized_demo(tmp / "raw", 8, args.images)
        files = sorted((corpus / "train").rglob("*.JPEG"))
        plain = pillow_loop(files, 256, 90, draft=True)
        naive = pillow_loop(files, 256, 90, draft=False)
        prep = {cpus: prep_rate(corpus, tmp / f"prep{cpus}", cpus, 256) for cpus in (1, 2)}
        prep_rate(corpus, tmp / "prep72", 2, 72)
        loaders = [
            loader_rates(tmp / "prep72" / "train", tmp, w, 128, args.batches) for w in (1, 2)
        ]
        consumed = training_consumption(128, 10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    m = machine()
    result = {
        "machine": m,
        "images": len(files),
        "pillow_loop_images_per_s": plain,
        "pillow_loop_no_draft_images_per_s": naive,
        "prep_images_per_s": prep,
        "loader": loaders,
        "training_images_per_s": consumed,
    }
    table = [
        f"{len(files)} images of 300-500 px; {m['cpu']}, {m['cores']} cores; torch {m['torch']}",
        "",
        "| image prep (shorter side 256, q90) | images/s | per core | of the Pillow bound |",
        "|---|---|---|---|",
        f"| Pillow plain loop, draft decode (the bound) | {plain:.0f} | {plain:.0f} | 100% |",
        f"| Pillow plain loop, full decode | {naive:.0f} | {naive:.0f} | {naive / plain:.0%} |",
    ]
    for cpus, rate in prep.items():
        table.append(
            f"| maskmill prep, Ray with {cpus} CPU(s) | {rate:.0f} | {rate / cpus:.0f} | "
            f"{rate / cpus / plain:.0%} |"
        )
    table += [
        "",
        "| training loader (64 px crops, batch 128) | workers | samples/s | vs training step |",
        "|---|---|---|---|",
    ]
    for row in loaders:
        for name, key in (("maskmill shards", "shards_samples_per_s"),
                          ("one file per sample", "files_samples_per_s")):  # fmt: skip
            table.append(
                f"| {name} | {row['workers']} | {row[key]:.0f} | {row[key] / consumed:.1f}x |"
            )
    table.append(f"| training step consumes (quickstart model, bf16) | - | {consumed:.0f} | 1.0x |")
    write_results(args.out, "data_path", result, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
