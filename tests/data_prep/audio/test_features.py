"""Kaldi-style log-mel filterbanks in plain torch: frame count, where a tone lands, DC removed."""

import math

import pytest
import torch

from data_prep.audio.features import (
    log_mel,
    mel_centres_hz,
    mel_filters,
    num_frames,
)


def _tone(freq: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds), dtype=torch.float64) / 16000
    return torch.sin(2 * math.pi * freq * t).float()


def test_ten_seconds_give_998_frames_of_128_bins():
    assert num_frames(160000) == 998 and num_frames(399) == 0 and num_frames(400) == 1
    features = log_mel(torch.zeros(2, 160000))
    assert features.shape == (2, 998, 128) and features.dtype == torch.float32


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 6500.0])
def test_a_tone_peaks_in_the_filter_centred_on_it(freq):
    features = log_mel(_tone(freq))
    peak = int(features.mean(dim=0).argmax())
    centres = mel_centres_hz()
    assert abs(float(centres[peak]) - freq) <= float(centres[peak + 1] - centres[peak - 1])


def test_filters_are_triangles_up_to_nyquist_and_silence_is_the_floor():
    filters = mel_filters()
    assert filters.shape == (128, 257) and float(filters.max()) <= 1.0 + 1e-6
    assert float(filters[:, -1].abs().sum()) == 0.0
    assert float(filters[-1].sum()) > 0  # the top filter reaches up to Nyquist
    silence = log_mel(torch.zeros(16000))
    assert torch.allclose(
        silence, torch.full_like(silence, math.log(torch.finfo(torch.float32).eps))
    )
    dc = log_mel(torch.full((16000,), 0.5))  # each frame's DC offset is removed
    assert torch.allclose(dc, silence)


def test_louder_audio_adds_a_constant_in_log():
    quiet, loud = log_mel(_tone(1000.0) * 0.1), log_mel(_tone(1000.0))
    peak = int(loud.mean(dim=0).argmax())
    assert float((loud - quiet)[:, peak].mean()) == pytest.approx(math.log(100.0), abs=1e-3)
