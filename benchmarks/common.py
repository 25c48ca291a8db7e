"""Shared pieces of the benchmarks: interleaved timing, the matrix-product peak, the machine,
writing results. Benchmarks report; nothing here passes or fails."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def interleaved(
    runs: dict[str, Callable[[int], None]], rounds: int, steps: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of every run, the runs taken in turn round after round, so drift in the
    machine's speed (other tenants, heat) hits all of them alike. One untimed warm-up call each."""
    for fn in runs.values():
        fn(0)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, fn in runs.items():
            for s in range(steps):
                start = time.perf_counter()
                fn(1 + r * steps + s)
                times[name].append(time.perf_counter() - start)
    return times


def step_parser(doc: str | None) -> argparse.ArgumentParser:
    """Command-line options of the benchmarks that time MAE training steps: the model preset,
    image and patch size, batch, precision and mask ratios."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="base")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16, help="16; ViT-H in MAE uses 14")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.75, 0.9])
    return parser


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` square matrix products in ``dtype``, with the threads
    this process uses: the peak that MFU is measured against, on this machine, in this run."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(out_dir: str | Path, tag: str, payload: dict, table: list[str]) -> Path:
    """``<tag>.json`` and ``<tag>.md`` under ``out_dir``; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=2))
    md = out / f"{tag}.md"
    md.write_text("\n".join(table) + "\n")
    return md


def imagenet_sized_demo(out: Path, classes: int, images: int) -> Path:
    """The demo generator's corpus with ImageNet-sized images (300-500 px sides), ``images``
    train images over ``classes`` classes, one val image per class."""
    from data_prep.image.demo import DemoCorpusConfig, write_demo_corpus

    cfg = DemoCorpusConfig(
        out=str(out),
        classes=classes,
        train_per_class=max(1, images // classes),
        val_per_class=1,
        min_size=300,
        max_size=500,
    )
    return write_demo_corpus(cfg)
