"""The DeepSpeed config of a pretraining job, generated from its typed config."""

from __future__ import annotations

from typing import Any

from training.config import PretrainConfig


def deepspeed_config(
    cfg: PretrainConfig, world_size: int, on_cuda: bool, load_universal: bool = False
) -> dict[str, Any]:
    """ZeRO stage, precision, batch geometry and clipping; ``cfg.deepspeed`` is merged on top.

    The optimizer and scheduler are ours (torch AdamW, warmup-cosine), handed to
    ``deepspeed.initialize`` as objects, so the same code runs on CPU and CUDA without
    DeepSpeed's compiled optimizer ops.
    """
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {
            "stage": cfg.zero_stage,
            "overlap_comm": on_cuda,
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if load_universal:  # resuming a checkpoint written by another world size
        config["checkpoint"] = {"load_universal": True}
    return _merge(config, cfg.deepspeed)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
