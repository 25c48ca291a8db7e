"""What checking shards against the manifest costs the training loader: images per CPU-second
with ``loader.verify_sha256`` on and off, one run.

    python -m benchmarks.shard_integrity [--images 600] [--batches 12] [--rounds 3]

The corpus is ``benchmarks.image_loader``'s textured one (JPEGs as large as photographs' at
shorter side 256, about 40 KB), prepared by the real prep job in shards of 100. Each round builds
a fresh loader, so every shard it opens is hashed (the worst case: a worker hashes a shard only
the first time it opens it), and times everything from the first shard opened to the last batch,
on one thread; the two settings interleave. The size check (one ``stat`` per open) is always on
and is timed on its own. ``verify_sha256`` defaults to on when the cost stays under a few
percent, which this measures.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine, median, write_results
from benchmarks.image_loader import shard, textured_corpus
from data_prep.shard_format import file_sha256, read_manifest, shard_problem
from training.config import LoaderConfig
from training.loader import train_loader, train_spec_for
from training.modalities.image.bundle import ImageInputConfig


def loader_rate(split: Path, sha256: bool, batches: int, batch: int = 64) -> float:
    """Images per CPU-second of a fresh loader, its first shard opening included."""
    spec = train_spec_for(
        str(split), "image", ImageInputConfig(image_size=224, patch_size=16),
        LoaderConfig(workers=0, shuffle_buffer=200, verify_sha256=sha256), batch_size=batch,
        seed=0,
    )  # fmt: skip
    cpu = time.process_time()
    for _ in itertools.islice(train_loader(spec), batches):
        pass
    return batches * batch / (time.process_time() - cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batches", type=int, default=12, help="of 64, per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results/shard_integrity")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        split = shard(textured_corpus(Path(tmp) / "tex", args.images), Path(tmp) / "shards")
        records = read_manifest(split)
        runs: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for label in runs:
                runs[label].append(loader_rate(split, label == "on", args.batches))
        mb = sum(r.bytes for r in records) / 1e6
        start = time.perf_counter()
        for r in records:
            file_sha256(split / r.file)
        sha_mb_s = mb / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(100):
            for r in records:
                shard_problem(split / r.file, r, sha256=False)
        stat_us = (time.perf_counter() - start) / (100 * len(records)) * 1e6
    off, on = median(runs["off"]), median(runs["on"])
    results = {
        "images_per_cpu_s": runs, "sha256_mb_per_s": sha_mb_s, "size_check_us": stat_us,
        "shards": len(records), "mb": mb, "machine": machine(),
    }  # fmt: skip
    table = [
        f"Training loader, images per CPU-second (one thread, fresh loader per round: every "
        f"shard opened is hashed), median of {args.rounds} rounds of {args.batches} x 64; "
        f"{len(records)} shards, {mb / len(records):.1f} MB each; {machine()['cpu']}",
        "",
        "| sha256 check | images/s | vs off |",
        "|---|---|---|",
        f"| off (size only) | {off:.0f} | 1.00 |",
        f"| on | {on:.0f} | {on / off:.3f} |",
        "",
        f"sha256: {sha_mb_s:.0f} MB/s; the size check: {stat_us:.1f} µs per shard opened.",
    ]
    write_results(args.out, "shard_integrity", results, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
