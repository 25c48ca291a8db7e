"""What each ZeRO stage costs per step and holds per rank: 2 CPU ranks (gloo), stages 1, 2, 3, at
the quickstart's shape and at ViT-B's.

    python -m benchmarks.zero_stages [--steps 6] [--shapes quickstart base] [--out results/zero_stages]

Every (shape, stage) is a real run under the ``deepspeed`` launcher: each rank builds the engine
exactly as ``training.pretrain`` does (bf16, torch AdamW, ``training.ds_config``'s buckets),
takes two untimed steps and then ``--steps`` timed ones on fixed tokens (no loader), and reports
the median step time, the bytes of every live tensor after a step (parameters, gradients,
optimizer state and DeepSpeed's buffers; each storage counted once) and its peak resident memory.

On CPU there is no overlap of communication with compute, and gloo's all-reduce is a memory copy
through shared memory: the step times show each stage's extra work (ZeRO-3's per-layer gathers
and hooks), not the network time a GPU cluster would add. The memory columns carry over.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.common import machine, median, write_results

SHAPES = {  # name: (preset, image size, patch, decoder dim, decoder depth, batch per rank)
    "quickstart": ("nano", 64, 8, 128, 2, 32),
    "base": ("base", 224, 16, 512, 8, 4),
}


def _live_tensor_bytes() -> int:
    gc.collect()
    seen, total = set(), 0
    warnings.simplefilter("ignore", FutureWarning)  # isinstance() on torch's deprecated aliases
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.numel() and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def worker(shape: str, stage: int, steps: int, out: str) -> None:
    from training.config import ModelConfig, PretrainConfig
    from training.distributed import init_distributed
    from training.modalities.image.bundle import ImageInputConfig, geometry
    from training.modalities.image.patches import patchify
    from training.objectives.mae.masking import masks_for_batch
    from training.pretrain import _build_engine, make_plan

    preset, size, patch, dec_dim, dec_depth, batch = SHAPES[shape]
    info = init_distributed("cpu")
    cfg = PretrainConfig(
        train_shards="-", out_dir="-", input=ImageInputConfig(size, patch), batch_size=batch,
        model=ModelConfig(preset=preset, decoder_embed_dim=dec_dim, decoder_depth=dec_depth),
        steps=steps + 2, precision="bf16", zero_stage=stage,
    )  # fmt: skip
    g = geometry(cfg.input)
    engine = _build_engine(cfg, make_plan(cfg, info.world_size, 10**6), info, g, stage)
    tokens = patchify(torch.randn(batch, 3, size, size), patch).bfloat16()
    mask = masks_for_batch(0, 0, [str(i) for i in range(batch)], g.num_tokens, 0.75)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss = engine(tokens, mask)
        engine.backward(loss)
        engine.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
    result = {
        "rank": info.rank,
        "step_s": median(times),
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters()),
        "live_tensor_bytes": _live_tensor_bytes(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    Path(out).with_name(f"{Path(out).stem}-rank{info.rank}.json").write_text(json.dumps(result))


def run(shape: str, stage: int, steps: int, tmp: Path) -> list[dict]:
    from cluster.local import free_port, remove_shm_segments

    out = tmp / f"{shape}-{stage}.json"
    port = free_port()
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
        "--master_port", str(port), "--module", "benchmarks.zero_stages",
        "--worker", str(out), "--shape", shape, "--stage", str(stage), "--steps", str(steps),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    try:
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        remove_shm_segments(port)
    return [json.loads(p.read_text()) for p in sorted(tmp.glob(f"{shape}-{stage}-rank*.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="results/zero_stages")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.shape, args.stage, args.steps, args.worker)
        return 0
    results, rows = {}, []
    gib = 2**30
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            for stage in args.stages:
                ranks = run(shape, stage, args.steps, Path(tmp))
                results[f"{shape}/zero{stage}"] = ranks
                step = max(r["step_s"] for r in ranks)
                first = results[f"{shape}/zero{args.stages[0]}"]
                base = max(r["step_s"] for r in first)
                preset, size, patch, *_, batch = SHAPES[shape]
                rows.append(
                    f"| {shape} ({preset}, {size}px/{patch}, {ranks[0]['parameters'] / 1e6:.1f} M, "
                    f"batch {batch}/rank) | {stage} | {step * 1000:.0f} ms | {step / base:.2f} | "
                    f"{max(r['live_tensor_bytes'] for r in ranks) / gib:.3f} GiB | "
                    f"{max(r['peak_rss_bytes'] for r in ranks) / gib:.2f} GiB |"
                )
    table = [
        f"ZeRO stages at 2 CPU ranks (gloo, one thread each), bf16, median of {args.steps} steps "
        f"(slowest rank); {machine()['cpu']}",
        "",
        f"| shape | ZeRO | step | vs stage {args.stages[0]} | live tensors per rank | peak RSS per rank |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    write_results(args.out, "zero_stages", results, table)
    sys.stdout.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
