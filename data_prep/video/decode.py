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

import logging
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from data_prep.store import decoder_source
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
    source, size = decoder_source(path)
    if size == 0:
        raise SkipSample("empty_video", str(path))
    try:
        container = av.open(source)
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise SkipSample("unreadable_video", f"{path}: {err}") from None
    with container:
        if not container.streams.video:
            raise SkipSample("no_video_stream", str(path))
        stream = container.streams.video[0]
        stream.thread_count = 1  # a Ray task has one CPU; FFmpeg's threads only contend
        frames, broken = _decode_frames(container, stream, short_side)
        if not broken and 0 < len(frames) < stream.frames:  # the index promised more
            broken = f"{len(frames)} of {stream.frames} frames"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        source = (stream.codec_context.width, stream.codec_context.height)
    if not frames:
        raise SkipSample("no_frames", f"{path}: {broken}" if broken else str(path))
    video = DecodedVideo(np.stack(frames), fps, source)
    if broken:
        log.info("%s: kept %d frames before the damage (%s)", path, len(frames), broken)
        video.conversions.append("truncated_video")
    return video


def _decode_frames(container, stream, short_side: int) -> tuple[list[np.ndarray], str]:
    """The decoded RGB frames, and the error that ended decoding early ('' when none)."""
    frames: list[np.ndarray] = []
    size = None
    try:
        for frame in container.decode(stream):
            if size is None:
                size = scaled_size(frame.width, frame.height, short_side)
            frames.append(
                frame.to_ndarray(
                    width=size[0], height=size[1], format="rgb24", interpolation="AREA"
                )
            )
    except (av.FFmpegError, ValueError) as err:
        return frames, str(err)
    return frames, ""
