"""The generated DeepSpeed config: ZeRO stage by model size, model-sized buckets, fp32
accumulation."""

import pytest

from training.config import ModelConfig, PretrainConfig
from training.ds_config import (
    MAX_BUCKET,
    MIN_BUCKET,
    bucket_elements,
    deepspeed_config,
    parameter_count,
    resolved_zero_stage,
)
from training.modalities.image.bundle import ImageInputConfig


def _cfg(**kw) -> PretrainConfig:
    values = dict(train_shards="-", out_dir="-", steps=1, input=ImageInputConfig(224, 16))
    values.update(kw)
    return PretrainConfig(**values)


@pytest.mark.parametrize("preset", ["nano", "tiny", "small", "base", "large", "huge"])
def test_every_vit_preset_runs_under_zero2(preset):
    assert resolved_zero_stage(_cfg(model=ModelConfig(preset=preset))) == 2


def test_a_model_whose_state_does_not_fit_runs_under_zero3():
    giant = ModelConfig(preset="huge", embed_dim=2560, depth=40, num_heads=32)  # ~3.2 B
    assert parameter_count(_cfg(model=giant)) > 3e9
    assert resolved_zero_stage(_cfg(model=giant)) == 3
    assert resolved_zero_stage(_cfg(model=giant, zero_stage=1)) == 1  # asked for: kept


def test_vit_b_parameters_and_buckets_follow_the_model():
    params = parameter_count(_cfg(model=ModelConfig(preset="base")))
    assert 111e6 < params < 113e6  # MAE ViT-B/16 with its 8 x 512 decoder
    assert bucket_elements(params) == params // 8
    assert bucket_elements(1000) == MIN_BUCKET and bucket_elements(10**11) == MAX_BUCKET


def test_gradients_accumulate_in_fp32_when_accumulating_bf16_under_zero():
    cfg = _cfg(grad_accum=4)
    ds = deepspeed_config(cfg, world_size=16, on_cuda=True, zero_stage=2, parameters=112_000_000)
    zero = ds["zero_optimization"]
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert zero["stage"] == 2 and zero["overlap_comm"]
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 14_000_000
    assert ds["train_batch_size"] == 64 * 4 * 16
    assert "data_types" not in deepspeed_config(
        _cfg(grad_accum=1), 16, True, zero_stage=2, parameters=112_000_000
    )
    stage3 = deepspeed_config(cfg, 16, True, zero_stage=3, parameters=112_000_000)
    assert stage3["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "stage3_prefetch_bucket_size" in stage3["zero_optimization"]


def _step_syncs(bf16: dict) -> tuple[int, int]:
    """All-reduces and host reads (``.item()``-like) of one DeepSpeed ZeRO-2 bf16 optimizer step
    of a real engine (one gloo rank), with ``bf16`` as its bf16 section."""
    import os

    import deepspeed
    import torch
    import torch.distributed as dist
    from torch.utils._python_dispatch import TorchDispatchMode

    from cluster.local import free_port

    class Reads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "_local_scalar_dense":
                Reads.count += 1
            return func(*args, **(kwargs or {}))

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))  # fmt: skip
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": 2},
        "bf16": bf16,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config
    )  # fmt: skip
    engine.backward(engine(torch.randn(4, 8).bfloat16()).float().mean())
    reduces = []
    real = dist.all_reduce
    dist.all_reduce = lambda *a, **k: (reduces.append(1), real(*a, **k))[1]
    try:
        with Reads():
            engine.step()
    finally:
        dist.all_reduce = real
    return len(reduces), Reads.count


def test_the_generated_bf16_config_leaves_out_deepspeeds_per_step_overflow_check():
    """DeepSpeed's bf16 overflow check is one more all-reduce and host read every step, beside
    the step's own (StepAgreement, which carries a non-finite flag already): counted on a real
    engine, and off in what maskmill generates."""
    cfg = deepspeed_config(_cfg(), world_size=8, on_cuda=True, zero_stage=2, parameters=10**6)
    assert cfg["bf16"] == {"enabled": True, "check_grad_overflow": False}
    import concurrent.futures
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")  # a fresh process each: DeepSpeed keeps groups
    sections = [{"enabled": True, "check_grad_overflow": True}, cfg["bf16"]]
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
        with_check, without = pool.map(_step_syncs, sections)
    assert with_check[0] > without[0] and with_check[1] > without[1], (with_check, without)
