import pytest
import torch

from training.config import ModelConfig
from training.flops import (
    block_flops,
    hpm_scoring_flops,
    mae_forward_flops,
    mae_step_flops,
    predicted_patches,
)
from training.modalities.image.bundle import ImageInputConfig, geometry

VIT_B = ModelConfig(preset="base")
G = geometry(ImageInputConfig(image_size=224, patch_size=16))  # 14 x 14 patches


def test_block_flops_match_a_hand_count():
    # 197 tokens, 768-d: 12·n·d² for qkv+proj+mlp(4x) plus 4·n²·d for attention, times 2.
    n, d = 197, 768
    assert block_flops(n, d, 4.0) == 2 * n * d * d * 12 + 4 * n * n * d


def test_vit_b_encoder_matches_the_published_count():
    # DeiT / timm list ViT-B/16 at 224 as 17.6 G multiply-adds: 35.1 GFLOP per forward.
    no_decoder = mae_forward_flops(VIT_B, G, 0.0) - mae_forward_flops(VIT_B, G, 0.0, decoder=False)
    encoder = mae_forward_flops(VIT_B, G, 0.0, decoder=False)
    assert 34.5e9 < encoder < 35.6e9
    assert no_decoder > 0


def test_masking_bound_for_vit_b_with_8_block_decoder_is_under_3x():
    bound = mae_step_flops(VIT_B, G, 0.0, 1) / mae_step_flops(VIT_B, G, 0.75, 1)
    assert 1.5 < bound < 3.0


def test_cheaper_decoder_raises_the_bound():
    one_block = ModelConfig(preset="base", decoder_depth=1)
    assert mae_step_flops(one_block, G, 0.0, 1) / mae_step_flops(
        one_block, G, 0.75, 1
    ) > mae_step_flops(VIT_B, G, 0.0, 1) / mae_step_flops(VIT_B, G, 0.75, 1)


def test_step_is_three_forwards_per_sample():
    assert mae_step_flops(VIT_B, G, 0.9, 4) == pytest.approx(12 * mae_forward_flops(VIT_B, G, 0.9))


def test_decoder_options_cut_the_decoder_not_the_encoder():
    std = mae_forward_flops(VIT_B, G, 0.75)
    encoder = mae_forward_flops(VIT_B, G, 0.75, decoder=False)
    for option in (
        {"decoder_type": "cross"},
        {"decoder_predict_fraction": 0.25},
        {"decoder_type": "cross", "decoder_predict_fraction": 0.25},
    ):
        cheaper = mae_forward_flops(ModelConfig(preset="base", **option), G, 0.75)
        assert encoder < cheaper < std, option
    both = ModelConfig(preset="base", decoder_type="cross", decoder_predict_fraction=0.25)
    assert mae_forward_flops(both, G, 0.75) - encoder < 0.3 * (std - encoder)


def test_predicted_patches_follow_the_fraction_in_training_only():
    cfg = ModelConfig(preset="base", decoder_predict_fraction=0.25)
    assert predicted_patches(cfg, G, 0.75) == 37  # round(0.25 * 147)
    assert predicted_patches(cfg, G, 0.75, training=False) == 147
    assert predicted_patches(VIT_B, G, 0.0) == 196  # nothing masked: every patch


@pytest.mark.parametrize("decoder", ["self", "cross"])
def test_hpm_and_multi_mask_counts_match_torch_flop_counter(decoder):
    """HPM's step adds a forward over every token (its scoring pass) and the loss head; K masks
    per sample run the trained pass K times on the same tokens."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.objectives.mae.masking import make_masks
    from training.objectives.mae.model import MaskedAutoencoder

    cfg = ModelConfig(
        preset="nano", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
        decoder_type=decoder, attention="matmul",
    )  # fmt: skip
    g = geometry(ImageInputConfig(image_size=32, patch_size=4))
    tokens = torch.randn(2, g.num_tokens, g.values_per_token)
    for kind, per_sample in (("hpm", 1), ("random", 3), ("hpm", 2)):
        model = MaskedAutoencoder(cfg, g, predict_loss=kind == "hpm")
        mask = make_masks(kind, 0, 0, ["a", "b"], g, 0.9, per_sample=per_sample, share=0.5)
        with FlopCounterMode(display=False) as counter:
            model(tokens, mask)
        d = cfg.decoder_embed_dim
        views = 2 * per_sample
        head = 2 * predicted_patches(cfg, g, 0.9) * d if kind == "hpm" else 0
        forward = views * (mae_forward_flops(cfg, g, 0.9) + head)
        forward += 2 * hpm_scoring_flops(cfg, g) if kind == "hpm" else 0
        assert counter.get_total_flops() == forward, (kind, per_sample)
        step = mae_step_flops(cfg, g, 0.9, 2, kind=kind, per_sample=per_sample)
        assert step == 3 * views * (mae_forward_flops(cfg, g, 0.9) + head) + (
            forward - views * (mae_forward_flops(cfg, g, 0.9) + head)
        )  # the scoring pass has no backward
