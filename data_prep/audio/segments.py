"""Cutting a long recording into training segments from its voice activity (pure functions).

LibriLight ships each ~10-minute chapter with ``voice_activity``: ``[[start, end], ...]`` in
seconds. As LibriLight's own cutting script does, consecutive speech intervals are joined into one
segment until adding the next would pass the target length; an interval longer than the target is
split into equal pieces no longer than it. A segment spans its first interval's start to its last
interval's end, pauses between them included, so segments never overlap and every second of
voice activity lands in exactly one of them (or, for a segment shorter than ``min_seconds``, is
counted as dropped). A file without usable voice activity is cut into fixed windows instead.

Voice activity is cleaned first: intervals are clipped to the recording, empty or reversed ones
and ones wholly outside it are dropped, overlapping ones merged; each kind of repair is named in
``problems`` so the prep counts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    start: float  # seconds
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentPlan:
    segments: tuple[Span, ...]
    speech_seconds: float  # cleaned voice activity within the recording
    dropped_seconds: float  # speech in segments shorter than min_seconds, left out
    problems: tuple[str, ...]  # repairs made: counted by reason in the prep's stats


def plan_segments(
    voice_activity: Sequence[Sequence[float]] | None,
    duration: float,
    target_seconds: float,
    min_seconds: float = 0.5,
) -> SegmentPlan:
    """The segments of a recording of ``duration`` seconds (see module docstring)."""
    speech, problems = clean_intervals(voice_activity or [], duration)
    if not speech:
        windows = fixed_windows(duration, target_seconds, min_seconds)
        return SegmentPlan(tuple(windows), 0.0, 0.0, (*problems, "no_voice_activity"))
    kept, dropped = [], 0.0
    for segment, voiced in _joined(speech, target_seconds):
        if segment.seconds >= min_seconds:
            kept.append(segment)
        else:
            dropped += voiced
    total = sum(s.seconds for s in speech)
    return SegmentPlan(tuple(kept), total, dropped, tuple(problems))


def clean_intervals(
    voice_activity: Sequence[Sequence[float]], duration: float
) -> tuple[list[Span], list[str]]:
    """Sorted, non-overlapping speech intervals inside ``[0, duration]``, and the repairs."""
    problems: set[str] = set()
    spans = []
    for pair in voice_activity:
        if len(pair) != 2 or not all(isinstance(v, int | float) for v in pair):
            problems.add("malformed_interval")
            continue
        start, end = float(pair[0]), float(pair[1])
        if not end > start:
            problems.add("empty_interval")
            continue
        if end <= 0 or start >= duration:
            problems.add("interval_out_of_range")
            continue
        if start < 0 or end > duration:
            problems.add("interval_clipped")
        spans.append(Span(max(0.0, start), min(duration, end)))
    spans.sort(key=lambda s: s.start)
    merged: list[Span] = []
    for span in spans:
        if merged and span.start <= merged[-1].end:
            problems.add("intervals_overlap")
            merged[-1] = Span(merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged, sorted(problems)


def fixed_windows(duration: float, target_seconds: float, min_seconds: float) -> list[Span]:
    """Back-to-back windows of ``target_seconds``; a last one shorter than ``min_seconds`` is
    left out."""
    count = math.ceil(duration / target_seconds) if duration > 0 else 0
    windows = [
        Span(k * target_seconds, min(duration, (k + 1) * target_seconds)) for k in range(count)
    ]
    return [w for w in windows if w.seconds >= min_seconds]


def _joined(speech: list[Span], target: float):
    """(segment, seconds of speech in it): intervals joined up to ``target``, long ones split."""
    pieces: list[Span] = []
    for span in speech:
        parts = max(1, math.ceil(span.seconds / target - 1e-9))
        step = span.seconds / parts
        pieces += [
            Span(span.start + k * step, span.end if k == parts - 1 else span.start + (k + 1) * step)
            for k in range(parts)
        ]
    group: list[Span] = []
    for piece in pieces:
        if group and piece.end - group[0].start > target:
            yield Span(group[0].start, group[-1].end), sum(p.seconds for p in group)
            group = []
        group.append(piece)
    if group:
        yield Span(group[0].start, group[-1].end), sum(p.seconds for p in group)
