"""What the cheaper decoders cost in accuracy: the quickstart run (same corpus, steps and seed)
with each decoder, its pretraining throughput and its linear-probe / k-NN / fine-tune top-1.

    python -m benchmarks.decoder_probe [--run-root runs/decoder_probe] [--out results/decoder_probe]

Each variant is ``maskmill run configs/quickstart_image.yaml`` with one override, in its own run
directory under --run-root (a rerun skips what is finished). Minutes per variant on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import machine, write_results

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart_image.yaml"
VARIANTS = {
    "std": ("MAE decoder (self-attention), all masked patches", []),
    "self_f025": (
        "MAE decoder, 1/4 of masked patches",
        ["pretrain.model.decoder_predict_fraction=0.25"],
    ),
    "cross": ("cross-attention decoder, all masked patches", ["pretrain.model.decoder_type=cross"]),
    "cross_f025": (
        "cross-attention decoder, 1/4 of masked patches",
        ["pretrain.model.decoder_type=cross", "pretrain.model.decoder_predict_fraction=0.25"],
    ),
    "self_f0125": (
        "MAE decoder, 1/8 of masked patches",
        ["pretrain.model.decoder_predict_fraction=0.125"],
    ),
    "cross_f0125": (
        "cross-attention decoder, 1/8 of masked patches",
        ["pretrain.model.decoder_type=cross", "pretrain.model.decoder_predict_fraction=0.125"],
    ),
}


def run_variant(root: Path, name: str, overrides: list[str]) -> dict:
    run_dir = root / name
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "run",
            str(QUICKSTART),
            f"run_dir={run_dir}",
            *overrides,
        ],
        check=True,
    )
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    log = [json.loads(x) for x in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    state = json.loads((run_dir / ".maskmill" / "pretrain.json").read_text())
    return {
        "top1": {k: metrics[k]["pretrained"]["top1"] for k in ("linear_probe", "knn", "finetune")},
        "random_init_top1": {
            k: metrics[k]["random_init"]["top1"] for k in ("linear_probe", "knn", "finetune")
        },
        "images_per_s": statistics.median(r["samples_per_s"] for r in log[3:]),
        "pretrain_s": state["finished"] - state["started"],
        "final_loss": log[-1]["loss"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-root", default="runs/decoder_probe")
    parser.add_argument("--out", default="results/decoder_probe")
    args = parser.parse_args(argv)
    results = {n: run_variant(Path(args.run_root), n, ov) for n, (_, ov) in VARIANTS.items()}
    std = results["std"]
    table = [
        f"quickstart (nano ViT, 64 px, 300 steps, 2 ranks, ZeRO-3, bf16), 8 classes, 320 val images "
        f"(chance 12.5%); {machine()['cpu']}, {machine()['cores']} cores",
        "",
        "| decoder | pretraining images/s | speedup | linear probe | k-NN | fine-tune |",
        "|---|---|---|---|---|---|",
    ]
    for name, (label, _) in VARIANTS.items():
        r = results[name]
        t = r["top1"]
        table.append(
            f"| {label} | {r['images_per_s']:.0f} | {r['images_per_s'] / std['images_per_s']:.2f}x | "
            f"{t['linear_probe']:.1f}% | {t['knn']:.1f}% | {t['finetune']:.1f}% |"
        )
    rnd = std["random_init_top1"]
    table.append(
        f"| (random-init encoder) | - | - | {rnd['linear_probe']:.1f}% | {rnd['knn']:.1f}% | "
        f"{rnd['finetune']:.1f}% |"
    )
    write_results(args.out, "decoder_probe", results, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
