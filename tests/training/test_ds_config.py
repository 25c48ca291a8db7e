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
