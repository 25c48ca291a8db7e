"""One step of the ImageNet fine-tuning recipe, next to HF's ``ViTForImageClassification``, and
what the whole recipe costs in GPU-hours when projected from it.

    python -m benchmarks.finetune_step [--preset base] [--image-size 224] [--batch 8]
        [--precision bf16] [--rounds 4]

Times a full step (mixup / cutmix of the batch, tokenizing, forward with per-row drop path,
soft-target loss, backward, AdamW over the layer-decayed groups with bf16 parameters and fp32
master weights) of maskmill's fine-tuning model, interleaved round by round with the same step
of HF's ViT classifier built from the same configuration, in this process. Prints the median
step times, their ratio, the FLOPs of a step (matrix products), MFU against the bf16 matrix
peak measured in the same run, and the projection: the recipe's 100 epochs over ImageNet's
1,281,167 training images, at the MFU measured here, on one A100 (312 TFLOP/s dense bf16) and one
H100 SXM (989). MFU on a GPU differs from a CPU's: the projection says what the measured step
implies, not what a GPU will show (no GPU was lent to measure one).
"""

from __future__ import annotations

import functools
import sys

import torch

from benchmarks.common import interleaved, machine, matmul_peak, median, step_parser, write_results
from benchmarks.pretrain_vs_hf import MasterWeights
from training.config import ModelConfig
from training.flops import block_flops
from training.modalities.image.bundle import ImageInputConfig, geometry
from training.modalities.image.patches import normalize_pixels, patchify
from training.objectives.mae.model import ViTEncoder
from training.tasks.finetune import Classifier, layer_decay_groups, path_draws
from training.tasks.mixing import Mix, mixed_batch, soft_cross_entropy

IMAGENET_TRAIN = 1_281_167
EPOCHS = 100
CLASSES = 1000
GPU_PEAKS = {"A100 (312 TFLOP/s)": 312e12, "H100 SXM (989 TFLOP/s)": 989e12}


def step_flops(cfg: ModelConfig, tokens: int, patch_values: int, batch: int) -> float:
    """Matrix-product FLOPs of a training step (backward = 2x forward) on full token sets."""
    c = cfg.resolved()
    forward = (
        2 * tokens * patch_values * c.embed_dim
        + c.depth * block_flops(tokens + 1, c.embed_dim, c.mlp_ratio)
        + 2 * c.embed_dim * CLASSES
    )
    return 3 * forward * batch


def maskmill_step(cfg: ModelConfig, seen: ImageInputConfig, batch: int, bf16: bool):
    torch.manual_seed(0)
    encoder = ViTEncoder(cfg, geometry(seen), drop_path=0.1)
    model = Classifier(encoder, CLASSES).train()
    images = torch.randint(0, 256, (batch, 3, seen.image_size, seen.image_size), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (batch,))
    mix = Mix(mixup_alpha=0.8, cutmix_alpha=1.0)
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = model.to(dtype)
    opt = MasterWeights(model, 1e-4)
    groups = layer_decay_groups(model, 1e-4, 0.05, 0.65)  # what the trainer hands AdamW
    assert sum(len(g["params"]) for g in groups) == len(opt.params)

    def step(i: int) -> None:
        x, targets = mixed_batch(images, labels, CLASSES, 0.1, mix, 0, i, 0)
        tokens = patchify(normalize_pixels(x), seen.patch_size).to(dtype)
        draws = path_draws(0, i, batch, len(encoder.blocks))
        opt.step(soft_cross_entropy(model(tokens, draws), targets))

    return step


def hf_step(cfg: ModelConfig, seen: ImageInputConfig, batch: int, bf16: bool):
    """The same step of transformers' ViT classifier: timm-style mixup is left to the user
    there, so the batch is mixed by the same function."""
    from transformers import ViTConfig, ViTForImageClassification

    c = cfg.resolved()
    hf_cfg = ViTConfig(
        hidden_size=c.embed_dim,
        num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads,
        intermediate_size=int(c.embed_dim * c.mlp_ratio),
        image_size=seen.image_size,
        patch_size=seen.patch_size,
        num_labels=CLASSES,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    model = ViTForImageClassification._from_config(hf_cfg, attn_implementation="sdpa").train()
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = model.to(dtype)
    opt = MasterWeights(model, 1e-4)
    images = torch.randint(0, 256, (batch, 3, seen.image_size, seen.image_size), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (batch,))
    mix = Mix(mixup_alpha=0.8, cutmix_alpha=1.0)

    def step(i: int) -> None:
        x, targets = mixed_batch(images, labels, CLASSES, 0.1, mix, 0, i, 0)
        logits = model(pixel_values=normalize_pixels(x).to(dtype)).logits
        opt.step(soft_cross_entropy(logits, targets))

    return step


def main(argv: list[str] | None = None) -> int:
    parser = step_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=4, help="timed steps per model")
    parser.add_argument("--out", default="results/finetune_step")
    args = parser.parse_args(argv)
    cfg = ModelConfig(preset=args.preset)
    seen = ImageInputConfig(image_size=args.image_size, patch_size=args.patch_size)
    bf16 = args.precision == "bf16"
    g = geometry(seen)
    runs = {
        "maskmill": maskmill_step(cfg, seen, args.batch, bf16),
        "hf": hf_step(cfg, seen, args.batch, bf16),
    }
    times = interleaved({k: functools.partial(lambda fn, i: fn(i), v) for k, v in runs.items()},
                        args.rounds)  # fmt: skip
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    flops = step_flops(cfg, g.num_tokens, g.values_per_token, args.batch)
    ours, theirs = median(times["maskmill"]), median(times["hf"])
    mfu = flops / ours / peak
    per_image = flops / args.batch
    total = per_image * IMAGENET_TRAIN * EPOCHS
    projection = {name: total / (gpu_peak * mfu) / 3600 for name, gpu_peak in GPU_PEAKS.items()}
    payload = {
        "machine": machine(),
        "config": vars(args),
        "matmul_peak_flops": peak,
        "step_s": {"maskmill": ours, "hf": theirs},
        "hf_over_maskmill": theirs / ours,
        "step_flops": flops,
        "mfu": mfu,
        "recipe_flops": total,
        "gpu_hours_at_this_mfu": projection,
    }
    table = [
        f"# Fine-tuning step: ViT-{args.preset[0].upper()}/{args.patch_size} at "
        f"{args.image_size} px, batch {args.batch}, {args.precision}",
        "",
        f"Matrix peak measured in this run: {peak / 1e9:.0f} GFLOP/s ({args.precision}).",
        "",
        "| | step (s) | images/s | MFU |",
        "|---|---|---|---|",
        f"| maskmill | {ours:.3f} | {args.batch / ours:.1f} | {mfu:.1%} |",
        f"| HF ViTForImageClassification | {theirs:.3f} | {args.batch / theirs:.1f} | "
        f"{flops / theirs / peak:.1%} |",
        "",
        f"HF's step takes {theirs / ours:.2f}x maskmill's.",
        "",
        f"A step is {flops / 1e9:.1f} GFLOP ({per_image / 1e9:.1f} per image); MAE's recipe "
        f"({EPOCHS} epochs x {IMAGENET_TRAIN:,} images) is {total:.3g} FLOP.",
        f"At the {mfu:.1%} MFU measured here: "
        + ", ".join(f"{h:,.0f} GPU-hours on one {n}" for n, h in projection.items())
        + ".",
    ]
    md = write_results(args.out, "finetune_step", payload, table)
    sys.stdout.write("\n".join(table) + f"\n\nwritten: {md}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
