"""The report's reconstruction figure, shared by the modalities: the masked and reconstructed
token values, and a grid with one row per sample, one column per view (original | masked |
reconstruction), no ticks, headings on the first row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def masked_and_reconstructed(model, target: torch.Tensor, mask, fill: float):
    """Token values ``[B, N, P]`` of the masked input (hidden tokens set to ``fill``) and of the
    reconstruction (visible tokens pasted back, hidden ones the model's guess)."""
    _, pred = model.reconstruct(target, mask)
    if model.cfg.norm_pix_loss:  # predictions are per-patch normalised: undo with the true stats
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    m = mask.masked.unsqueeze(-1)
    return target * (1 - m) + m * fill, target * (1 - m) + pred * m


def picture_grid(columns: Sequence[tuple[str, Any]], size: tuple[float, float], **imshow):
    """A matplotlib Figure of ``columns``: (heading, array of pictures ``[N, ...]``) each;
    ``size`` is (width, height per row) in inches; ``imshow`` goes to every picture."""
    from matplotlib.figure import Figure  # only the report stage draws

    n = len(columns[0][1])
    fig = Figure(figsize=(size[0], size[1] * n))
    axes = fig.subplots(n, len(columns), squeeze=False)
    for col, (heading, pictures) in enumerate(columns):
        for row in range(n):
            ax = axes[row][col]
            ax.imshow(pictures[row], **imshow)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(heading, fontsize=9)
    fig.tight_layout()
    return fig
