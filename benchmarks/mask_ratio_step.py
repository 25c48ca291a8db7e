"""How the cost of an MAE training step falls with the masking ratio, next to its FLOP bound.

    python -m benchmarks.mask_ratio_step [--preset base] [--image-size 224] [--batch 8]
        [--decoder-depth 8] [--precision bf16] [--rounds 4] [--ratios 0.0 0.75 0.9]

Times a full step (forward, backward, AdamW) of maskmill's MAE in this process, as its trainer
runs it (bf16 parameters with fp32 master weights, or fp32), ratios interleaved round by round so
drift in the machine's speed hits all of them alike. Prints the median step time, images/s, the
speedup over the first ratio, the bound that the FLOP count of the same configuration allows
(the decoder still runs on every token), the share of that bound reached, and MFU against the
matrix-product peak measured in the same run. Writes JSON and a markdown table to --out.
"""

from __future__ import annotations

import functools
import sys

import torch

from benchmarks.common import (
    interleaved,
    machine,
    matmul_peak,
    median,
    step_parser,
    write_results,
)
from benchmarks.pretrain_vs_hf import maskmill_step
from training.config import ModelConfig
from training.flops import mae_step_flops
from training.modalities.image.bundle import ImageInputConfig, geometry


def main(argv: list[str] | None = None) -> int:
    parser = step_parser(__doc__)
    parser.add_argument("--decoder-depth", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="timed steps per ratio")
    parser.add_argument("--out", default="results/mask_ratio_step")
    args = parser.parse_args(argv)

    cfg = ModelConfig(preset=args.preset, decoder_depth=args.decoder_depth)
    seen = ImageInputConfig(image_size=args.image_size, patch_size=args.patch_size)
    g = geometry(seen)
    bf16 = args.precision == "bf16"
    step = maskmill_step(cfg, seen, args.batch, None, bf16)  # one model for every ratio
    times = interleaved({str(r): functools.partial(step, at=r) for r in args.ratios}, args.rounds)
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)

    first = args.ratios[0]
    base_t = median(times[str(first)])
    base_flops = mae_step_flops(cfg, g, first, args.batch)
    rows = []
    for ratio in args.ratios:
        t = median(times[str(ratio)])
        flops = mae_step_flops(cfg, g, ratio, args.batch)
        speedup, bound = base_t / t, base_flops / flops
        rows.append(
            {
                "ratio": ratio,
                "step_s": t,
                "step_s_all": times[str(ratio)],
                "images_per_s": args.batch / t,
                "speedup": speedup,
                "flop_bound": bound,
                "of_bound": speedup / bound,
                "mfu": flops / t / peak,
            }
        )
    r = cfg.resolved()
    m = machine()
    model = (
        f"ViT-{args.preset}/{args.patch_size} @ {args.image_size}, decoder "
        f"{args.decoder_depth}x{r.decoder_embed_dim}"
    )
    table = [
        f"{model}, batch {args.batch}, {args.precision}; {m['cpu']}, {m['threads']} threads; "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s; median of {args.rounds} steps",
        "",
        "| mask ratio | step (s) | images/s | speedup | FLOP bound | of bound | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        table.append(
            f"| {row['ratio']:.2f} | {row['step_s']:.3f} | {row['images_per_s']:.2f} | "
            f"{row['speedup']:.2f}x | {row['flop_bound']:.2f}x | {row['of_bound']:.0%} | "
            f"{row['mfu']:.0%} |"
        )
    payload = {"setup": {"model": model, "batch": args.batch, "precision": args.precision,
                         "matmul_peak_gflop_s": peak / 1e9, "machine": m}, "rows": rows}  # fmt: skip
    tag = f"{args.preset}_{args.image_size}_b{args.batch}_d{args.decoder_depth}_{args.precision}"
    write_results(args.out, tag, payload, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
