import pytest

from training.config import ModelConfig
from training.flops import block_flops, mae_forward_flops, mae_step_flops, predicted_patches
from training.modalities.image import ImageInputConfig, geometry

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
