"""Images <-> sequences of flattened patches (pure tensor functions).

Patch order is row-major over the patch grid and each patch is flattened as (row, col, channel),
as in the MAE reference, so decoders and visualisations agree on what a patch vector means.
"""

from __future__ import annotations

import functools

import torch

# ImageNet channel statistics: the encoder sees normalised pixels.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)*(W/p), p*p*C]``."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, p*p*C]`` -> ``[B, C, H, W]``."""
    b, n, d = patches.shape
    gh, gw = height // patch, width // patch
    if gh * gw != n:
        raise ValueError(f"{n} patches do not tile a {height}x{width} image with patch {patch}")
    c = d // (patch * patch)
    x = patches.reshape(b, gh, gw, patch, patch, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


@functools.cache
def pixel_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and std as ``[1, 3, 1, 1]`` tensors on ``device``, made once per device: a
    new tensor from Python values on a GPU is a blocking host-to-device copy, every step."""
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1).to(device)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1).to(device)
    return mean, std


def normalize_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32, scaled to [0, 1] and standardised per channel."""
    mean, std = pixel_stats(images_uint8.device)
    return (images_uint8.float() / 255.0 - mean) / std


def denormalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_pixels`, clamped to [0, 1] (for pictures)."""
    mean, std = pixel_stats(images.device)
    return (images * std + mean).clamp(0, 1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``[grid*grid, dim]`` (MAE's, no cls row)."""
    if dim % 4:
        raise ValueError(f"embedding dim {dim} must be divisible by 4")
    coords = torch.arange(grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([embed(gx), embed(gy)], dim=1).float()
