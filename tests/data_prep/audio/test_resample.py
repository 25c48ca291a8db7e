"""The polyphase windowed-sinc resampler: tones survive, what lies above the new Nyquist does not."""

import numpy as np
import pytest

from data_prep.audio.resample import resample


def _tone(freq: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


@pytest.mark.parametrize(
    "src, dst", [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 16000)]
)
def test_a_tone_in_the_band_comes_out_at_the_new_rate(src, dst):
    out = resample(_tone(1000.0, src), src, dst)
    assert len(out) == -(-len(_tone(1000.0, src)) * dst // src)
    expected = _tone(1000.0, dst)[: len(out)]
    middle = slice(len(out) // 4, 3 * len(out) // 4)  # away from the edges' half filters
    assert np.abs(out[middle] - expected[middle]).max() < 2e-3


def test_what_lies_above_the_new_nyquist_is_removed_not_folded_back():
    src, dst = 44100, 16000
    out = resample(_tone(12000.0, src), src, dst)  # would alias to 4 kHz
    middle = out[len(out) // 4 : 3 * len(out) // 4]
    assert np.sqrt(np.mean(middle**2)) < 1e-3  # below -57 dB of the tone's 0.707 rms
    naive = np.interp(np.arange(len(out)) * src / dst, np.arange(44100 // 2), _tone(12000.0, src))
    assert np.sqrt(np.mean(naive[len(out) // 4 : 3 * len(out) // 4] ** 2)) > 0.1  # linear aliases


def test_channels_are_resampled_alike_and_equal_rates_pass_through():
    stereo = np.stack([_tone(500.0, 32000), _tone(700.0, 32000)])
    out = resample(stereo, 32000, 16000)
    assert out.shape == (2, 8000)
    np.testing.assert_allclose(out[1], resample(stereo[1], 32000, 16000))
    same = _tone(440.0, 16000)
    assert resample(same, 16000, 16000) is not None and np.array_equal(
        resample(same, 16000, 16000), same
    )


@pytest.mark.parametrize("src", [44100, 48000, 8000, 22050, 16000])
def test_a_span_resampled_alone_gives_the_whole_signals_samples_bit_for_bit(src):
    """What a task cutting one piece of a long chapter relies on (``input_span``)."""
    from data_prep.audio.resample import input_span

    rng = np.random.default_rng(src)
    x = rng.standard_normal(src // 2).astype(np.float32)
    whole = resample(x, src, 16000)
    for start, stop in [(0, 5), (0, len(whole)), (1234, 4321), (len(whole) - 7, len(whole))]:
        a, b, first = input_span(start, stop, len(x), src, 16000)
        assert 0 <= a <= b <= len(x)
        if stop - start < 5000:  # a short span reads a short part: its filters' reach, aligned
            assert b - a < (stop - start) * src / 16000 + 1000
        piece = resample(x[a:b], src, 16000)
        assert np.array_equal(piece[start - first : stop - first], whole[start:stop])
