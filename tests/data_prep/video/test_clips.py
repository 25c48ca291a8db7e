import itertools

from data_prep.video.clips import plan_clips, span


def test_span_counts_the_source_frames_a_clip_covers():
    assert span(16, 4) == 61 and span(16, 2) == 31 and span(1, 8) == 1


def test_clips_are_spread_evenly_without_overlap_and_inside_the_video():
    plan = plan_clips(300, 16, 4, max_clips=4, pad=True)
    assert len(plan.clips) == 4 and not plan.padded
    assert plan.clips[0][0] == 0 and plan.clips[-1][-1] == 299  # first and last frame used
    for clip in plan.clips:
        assert len(clip) == 16 and all(b - a == 4 for a, b in itertools.pairwise(clip))
    for a, b in zip(plan.clips, plan.clips[1:]):
        assert a[-1] < b[0]  # no source frame in two clips


def test_clip_count_is_what_fits_and_at_most_max_clips():
    assert len(plan_clips(121, 16, 4, max_clips=9, pad=True).clips) == 1  # 2 spans need 122
    assert len(plan_clips(122, 16, 4, max_clips=9, pad=True).clips) == 2
    assert len(plan_clips(10_000, 16, 4, max_clips=5, pad=True).clips) == 5


def test_one_clip_sits_in_the_middle():
    (clip,) = plan_clips(100, 16, 2, max_clips=1, pad=True).clips
    assert clip[0] == (100 - 31) // 2


def test_a_short_video_is_padded_with_its_last_frame_or_skipped():
    plan = plan_clips(10, 8, 2, max_clips=3, pad=True)
    assert plan.padded and plan.clips == ((0, 2, 4, 6, 8, 9, 9, 9),)
    assert plan_clips(10, 8, 2, max_clips=3, pad=False).clips == ()
    assert plan_clips(0, 8, 2, max_clips=3, pad=True).clips == ()
