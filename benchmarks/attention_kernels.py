"""Attention on this machine: torch's fused ``scaled_dot_product_attention`` against two matrix
products around a softmax (what ``training.objectives.mae.model.attend`` does on CPU), forward + backward.

    python -m benchmarks.attention_kernels [--batch 8] [--rounds 7] [--out results/attention_kernels]

Shapes are MAE ViT-B/16's at 224: the encoder at 75% masking (50 tokens, 12 heads of 64) and the
8x512 decoder (197 tokens, 16 heads of 32).
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import interleaved, machine, median, write_results
from training.transformer import attend

SHAPES = {"encoder, 50 tokens, 12x64": (12, 50, 64), "decoder, 197 tokens, 16x32": (16, 197, 32)}


def step(batch: int, shape, dtype, impl: str):
    heads, tokens, dim = shape
    qkv = [
        torch.randn(batch, heads, tokens, dim, dtype=dtype, requires_grad=True) for _ in range(3)
    ]

    def run(_: int) -> None:
        attend(*qkv, impl).sum().backward()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="results/attention_kernels")
    args = parser.parse_args(argv)
    runs = {
        (name, dt, impl): step(args.batch, shape, dtype, impl)
        for name, shape in SHAPES.items()
        for dt, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))
        for impl in ("sdpa", "matmul")
    }
    times = interleaved({"|".join(k): fn for k, fn in runs.items()}, args.rounds)
    m = machine()
    table = [
        f"batch {args.batch}, forward + backward, median of {args.rounds}; {m['cpu']}, "
        f"{m['threads']} threads, torch {m['torch']}",
        "",
        "| shape | dtype | fused SDPA (ms) | matmul + softmax (ms) | speedup |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for name in SHAPES:
        for dt in ("bf16", "fp32"):
            sdpa = median(times[f"{name}|{dt}|sdpa"]) * 1e3
            mm = median(times[f"{name}|{dt}|matmul"]) * 1e3
            rows.append({"shape": name, "dtype": dt, "sdpa_ms": sdpa, "matmul_ms": mm})
            table.append(f"| {name} | {dt} | {sdpa:.1f} | {mm:.1f} | {sdpa / mm:.2f}x |")
    write_results(args.out, "attention_kernels", {"machine": m, "rows": rows}, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
