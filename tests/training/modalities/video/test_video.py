"""The video modality: tubelets, tube masks, crops, decoding the prep's clips, and the
multi-view test's grouping."""

import random

import numpy as np
import pytest
import torch

from data_prep.shard_format import read_shard_samples, shard_urls
from data_prep.video.codecs import encode_clip
from training.config import ModelConfig
from training.flops import mae_forward_flops
from training.modalities import modality
from training.modalities.video.bundle import VideoInputConfig, VideoTasksConfig, eval_views
from training.modalities.video.ops import (
    decode,
    eval_crop_box,
    frame_indices,
    tokenize,
    tubeletize,
    untubeletize,
)
from training.objectives.mae.masking import make_masks, visible_count
from training.objectives.mae.model import MaskedAutoencoder
from training.tasks.downstream import averaged_by_group

VIDEO = modality("video")


def test_the_default_is_videomae_tube_masking_at_0_9():
    assert VIDEO.mask_kinds[0] == "tube" and VIDEO.mask_ratio == 0.9
    g = VIDEO.geometry(VideoInputConfig())
    assert g.grid == (8, 14, 14) and g.values_per_token == 2 * 16 * 16 * 3


def test_tube_masking_at_0_9_shows_the_encoder_exactly_a_tenth_of_the_tokens():
    g = VIDEO.geometry(VideoInputConfig(num_frames=16, frame_size=160, patch_size=16))
    assert g.grid == (8, 10, 10)
    mask = make_masks("tube", 0, 5, ["a", "b", "c"], g, 0.9)
    assert mask.ids_keep.shape == (3, g.num_tokens // 10)
    assert (mask.masked.sum(dim=1) == g.num_tokens * 9 // 10).all()
    model = MaskedAutoencoder(
        ModelConfig(preset="nano", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2), g
    )
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    model(torch.randn(3, g.num_tokens, g.values_per_token), mask)
    assert seen == [torch.Size([3, 1 + 80, 96])]  # 800 tubelets: 80 visible + cls


@pytest.mark.parametrize("ratio", [0.75, 0.9, 0.95])
def test_every_time_step_of_a_tube_mask_hides_the_same_patches(ratio):
    g = VIDEO.geometry(VideoInputConfig())  # 8 x 14 x 14
    mask = make_masks("tube", 3, 7, [f"k{i}" for i in range(4)], g, ratio)
    hidden = mask.masked.reshape(4, 8, 196)
    assert (hidden == hidden[:, :1]).all()
    assert not (hidden[0, 0] == hidden[1, 0]).all()  # samples differ
    per_frame = round(196 * (1 - ratio))
    assert mask.ids_keep.shape[1] == 8 * per_frame == visible_count("tube", g.grid, ratio)


def test_flops_count_the_tubes_visible_tokens():
    g = VIDEO.geometry(VideoInputConfig())
    cfg = ModelConfig(preset="base")
    tube, rand = (mae_forward_flops(cfg, g, 0.9, kind=k) for k in ("tube", "random"))
    assert tube > rand  # 160 visible tokens against 157


def test_tubelets_are_ordered_time_row_col_with_values_frame_row_col_channel():
    cfg = VideoInputConfig(num_frames=4, frame_size=8, patch_size=4, tubelet=2)
    clips = torch.randn(1, 4, 8, 8, 3)
    tokens = tubeletize(clips, 2, 4)
    assert tokens.shape == (1, 2 * 2 * 2, 2 * 4 * 4 * 3)
    # token (time 1, row 0, col 1) = frames 2-3, rows 0-3, cols 4-7
    expected = clips[0, 2:4, 0:4, 4:8, :].reshape(-1)
    assert torch.equal(tokens[0, 1 * 4 + 0 * 2 + 1], expected)
    assert torch.equal(untubeletize(tokens, cfg), clips)


def test_evaluation_crops_take_the_shorter_sides_square_at_three_places():
    assert eval_crop_box((96, 72), "first") == (0, 0, 72, 72)
    assert eval_crop_box((96, 72), "centre") == (12, 0, 84, 72)
    assert eval_crop_box((96, 72), "last") == (24, 0, 96, 72)
    assert eval_crop_box((40, 60), "last") == (0, 20, 40, 60)  # portrait: top to bottom


def test_frames_are_resampled_evenly_when_the_model_wants_another_count():
    assert frame_indices(16, 16).tolist() == list(range(16))
    assert frame_indices(16, 8).tolist() == [0, 2, 4, 6, 9, 11, 13, 15]


def _sample(frames, form="npy.zst"):
    return {"__key__": "v_clip00", form: encode_clip(frames, form, 90), "cls": b"2"}


def test_decoding_crops_every_frame_with_one_box():
    frames = np.random.default_rng(0).integers(0, 256, (8, 40, 60, 3), dtype=np.uint8)
    cfg = VideoInputConfig(num_frames=8, frame_size=40, patch_size=8, crop_scale=[1.0, 1.0])
    centre = decode(cfg, _sample(frames), None)
    assert centre.x.shape == (8, 40, 40, 3) and centre.label == 2
    assert torch.equal(centre.x, torch.from_numpy(frames[:, :, 10:50]))  # no resize needed
    trained = decode(cfg, _sample(frames), random.Random(1))
    assert trained.x.shape == (8, 40, 40, 3) and trained.x.dtype == torch.uint8


def test_a_clip_that_does_not_decode_is_dropped_with_a_warning(caplog):
    cfg = VideoInputConfig(num_frames=8, frame_size=32, patch_size=8)
    assert decode(cfg, {"__key__": "bad", "mjpeg": b"\xff\xd8\xff junk", "cls": b"0"}, None) is None
    assert decode(cfg, {"__key__": "none", "cls": b"0"}, None) is None
    assert "cannot decode sample bad" in caplog.text


def test_the_prep_clips_decode_and_tokenize(clips_prepared):
    cfg = VideoInputConfig(num_frames=8, frame_size=32, patch_size=8)
    samples = list(read_shard_samples(shard_urls(clips_prepared / "val")[0]))
    x = torch.stack([decode(cfg, s, None).x for s in samples])
    tokens = tokenize(cfg, x)
    assert tokens.shape == (len(samples), 4 * 4 * 4, 2 * 8 * 8 * 3) and torch.isfinite(tokens).all()


def test_multi_view_scores_three_crops_and_groups_clips_by_video():
    cfg = VideoInputConfig()
    views, group = eval_views(cfg, VideoTasksConfig(multi_view=True, test_crops=3))
    assert [v.eval_crop for v in views] == ["first", "centre", "last"]
    assert group("abc_000001_000011_clip03") == "abc_000001_000011"
    assert eval_views(cfg, VideoTasksConfig()) == ([cfg], None)


def test_outputs_are_averaged_per_group_in_first_seen_order():
    out = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 6.0]])
    labels = torch.tensor([7, 8, 7, 8])
    mean, lab = averaged_by_group(out, labels, ["a", "b", "a", "b"])
    assert torch.equal(mean, torch.tensor([[0.5, 2.0], [4.0, 4.0]]))
    assert lab.tolist() == [7, 8]
