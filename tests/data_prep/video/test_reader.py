"""The video prep on the demo clip corpus, through the real Ray job: every usable clip lands
once, every unusable input is counted by reason, and plain webdataset reads the shards."""

import json

import numpy as np
import pytest
import webdataset as wds

from data_prep.shard_format import file_sha256, read_labels, read_manifest, read_stats, shard_urls
from data_prep.video.clips import plan_clips
from data_prep.video.codecs import decode_clip
from data_prep.video.decode import read_video
from data_prep.video.layout import split_items
from data_prep.video.reader import prep_video
from tests.conftest import video_prep_config


def _samples(prepared, split):
    return list(wds.WebDataset(shard_urls(prepared / split), shardshuffle=False))


def test_webdataset_reads_the_shards_and_the_manifest_checks_out(clips_prepared):
    for split in ("train", "val"):
        records = read_manifest(clips_prepared / split)
        for record in records:
            assert file_sha256(clips_prepared / split / record.file) == record.sha256
        samples = _samples(clips_prepared, split)
        assert len(samples) == sum(r.samples for r in records) > 0
        for s in samples:
            assert {"npy.zst", "cls", "json"} <= set(s)  # the default clip form
            meta = json.loads(s["json"])
            assert int(s["cls"]) == [c["name"] for c in read_labels(clips_prepared)].index(
                meta["label"]
            )


def test_every_usable_clip_lands_exactly_once_with_its_frames(clip_corpus, clips_prepared):
    cfg = video_prep_config(clip_corpus, clips_prepared)
    for split in ("train", "val"):
        expected = {}
        for item in split_items(clip_corpus, split):
            if item.problem or item.file.stat().st_size == 0:
                continue
            try:
                n = len(read_video(item.file, cfg.short_side).frames)
            except Exception:  # the unusable ones; counted below
                continue
            plan = plan_clips(n, cfg.frames, cfg.stride, cfg.clips_per_video, cfg.pad_short)
            expected.update({f"{item.key}_clip{k:02d}": idx for k, idx in enumerate(plan.clips)})
        samples = _samples(clips_prepared, split)
        keys = [s["__key__"] for s in samples]
        assert len(keys) == len(set(keys)) and set(keys) == set(expected)
        sample = samples[-1]  # the default form is lossless: the clip holds exactly its frames
        meta = json.loads(sample["json"])
        source = next(i for i in split_items(clip_corpus, split) if i.key == meta["video"])
        frames = read_video(source.file, cfg.short_side).frames
        wanted = frames[list(expected[sample["__key__"]])]
        assert np.array_equal(decode_clip("npy.zst", sample["npy.zst"]), wanted)
    # 65-frame demo videos hold two 29-frame clips each: 18 train videos give 36 clips at least
    assert len(_samples(clips_prepared, "train")) >= 36


def test_unusable_inputs_are_counted_by_reason(clips_prepared):
    train, val = read_stats(clips_prepared / "train"), read_stats(clips_prepared / "val")
    assert train["skipped"] == {"unreadable_video": 1, "no_video_stream": 1}
    assert train["converted"]["truncated_video"] == 1  # the mp4 cut after its index
    assert train["converted"]["padded_short_video"] >= 1  # the 6-frame clip
    assert val["skipped"] == {"missing_file": 1}  # the CSV row without its file
    assert train["inputs"] == 18 + 4 and val["inputs"] == 6 + 1


@pytest.mark.parametrize("form", ["mjpeg", "mp4"])
def test_each_clip_form_stores_the_planned_frames(clip_corpus, tmp_path, form):
    out = tmp_path / "shards"
    prep_video(video_prep_config(clip_corpus, out, clip_format=form, splits=["val"]))
    sample = _samples(out, "val")[0]
    meta = json.loads(sample["json"])
    source = next(i for i in split_items(clip_corpus, "val") if i.key == meta["video"])
    frames = read_video(source.file, 40).frames
    wanted = frames[meta["first_frame"] :: meta["stride"]][:8]
    stored = decode_clip(form, sample[form])
    assert stored.shape == wanted.shape
    error = np.abs(stored.astype(int) - wanted.astype(int)).mean()
    assert error < 6, error  # lossy, close


def test_short_videos_are_skipped_and_counted_when_padding_is_off(clip_corpus, tmp_path):
    out = tmp_path / "shards"
    stats = prep_video(video_prep_config(clip_corpus, out, pad_short=False, splits=["train"]))
    assert stats["train"]["skipped"]["too_short"] >= 1  # the 6-frame clip
    assert "padded_short_video" not in stats["train"].get("converted", {})


def test_a_long_video_is_cut_by_several_tasks_to_the_same_clips(tmp_path, monkeypatch):
    """``task_bytes``: a video over it is several tasks, each a contiguous range of its clips.
    An mp4 (frame count in its index, keyframes every 30 frames) is sought to each range; a
    webm (no count) is decoded from the start by each piece. Both give the clips one task per
    video gave, key for key and byte for byte (the default clip form is lossless)."""
    import data_prep.video.decode as decode
    import data_prep.video.demo as demo

    monkeypatch.setattr(demo, "X264_REPRODUCIBLE", {**demo.X264_REPRODUCIBLE, "g": "30"})
    rng = np.random.default_rng(0)
    scene = (rng.random((32 + 300, 48 + 300, 3)) * 255).astype(np.uint8)
    pan = np.stack([scene[k : k + 32, k : k + 48] for k in range(300)])  # 10 s at 30 fps
    demo.write_video(tmp_path / "raw" / "train" / "a" / "long.mp4", pan, 30)
    demo.write_video(tmp_path / "raw" / "train" / "b" / "long.webm", pan[:120], 30)
    seeks = []
    real = decode._seeked
    monkeypatch.setattr(decode, "_seeked", lambda *a: seeks.append(real(*a)) or seeks[-1])

    def prepared(name, task_bytes):
        cfg = video_prep_config(tmp_path / "raw", tmp_path / name, splits=["train"],
                                clips_per_video=6, task_bytes=task_bytes, num_cpus=None)  # fmt: skip
        stats = prep_video(cfg)["train"]
        return stats, {s["__key__"]: (s["npy.zst"], s["json"]) for s in _samples(tmp_path / name, "train")}  # fmt: skip

    whole_stats, whole = prepared("whole", 0)
    assert not seeks
    pieces_stats, pieces = prepared("pieces", 20_000)
    assert pieces_stats["inputs"] > 4 and whole_stats["inputs"] == 2
    assert len(whole) == 6 + 4 and pieces == whole  # 120 frames hold four 29-frame clips
    assert pieces_stats["samples"] == 10 and pieces_stats["converted"] == whole_stats["converted"]
    assert any(k is not None for k in seeks)  # the mp4's pieces were sought, not read whole
