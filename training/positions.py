"""Fixed sine-cosine position embeddings over a token grid of any rank (pure functions).

A grid is the number of tokens along each axis: ``(n,)`` for a sequence, ``(rows, cols)`` for
image patches or spectrogram patches, ``(time, rows, cols)`` for video tubelets. Each axis gets an
equal share of the channels (sines then cosines of the axis coordinate at MAE's frequencies); the
last axis comes first, so a square 2-D grid gives exactly MAE's ``get_2d_sincos_pos_embed``.
Channels that do not divide evenly among the axes are zero.
"""

from __future__ import annotations

import math

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[len(positions), dim]`` sines then cosines; ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"a 1-D sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = positions.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_positions(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """``[prod(grid), dim]`` fixed embedding of a row-major token grid (no cls row)."""
    axes = len(grid)
    if axes == 0 or any(g < 1 for g in grid):
        raise ValueError(f"grid must have at least one axis, each >= 1, got {grid}")
    share = (dim // axes) // 2 * 2
    if share == 0:
        raise ValueError(f"embedding dim {dim} is too small for a {axes}-axis grid")
    if axes == 2 and dim % 4:
        raise ValueError(f"embedding dim {dim} must be divisible by 4")
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    parts = [sincos_1d(share, c.reshape(-1)) for c in reversed(coords)]
    pad = dim - share * axes
    if pad:
        parts.append(torch.zeros(math.prod(grid), pad, dtype=torch.float64))
    return torch.cat(parts, dim=1).float()
