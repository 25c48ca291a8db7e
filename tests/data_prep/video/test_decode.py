"""Decoding a video for its clips: only the clips' frames are held, and they are the frames a
whole decode picks, whether the container's index gives the frame count (mp4) or not (webm)."""

import numpy as np
import pytest

from data_prep.video import decode
from data_prep.video.clips import plan_clips
from data_prep.video.decode import read_frames, read_video
from data_prep.video.demo import write_video


def _wanted(count: int) -> set[int]:
    return {i for clip in plan_clips(count, 8, 4, 3, True).clips for i in clip}


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_only_the_clips_frames_are_held_and_they_are_the_whole_decodes(tmp_path, ext, monkeypatch):
    rng = np.random.default_rng(0)
    frames = (rng.random((240, 32, 48, 3)) * 255).astype(np.uint8)  # 8 s at 30 fps
    path = tmp_path / f"long{ext}"
    write_video(path, frames, 30)
    whole = read_video(path, 32).frames
    # a bound below one frame: the webm (no frame count in its index) is counted first
    monkeypatch.setattr(decode, "HELD_BYTES", 1000)
    kept = read_frames(path, 32, _wanted)
    assert kept.count == len(whole) == 240
    assert set(kept.frames) == _wanted(240) and len(kept.frames) == 24  # of 240
    for i in kept.frames:
        assert np.array_equal(kept.frames[i], whole[i])


def test_an_index_that_promises_more_frames_than_decode_gives_is_decoded_again(
    tmp_path, monkeypatch
):
    """A cut mp4 whose index survived: the clips are planned over the frames it decodes to."""
    rng = np.random.default_rng(1)
    path = tmp_path / "cut.mp4"
    write_video(path, (rng.random((90, 32, 48, 3)) * 255).astype(np.uint8), 30)
    whole = read_video(path, 32).frames
    monkeypatch.setattr(decode, "_frame_count", lambda source, path: 150)  # the index lies
    kept = read_frames(path, 32, _wanted)
    assert kept.count == 90 and set(kept.frames) == _wanted(90)
    assert kept.conversions == ["truncated_video"]
    assert all(np.array_equal(kept.frames[i], whole[i]) for i in kept.frames)
