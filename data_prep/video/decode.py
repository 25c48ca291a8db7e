"""Reading source videos as the prep needs them: every frame, RGB, the shorter side resized.

Decoding is FFmpeg's through PyAV (no torchvision, no decord): mp4, mkv, webm, avi, whatever
FFmpeg opens. Each frame is scaled by swscale (area filter) while it is converted to RGB, so a
10 s clip at 320 px short side holds ~100 MB, not the source's full size. What cannot be used
raises :class:`~data_prep.writer.SkipSample` with a reason the prep counts: ``empty_video``
(zero bytes), ``unreadable_video`` (FFmpeg cannot open it: a truncated mp4 whose index is lost
is one), ``no_video_stream`` (an audio-only file), ``no_frames`` (opens, decodes nothing). A
file that breaks partway is kept up to the damage and named ``truncated_video``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

from data_prep.store import decoder_source, ranged_source
from data_prep.writer import SkipSample

log = logging.getLogger(__name__)
av.logging.set_level(av.logging.PANIC)  # FFmpeg's own stderr chatter: errors reach us as raises


@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 [N, H, W, 3]
    fps: float
    source_size: tuple[int, int]  # width, height
    conversions: list[str] = field(default_factory=list)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` and both even (yuv420 encoders
    need even sizes)."""
    scale = short_side / min(width, height)
    return (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))


def read_video(path: Any, short_side: int) -> DecodedVideo:
    """Every frame of the first video stream of ``path`` (a path, or a ``UPath`` of an object in
    a store, fetched whole: demuxers seek), or SkipSample."""
    kept = read_frames(path, short_side)
    frames = np.stack([kept.frames[i] for i in range(kept.count)])
    return DecodedVideo(frames, kept.fps, kept.source_size, kept.conversions)


@dataclass
class KeptFrames:
    """A video decoded whole, of which only the frames asked for were converted and held."""

    count: int  # frames the video decoded to, kept or not
    frames: dict[int, np.ndarray]  # uint8 [H, W, 3] by frame index
    fps: float
    source_size: tuple[int, int]  # width, height
    conversions: list[str] = field(default_factory=list)

    def clip(self, indices) -> np.ndarray:
        return np.stack([self.frames[i] for i in indices])


# Frames a video of unknown length (no frame count in its index: webm, mkv) holds before it is
# decoded once more, counting first: a 10 s Kinetics clip at 256 px is ~100 MB, an hour ~38 GB.
HELD_BYTES = 1 << 30


def read_frames(path: Any, short_side: int, wanted=None) -> KeptFrames:
    """The frames of ``path`` that ``wanted(count)`` names for its frame count (every frame when
    ``wanted`` is None), or SkipSample. Only those frames are converted to RGB and held, so a
    task's memory is its clips', not its video's (before, every frame of a video was held: an
    hour of video at 256 px is ~38 GB). The count comes from the container's index; a video
    without one (webm, mkv) keeps every frame up to ``HELD_BYTES``, and past it is decoded twice,
    counted first; an index that promised more frames than decode gives (a cut file) or fewer
    is decoded once more for the frames the true count names. So the frames are the ones a
    whole decode would pick."""
    with _source(contextlib.nullcontext(decoder_source(path)), path) as source:
        return _read_frames(source, path, short_side, wanted)


def _read_frames(source, path: Any, short_side: int, wanted) -> KeptFrames:
    container, stream = _opened(source, path)
    with container:  # one open for the index's count and the decode
        promised = _frame_count(stream)
        keep = None if wanted is None or not promised else set(wanted(promised))
        held = None if wanted is None or promised else HELD_BYTES
        video, broken = _decoded(container, stream, short_side, keep, held)
    index_wrong = keep is not None and video.count != promised
    over_bound = held is not None and len(video.frames) < video.count
    if index_wrong or over_bound:  # the frames held are not those the true count names
        container, stream = _opened(source, path)
        with container:
            video, broken = _decoded(container, stream, short_side, set(wanted(video.count)))
    if not broken and 0 < video.count < promised:  # the index promised more
        broken = f"{video.count} of {promised} frames"
    if not video.count:
        raise SkipSample("no_frames", f"{path}: {broken}" if broken else str(path))
    if broken:
        log.info("%s: kept %d frames before the damage (%s)", path, video.count, broken)
        video.conversions.append("truncated_video")
    return video


def read_piece_frames(path: Any, short_side: int, wanted) -> KeptFrames:
    """What :func:`read_frames` gives, for a task cutting one range of a long video's clips:
    when the index gives the frame count and the frames' timestamps step evenly (a constant
    frame rate), the decoder seeks to the keyframe before the range's first frame and decodes
    only up to its last (an hour of video is not decoded by each of its pieces); anything else
    (no count, a timestamp off the grid, a gap, a cut before the range's end) falls back to
    decoding from the start, which picks the frames the true count names. A video in a store
    is read by ranges (``store.ranged_source``), not fetched whole by each piece."""
    with _source(ranged_source(path), path) as source:
        container, stream = _opened(source, path)
        with container:
            promised = _frame_count(stream)
            need = set(wanted(promised)) if promised else set()
            if promised and not need:  # no clip in this piece's range
                return KeptFrames(promised, {}, 25.0, (0, 0))
            kept = _seeked(container, stream, short_side, need) if need else None
        if kept is not None:
            kept.count = promised
            return kept
        log.info("%s: decoded from the start (no even frame grid to seek on)", path)
        return _read_frames(source, path, short_side, wanted)


def _seeked(container, stream, short_side: int, need: set[int]) -> KeptFrames | None:
    """The frames ``need`` names, decoded from the keyframe before the first; None when the
    frame grid cannot be trusted (the caller decodes from the start)."""
    rate, tb = stream.average_rate, stream.time_base
    decoder = container.decode(stream)
    first_frame = next(decoder, None)  # the grid's origin: frame 0
    decoder.close()
    if not rate or tb is None or first_frame is None or first_frame.pts is None:
        return None
    origin, first, last = first_frame.pts, min(need), max(need)
    # scaled as a whole decode scales every frame: by the first frame's size
    size = scaled_size(first_frame.width, first_frame.height, short_side)
    container.seek(origin + int(Fraction(first) / rate / tb), stream=stream, backward=True)
    frames: dict[int, np.ndarray] = {}
    previous = None
    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            index = Fraction(frame.pts - origin) * tb * rate
            if index.denominator != 1 or (previous is None and index > first):
                return None  # off the grid, or the seek landed past the range
            if previous is not None and index != previous + 1:
                return None  # a gap or a repeat: the grid is not the decode order
            previous = int(index)
            if previous in need:
                frames[previous] = _rgb(frame, size)
            if previous >= last:
                break
    except (av.FFmpegError, ValueError):
        return None
    if len(frames) < len(need):
        return None
    fps = float(rate)
    return KeptFrames(0, frames, fps, (stream.codec_context.width, stream.codec_context.height))


@contextlib.contextmanager
def _source(opened, path: Any) -> Iterator[Any]:
    """What the decoder opens, from ``opened`` (``(source, size)``: a store object fetched whole
    or opened for ranged reads), or SkipSample for an empty file."""
    with opened as (source, size):
        if size == 0:
            raise SkipSample("empty_video", str(path))
        yield source


def _rgb(frame, size: tuple[int, int]) -> np.ndarray:
    """A decoded frame as RGB at ``size``, swscale's area filter: every path converts alike."""
    return frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="AREA")


def _opened(source, path):
    if not isinstance(source, str):
        source.seek(0)
    try:
        container = av.open(source)
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise SkipSample("unreadable_video", f"{path}: {err}") from None
    if not container.streams.video:
        container.close()
        raise SkipSample("no_video_stream", str(path))
    stream = container.streams.video[0]
    stream.thread_count = 1  # a Ray task has one CPU; FFmpeg's threads only contend
    return container, stream


def _frame_count(stream) -> int:
    """The frame count the container's index gives (0: none given)."""
    return stream.frames


def _decoded(container, stream, short_side: int, keep, held=None) -> tuple[KeptFrames, str]:
    """Decode every frame of an opened video; convert and hold those in ``keep`` (None: all,
    and when ``held`` bytes are passed, none more: the rest only counted). Also the error that
    ended decoding early ('' when none)."""
    rate = stream.average_rate or stream.guessed_rate
    source_size = (stream.codec_context.width, stream.codec_context.height)
    frames: dict[int, np.ndarray] = {}
    count, size, total, broken = 0, None, 0, ""
    try:
        for frame in container.decode(stream):
            if size is None:
                size = scaled_size(frame.width, frame.height, short_side)
            if (keep is None or count in keep) and (held is None or total <= held):
                frames[count] = _rgb(frame, size)
                total += frames[count].nbytes
            count += 1
    except (av.FFmpegError, ValueError) as err:
        broken = str(err)
    if held is not None and total > held:
        frames = {}  # past the bound: the count is known now; the caller decodes again
    fps = float(rate) if rate else 25.0
    return KeptFrames(count, frames, fps, source_size), broken
