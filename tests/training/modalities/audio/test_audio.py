"""The audio modality beyond the shared contract: its grid, time-frequency masking, what the
encoder sees at 80% masking, decoding and normalisation, binding to the prep's statistics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from data_prep.audio.decode import flac_bytes
from data_prep.shard_format import FEATURE_STATS
from training.config import ModelConfig
from training.modalities import modality
from training.modalities.audio.bundle import AudioInputConfig, bind_input, clip_seconds, geometry
from training.modalities.audio.ops import decode, tokenize
from training.objectives.mae.masking import make_masks, time_frequency_noise
from training.objectives.mae.model import MaskedAutoencoder

AUDIO = modality("audio")


def test_the_grid_is_time_by_frequency_and_ten_seconds_give_64_time_steps():
    g = geometry(AudioInputConfig())  # AudioMAE's: 1024 frames, 16x16 patches
    assert g.grid == (64, 8) and g.values_per_token == 256
    assert clip_seconds(AudioInputConfig()) == pytest.approx(10.255)  # 1024 whole 25 ms frames
    assert AUDIO.mask_ratio == 0.8 and AUDIO.mask_kinds[0] == "random"


def test_time_frequency_masking_hides_whole_columns_and_bands():
    grid = (16, 8)
    noise = time_frequency_noise([1, 2, 3], grid, 0.8).reshape(3, *grid)
    for sample in noise:
        hidden = sample >= 2.0
        full_cols = hidden.all(dim=1).sum().item()  # time steps hidden at every frequency
        full_rows = hidden.all(dim=0).sum().item()  # bands hidden at every time step
        assert full_cols == 8 and full_rows == 4  # floor((1 - sqrt(0.2)) * 16), * 8
    g = geometry(AudioInputConfig(frames=256))
    mask = make_masks("time_frequency", 0, 0, ["a", "b"], g, 0.8)
    visible = mask.masked.reshape(2, 16, 8) == 0
    assert visible.sum(dim=(1, 2)).tolist() == [26, 26]


def test_at_ratio_08_the_encoder_sees_a_fifth_of_the_patches_and_cls():
    g = geometry(AudioInputConfig(frames=256))
    model = MaskedAutoencoder(
        ModelConfig(preset="nano", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2), g
    )
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    for kind in AUDIO.mask_kinds:
        mask = make_masks(kind, 0, 0, ["a", "b"], g, 0.8)
        model(torch.randn(2, g.num_tokens, g.values_per_token), mask)
    assert seen == [torch.Size([2, 1 + 26, 96])] * 2  # 128 patches: 26 visible + cls


def _sample(seconds: float, key: str = "k", cls: int | None = 3) -> dict:
    t = np.arange(int(seconds * 16000)) / 16000
    sample = {
        "__key__": key,
        "flac": flac_bytes((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)),
    }
    if cls is not None:
        sample["cls"] = str(cls).encode()
    return sample


def test_decode_crops_long_audio_pads_short_audio_and_normalises():
    cfg = AudioInputConfig(frames=128, mel_mean=-6.0, mel_std=4.0)
    long = [decode(cfg, _sample(4.0), random.Random(seed)).x for seed in range(3)]
    assert all(x.shape == (128, 128) for x in long)
    short = decode(cfg, _sample(0.5, cls=None), None)
    assert short.label == -1 and short.x.shape == (128, 128)
    floor = short.x[:48].min(dim=0).values  # 0.5 s = 48 frames, then the clip's noise floor
    assert (short.x[48:] == floor).all() and (short.x[:48] > floor).any()
    tokens = tokenize(cfg, torch.stack([short.x, long[0]]))
    assert tokens.shape == (2, 8 * 8, 256) and tokens.dtype == torch.float32
    assert decode(cfg, {"__key__": "bad", "flac": b"not audio"}, None) is None
    with pytest.raises(ValueError, match="mel_mean"):
        decode(AudioInputConfig(frames=128), _sample(1.0), None)


def test_bind_input_fills_the_statistics_the_prep_measured(tmp_path):
    (tmp_path / "train").mkdir()
    cfg = AudioInputConfig(frames=128)
    with pytest.raises(FileNotFoundError, match="mel_mean"):
        bind_input(cfg, str(tmp_path / "train"))
    (tmp_path / FEATURE_STATS).write_text(json.dumps({"mel_mean": -5.5, "mel_std": 3.25}))
    bound = bind_input(cfg, str(tmp_path / "train"))
    assert (bound.mel_mean, bound.mel_std) == (-5.5, 3.25)
    kept = bind_input(AudioInputConfig(mel_mean=1.0, mel_std=2.0), str(tmp_path / "train"))
    assert (kept.mel_mean, kept.mel_std) == (1.0, 2.0)
