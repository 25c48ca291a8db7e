"""Activation checkpointing: the same losses and gradients, a fraction of the activation bytes
kept for the backward pass, and a FLOP count that includes the recomputation."""

from __future__ import annotations

import copy

import pytest
import torch

from training.config import ModelConfig
from training.flops import mae_forward_flops, mae_step_flops
from training.modalities.image.bundle import ImageInputConfig, geometry
from training.objectives.mae.masking import make_masks
from training.objectives.mae.model import MaskedAutoencoder
from training.transformer import checkpoint_blocks

CFG = ModelConfig(preset="nano", decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2,
                  attention="matmul")  # fmt: skip
G = geometry(ImageInputConfig(image_size=32, patch_size=4))


def _model_and_batch():
    torch.manual_seed(0)
    model = MaskedAutoencoder(CFG, G)
    tokens = torch.randn(4, G.num_tokens, G.values_per_token)
    return model, tokens, make_masks("random", 0, 0, list("abcd"), G, 0.75)


def _saved_bytes(model, tokens, mask) -> tuple[float, int]:
    """The loss, and the bytes of every tensor autograd keeps for the backward pass."""
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens, mask)
    return loss, sum(kept)


def test_the_same_loss_and_gradients_with_drop_path_drawn_alike():
    model, tokens, mask = _model_and_batch()
    for block in model.encoder.blocks:
        block.drop_path = 0.3  # random draws: replayed in the recomputation
    light = copy.deepcopy(model)
    assert checkpoint_blocks(light) == CFG.resolved().depth + CFG.decoder_depth
    grads = []
    for m in (model, light):
        torch.manual_seed(1)
        loss = m(tokens, mask)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    (loss_a, a), (loss_b, b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_a_fraction_of_the_activations_is_kept_for_the_backward_pass():
    model, tokens, mask = _model_and_batch()
    _, full = _saved_bytes(model, tokens, mask)
    checkpoint_blocks(model)
    _, light = _saved_bytes(model, tokens, mask)
    print(f"activation bytes kept: {full} -> {light} ({full / light:.1f}x less)")
    assert light < full / 3


def test_the_flop_count_includes_the_recomputed_forward():
    from torch.utils.flop_counter import FlopCounterMode

    model, tokens, mask = _model_and_batch()
    checkpoint_blocks(model)
    with FlopCounterMode(display=False) as counter:
        model(tokens, mask).backward()
    counted = mae_step_flops(CFG, G, 0.75, 4, recompute=True)
    # within 0.3%: torch's recomputation stops early in one more place than we model (0.2%)
    assert counter.get_total_flops() == pytest.approx(counted, rel=3e-3)
    blocks = 4 * mae_forward_flops(CFG, G, 0.75, blocks_only=True)
    assert counted == mae_step_flops(CFG, G, 0.75, 4) + blocks


@pytest.mark.slow  # ~30 s of DeepSpeed runs; the gradients' equality above runs by default
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_pretraining_run_gives_the_same_losses_with_it(tmp_path, prepared, zero_stage):
    """Under DeepSpeed (one rank, fp32), ZeRO-2 and ZeRO-3 (whose hooks gather each block's
    parameters again for the recomputation): the flag changes memory and time, not the
    numbers."""
    import subprocess
    import sys

    from tests.training.test_pretrain_distributed import _config
    from training.metrics import read_metrics

    losses = []
    for flag in (False, True):
        (tmp_path / str(flag)).mkdir()
        config = _config(tmp_path / str(flag), prepared, precision="fp32", steps=3,
                         activation_checkpointing=flag, zero_stage=zero_stage)  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "training.pretrain", str(config)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"ZeRO-{zero_stage}" in proc.stderr
        losses.append([r["loss"] for r in read_metrics(tmp_path / str(flag) / "run")])
    assert len(losses[0]) == 3
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
