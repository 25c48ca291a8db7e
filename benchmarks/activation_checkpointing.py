"""Activation checkpointing (``pretrain.activation_checkpointing``): memory per rank and step
time with and without it, for ViT-B and ViT-L MAE at batch sizes that fit a 2-core CPU rank, and
the largest batch each GPU recipe fits per 80 GB GPU, worked out from the measured activation
bytes per sample.

    python -m benchmarks.activation_checkpointing            # ~4 min on 2 cores
    python -m benchmarks.activation_checkpointing --quick    # smaller batches, 1 timed step

Three figures per model and mode, each measured in a process of its own:
- activation bytes per sample: every tensor autograd keeps for the backward pass of a bf16
  (autocast) forward, summed (``torch.autograd.graph.saved_tensors_hooks``): what a GPU holds
  between forward and backward, machine-independent;
- peak RSS of the process over a training step (parameters, AdamW state, activations, the
  allocator's slack): what a CPU rank holds;
- step time: forward, backward and AdamW, median of the timed steps after one warm-up (bf16
  autocast), with the machine's bf16 matmul peak measured in the same run.

The 80 GB projection: a GPU under ZeRO-2 holds 2 bytes per parameter of bf16 weights, 2 of bf16
gradients and 12 / N of the fp32 master weights and AdamW moments (N GPUs share them); 90% of the
rest goes to activations (10% kept for the allocator and kernels' workspace), so the largest
batch is ``floor((0.9 x 80 GB - static) / activation bytes per sample)``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from benchmarks.common import matmul_peak, median

GPU_BYTES = 80e9
HEADROOM = 0.9
RECIPE_GPUS = 8  # the smallest cluster each GPU recipe is valid on (tests/pipeline/test_recipes.py)


def _mae(preset: str, modality: str, input_kwargs: dict):
    from training.config import ModelConfig
    from training.modalities import modality as modality_named
    from training.objectives.mae.model import MaskedAutoencoder

    m = modality_named(modality)
    g = m.geometry(m.input_config(**input_kwargs))
    return MaskedAutoencoder(ModelConfig(preset=preset), g), g


# (name, objective, modality, preset, input, mask ratio, mask kind) of what is measured
MODELS = {
    "vit_b_image": ("mae", "image", "base", {"image_size": 224, "patch_size": 16}, 0.75, "random"),
    "vit_l_image": ("mae", "image", "large", {"image_size": 224, "patch_size": 16}, 0.75, "random"),
    "vit_b_video": (
        "mae",
        "video",
        "base",
        {"num_frames": 16, "frame_size": 224, "patch_size": 16, "tubelet": 2},
        0.9,
        "tube",
    ),
    "vit_l_video": (
        "mae",
        "video",
        "large",
        {"num_frames": 16, "frame_size": 224, "patch_size": 16, "tubelet": 2},
        0.9,
        "tube",
    ),
    "vit_b_audio": ("mae", "audio", "base", {"frames": 1024, "patch_size": 16}, 0.8, "random"),
    "bert_base_text": ("mlm", "text", "base", {"seq_len": 512, "vocab_size": 30522}, 0.3, "random"),
}
RECIPES = {  # recipe -> what it pretrains (and the largest model users ask to fit: ViT-L)
    "imagenet_mae_vitb": "vit_b_image",
    "imagenet_mae_vitb, model.preset: large": "vit_l_image",
    "kinetics400_videomae_vitb": "vit_b_video",
    "kinetics400_videomae_vitb, model.preset: large": "vit_l_video",
    "librilight_audiomae_vitb": "vit_b_audio",
    "c4_bert_base": "bert_base_text",
}


def _build(name: str, checkpointed: bool, batch: int):
    """(model, a function running one forward and returning the loss) of ``name``."""
    from training.modalities import modality as modality_named
    from training.objectives.mae.masking import make_masks
    from training.transformer import checkpoint_blocks

    objective, modality, preset, input_kwargs, ratio, kind = MODELS[name]
    m = modality_named(modality)
    g = m.geometry(m.input_config(**input_kwargs))
    keys = [str(i) for i in range(batch)]
    if objective == "mae":
        model, _ = _mae(preset, modality, input_kwargs)
        tokens = torch.randn(batch, g.num_tokens, g.values_per_token)
        mask = make_masks(kind, 0, 0, keys, g, ratio)
        run = lambda: model(tokens, mask)  # noqa: E731
    else:
        from training.config import ModelConfig
        from training.objectives.mlm.masking import IGNORE
        from training.objectives.mlm.model import MaskedLanguageModel

        model = MaskedLanguageModel(ModelConfig(preset=preset), g)
        ids = torch.randint(5, g.vocab_size, (batch, g.num_tokens))
        chosen = torch.rand(batch, g.num_tokens) < ratio
        targets = ids.masked_fill(~chosen, IGNORE)
        run = lambda: model(ids.masked_fill(chosen, 4), targets, padding=False)  # noqa: E731
    if checkpointed:
        checkpoint_blocks(model)
    model.train()
    return model, run


def activation_bytes(name: str, checkpointed: bool) -> float:
    """Bytes autograd keeps for the backward pass, per sample (bf16 autocast forward): the
    difference between batches of 4 and 2, halved, so the bf16 copies of the weights a product
    keeps (the same at any batch) drop out."""
    return (_kept_bytes(name, checkpointed, 4) - _kept_bytes(name, checkpointed, 2)) / 2


def _kept_bytes(name: str, checkpointed: bool, batch: int) -> int:
    _, run = _build(name, checkpointed, batch)
    kept = [0]

    def pack(t):
        kept[0] += t.numel() * t.element_size()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
        run()
    return kept[0]


def step_figures(name: str, checkpointed: bool, batch: int, steps: int) -> dict:
    """Peak RSS (bytes) and median step seconds of training steps, in this process."""
    model, run = _build(name, checkpointed, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = run()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms the allocator and the kernels
            times.append(time.perf_counter() - start)
    return {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": median(times),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _in_subprocess(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.activation_checkpointing", *args],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def largest_batch(params: int, act_per_sample: float, gpus: int = RECIPE_GPUS) -> int:
    static = params * (2 + 2 + 12 / gpus)
    return int((HEADROOM * GPU_BYTES - static) // act_per_sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--recipes", nargs="*", help="only these models' projection rows "
                        "(e.g. vit_l_image vit_l_video); skips the step table")  # fmt: skip
    parser.add_argument("--one", nargs=4, metavar=("KIND", "NAME", "CKPT", "BATCH"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.one:  # a measurement in a fresh process (peak RSS is per process)
        kind, name, ckpt, batch = args.one
        ckpt = ckpt == "1"
        if kind == "act":
            print(json.dumps({"bytes": activation_bytes(name, ckpt)}))  # (batch: 2 and 4)
        else:
            print(json.dumps(step_figures(name, ckpt, int(batch), 1 if args.quick else 2)))
        return
    peak = matmul_peak(torch.bfloat16)
    print(f"bf16 matmul peak of this machine, this run: {peak / 1e9:.0f} GFLOP/s (2 threads)\n")
    batches = {"vit_b_image": 8 if args.quick else 32, "vit_l_image": 4 if args.quick else 16}
    if args.recipes:
        batches = {}
    print("| model | batch | mode | activations / sample | peak RSS | step | step ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, batch in batches.items():
        rows = {}
        for ckpt in (False, True):
            act = _in_subprocess("--one", "act", name, str(int(ckpt)), "2")["bytes"]
            step = _in_subprocess(*(["--quick"] if args.quick else []), "--one", "step", name,
                                  str(int(ckpt)), str(batch))  # fmt: skip
            rows[ckpt] = {**step, "act": act}
        for ckpt, r in rows.items():
            ratio = r["step_s"] / rows[False]["step_s"]
            print(f"| {name} | {batch} | {'checkpointed' if ckpt else 'plain'} | "
                  f"{r['act'] / 2**20:.1f} MiB | {r['peak_rss'] / 2**30:.2f} GiB | "
                  f"{r['step_s']:.2f} s | {ratio:.2f}x |")  # fmt: skip
    print(f"\nLargest batch per 80 GB GPU ({RECIPE_GPUS} GPUs, ZeRO-2, bf16; see the docstring):")
    print(
        "| recipe | model | parameters | activations / sample (plain / checkpointed) | "
        "largest batch (plain / checkpointed) |"
    )
    print("|---|---|---|---|---|")
    for recipe, name in RECIPES.items():
        if args.recipes and name not in args.recipes:
            continue
        acts = [_in_subprocess("--one", "act", name, c, "2")["bytes"] for c in ("0", "1")]
        model, _ = _build(name, False, 1)
        params = sum(p.numel() for p in model.parameters())
        fits = [largest_batch(params, a) for a in acts]
        print(f"| {recipe} | {name} | {params / 1e6:.0f} M | {acts[0] / 2**20:.0f} / "
              f"{acts[1] / 2**20:.0f} MiB | {fits[0]} / {fits[1]} |")  # fmt: skip


if __name__ == "__main__":
    main()
