"""The video modality: clip shards to tubelet tokens for VideoMAE.

Its configs and geometry (read when a run YAML is loaded, no torch); what it does to data is in
``video_ops``. A clip is ``num_frames`` RGB frames of ``frame_size`` squared, cut into tubelets of
``tubelet`` frames x ``patch_size`` squared pixels (VideoMAE's 2x16x16): the token grid is (time,
rows, cols), row-major, with 3-D sin-cos positions, and a tubelet's values are ordered (frame,
row, col, channel). Masking is by tubes by default (one spatial mask for every time step, so a
hidden patch cannot be copied from the next frame), at VideoMAE's 0.9. Downstream: action
classification (linear probe, k-NN, fine-tuning), optionally scored with VideoMAE's multi-view
test (every stored clip of a val video x 3 spatial crops, outputs averaged per video).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from data_prep.video.codecs import video_of
from training.modalities import Modality, TokenGeometry
from training.objectives import objective
from training.tasks.config import FinetuneConfig, KnnConfig, ProbeConfig

EVAL_CROPS = ("first", "centre", "last")  # along the longer side: left/right or top/bottom


@dataclass
class VideoInputConfig:
    """``pretrain.input``: the clip the model sees and how it becomes tubelet tokens."""

    POSITIVE: ClassVar = ("num_frames", "frame_size", "patch_size", "tubelet")

    num_frames: int = 16  # frames per clip (the prep's `frames`; others are resampled evenly)
    frame_size: int = 224  # square crop side
    patch_size: int = 16
    tubelet: int = 2  # frames per token
    # Training crop: a random box of this share of the frame's area (one box for the whole
    # clip), like VideoMAE's multi-scale crop (sides of 1-0.66 of the shorter side).
    crop_scale: list[float] = field(default_factory=lambda: [0.44, 1.0])
    # Off by default: flipping turns "moving left" into "moving right" (Something-Something's
    # reason to leave it off); on for Kinetics-like classes.
    hflip: bool = False
    eval_crop: str = "centre"  # the square of the shorter side at the first/centre/last place

    def problems(self):
        if self.patch_size < 1 or self.frame_size % self.patch_size:
            yield (
                "frame_size",
                f"a multiple of patch_size {self.patch_size}, got {self.frame_size}",
            )
        if self.tubelet < 1 or self.num_frames % self.tubelet:
            yield ("num_frames", f"a multiple of tubelet {self.tubelet}, got {self.num_frames}")
        lo, hi = [*self.crop_scale, 0, 0][:2]
        if len(self.crop_scale) != 2 or not 0 < lo <= hi <= 1:
            yield ("crop_scale", f"[low, high] with 0 < low <= high <= 1, got {self.crop_scale}")
        if self.eval_crop not in EVAL_CROPS:
            yield ("eval_crop", f"one of {', '.join(EVAL_CROPS)}, got {self.eval_crop!r}")


@dataclass
class VideoTasksConfig:
    """``evaluate.tasks``: each protocol runs on the pretrained and a random-init encoder."""

    linear_probe: ProbeConfig = field(default_factory=ProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # VideoMAE's multi-view test: every clip the prep stored of a val video (its
    # clips_per_video) x test_crops spatial crops, features / logits averaged per video.
    multi_view: bool = False
    test_crops: int = 3  # 1 (centre) or 3 (first, centre, last)

    def problems(self):
        if self.test_crops not in (1, 3):
            yield ("test_crops", f"1 or 3, got {self.test_crops}")


def geometry(cfg: VideoInputConfig) -> TokenGeometry:
    side = cfg.frame_size // cfg.patch_size
    return TokenGeometry(
        (cfg.num_frames // cfg.tubelet, side, side), cfg.tubelet * cfg.patch_size**2 * 3
    )


def eval_views(cfg: VideoInputConfig, tasks: VideoTasksConfig):
    """The input configs the val split is scored under, and what groups their outputs."""
    if not tasks.multi_view:
        return [cfg], None
    crops = EVAL_CROPS if tasks.test_crops == 3 else ("centre",)
    return [dataclasses.replace(cfg, eval_crop=c) for c in crops], video_of


MODALITY = Modality(
    name="video",
    unit="clips",
    objective=objective("mae"),
    members=("mjpeg", "mp4", "npy.zst", "cls"),
    mask_kinds=("tube", "random"),
    mask_ratio=0.9,  # VideoMAE's
    input_config=VideoInputConfig,
    tasks_config=VideoTasksConfig,
    geometry=geometry,
    ops_module="training.modalities.video.ops",
    eval_views=eval_views,
    foreign_export_problem="no class in HF or timm holds it: HF's VideoMAEModel has no cls "
    "token and computes 1-D positions over the flattened tubelet index, ours are 3-D over "
    "(time, row, col)",
)
