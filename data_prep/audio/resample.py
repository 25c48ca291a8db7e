"""Sample-rate conversion by polyphase windowed-sinc filtering (pure numpy; no torchaudio).

The input is seen as upsampled by ``up`` (zeros between samples), low-pass filtered below the
lower of the two Nyquist frequencies, and decimated by ``down``, with ``up / down`` the reduced
ratio of the rates. Only the filter taps that meet non-zero input samples are computed: output
``n`` sits at ``n * down`` on the upsampled grid and input ``i`` at ``i * up``, so each output is
a dot product of about ``2 * zeros * max(up, down) / up`` input samples with one phase of the
filter. The filter is a sinc windowed by a Kaiser window (beta 8.6: about 80 dB of stop-band
attenuation), ``zeros`` zero crossings each side, as in resampy and libsamplerate's sinc modes.
Linear interpolation, by contrast, folds everything above the new Nyquist back into the band.
"""

from __future__ import annotations

import math

import numpy as np

ZERO_CROSSINGS = 16
KAISER_BETA = 8.6
_CHUNK = 1 << 16  # outputs computed at a time: bounds the index arrays' memory


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """``x`` (samples on the last axis) at ``dst_rate``, as float32; ``ceil(T * dst / src)``
    samples out of ``T``."""
    x = np.asarray(x, dtype=np.float32)
    if src_rate == dst_rate:
        return x
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    taps, half = sinc_filter(up, down)
    length = x.shape[-1]
    out_len = -(-length * up // down)
    flat = x.reshape(-1, length)
    out = np.empty((flat.shape[0], out_len), dtype=np.float32)
    per_output = (2 * half) // up + 2
    for start in range(0, out_len, _CHUNK):
        n = np.arange(start, min(out_len, start + _CHUNK), dtype=np.int64)
        first = -((half - n * down) // up)  # ceil((n * down - half) / up)
        acc = np.zeros((flat.shape[0], len(n)), dtype=np.float64)
        for k in range(per_output):
            i = first + k
            tap = n * down - i * up + half
            valid = (i >= 0) & (i < length) & (tap >= 0) & (tap <= 2 * half)
            weights = np.where(valid, taps[np.clip(tap, 0, 2 * half)], 0.0)
            acc += flat[:, np.clip(i, 0, length - 1)] * weights
        out[:, start : start + len(n)] = acc
    return out.reshape(*x.shape[:-1], out_len)


def input_span(start: int, stop: int, length: int, src_rate: int, dst_rate: int):
    """``(a, b, first)``: resampling input samples ``[a, b)`` of a signal of ``length`` gives,
    bit for bit, outputs ``[start, stop)`` of the whole signal's resampling, at indices
    ``start - first`` on. ``a`` is a multiple of ``down``, so the slice's outputs sit on the
    whole signal's output grid with the same filter phases, and the span reaches every tap of
    its first and last outputs: the sums are the same, term for term. What a task cutting one
    piece of a long recording decodes."""
    if src_rate == dst_rate:
        return start, stop, start
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    half = ZERO_CROSSINGS * max(up, down)
    first_input = -((half - start * down) // up)  # the lowest input output `start` weighs
    a = max(0, first_input // down * down)
    last_input = (((stop - 1) * down + half) // up) + 1  # beyond the highest `stop - 1` weighs
    return a, min(length, last_input + 1), a // down * up


def sinc_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """The low-pass filter on the upsampled grid and its half-length: cut-off at the lower
    Nyquist frequency, gain ``up`` (zero-stuffing divides the signal's level by ``up``)."""
    cutoff = 0.5 / max(up, down)  # cycles per upsampled sample
    half = ZERO_CROSSINGS * max(up, down)
    t = np.arange(-half, half + 1)
    taps = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(2 * half + 1, KAISER_BETA) * up
    return taps, half
