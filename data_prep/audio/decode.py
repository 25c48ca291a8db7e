"""Reading source audio as the prep needs it, and writing the FLAC members of audio samples.

Sources are decoded by libsndfile (``soundfile``, whose wheel bundles it): FLAC, WAV, OGG. What
cannot be read raises :class:`~data_prep.writer.SkipSample` with a reason the prep counts: an
empty file, a truncated one (the decoder loses sync, or yields fewer frames than the header
promises), anything else libsndfile refuses. Audio at another rate or with more channels is
converted to 16 kHz mono (``data_prep.audio.resample``, a polyphase windowed sinc) and the conversion
is named so the prep counts it too.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any

import numpy as np
import soundfile as sf

from data_prep.audio.resample import resample
from data_prep.store import decoder_source
from data_prep.writer import SkipSample

RATE = 16000


def read_audio(path: Any) -> tuple[np.ndarray, int]:
    """float32 ``[frames, channels]`` and the sample rate of a source file (a path, or a
    ``UPath`` of an object in a store, fetched whole: libsndfile seeks), or SkipSample."""
    source, size = decoder_source(path)
    if size == 0:
        raise SkipSample("empty_audio", str(path))
    try:
        promised = sf.info(source).frames
        if not isinstance(source, str):
            source.seek(0)
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        reason = "truncated_audio" if "lost sync" in str(err) else "unreadable_audio"
        raise SkipSample(reason, f"{path}: {err}") from None
    if 0 < promised != len(data):  # FLAC's header gives the length; a short read is truncation
        raise SkipSample("truncated_audio", f"{path}: {len(data)} of {promised} frames")
    if len(data) == 0:
        raise SkipSample("empty_audio", str(path))
    return data, rate


def audio_info(path: Any) -> tuple[int, int]:
    """``(frames, rate)`` from a source file's header (a store's object is opened for ranged
    reads, not fetched), or SkipSample."""
    try:
        with _opened(path) as f:
            return f.frames, f.samplerate
    except sf.LibsndfileError as err:
        raise SkipSample("unreadable_audio", f"{path}: {err}") from None


def read_span(path: Any, start: int, stop: int) -> tuple[np.ndarray, int]:
    """float32 ``[frames, channels]`` of source frames ``[start, stop)`` and the rate: what a
    task cutting one piece of a long chapter decodes (libsndfile seeks to ``start``; FLAC's
    seek table or a bisection), or SkipSample when the file ends or breaks inside the span."""
    try:
        with _opened(path) as f:
            f.seek(start)
            data = f.read(stop - start, dtype="float32", always_2d=True)
            rate = f.samplerate
    except sf.LibsndfileError as err:
        # a span past a truncation: the decoder loses sync, or the seek finds no frame
        cut = "lost sync" in str(err) or "fseek" in str(err)
        raise SkipSample(
            "truncated_audio" if cut else "unreadable_audio", f"{path}: {err}"
        ) from None
    if len(data) < stop - start:
        raise SkipSample(
            "truncated_audio", f"{path}: frames {start}-{stop} end at {start + len(data)}"
        )
    return data, rate


@contextlib.contextmanager
def _opened(path: Any) -> Iterator[sf.SoundFile]:
    if isinstance(path, str | PurePath):
        with sf.SoundFile(str(path)) as f:
            yield f
        return
    with path.open("rb") as raw, sf.SoundFile(raw) as f:  # fsspec: ranged reads as it seeks
        yield f


def to_mono_16k(data: np.ndarray, rate: int) -> tuple[np.ndarray, list[str]]:
    """float32 ``[frames, channels]`` at ``rate`` -> float32 ``[samples]`` at 16 kHz, and what
    was converted (``downmixed_channels``, ``resampled_<rate>``)."""
    conversions = []
    if data.shape[1] > 1:
        conversions.append("downmixed_channels")
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != RATE:
        conversions.append(f"resampled_{rate}")
        mono = resample(mono, rate, RATE).astype(np.float32)
    return mono, conversions


def flac_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit FLAC of float32 mono ``samples`` (clipped to [-1, 1])."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
