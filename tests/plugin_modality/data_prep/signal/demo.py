"""A demo corpus of 1-D signals: noisy sine waves, one frequency band per class, in class folders
(``train/<class>/<n>.npy``, ``val/<class>/<n>.npy``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SignalDemoConfig:
    out: str = "???"
    classes: int = 3
    train_per_class: int = 24
    val_per_class: int = 8
    length: int = 64  # samples per signal
    seed: int = 0


def write_demo(cfg: SignalDemoConfig) -> Path:
    rng = np.random.default_rng(cfg.seed)
    t = np.arange(cfg.length) / cfg.length
    for split, n in (("train", cfg.train_per_class), ("val", cfg.val_per_class)):
        for c in range(cfg.classes):
            folder = Path(cfg.out) / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                freq = 2 + 3 * c + rng.uniform(-0.5, 0.5)
                wave = np.sin(2 * np.pi * (freq * t + rng.uniform()))
                wave += 0.1 * rng.standard_normal(cfg.length)
                np.save(folder / f"{i}.npy", wave.astype(np.float32))
    return Path(cfg.out)
