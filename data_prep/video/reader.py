"""The video modality's corpus reader: Kinetics, Something-Something or class-folder videos ->
fixed-length clips, each one sample.

A video is decoded once (``data_prep.video.decode``, PyAV), its shorter side resized to
``short_side``, and cut into up to ``clips_per_video`` clips of ``frames`` frames every ``stride``
source frames, spread evenly over it (``data_prep.video.clips``). Each clip is stored in the form
the training loader decodes fastest (``data_prep.video.codecs``; ``clip_format``), so training
never touches the source videos. Each sample is ``<video>_clipNN.<form>``, ``.cls`` (class index)
and ``.json`` (label, source, video, clip, first frame, stride, fps, sizes).

Unusable inputs are counted by reason in ``stats.json`` (``missing_file``, ``empty_video``,
``unreadable_video``, ``no_video_stream``, ``no_frames``, ``too_short``) and repairs under
``converted`` (``truncated_video``: kept up to the damage; ``padded_short_video``: a video shorter
than one clip, its last frame repeated, when ``pad_short`` is on).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.corpus import SHARD_BYTES, TASK_BYTES, CorpusReader, prep_problems
from data_prep.job import run_prep
from data_prep.plan import piece_range
from data_prep.store import location
from data_prep.video.clips import ClipPlan, plan_clips, span
from data_prep.video.codecs import DEFAULT_FORM, FORMS, clip_key, encode_clip
from data_prep.video.decode import KeptFrames, read_frames, read_piece_frames
from data_prep.video.demo import VideoDemoConfig, write_video_demo
from data_prep.video.layout import (
    VIDEO_EXTENSIONS,
    VideoItem,
    class_names,
    is_layout_file,
    split_items,
)
from data_prep.writer import Converted, Sample, SkipSample


@dataclass
class VideoPrepConfig:
    """``prep`` section: where the videos are, how clips are cut and stored, how to shard."""

    source: str = "???"
    out: str = "???"
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    short_side: int = 256  # stored frames' shorter side (VideoMAE: 256, cropped to 224)
    frames: int = 16  # frames per clip
    stride: int = 4  # source frames between a clip's frames (VideoMAE: 4 for K400, 2 for SSv2)
    clips_per_video: int = 4  # spread evenly; fewer when the video is too short for them
    pad_short: bool = True  # a video shorter than one clip: repeat its last frame (else skip)
    clip_format: str = DEFAULT_FORM  # mjpeg | mp4 | npy.zst (data_prep.video.codecs)
    quality: int = 90  # JPEG quality; mp4: the matching CRF
    samples_per_shard: int = 200
    # a video larger than this is cut by several tasks, each a contiguous range of its clips
    # (0: a task per video)
    task_bytes: int = TASK_BYTES
    # a shard reaching this size is closed and its unit goes on in a next part (0: no limit)
    shard_bytes: int = SHARD_BYTES
    # memory each Ray task reserves (MB; 0: none): Ray runs no more tasks on a node than fit
    task_memory_mb: int = 0
    seed: int = 0
    num_cpus: int | None = None  # local Ray head size; None = every core
    # A split whose inputs failed with unexpected errors (listed in failures.jsonl) beyond
    # this share fails the prep; below it they are counted and the prep goes on.
    max_failed_share: float = 0.01
    ray_address: str | None = None  # join a running Ray cluster instead of a local head

    def problems(self):
        yield from prep_problems(self)
        if any(s not in ("train", "val") for s in self.splits):
            yield ("splits", f"a non-empty list of 'train' and/or 'val', got {self.splits}")
        if self.short_side < 16:
            yield ("short_side", f"an int >= 16 (pixels), got {self.short_side}")
        for key in ("frames", "stride", "clips_per_video"):
            if getattr(self, key) < 1:
                yield (key, f"an int >= 1, got {getattr(self, key)}")
        if self.clip_format not in FORMS:
            yield ("clip_format", f"one of {', '.join(FORMS)}, got {self.clip_format!r}")
        if self.task_bytes < 0:
            yield ("task_bytes", f"bytes >= 0 (0: a task per video), got {self.task_bytes}")
        if not 1 <= self.quality <= 100:
            yield ("quality", f"an int in [1, 100], got {self.quality}")


def items(cfg: VideoPrepConfig, split: str) -> Iterator[VideoItem]:
    return split_items(location(cfg.source), split, cfg.task_bytes)


def labels(cfg: VideoPrepConfig) -> list[dict]:
    return [{"index": i, "name": n} for i, n in enumerate(class_names(location(cfg.source)))]


def fit(cfg: VideoPrepConfig, train_items) -> dict:
    return {"classes": {name: i for i, name in enumerate(class_names(location(cfg.source)))}}


def encode(cfg: VideoPrepConfig, state: dict, item: VideoItem) -> Iterator:
    """One video (or one range of a long video's clips) -> its clips, with what was repaired;
    a SkipSample for what cannot be used."""
    if item.problem:
        raise SkipSample(item.problem, item.path)
    label = state["classes"].get(item.label)
    if label is None:
        raise SkipSample("unknown_label", f"{item.path}: {item.label!r} is not a train class")

    def wanted(count: int) -> set[int]:
        """The frames of this item's range of the clips a video of ``count`` frames gives."""
        clips = _plan(cfg, count).clips
        lo, hi = piece_range(len(clips), item.part, item.parts)
        return {i for clip in clips[lo:hi] for i in clip}

    read = read_frames if item.parts == 1 else read_piece_frames
    video = read(item.file, cfg.short_side, wanted)
    for reason in video.conversions:  # a piece that finds a cut counts it (each such piece)
        yield Converted(reason)
    plan = _plan(cfg, video.count)
    if not plan.clips:
        if item.part > 0:
            return  # the video is counted once, by its first piece
        needed = span(cfg.frames, cfg.stride)
        raise SkipSample("too_short", f"{item.path}: {video.count} frames < {needed}")
    lo, hi = piece_range(len(plan.clips), item.part, item.parts)
    if plan.padded and hi > lo:
        yield Converted("padded_short_video")
    for k in range(lo, hi):
        yield _clip_sample(cfg, item, video, label, k, plan.clips[k])


def _plan(cfg: VideoPrepConfig, count: int) -> ClipPlan:
    return plan_clips(count, cfg.frames, cfg.stride, cfg.clips_per_video, cfg.pad_short)


def _clip_sample(cfg, item: VideoItem, video: KeptFrames, label: int, k: int, indices) -> Sample:
    """Clip ``k`` of a video: its frames in the configured form, its class and its record."""
    clip = video.clip(indices)
    meta = {
        "label": item.label,
        "source": item.path,
        "video": item.key,
        "clip": k,
        "first_frame": indices[0],
        "stride": cfg.stride,
        "fps": round(video.fps, 3),
        "width": int(clip.shape[2]),
        "height": int(clip.shape[1]),
        "source_size": list(video.source_size),
    }
    return Sample(
        key=clip_key(item.key, k),
        members={
            cfg.clip_format: encode_clip(clip, cfg.clip_format, cfg.quality, video.fps),
            "cls": str(label).encode(),
            "json": json.dumps(meta).encode(),
        },
    )


READER = CorpusReader(
    modality="video",
    layout="Kinetics: train.csv/validate.csv + <youtube_id>_<start>_<end>.mp4; "
    "Something-Something v2: *-labels.json, *-train.json, *-validation.json + <id>.webm; "
    "or train/<class>/<video> and val/<class>/<video>",
    config=VideoPrepConfig,
    items=items,
    fit=fit,
    encode=encode,
    labels=labels,
    demo_config=VideoDemoConfig,
    write_demo=write_video_demo,
    input_file=lambda cfg, item: str(item.file),
    reads_format=lambda name: Path(name).suffix.lower() in VIDEO_EXTENSIONS,
    layout_file=is_layout_file,
    # the layout is walked and each video read through fsspec (fetched whole: demuxers seek;
    # a piece of a long video by ranged reads)
    reads_stores=True,
)


def prep_video(cfg: VideoPrepConfig) -> dict[str, dict]:
    """Prepare every configured split; returns ``{split: stats}``. Fails fast on a bad source."""
    return run_prep(READER, cfg)
