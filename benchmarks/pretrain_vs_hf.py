"""maskmill's MAE training step against HF transformers' ``ViTMAEForPreTraining``, same config.

    python -m benchmarks.pretrain_vs_hf [--precision bf16] [--batch 8] [--ratios 0.0 0.75 0.9]
        [--rounds 3] [--decoders] [--preset base] [--out results/pretrain_vs_hf]

Needs ``pip install transformers`` (the ``bench`` extra); it is not a runtime dependency.

One full step (forward, backward, AdamW) of each implementation, interleaved in one process:
ViT-B/16 at 224, 8-block 512-wide decoder, norm-pix loss, AdamW, the same batch. Each side gets
its fastest honest settings: torch's fused AdamW for both; for HF both its attention kernels
(``sdpa`` and ``eager``), since on CPU the fused SDPA kernel is the slower of the two, and bf16
autocast over fp32 weights in the bf16 rows (what HF's Trainer does with ``bf16=True``). maskmill
runs bf16 the way its trainer does under DeepSpeed: bf16 parameters, fp32 master weights in the
optimizer. With ``--decoders`` the cheaper decoders (CrossMAE-style cross-attention, and
reconstructing a quarter of the masked patches) are timed too.

Prints images/s, the ratio to HF's faster kernel, and MFU: model FLOPs of the step (encoder on
visible patches, decoder on the tokens it processes, forward + backward; ``training.flops``) per
second, divided by the matrix-product peak measured in the same run, same dtype and threads.
HF rows are charged the same model FLOPs as maskmill's standard decoder; HF also embeds the
masked patches and predicts the visible ones, which that count leaves out.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable

import torch

from benchmarks.common import (
    interleaved,
    machine,
    matmul_peak,
    median,
    step_parser,
    write_results,
)
from training.config import ModelConfig
from training.flops import mae_step_flops
from training.modalities.image.bundle import ImageInputConfig, geometry
from training.modalities.image.patches import patchify
from training.objectives.mae.masking import masks_for_batch
from training.objectives.mae.model import MaskedAutoencoder

COMPILED = "maskmill (torch.compile)"
DECODERS = {
    "maskmill": {},
    "maskmill cross-attn decoder": {"decoder_type": "cross"},
    "maskmill 1/4 of masked": {"decoder_predict_fraction": 0.25},
    "maskmill cross-attn + 1/4": {"decoder_type": "cross", "decoder_predict_fraction": 0.25},
    "maskmill 1/8 of masked": {"decoder_predict_fraction": 0.125},
    "maskmill cross-attn + 1/8": {"decoder_type": "cross", "decoder_predict_fraction": 0.125},
}


class MasterWeights:
    """bf16 parameters, fp32 master copies in a fused AdamW: DeepSpeed's bf16 scheme, without
    the engine, so both sides of the comparison are plain training loops. Like DeepSpeed, it
    keeps its fp32 gradient buffers from step to step instead of allocating them anew."""

    def __init__(self, model: torch.nn.Module, lr: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.grads = [torch.zeros_like(m) for m in self.master]
        self.opt = torch.optim.AdamW(self.master, lr=lr, fused=True)

    def step(self, loss: torch.Tensor) -> None:
        for p in self.params:
            p.grad = None
        loss.backward()
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        torch._foreach_copy_([self.grads[i] for i in live], [self.params[i].grad for i in live])
        for i, m in enumerate(self.master):
            m.grad = self.grads[i] if self.params[i].grad is not None else None  # mask token at 0
        self.opt.step()
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.master)


def maskmill_step(
    cfg: ModelConfig,
    seen: ImageInputConfig,
    batch: int,
    ratio: float | None,
    bf16: bool,
    compiled: bool = False,
) -> Callable[..., None]:
    """``step(i)`` at ``ratio``, or ``step(i, ratio)`` when ``ratio`` is None (one model, any
    ratio: memory for one model, not one per ratio). Images are patchified in the step, as the
    trainer's tokenize does."""
    torch.manual_seed(0)
    g = geometry(seen)
    model = MaskedAutoencoder(cfg, g).train()
    images = torch.randn(batch, 3, seen.image_size, seen.image_size)
    keys = [f"img{i}" for i in range(batch)]
    if bf16:
        model = model.to(torch.bfloat16)
        images = images.to(torch.bfloat16)
        opt = MasterWeights(model, 1e-4)
    else:
        adamw = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    # One graph per mask ratio (the visible count fixes every shape); the optimizer stays eager.
    forward = torch.compile(model, dynamic=False) if compiled else model

    def step(i: int, at: float | None = ratio) -> None:
        mask = masks_for_batch(0, i, keys, g.num_tokens, at)
        loss = forward(patchify(images, seen.patch_size), mask)
        if bf16:
            opt.step(loss)
        else:
            adamw.zero_grad(set_to_none=True)
            loss.backward()
            adamw.step()

    return step


def hf_step(
    cfg: ModelConfig, seen: ImageInputConfig, batch: int, bf16: bool, attn: str
) -> Callable[..., None]:
    """``step(i, at=ratio)`` of HF's ViTMAEForPreTraining built from the same configuration."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    r = cfg.resolved()
    hf_cfg = ViTMAEConfig(
        image_size=seen.image_size,
        patch_size=seen.patch_size,
        hidden_size=r.embed_dim,
        num_hidden_layers=r.depth,
        num_attention_heads=r.num_heads,
        intermediate_size=int(r.embed_dim * r.mlp_ratio),
        decoder_hidden_size=r.decoder_embed_dim,
        decoder_num_hidden_layers=r.decoder_depth,
        decoder_num_attention_heads=r.decoder_num_heads,
        decoder_intermediate_size=int(r.decoder_embed_dim * r.mlp_ratio),
        mask_ratio=0.75,
        norm_pix_loss=r.norm_pix_loss,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    model = ViTMAEForPreTraining._from_config(hf_cfg, attn_implementation=attn).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    images = torch.randn(batch, 3, seen.image_size, seen.image_size)

    def step(i: int, at: float) -> None:
        model.config.mask_ratio = at  # the embeddings read it at every call
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(pixel_values=images)
        if at > 0:
            loss = out.loss
        else:  # nothing masked: HF's loss divides by zero; take it over every patch instead
            target = patchify(images, seen.patch_size)
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True) + 1e-6
            ) ** 0.5
            loss = (out.logits.float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = step_parser(__doc__)
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed steps per implementation and ratio"
    )
    parser.add_argument("--decoders", action="store_true", help="also time the cheaper decoders")
    parser.add_argument(
        "--compile", action="store_true", help="also time maskmill under torch.compile (inductor)"
    )
    parser.add_argument("--out", default="results/pretrain_vs_hf")
    args = parser.parse_args(argv)
    try:
        import transformers
    except ImportError:
        sys.stderr.write("needs HF transformers: pip install transformers (or '.[bench]')\n")
        return 2

    bf16 = args.precision == "bf16"
    base = ModelConfig(preset=args.preset)
    seen = ImageInputConfig(image_size=args.image_size, patch_size=args.patch_size)
    names = [n for n in DECODERS if args.decoders or n == "maskmill"]
    steppers: dict[str, Callable[..., None]] = {}  # each takes (step, at=ratio)
    for attn in ("sdpa", "eager"):
        steppers[f"HF ViTMAEForPreTraining ({attn})"] = hf_step(base, seen, args.batch, bf16, attn)
    for name in names:
        cfg = dataclasses.replace(base, **DECODERS[name])
        steppers[name] = maskmill_step(cfg, seen, args.batch, None, bf16)
    compile_s = {}
    if args.compile:
        torch._dynamo.config.cache_size_limit = max(64, 4 * len(args.ratios))
        steppers[COMPILED] = maskmill_step(base, seen, args.batch, None, bf16, compiled=True)
        for ratio in args.ratios:  # the first step at each ratio compiles; timed on its own
            start = time.perf_counter()
            steppers[COMPILED](0, at=ratio)
            compile_s[ratio] = time.perf_counter() - start
    runs = {
        (name, ratio): functools.partial(fn, at=ratio)
        for ratio in args.ratios
        for name, fn in steppers.items()
    }
    times = interleaved({f"{n}@{r}": fn for (n, r), fn in runs.items()}, args.rounds)
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_peak(dtype)

    rows = []
    for (name, ratio), _ in runs.items():
        t = median(times[f"{name}@{ratio}"])
        cfg = dataclasses.replace(base, **DECODERS.get(name, {}))  # compiled: base's
        flops = mae_step_flops(cfg, geometry(seen), ratio, args.batch)
        rows.append(
            {
                "implementation": name,
                "ratio": ratio,
                "step_s": t,
                "step_s_all": times[f"{name}@{ratio}"],
                "images_per_s": args.batch / t,
                "model_gflop": flops / 1e9,
                "mfu": flops / t / peak,
            }
        )
    for row in rows:
        hf_best = max(
            r["images_per_s"]
            for r in rows
            if r["ratio"] == row["ratio"] and r["implementation"].startswith("HF")
        )
        row["vs_hf"] = row["images_per_s"] / hf_best

    setup = {
        "model": f"ViT-{args.preset}/{args.patch_size} @ {args.image_size}, decoder "
        f"{base.decoder_depth}x{base.decoder_embed_dim}, norm-pix loss, AdamW (fused)",
        "batch": args.batch,
        "precision": args.precision,
        "transformers": transformers.__version__,
        "matmul_peak_gflop_s": peak / 1e9,
        "compile_s_first_step": compile_s,
        "machine": machine(),
    }
    m = setup["machine"]
    table = [
        f"{setup['model']}, batch {args.batch}, {args.precision}; {m['cpu']}, {m['threads']} threads, "
        f"torch {m['torch']}, transformers {setup['transformers']}; matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s; median of {args.rounds} steps",
        "",
        "| implementation | mask ratio | step (s) | images/s | vs HF (faster kernel) | MFU |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["ratio"], not r["implementation"].startswith("HF"))):
        table.append(
            f"| {row['implementation']} | {row['ratio']:.2f} | {row['step_s']:.3f} | "
            f"{row['images_per_s']:.2f} | {row['vs_hf']:.2f}x | {row['mfu']:.0%} |"
        )
    for ratio, seconds in compile_s.items():
        table.append(f"\n{COMPILED}: first step at {ratio:.2f} (compiling) took {seconds:.1f} s")
    tag = f"{args.preset}_{args.image_size}_b{args.batch}_{args.precision}"
    tag += "_decoders" if args.decoders else ""
    write_results(args.out, tag, {"setup": setup, "rows": rows}, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
