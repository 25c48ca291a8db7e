"""How the cost of an MAE training step falls with the masking ratio.

    python -m benchmarks.mask_ratio_step [--preset base] [--image-size 224] [--batch 8]
        [--decoder-depth 8] [--precision bf16] [--repeats 5] [--ratios 0.0 0.75 0.9]

Times a full step (forward, backward, AdamW) of maskmill's MAE in this process, ratios
interleaved round by round so drift in the machine's speed hits all of them alike, and prints the
median step time, images/s, the speedup over ratio 0.0 and the bound the FLOP count allows
(the decoder still runs on every token). Writes JSON and a markdown table to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from training.config import ModelConfig
from training.flops import mae_step_flops
from training.mae import MaskedAutoencoder
from training.masking import masks_for_batch


def time_steps(model, opt, images, ratio, steps, dtype) -> list[float]:
    keys = [f"s{i}" for i in range(images.shape[0])]
    times = []
    for step in range(steps):
        mask = masks_for_batch(0, step, keys, model.cfg.num_patches, ratio)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss, _ = model(images, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="base")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--decoder-depth", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.75, 0.9])
    parser.add_argument("--repeats", type=int, default=5, help="rounds over all ratios")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per ratio per round")
    parser.add_argument("--out", default="results/mask_ratio_step")
    args = parser.parse_args()

    cfg = ModelConfig(
        preset=args.preset, image_size=args.image_size, decoder_depth=args.decoder_depth
    )
    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    for ratio in args.ratios:  # warm-up: allocator, kernels
        time_steps(model, opt, images, ratio, 1, args.precision)
    samples: dict[float, list[float]] = {r: [] for r in args.ratios}
    for _ in range(args.repeats):
        for ratio in args.ratios:
            samples[ratio] += time_steps(model, opt, images, ratio, args.steps, args.precision)

    base = statistics.median(samples[args.ratios[0]])
    base_flops = mae_step_flops(cfg, args.ratios[0], args.batch)
    rows = []
    for ratio in args.ratios:
        t = statistics.median(samples[ratio])
        flops = mae_step_flops(cfg, ratio, args.batch)
        rows.append(
            {
                "ratio": ratio,
                "step_s_median": t,
                "step_s_min": min(samples[ratio]),
                "step_s_max": max(samples[ratio]),
                "images_per_s": args.batch / t,
                "speedup_vs_first": base / t,
                "flop_bound_speedup": base_flops / flops,
                "step_gflop": flops / 1e9,
                "achieved_gflop_s": flops / t / 1e9,
            }
        )
    r = cfg.resolved()
    setup = {
        "model": f"ViT-{args.preset} patch {r.patch_size} @ {args.image_size}, decoder {args.decoder_depth}x{r.decoder_embed_dim}",
        "batch": args.batch,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "rounds": args.repeats,
        "steps_per_round": args.steps,
    }
    table = [
        f"{setup['model']}, batch {args.batch}, {args.precision}, {setup['threads']} threads, median of {args.repeats * args.steps} steps",
        "",
        "| mask ratio | step (s) median [min-max] | images/s | speedup vs 0.0 | FLOP bound | of bound |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        table.append(
            f"| {row['ratio']:.2f} | {row['step_s_median']:.3f} [{row['step_s_min']:.3f}-{row['step_s_max']:.3f}] | "
            f"{row['images_per_s']:.1f} | {row['speedup_vs_first']:.2f}x | {row['flop_bound_speedup']:.2f}x | "
            f"{row['speedup_vs_first'] / row['flop_bound_speedup']:.0%} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.preset}_{args.image_size}_d{args.decoder_depth}_{args.precision}"
    (out / f"{tag}.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
    (out / f"{tag}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
