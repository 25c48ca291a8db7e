"""Which frames of a video become which clips (pure functions).

A clip is ``frames`` frames taken every ``stride`` source frames (VideoMAE: 16 at stride 4 for
Kinetics, 16 at stride 2 for Something-Something), so it spans ``(frames - 1) * stride + 1``
source frames. A video gives up to ``max_clips`` clips spread evenly over its length, as many as
fit without overlapping. A video shorter than one span gives one clip whose last indices repeat
the final frame (VideoMAE's loader pads the same way), or none when padding is off.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipPlan:
    clips: tuple[tuple[int, ...], ...]  # source frame indices of each clip
    padded: bool  # the video is shorter than one clip; its clip repeats the last frame


def span(frames: int, stride: int) -> int:
    """Source frames one clip covers."""
    return (frames - 1) * stride + 1


def plan_clips(num_source: int, frames: int, stride: int, max_clips: int, pad: bool) -> ClipPlan:
    """The clips of a ``num_source``-frame video (no clip when it has no frame, or is short and
    ``pad`` is off)."""
    length = span(frames, stride)
    if num_source <= 0 or (num_source < length and not pad):
        return ClipPlan((), False)
    if num_source < length:
        clip = tuple(min(i * stride, num_source - 1) for i in range(frames))
        return ClipPlan((clip,), True)
    count = max(1, min(max_clips, num_source // length))
    room = num_source - length
    starts = [room // 2] if count == 1 else [round(k * room / (count - 1)) for k in range(count)]
    return ClipPlan(tuple(tuple(s + i * stride for i in range(frames)) for s in starts), False)
