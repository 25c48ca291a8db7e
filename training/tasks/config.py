"""Typed configs of the shared downstream tasks (torch-free: read when a run YAML is loaded)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProbeConfig:
    enabled: bool = True
    epochs: int = 90
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256
    batch_size: int = 256
    weight_decay: float = 0.0
    warmup_epochs: int = 10

    def problems(self):
        if self.batch_size < 2:
            yield (
                "batch_size",
                f"an int >= 2 (BatchNorm needs two samples), got {self.batch_size}",
            )
        if self.epochs < 1 or self.base_lr <= 0:
            yield ("epochs", "epochs >= 1 and base_lr > 0")


@dataclass
class KnnConfig:
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
    enabled: bool = True
    epochs: int = 100
    base_lr: float = 5e-4  # lr = base_lr * batch_size / 256
    batch_size: int = 64
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    warmup_epochs: int = 5

    def problems(self):
        yield from schedule_problems(self)
        if not 0 <= self.drop_path < 1:
            yield ("drop_path", f"a float in [0, 1), got {self.drop_path}")


@dataclass
class CtcConfig:
    """CTC fine-tuning on transcribed utterances: the whole encoder + a character head, scored by
    word error rate with greedy decoding."""

    enabled: bool = True
    epochs: int = 30
    base_lr: float = 1e-3  # lr = base_lr * batch_size / 256
    batch_size: int = 32
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    # Output steps per patch column: 16x16 patches give one column per 160 ms, too coarse for
    # characters (a letter of read speech lasts ~70 ms); 4 gives 40 ms steps.
    upsample: int = 4

    def problems(self):
        yield from schedule_problems(self)
        if self.upsample < 1:
            yield ("upsample", f"an int >= 1, got {self.upsample}")


def schedule_problems(cfg):
    """The checks of every task that trains the encoder: batch, epochs, layer-wise lr decay."""
    if cfg.batch_size < 1 or cfg.epochs < 1:
        yield (
            "batch_size",
            f"batch_size and epochs must be >= 1, got {cfg.batch_size}, {cfg.epochs}",
        )
    if not 0 < cfg.layer_decay <= 1:
        yield ("layer_decay", f"a float in (0, 1], got {cfg.layer_decay}")
