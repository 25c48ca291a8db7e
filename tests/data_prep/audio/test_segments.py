"""Segments from voice activity: every second of speech in exactly one segment, none twice."""

import itertools
import random

import pytest

from data_prep.audio.segments import Span, clean_intervals, fixed_windows, plan_segments


def _speech_in(segment: Span, speech: list[Span]) -> float:
    return sum(max(0.0, min(s.end, segment.end) - max(s.start, segment.start)) for s in speech)


@pytest.mark.parametrize("seed", range(20))
def test_every_second_of_voice_activity_lands_in_exactly_one_segment(seed):
    rng = random.Random(seed)
    duration = rng.uniform(60, 900)
    t, activity = rng.uniform(0, 3), []
    while t < duration + 5:  # some intervals run past the end of the recording
        length = rng.choice([rng.uniform(0.2, 4), rng.uniform(10, 40)])
        activity.append([round(t, 3), round(t + length, 3)])
        t += length + rng.uniform(0.05, 2.5)
    plan = plan_segments(activity, duration, target_seconds=16.0, min_seconds=1.0)
    speech, _ = clean_intervals(activity, duration)
    segments = list(plan.segments)
    assert all(a.end <= b.start for a, b in itertools.pairwise(segments))  # ordered, disjoint
    assert all(0 < s.seconds <= 16.0 + 1e-9 for s in segments)
    covered = sum(_speech_in(s, speech) for s in segments)
    assert covered + plan.dropped_seconds == pytest.approx(plan.speech_seconds, abs=1e-6)
    assert plan.speech_seconds == pytest.approx(sum(s.seconds for s in speech))


def test_consecutive_intervals_join_up_to_the_target_and_long_ones_split():
    plan = plan_segments([[0, 3], [4, 7], [8, 11], [12, 37]], 40.0, target_seconds=10.0)
    assert [(s.start, s.end) for s in plan.segments[:1]] == [(0.0, 7.0)]  # 11 would pass 10
    assert plan.segments[1] == Span(8.0, 11.0)
    long_parts = plan.segments[2:]
    assert len(long_parts) == 3 and all(p.seconds == pytest.approx(25 / 3) for p in long_parts)
    assert long_parts[0].start == 12.0 and long_parts[-1].end == 37.0


def test_repairs_are_named_and_a_file_without_speech_gets_fixed_windows():
    speech, problems = clean_intervals([[5, 2], [3, 4], [3.5, 6], [-1, 1], [50, 60], [9, 12]], 10.0)
    assert speech == [Span(0.0, 1.0), Span(3.0, 6.0), Span(9.0, 10.0)]
    assert problems == [
        "empty_interval",
        "interval_clipped",
        "interval_out_of_range",
        "intervals_overlap",
    ]
    plan = plan_segments([], 25.0, target_seconds=10.0, min_seconds=1.0)
    assert plan.problems == ("no_voice_activity",)
    assert plan.segments == (Span(0.0, 10.0), Span(10.0, 20.0), Span(20.0, 25.0))
    assert fixed_windows(20.5, 10.0, 1.0) == [Span(0.0, 10.0), Span(10.0, 20.0)]  # 0.5 s left out
    assert plan_segments([["a", 1]], 5.0, 10.0).problems == (
        "malformed_interval",
        "no_voice_activity",
    )


def test_segments_shorter_than_the_minimum_count_as_dropped_speech():
    plan = plan_segments([[0.0, 0.3], [20.0, 26.0]], 30.0, target_seconds=10.0, min_seconds=1.0)
    assert plan.segments == (Span(20.0, 26.0),)
    assert plan.dropped_seconds == pytest.approx(0.3)
