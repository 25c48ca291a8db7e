"""Typed configs of the shared downstream tasks (torch-free: read when a run YAML is loaded).

Every ``batch_size`` here is the global batch (all ranks together), so a task trains the same
whatever the world size; ``lr = base_lr * batch_size / 256`` as in MAE.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

# The pipeline stages of evaluation: ``finetune`` trains the encoder, ``probe`` reads its frozen
# features. Each task's config says its own (``STAGE``), so a new task names no table.
EVAL_STAGES = ("finetune", "probe")


def tasks_of_stage(tasks_cfg, stage: str) -> list[str]:
    """The keys of ``evaluate.tasks`` (= task names) whose config runs in ``stage``."""
    return [
        f.name
        for f in dataclasses.fields(tasks_cfg)
        if getattr(getattr(tasks_cfg, f.name), "STAGE", None) == stage
    ]


@dataclass
class ProbeConfig:
    """MAE's linear probe: BatchNorm without affine + a linear head on the frozen encoder's
    pooled features, LARS, warmup + cosine."""

    STAGE: ClassVar = "probe"

    enabled: bool = True
    epochs: int = 90
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256
    batch_size: int = 256
    # The most rows a rank puts through one forward; a rank's share of the global batch above it
    # runs in equal micro steps whose gradients add up (training.batching). None: all at once.
    micro_batch: int | None = None
    weight_decay: float = 0.0
    warmup_epochs: int = 10
    # MAE's recipe: a fresh augmented crop of every sample each epoch, through the frozen
    # encoder. false: features of the unaugmented samples, extracted once by every rank and
    # gathered (one forward pass per sample instead of one per sample and epoch).
    augment: bool = True
    eval_every: int = 10  # epochs between scorings of the val split (cached features: cheap)

    def problems(self):
        if self.batch_size < 2:
            yield (
                "batch_size",
                f"an int >= 2 (BatchNorm needs two samples), got {self.batch_size}",
            )
        if self.epochs < 1 or self.base_lr <= 0:
            yield ("epochs", "epochs >= 1 and base_lr > 0")
        yield from micro_batch_problems(self)
        if self.eval_every < 1:
            yield ("eval_every", f"an int >= 1 (epochs), got {self.eval_every}")


@dataclass
class KnnConfig:
    """k-NN on the frozen encoder's normalised features, temperature-weighted votes."""

    STAGE: ClassVar = "probe"

    enabled: bool = True
    k: int = 20
    temperature: float = 0.07

    def problems(self):
        if self.k < 1:
            yield ("k", f"an int >= 1, got {self.k}")
        if self.temperature <= 0:
            yield ("temperature", f"a float > 0, got {self.temperature}")


@dataclass
class FinetuneConfig:
    """MAE's fine-tuning: the whole encoder + a head, AdamW with layer-wise lr decay, warmup +
    cosine, drop path, label smoothing, and mixup / cutmix (``training.tasks.mixing``)."""

    STAGE: ClassVar = "finetune"

    enabled: bool = True
    epochs: int = 100
    base_lr: float = 5e-4  # lr = base_lr * batch_size / 256
    batch_size: int = 64
    # The most rows a rank puts through one forward; a rank's share of the global batch above it
    # runs in equal micro steps whose gradients add up (training.batching). None: all at once.
    micro_batch: int | None = None
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    warmup_epochs: int = 5
    mixup: float = 0.0  # Beta(α, α) of mixup; 0: off (MAE's recipe: 0.8)
    cutmix: float = 0.0  # Beta(α, α) of cutmix; 0: off (MAE's recipe: 1.0)
    mix_prob: float = 1.0  # chance a pair of samples is mixed at all
    switch_prob: float = 0.5  # with both on: chance of cutmix rather than mixup
    eval_every: int = 1  # epochs between scorings of the val split (the best model is kept)
    # recompute each encoder block in the backward pass: bigger batches for ~1/3 more compute
    activation_checkpointing: bool = False
    # epochs at the start in which only the head trains (the encoder's lr held at 0): a head
    # fitted to the features before they move (LP-FT, Kumar et al. 2022); 0: off
    freeze_epochs: int = 0
    # The share of the train split's labels the fine-tune sees: a seeded subset, the same for
    # every encoder fine-tuned with the run's seed (MAE's and SimCLR's semi-supervised 1% / 10%
    # protocols); epochs are over the subset. 1.0: the whole split.
    label_fraction: float = 1.0

    def problems(self):
        yield from schedule_problems(self)
        if not 0 < self.label_fraction <= 1:
            yield ("label_fraction", f"a share in (0, 1], got {self.label_fraction}")
        if not 0 <= self.drop_path < 1:
            yield ("drop_path", f"a float in [0, 1), got {self.drop_path}")
        if self.mixup < 0 or self.cutmix < 0:
            yield ("mixup", f"mixup and cutmix alphas >= 0, got {self.mixup}, {self.cutmix}")
        for name in ("mix_prob", "switch_prob", "label_smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                yield (name, f"a float in [0, 1], got {getattr(self, name)}")
        if self.eval_every < 1:
            yield ("eval_every", f"an int >= 1 (epochs), got {self.eval_every}")


@dataclass
class CtcConfig:
    """CTC fine-tuning on transcribed utterances: the whole encoder + a character head, scored by
    word error rate with greedy decoding."""

    STAGE: ClassVar = "finetune"

    enabled: bool = True
    epochs: int = 30
    base_lr: float = 1e-3  # lr = base_lr * batch_size / 256
    batch_size: int = 32
    # The most rows a rank puts through one forward; a rank's share of the global batch above it
    # runs in equal micro steps whose gradients add up (training.batching). None: all at once.
    micro_batch: int | None = None
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    # Output steps per patch column: 16x16 patches give one column per 160 ms, too coarse for
    # characters (a letter of read speech lasts ~70 ms); 4 gives 40 ms steps.
    upsample: int = 4
    eval_every: int = 1  # epochs between scorings of the val split (the best model is kept)
    # SpecAugment at patch resolution, in training only: the share of each clip's time columns
    # and of its frequency rows whose patches are zeroed (the normalised spectrogram's mean).
    # AudioMAE fine-tunes with 0.2-0.3 of each; 0: off.
    mask_time: float = 0.0
    mask_freq: float = 0.0
    # epochs at the start in which only the head trains (the encoder's lr held at 0), as
    # wav2vec 2.0 fine-tunes with CTC (its transformer frozen for the first updates); 0: off
    freeze_epochs: int = 0

    def problems(self):
        yield from schedule_problems(self)
        if self.upsample < 1:
            yield ("upsample", f"an int >= 1, got {self.upsample}")
        for name in ("mask_time", "mask_freq"):
            if not 0 <= getattr(self, name) < 1:
                yield (name, f"a share in [0, 1), got {getattr(self, name)}")
        if self.eval_every < 1:
            yield ("eval_every", f"an int >= 1 (epochs), got {self.eval_every}")


def schedule_problems(cfg):
    """The checks of every task that trains the encoder: batch, epochs, layer-wise lr decay."""
    if cfg.batch_size < 1 or cfg.epochs < 1:
        yield (
            "batch_size",
            f"batch_size and epochs must be >= 1, got {cfg.batch_size}, {cfg.epochs}",
        )
    if not 0 < cfg.layer_decay <= 1:
        yield ("layer_decay", f"a float in (0, 1], got {cfg.layer_decay}")
    if not 0 <= cfg.freeze_epochs < max(1, cfg.epochs):
        yield ("freeze_epochs", f"an int in [0, epochs), got {cfg.freeze_epochs}")
    yield from micro_batch_problems(cfg)


def micro_batch_problems(cfg):
    if cfg.micro_batch is not None and cfg.micro_batch < 1:
        yield ("micro_batch", f"an int >= 1 or null, got {cfg.micro_batch}")
