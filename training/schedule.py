"""Learning-rate schedule: linear warmup then half-cosine decay (pure function)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """The learning rate at optimizer step ``step`` (0-based) of ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
