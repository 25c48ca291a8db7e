"""The signal modality: 1-D float32 signals cut into patches of ``patch`` samples, for MAE."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.modalities import Modality, TokenGeometry
from training.objectives import objective
from training.tasks.config import KnnConfig, ProbeConfig


@dataclass
class SignalInputConfig:
    length: int = 64
    patch: int = 8

    def problems(self):
        if self.patch < 1 or self.length % self.patch:
            yield ("length", f"a multiple of patch {self.patch}, got {self.length}")


@dataclass
class SignalTasksConfig:
    linear_probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(augment=False))
    knn: KnnConfig = field(default_factory=KnnConfig)


MODALITY = Modality(
    name="signal",
    unit="signals",
    objective=objective("mae"),
    members=("npy", "cls"),
    mask_kinds=("random",),
    mask_ratio=0.75,
    input_config=SignalInputConfig,
    tasks_config=SignalTasksConfig,
    geometry=lambda cfg: TokenGeometry((cfg.length // cfg.patch,), cfg.patch),
    ops_module="training.modalities.signal.ops",
)
