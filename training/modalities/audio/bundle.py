"""The audio modality: LibriLight-style FLAC shards to log-mel patch tokens for AudioMAE.

Its configs and geometry (read when a run YAML is loaded, no torch); what it does to data is in
``audio_ops``. A clip is ``frames`` log-mel frames (128 bins, 25 ms windows every 10 ms;
``data_prep.audio.features``), normalised with the mean and std the prep measured, cut into
``patch_size`` squares over (time x frequency): the token grid is (time, frequency), row-major,
and positions are sin-cos over that rectangle. Downstream, on the labelled set: utterance
classification (linear probe, k-NN, fine-tuning) and CTC fine-tuning scored by word error rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import ClassVar

from data_prep.shard_format import FEATURE_STATS
from data_prep.store import location
from training.modalities import Modality, TokenGeometry
from training.objectives import objective
from training.tasks.config import CtcConfig, FinetuneConfig, KnnConfig, ProbeConfig

N_MELS = 128  # AudioMAE's; the prep's statistics are of these features
SAMPLE_RATE = 16000
FRAME_LENGTH, FRAME_SHIFT = 400, 160  # 25 ms, 10 ms


@dataclass
class AudioInputConfig:
    """``pretrain.input``: the clip the model sees and how it becomes patch tokens."""

    SIGNED: ClassVar = ("mel_mean",)  # log-mel values: negative is usual
    POSITIVE: ClassVar = ("frames", "patch_size", "mel_std")

    frames: int = 1024  # log-mel frames per clip (10 ms each): AudioMAE's 10.24 s
    patch_size: int = 16  # square patches over (time x frequency)
    # Feature normalisation; null: the values the prep measured (feature_stats.json beside the
    # splits), filled in when training starts and recorded in the export.
    mel_mean: float | None = None
    mel_std: float | None = None

    def problems(self):
        if N_MELS % self.patch_size:
            yield ("patch_size", f"a divisor of {N_MELS} (mel bins), got {self.patch_size}")
        elif self.frames < self.patch_size or self.frames % self.patch_size:
            yield ("frames", f"a multiple of patch_size {self.patch_size}, got {self.frames}")

    @property
    def clip_samples(self) -> int:
        """Waveform samples that make exactly ``frames`` frames."""
        return FRAME_LENGTH + (self.frames - 1) * FRAME_SHIFT


@dataclass
class AudioTasksConfig:
    """``evaluate.tasks``: each protocol runs on the pretrained and a random-init encoder."""

    linear_probe: ProbeConfig = field(default_factory=ProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ctc: CtcConfig = field(default_factory=CtcConfig)


def geometry(cfg: AudioInputConfig) -> TokenGeometry:
    p = cfg.patch_size
    return TokenGeometry((cfg.frames // p, N_MELS // p), p * p)


def clip_seconds(cfg: AudioInputConfig) -> float:
    return cfg.clip_samples / SAMPLE_RATE


def bind_input(cfg: AudioInputConfig, train_shards: str) -> AudioInputConfig:
    """Fill unset normalisation from ``feature_stats.json`` beside the train split."""
    if cfg.mel_mean is not None and cfg.mel_std is not None:
        return cfg
    path = location(train_shards).parent / FEATURE_STATS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the audio prep writes it; or set pretrain.input.mel_mean and "
            "pretrain.input.mel_std"
        )
    stats = json.loads(path.read_text())
    return replace(
        cfg,
        mel_mean=stats["mel_mean"] if cfg.mel_mean is None else cfg.mel_mean,
        mel_std=stats["mel_std"] if cfg.mel_std is None else cfg.mel_std,
    )


MODALITY = Modality(
    name="audio",
    unit="seconds of audio",
    objective=objective("mae"),
    members=("flac", "cls"),
    mask_kinds=("random", "time_frequency"),
    mask_ratio=0.8,  # AudioMAE's
    input_config=AudioInputConfig,
    tasks_config=AudioTasksConfig,
    geometry=geometry,
    ops_module="training.modalities.audio.ops",
    eval_splits=("labelled_train", "labelled_val"),
    unit_per_sample=clip_seconds,
    bind_input=bind_input,
    encoding_files=(FEATURE_STATS,),
    foreign_export_problem=None,  # a log-mel spectrogram: a one-channel picture to a ViT
)
