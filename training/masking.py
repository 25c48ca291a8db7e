"""Per-sample masks over a modality's tokens, reproducible from (seed, step, sample key) (pure
functions).

A mask is made from per-sample noise: the tokens with the smallest noise stay visible. The
noise of a sample depends only on its seed, so the mask of a sample is the same on any rank,
any number of ranks and any device, and a resumed run masks exactly as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mask:
    """Which patches a batch keeps.

    ``ids_keep`` ``[B, K]``: indices of visible patches, in ascending noise order.
    ``ids_restore`` ``[B, N]``: permutation that puts ``[visible..., masked...]`` back in place.
    ``masked`` ``[B, N]``: 1.0 where a patch is hidden (the loss is taken there), else 0.0.
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    masked: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Mask:
        return Mask(*(t.to(device, non_blocking=non_blocking) for t in self._tensors()))

    def pin_memory(self) -> Mask:
        """A copy in page-locked memory, so that ``to(cuda, non_blocking=True)`` does not wait."""
        return Mask(*(t.pin_memory() for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.ids_keep, self.ids_restore, self.masked)


def num_visible(num_patches: int, ratio: float) -> int:
    """How many patches stay visible at ``ratio``; at least one."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return max(1, round(num_patches * (1.0 - ratio)))


def sample_seeds(seed: int, step: int, keys: Sequence[str]) -> list[int]:
    """One 63-bit seed per sample from (run seed, step, sample key); stable across processes."""
    seeds = []
    for key in keys:
        digest = hashlib.blake2b(f"{seed}:{step}:{key}".encode(), digest_size=8).digest()
        seeds.append(int.from_bytes(digest, "little") >> 1)
    return seeds


def sample_noise(seeds: Sequence[int], num_patches: int) -> torch.Tensor:
    """``[B, N]`` uniform noise, row ``i`` a function of ``seeds[i]`` alone."""
    gen = torch.Generator()
    rows = []
    for s in seeds:
        gen.manual_seed(s)
        rows.append(torch.rand(num_patches, generator=gen))
    return torch.stack(rows)


def random_mask(noise: torch.Tensor, ratio: float, keep: int | None = None) -> Mask:
    """MAE's random masking from per-sample noise ``[B, N]``: the ``keep`` tokens of least
    noise stay visible (by default ``num_visible(N, ratio)``)."""
    b, n = noise.shape
    keep = num_visible(n, ratio) if keep is None else keep
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    masked = torch.ones(b, n)
    masked[:, :keep] = 0
    masked = torch.gather(masked, 1, ids_restore)
    return Mask(ids_shuffle[:, :keep].contiguous(), ids_restore, masked)


def masked_ids(mask: Mask, fraction: float = 1.0) -> torch.Tensor:
    """``[B, S]`` indices of masked patches to reconstruct: all of them, or the first
    ``round(fraction * masked)`` in the mask's own random order (a random subset that a resumed
    run draws again exactly). With nothing masked, every (visible) patch."""
    n = mask.ids_restore.shape[1]
    keep = mask.ids_keep.shape[1]
    hidden = n - keep
    if hidden == 0:  # nothing masked (ratio 0): every patch is a target, as in a plain autoencoder
        return mask.ids_keep
    take = hidden if fraction >= 1.0 else min(hidden, max(1, round(fraction * hidden)))
    ids_shuffle = torch.argsort(mask.ids_restore, dim=1)
    return ids_shuffle[:, keep : keep + take]


def masks_for_batch(
    seed: int, step: int, keys: Sequence[str], num_patches: int, ratio: float
) -> Mask:
    """MAE's random masks of one batch of ``num_patches`` tokens per sample."""
    return random_mask(sample_noise(sample_seeds(seed, step, keys), num_patches), ratio)


def time_frequency_noise(seeds: Sequence[int], grid: tuple[int, int], ratio: float) -> torch.Tensor:
    """``[B, T*F]`` noise for AudioMAE's time-frequency masking over a (time, frequency) grid:
    whole time columns and frequency bands first, then random tokens inside what is left, so
    exactly ``num_visible`` tokens stay visible at any ratio (AudioMAE's own version hides a
    ratio of each axis and lets the visible count float, which a batch cannot stack).

    Each axis hides the same fraction ``1 - sqrt(visible share)``, rounded down, so the
    rectangle left holds at least the visible count; the strips get noise above any token's,
    so :func:`random_mask` hides them first."""
    t, f = grid
    keep = num_visible(t * f, ratio)
    share = 1.0 - math.sqrt(keep / (t * f))
    hide_t, hide_f = min(t - 1, math.floor(share * t)), min(f - 1, math.floor(share * f))
    gen = torch.Generator()
    rows = []
    for s in seeds:
        gen.manual_seed(s)
        noise = torch.rand(t, f, generator=gen)
        noise[torch.randperm(t, generator=gen)[:hide_t]] += 2.0
        noise[:, torch.randperm(f, generator=gen)[:hide_f]] += 2.0
        rows.append(noise.reshape(-1))
    return torch.stack(rows)


def _time_frequency_masks(seed, step, keys, geometry, ratio) -> Mask:
    if len(geometry.grid) != 2:
        raise ValueError(
            f"time-frequency masking needs a (time, frequency) grid, got {geometry.grid}"
        )
    noise = time_frequency_noise(sample_seeds(seed, step, keys), geometry.grid, ratio)
    return random_mask(noise, ratio)


def tube_noise(seeds: Sequence[int], grid: tuple[int, ...]) -> torch.Tensor:
    """``[B, T*H*W]`` noise for VideoMAE's tube masking over a (time, rows, cols) grid: one
    spatial draw per sample, ranked, and each rank's tokens ordered by time, so the tokens of
    least noise are the same spatial positions in every time step (whole tubes)."""
    t, space = grid[0], math.prod(grid[1:])
    spatial = sample_noise(seeds, space)
    rank = torch.argsort(torch.argsort(spatial, dim=1), dim=1)  # [B, H*W]
    return (rank.unsqueeze(1) * t + torch.arange(t).view(1, t, 1)).reshape(len(seeds), -1).float()


def _tube_masks(seed, step, keys, geometry, ratio) -> Mask:
    if len(geometry.grid) < 2:
        raise ValueError(f"tube masking needs a (time, ...) grid, got {geometry.grid}")
    noise = tube_noise(sample_seeds(seed, step, keys), geometry.grid)
    return random_mask(noise, ratio, keep=visible_count("tube", geometry.grid, ratio))


def visible_count(kind: str, grid: tuple[int, ...], ratio: float) -> int:
    """Tokens a mask of ``kind`` leaves visible per sample: ``num_visible`` of all tokens, or
    for tubes of each time step's tokens, times the steps (a tube is visible or not whole, so
    the share rounds per frame: 8x14x14 at 0.9 keeps 8 x 20, not 157)."""
    if kind == "tube":
        return grid[0] * num_visible(math.prod(grid[1:]), ratio)
    return num_visible(math.prod(grid), ratio)


# mask kind -> (seed, step, keys, geometry, ratio) -> Mask; a modality names the kinds it allows.
MASK_KINDS = {
    "random": lambda seed, step, keys, geometry, ratio: masks_for_batch(
        seed, step, keys, geometry.num_tokens, ratio
    ),
    "time_frequency": _time_frequency_masks,
    "tube": _tube_masks,
}


def make_masks(
    kind: str, seed: int, step: int, keys: Sequence[str], geometry, ratio: float
) -> Mask:
    """The masks of one batch of kind ``kind`` over a token ``geometry``: what the loop calls."""
    return MASK_KINDS[kind](seed, step, keys, geometry, ratio)
