"""The first look at a GPU, in one run of a few minutes: ``python -m benchmarks.gpu_check``.

On one CUDA device it measures, and writes to one JSON (``--out``, default
``results/gpu_check.json``):

* NCCL: a one-rank process group comes up and an all-reduce runs on the device;
* the bf16 matrix-product peak of the device, in this run (what MFU is measured against);
* a ViT-B/16 MAE pretraining step at mask ratio 0.75, 224 px, bf16 autocast over fp32 weights
  with fused AdamW: eager and ``torch.compile``-d, images/s and MFU;
* a fine-tuning step of the same encoder with a 1000-class head;
* an MLM step (BERT-base shape, seq 512);
* the training loader on real JPEG shards (prepared here from a generated ImageNet-sized
  corpus), images/s with this machine's CPUs.

Without a CUDA device it says so, in the JSON and in one line, and stops (exit 0): there is
nothing to measure. ``--allow-cpu --tiny`` runs the same steps on the CPU at toy sizes, which is
how the tests keep the script working until a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _timed(step, warmup: int, steps: int, device: torch.device) -> float:
    """Median-free mean seconds per call over ``steps`` after ``warmup`` calls."""
    for i in range(warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    _sync(device)
    return (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = _timed(lambda i: a @ b, 3, 10, device)
    return 2 * size**3 / seconds


def nccl_check(device: torch.device) -> dict:
    import torch.distributed as dist

    from cluster.local import free_port

    backend = "nccl" if device.type == "cuda" else "gloo"
    start = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)  # fmt: skip
    x = torch.ones(1 << 20, device=device)
    dist.all_reduce(x)
    _sync(device)
    ok = bool(x[0].item() == 1.0)
    dist.destroy_process_group()
    return {"backend": backend, "ok": ok, "seconds": round(time.perf_counter() - start, 3)}


def mae_step(args, device, compiled: bool) -> dict:
    from training.config import ModelConfig
    from training.flops import mae_step_flops
    from training.modalities.image.bundle import ImageInputConfig, geometry
    from training.modalities.image.patches import normalize_pixels, patchify
    from training.objectives.mae.masking import make_masks
    from training.objectives.mae.model import MaskedAutoencoder

    cfg = ModelConfig(preset=args.preset)
    seen = ImageInputConfig(args.image_size, args.patch_size)
    g = geometry(seen)
    model = MaskedAutoencoder(cfg, g).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compiled else model
    images = torch.randint(0, 256, (args.batch, 3, seen.image_size, seen.image_size),
                           dtype=torch.uint8, device=device)  # fmt: skip
    keys = [f"k{i}" for i in range(args.batch)]

    def step(i: int) -> None:
        mask = make_masks("random", 0, i, keys, g, 0.75).to(device)
        tokens = patchify(normalize_pixels(images), seen.patch_size)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(tokens, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = _timed(step, args.warmup, args.steps, device)
    flops = mae_step_flops(cfg, g, 0.75, args.batch)
    return {"images_per_s": args.batch / seconds, "step_s": seconds, "flops": flops,
            "mfu": flops / seconds / args.peak}  # fmt: skip


def finetune_step(args, device) -> dict:
    from benchmarks.finetune_step import CLASSES, step_flops
    from training.config import ModelConfig
    from training.modalities.image.bundle import ImageInputConfig, geometry
    from training.modalities.image.patches import normalize_pixels, patchify
    from training.objectives.mae.model import ViTEncoder
    from training.tasks.finetune import Classifier

    cfg = ModelConfig(preset=args.preset)
    seen = ImageInputConfig(args.image_size, args.patch_size)
    model = Classifier(ViTEncoder(cfg, geometry(seen)), CLASSES).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    images = torch.randint(0, 256, (args.batch, 3, seen.image_size, seen.image_size),
                           dtype=torch.uint8, device=device)  # fmt: skip
    labels = torch.randint(0, CLASSES, (args.batch,), device=device)

    def step(i: int) -> None:
        tokens = patchify(normalize_pixels(images), seen.patch_size)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(tokens).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = _timed(step, args.warmup, args.steps, device)
    g = geometry(seen)
    flops = step_flops(cfg, g.num_tokens, g.values_per_token, args.batch)
    return {
        "images_per_s": args.batch / seconds,
        "step_s": seconds,
        "mfu": flops / seconds / args.peak,
    }


def mlm_step(args, device) -> dict:
    from training.config import ModelConfig
    from training.flops import mlm_step_flops
    from training.modalities import TokenGeometry
    from training.objectives.mlm.masking import mlm_batch
    from training.objectives.mlm.model import MaskedLanguageModel

    cfg = ModelConfig(preset=args.preset)
    g = TokenGeometry((args.seq_len,), 1, vocab_size=30522)
    model = MaskedLanguageModel(cfg, g).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(5, g.vocab_size, (args.batch, args.seq_len))
    x = torch.stack([ids, torch.ones_like(ids)], dim=1)
    batch = mlm_batch("random", 0, 0, [f"s{i}" for i in range(args.batch)], x, 0.15, g.vocab_size)
    batch = batch.to(device)

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(batch.inputs, batch.targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = _timed(step, args.warmup, args.steps, device)
    flops = mlm_step_flops(cfg, g, 0.15, args.batch)
    return {
        "sequences_per_s": args.batch / seconds,
        "step_s": seconds,
        "mfu": flops / seconds / args.peak,
    }


def loader_rate(args) -> dict:
    """Images/s of the training loader (decode, crop, collate) on real JPEG shards."""
    import itertools

    from benchmarks.common import imagenet_sized_demo
    from data_prep.corpus import corpus_reader
    from data_prep.job import run_prep
    from training.config import LoaderConfig
    from training.loader import train_loader, train_spec_for
    from training.modalities.image.bundle import ImageInputConfig

    with tempfile.TemporaryDirectory() as tmp:
        source = imagenet_sized_demo(Path(tmp) / "raw", classes=4, images=args.loader_images)
        reader = corpus_reader("image")
        cfg = reader.config(source=str(source), out=str(Path(tmp) / "shards"), shorter_side=256,
                            samples_per_shard=256, num_cpus=os.cpu_count())  # fmt: skip
        run_prep(reader, cfg)
        workers = max(1, min(8, (os.cpu_count() or 2) - 1))
        spec = train_spec_for(str(Path(tmp) / "shards" / "train"), "image",
                              ImageInputConfig(args.image_size, args.patch_size),
                              LoaderConfig(workers=workers), batch_size=64, seed=0)  # fmt: skip
        batches = train_loader(spec)
        next(batches)
        start = time.perf_counter()
        n = sum(len(b[0]) for b in itertools.islice(batches, args.loader_batches))
        return {"images_per_s": n / (time.perf_counter() - start), "workers": workers}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "gpu_check.json"))
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU when no GPU is seen")
    p.add_argument("--tiny", action="store_true", help="toy sizes (the CPU test)")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled MAE step")
    args = p.parse_args(argv)
    full = {"preset": "base", "image_size": 224, "patch_size": 16, "batch": 128, "seq_len": 512,
            "warmup": 5, "steps": 20, "peak_size": 8192, "loader_images": 2000,
            "loader_batches": 30}  # fmt: skip
    tiny = {"preset": "nano", "image_size": 32, "patch_size": 8, "batch": 4, "seq_len": 32,
            "warmup": 1, "steps": 2, "peak_size": 256, "loader_images": 16,
            "loader_batches": 2}  # fmt: skip
    for k, v in (tiny if args.tiny else full).items():
        setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available() and not args.allow_cpu:
        why = f"no CUDA device is visible (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
        out.write_text(json.dumps({"gpu": None, "skipped": why}, indent=1) + "\n")
        print(f"gpu_check: {why}; nothing measured (written to {out})")
        return 0
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    result = {"gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
              "torch": torch.__version__, "cuda": torch.version.cuda}  # fmt: skip
    result["nccl"] = nccl_check(device)
    args.peak = matmul_peak(device, args.peak_size)
    result["bf16_matmul_peak_tflops"] = args.peak / 1e12
    for name, run in (
        ("mae_eager", lambda: mae_step(args, device, compiled=False)),
        ("mae_compiled", lambda: mae_step(args, device, compiled=True)),
        ("finetune", lambda: finetune_step(args, device)),
        ("mlm", lambda: mlm_step(args, device)),
        ("loader", lambda: loader_rate(args)),
    ):
        if name == "mae_compiled" and args.no_compile:
            continue
        start = time.perf_counter()
        try:
            result[name] = run()
        except Exception as err:  # one failing part must not hide the others' numbers
            result[name] = {"error": f"{type(err).__name__}: {err}"}
        result[name]["wall_s"] = round(time.perf_counter() - start, 1)
        print(f"gpu_check {name}: {json.dumps(result[name])}", flush=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"gpu_check: written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
