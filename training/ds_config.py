"""The DeepSpeed config of a pretraining job, generated from its typed config.

ZeRO stage (``pretrain.zero_stage``; unset means the stage of the checkpoint being resumed, else
by model size, :func:`zero_stage_for`):

* **2 for every ViT preset**; MAE-scale projects run DDP or ZeRO-1 (EVA's 1B ViT used ZeRO-1),
  and ZeRO-2 is ZeRO-1 with gradients partitioned too. ViT-B's whole training state (bf16 weights and gradients, fp32 master, Adam moments:
  16 bytes a parameter) is 1.8 GiB and ViT-H's 10.5 GiB, a fraction of any training GPU. ZeRO-2
  partitions gradients and optimizer state and reduce-scatters gradients in buckets while
  backward runs; parameters stay whole, so the forward pass gathers nothing.
* **3 where the state does not fit**: above :data:`ZERO3_ABOVE_BYTES` of training state.
  ZeRO-3 gathers every layer's parameters on every micro step and hooks every module, which also
  keeps ``torch.compile`` out.

Bucket sizes follow the model: DeepSpeed's defaults (5e8 elements) are larger than ViT-B and
ViT-L, which turns the gradient reduction into one bucket sent after backward ends, with nothing
to overlap it with. An eighth of the model per bucket lets the first buckets travel while
backward still runs (DDP's 25 MB bucket is the same idea).

With gradient accumulation under bf16, gradients accumulate in fp32 at every ZeRO stage
(``grad_accum_dtype``): a sum of many bf16 micro-step gradients loses their low bits.

bf16 runs without DeepSpeed's overflow check (``check_grad_overflow``): it all-reduces a flag
and reads it on the host every step, a second synchronisation beside the step's one all-reduce
(``training.distributed.StepAgreement``), which already carries a non-finite flag. The check
skipped a step with an inf/NaN gradient silently; now a non-finite loss rolls the run back to
its last complete checkpoint without that step's batches (training.rollback), and past
``rollback.tries`` ends it (exit 3) with the checkpoint kept. A non-finite gradient under a
finite loss shows as a non-finite loss one step later.
"""

from __future__ import annotations

from typing import Any

from training.config import PretrainConfig

STATE_BYTES_PER_PARAMETER = 16  # bf16 weight + bf16 gradient + fp32 master + two fp32 moments
ZERO3_ABOVE_BYTES = 24 * 2**30  # whole-state size above which parameters are partitioned too
MIN_BUCKET = 2**22  # elements: below this a collective is mostly latency
MAX_BUCKET = 5 * 10**8  # DeepSpeed's own default


def parameter_count(cfg: PretrainConfig) -> int:
    """Parameters of the model that ``cfg`` builds, counted on the meta device (nothing allocated)."""
    import torch

    from training.modalities import modality

    m = modality(cfg.modality)
    with torch.device("meta"):
        model = m.objective.build_model(cfg.model, m.geometry(cfg.input), cfg.mask.kind)
    return sum(p.numel() for p in model.parameters())


def zero_stage_for(parameters: int) -> int:
    """The ZeRO stage a model of ``parameters`` runs under when ``zero_stage`` is unset."""
    return 3 if parameters * STATE_BYTES_PER_PARAMETER > ZERO3_ABOVE_BYTES else 2


def resolved_zero_stage(cfg: PretrainConfig) -> int:
    """``cfg.zero_stage``, or the stage its model's size calls for when unset."""
    if cfg.zero_stage is not None:
        return cfg.zero_stage
    return zero_stage_for(parameter_count(cfg))


def bucket_elements(parameters: int) -> int:
    """Elements per gradient-reduction / all-gather bucket: an eighth of the model, clamped."""
    return int(min(MAX_BUCKET, max(MIN_BUCKET, parameters // 8)))


def deepspeed_config(
    cfg: PretrainConfig,
    world_size: int,
    on_cuda: bool,
    zero_stage: int,
    parameters: int,
    load_universal: bool = False,
) -> dict[str, Any]:
    """ZeRO stage, buckets, precision, batch geometry and clipping; ``cfg.deepspeed`` is merged
    on top.

    The optimizer and scheduler are ours (torch AdamW, warmup-cosine), handed to
    ``deepspeed.initialize`` as objects, so the same code runs on CPU and CUDA without
    DeepSpeed's compiled optimizer ops.
    """
    bucket = bucket_elements(parameters)
    zero: dict[str, Any] = {
        "stage": zero_stage,
        "overlap_comm": on_cuda,
        "contiguous_gradients": True,
        "reduce_bucket_size": bucket,
    }
    if zero_stage in (1, 2):
        zero["allgather_bucket_size"] = bucket
    if zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = bucket
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16", "check_grad_overflow": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16" and cfg.grad_accum > 1 and zero_stage > 0:
        config["data_types"] = {"grad_accum_dtype": "fp32"}
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
