"""Mixup and CutMix with label smoothing (pure functions), as MAE's fine-tuning recipe uses them
through timm's ``Mixup``: per pair, with probability ``prob`` the two inputs are mixed, by CutMix
with probability ``switch_prob`` and by Mixup otherwise.

* **Mixup** (Zhang et al., 2018): ``x = λ x_a + (1 - λ) x_b``, ``λ ~ Beta(α, α)``.
* **CutMix** (Yun et al., 2019): a box of area ``(1 - λ)`` of the last two dimensions (height and
  width; for video every frame, as timm) is pasted from ``x_b``; ``λ`` is then corrected to the
  share of ``x_a`` that the clipped box left.
* **Targets**: ``λ y_a + (1 - λ) y_b`` of label-smoothed one-hots (``smoothing / classes`` off the
  label, ``1 - smoothing`` added on it), trained with soft-target cross-entropy.

Pairs are neighbours of the global batch (rows ``2i`` and ``2i + 1``; timm's ``pair`` mode pairs
row ``i`` with row ``B - 1 - i`` of one rank's batch) and each pair draws its own λ and choice
from ``(seed, step, pair)``: so the mixed batch is the same however the global batch is split
across ranks, and a resumed run redraws it exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Mix:
    mixup_alpha: float = 0.0  # 0: no mixup
    cutmix_alpha: float = 0.0  # 0: no cutmix
    prob: float = 1.0  # chance that a pair is mixed at all
    switch_prob: float = 0.5  # with both on: chance of cutmix rather than mixup

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass(frozen=True)
class PairDraw:
    kind: str  # "none" | "mixup" | "cutmix"
    lam: float  # the share of the pair's first sample in the first row's target
    box: tuple[int, int, int, int] | None = None  # cutmix: top, bottom, left, right


def smoothed_one_hot(labels: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / classes
    full = torch.full((len(labels), classes), off, device=labels.device)
    return full.scatter_(1, labels[:, None], 1 - smoothing + off)


def cutmix_box(
    height: int, width: int, lam: float, rng: random.Random
) -> tuple[tuple[int, int, int, int], float]:
    """A box of about ``(1 - lam)`` of the area, centred uniformly and clipped to the frame (as
    CutMix); returns it and λ corrected to the area actually kept."""
    cut = math.sqrt(1 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = rng.randrange(height), rng.randrange(width)
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    kept = 1 - (bottom - top) * (right - left) / (height * width)
    return (top, bottom, left, right), kept


def pair_draw(mix: Mix, seed: int, step: int, pair: int, height: int, width: int) -> PairDraw:
    """What happens to global pair ``pair`` at ``step``: a pure function of its arguments."""
    rng = random.Random(f"mix:{seed}:{step}:{pair}")
    if not mix.enabled or rng.random() >= mix.prob:
        return PairDraw("none", 1.0)
    cutmix = mix.cutmix_alpha > 0 and (mix.mixup_alpha <= 0 or rng.random() < mix.switch_prob)
    alpha = mix.cutmix_alpha if cutmix else mix.mixup_alpha
    lam = rng.betavariate(alpha, alpha)
    if not cutmix:
        return PairDraw("mixup", lam)
    box, kept = cutmix_box(height, width, lam, rng)
    return PairDraw("cutmix", kept, box)


def mixed_batch(
    x: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    smoothing: float,
    mix: Mix,
    seed: int,
    step: int,
    first_row: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One rank's rows of the global batch (``first_row`` is the global index of row 0, even)
    mixed in neighbour pairs, and their soft targets ``[B, classes]``."""
    targets = smoothed_one_hot(labels, classes, smoothing)
    if not mix.enabled:
        return x, targets
    if len(x) % 2 or first_row % 2:
        raise ValueError("mixing pairs neighbouring rows: a rank's batch must be even")
    x = x.float().clone()
    out_targets = targets.clone()
    height, width = x.shape[-2:]
    for i in range(0, len(x), 2):
        draw = pair_draw(mix, seed, step, (first_row + i) // 2, height, width)
        if draw.kind == "none":
            continue
        a, b = x[i].clone(), x[i + 1].clone()
        if draw.kind == "mixup":
            x[i] = draw.lam * a + (1 - draw.lam) * b
            x[i + 1] = draw.lam * b + (1 - draw.lam) * a
        else:
            top, bottom, left, right = draw.box
            x[i][..., top:bottom, left:right] = b[..., top:bottom, left:right]
            x[i + 1][..., top:bottom, left:right] = a[..., top:bottom, left:right]
        out_targets[i] = draw.lam * targets[i] + (1 - draw.lam) * targets[i + 1]
        out_targets[i + 1] = draw.lam * targets[i + 1] + (1 - draw.lam) * targets[i]
    return x, out_targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-Σ target · log_softmax(logits)``."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
