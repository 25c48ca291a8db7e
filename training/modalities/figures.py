"""The report's reconstruction grid, shared by the modalities: one row per sample, one column
per view (original | masked | reconstruction), no ticks, headings on the first row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
