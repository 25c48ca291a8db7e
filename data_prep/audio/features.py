"""Log-mel filterbank features as AudioMAE computes them, in plain torch (no torchaudio).

AudioMAE feeds its encoder Kaldi-style filterbanks (``torchaudio.compliance.kaldi.fbank`` with
128 mel bins, a 25 ms Hanning window every 10 ms, no dither, no energy term). The same steps
here: frames of 400 samples every 160 at 16 kHz (only whole frames), each frame's DC offset
removed, pre-emphasis 0.97, a symmetric Hanning window, zero-padded to 512 for the FFT, power
spectrum, triangular filters equally spaced on Kaldi's mel scale (``1127 ln(1 + f / 700)``)
from 20 Hz to Nyquist, natural log floored at float32's epsilon. 10 s of audio give 998 frames.
"""

from __future__ import annotations

import functools
import math

import torch

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
N_FFT = 512  # the frame, padded to a power of two
N_MELS = 128
LOW_HZ = 20.0
PREEMPHASIS = 0.97


def num_frames(samples: int) -> int:
    """Whole frames in ``samples`` (Kaldi's ``snip_edges``)."""
    return 0 if samples < FRAME_LENGTH else 1 + (samples - FRAME_LENGTH) // FRAME_SHIFT


def log_mel(waveform: torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """float waveform ``[..., T]`` at 16 kHz -> log-mel ``[..., frames, n_mels]`` (float32)."""
    x = waveform.float()
    frames = x.unfold(-1, FRAME_LENGTH, FRAME_SHIFT)  # [..., frames, 400]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - PREEMPHASIS * previous) * _window(frames.device)
    power = torch.fft.rfft(frames, n=N_FFT).abs().pow(2)  # [..., frames, 257]
    mel = power @ mel_filters(n_mels, frames.device).T
    return mel.clamp_min(torch.finfo(torch.float32).eps).log()


def mel_scale(hz: torch.Tensor | float):
    return 1127.0 * (torch.log1p(hz / 700.0) if torch.is_tensor(hz) else math.log1p(hz / 700.0))


@functools.cache
def mel_filters(n_mels: int = N_MELS, device: torch.device | None = None) -> torch.Tensor:
    """``[n_mels, N_FFT // 2 + 1]`` triangles, equally spaced in mel from 20 Hz to Nyquist."""
    low, high = mel_scale(LOW_HZ), mel_scale(SAMPLE_RATE / 2)
    delta = (high - low) / (n_mels + 1)
    edges = low + delta * torch.arange(n_mels + 2, dtype=torch.float64)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = mel_scale(torch.arange(N_FFT // 2, dtype=torch.float64) * SAMPLE_RATE / N_FFT)[None]
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights = torch.nn.functional.pad(weights, (0, 1))  # the Nyquist bin carries no weight
    return weights.float().to(device)


def mel_centres_hz(n_mels: int = N_MELS) -> torch.Tensor:
    """Centre frequency of each mel filter, in Hz."""
    low, high = mel_scale(LOW_HZ), mel_scale(SAMPLE_RATE / 2)
    delta = (high - low) / (n_mels + 1)
    centres = low + delta * torch.arange(1, n_mels + 1, dtype=torch.float64)
    return 700.0 * (torch.exp(centres / 1127.0) - 1.0)


@functools.cache
def _window(device: torch.device) -> torch.Tensor:
    return torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float32).to(device)
