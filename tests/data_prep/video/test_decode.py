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
    monkeypatch.setattr(decode, "_frame_count", lambda stream: 150)  # the index lies
    kept = read_frames(path, 32, _wanted)
    assert kept.count == 90 and set(kept.frames) == _wanted(90)
    assert kept.conversions == ["truncated_video"]
    assert all(np.array_equal(kept.frames[i], whole[i]) for i in kept.frames)


def test_a_piece_of_a_long_video_in_a_store_fetches_its_range_not_the_video(
    s3_bucket, tmp_path, monkeypatch
):
    """The store is a real S3-API server on loopback (moto's, the ``s3_bucket`` fixture); every
    GET's bytes are counted at s3fs's call into it. The piece that cuts the third quarter of a
    10 s mp4 (a keyframe each second) seeks to it through ranged reads: the same frames as from
    the local file, for a fraction of the file (before, each piece fetched the whole object)."""
    import s3fs
    from upath import UPath

    import data_prep.video.demo as demo
    from data_prep import store
    from data_prep.video.decode import read_piece_frames

    monkeypatch.setattr(demo, "X264_REPRODUCIBLE", {**demo.X264_REPRODUCIBLE, "g": "30"})
    rng = np.random.default_rng(2)
    local = tmp_path / "long.mp4"
    write_video(local, (rng.random((300, 48, 64, 3)) * 255).astype(np.uint8), 30)
    s3fs.S3FileSystem(skip_instance_cache=True).put_file(str(local), f"{s3_bucket}/long.mp4")
    monkeypatch.setattr(store, "RANGE_BLOCK", 8 << 10)  # the file is ~0.5 MB here, not ~1 GB
    fetched: list[int] = []
    real = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        out = await real(self, method, *args, **kwargs)
        if method == "get_object":
            fetched.append(out["ContentLength"])
        return out

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    quarter = set(range(150, 210))
    remote = read_piece_frames(UPath(f"{s3_bucket}/long.mp4"), 48, lambda count: quarter)
    there = read_piece_frames(local, 48, lambda count: quarter)
    assert set(remote.frames) == set(there.frames) == quarter
    assert all(np.array_equal(remote.frames[i], there.frames[i]) for i in quarter)
    share = sum(fetched) / local.stat().st_size
    assert 0 < share < 0.5, share
