"""What ZeRO-3 holds per rank: parameter, gradient and optimizer bytes at world size 1 and 2.

    python -m benchmarks.zero3_memory [--preset base] [--out results/zero3_memory]

Each world size is a real run under the ``deepspeed`` launcher (gloo on CPU): every rank builds
the engine exactly as ``training.pretrain`` does (bf16, ZeRO stage 3, torch AdamW), takes one
training step, and then counts, from the engine's own tensors, the bytes of its parameter
partition (bf16), its fp32 master partition, its Adam moments and its gradient partition. It
also counts every live tensor storage in the process once, which includes DeepSpeed's buffers.
The ideal is the world-size-1 figure divided by the world size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import machine, write_results


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def _live_tensor_bytes() -> int:
    gc.collect()
    return _bytes(o for o in gc.get_objects() if isinstance(o, torch.Tensor))


def worker(preset: str, out: str) -> None:
    from training.config import ModelConfig, PretrainConfig
    from training.distributed import init_distributed
    from training.masking import masks_for_batch
    from training.modalities.image import ImageInputConfig, geometry
    from training.modalities.image_patches import patchify
    from training.pretrain import _build_engine, make_plan

    info = init_distributed("cpu")
    cfg = PretrainConfig(
        train_shards="-", out_dir="-", input=ImageInputConfig(224, 16),
        model=ModelConfig(preset=preset), batch_size=2, steps=1, precision="bf16", zero_stage=3,
    )  # fmt: skip
    g = geometry(cfg.input)
    engine = _build_engine(cfg, make_plan(cfg, info.world_size, 1000), info, g)
    tokens = patchify(torch.randn(2, 3, 224, 224, dtype=torch.bfloat16), 16)
    mask = masks_for_batch(0, 0, ["a", "b"], g.num_tokens, 0.75)
    loss = engine(tokens, mask)
    engine.backward(loss)
    engine.step()
    opt = engine.optimizer
    params = [p for p in engine.module.parameters()]
    parts = {
        "parameters (bf16 partition)": _bytes(p.ds_tensor for p in params),
        "fp32 master partition": _bytes(opt.fp32_partitioned_groups_flat),
        "Adam moments": _bytes(v for s in opt.optimizer.state.values() for v in s.values()),
        "gradient partition": _bytes(getattr(opt, "averaged_gradients", {}).get(0, []) or [])
        or _bytes([getattr(opt, "grad_partitions_flat_buffer", None)]),
    }
    result = {
        "rank": info.rank,
        "world_size": info.world_size,
        "model_parameters": sum(p.ds_numel for p in params),
        "parts": parts,
        "param_grad_optimizer_bytes": sum(parts.values()),
        "all_live_tensor_bytes": _live_tensor_bytes(),
    }
    Path(out).with_name(f"{Path(out).stem}-rank{info.rank}.json").write_text(json.dumps(result))


def run_world(preset: str, ranks: int, tmp: Path) -> list[dict]:
    from cluster.local import free_port

    out = tmp / f"w{ranks}.json"
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
        "--master_port", str(free_port()), "--module", "benchmarks.zero3_memory",
        "--worker", str(out), "--preset", preset,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return [json.loads(p.read_text()) for p in sorted(tmp.glob(f"w{ranks}-rank*.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="base")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="results/zero3_memory")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.preset, args.worker)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        worlds = {n: run_world(args.preset, n, Path(tmp)) for n in (1, 2)}
    one = worlds[1][0]
    gib = 2**30
    table = [
        f"MAE ViT-{args.preset}/16 + 8x512 decoder ({one['model_parameters'] / 1e6:.1f} M "
        f"parameters), bf16, ZeRO-3, gloo on CPU; {machine()['cpu']}",
        "",
        "| world size | rank | parameters | fp32 master | Adam moments | gradients | sum | ideal (1/world) | all live tensors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, ranks in worlds.items():
        for r in ranks:
            p = list(r["parts"].values())
            table.append(
                f"| {n} | {r['rank']} | "
                + " | ".join(f"{v / gib:.2f} GiB" for v in p)
                + f" | {r['param_grad_optimizer_bytes'] / gib:.2f} GiB"
                f" | {one['param_grad_optimizer_bytes'] / n / gib:.2f} GiB"
                f" | {r['all_live_tensor_bytes'] / gib:.2f} GiB |"
            )
    write_results(args.out, f"{args.preset}", {"worlds": worlds}, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
