"""Per-sample masks over a modality's tokens, reproducible from (seed, step, sample key) (pure
functions).

A mask is made from per-sample noise: the tokens with the smallest noise stay visible. The
noise of a sample depends only on its seed, so the mask of a sample is the same on any rank,
any number of ranks and any device, and a resumed run masks exactly as an uninterrupted one.
The kinds differ only in their noise: uniform (MAE's random), whole time columns and frequency
bands first (AudioMAE), one spatial draw for every frame (VideoMAE's tubes), rectangles first
(BEiT's blocks), filtered white noise (ColorMAE's patterns). HPM's noise is completed by the
model, which hides first the tokens its loss head predicts to be hardest
(:class:`HardPatchDraw`). ``per_sample`` views of a sample take the keys of :func:`view_keys`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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
    masked = torch.ones(b, n, device=noise.device)
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


def view_keys(keys: Sequence[str], per_sample: int) -> list[str]:
    """The keys of ``per_sample`` masked views of each sample (data2vec 2.0's multi-mask), row
    ``i * per_sample + k`` the ``k``-th view of sample ``i``. The first view keeps the sample's
    own key, so one view per sample masks exactly as before."""
    return [key if k == 0 else f"{key}#{k}" for key in keys for k in range(per_sample)]


# BEiT's block-wise masking (Bao et al., 2021): rectangles of at least 16 of 196 tokens (8%),
# aspect ratio in [0.3, 1/0.3], placed until the masked count is reached; SimMIM's 32 px blocks
# over 16 px patches are the 2x2 case. On smaller grids the least block scales with the grid.
BLOCK_MIN_SHARE = 16 / 196
BLOCK_ASPECT = (0.3, 1 / 0.3)


def block_noise(seeds: Sequence[int], grid: tuple[int, int], ratio: float) -> torch.Tensor:
    """``[B, H*W]`` noise that hides rectangles first: tokens inside the blocks drawn for a
    sample get noise above 2, the others uniform noise, so :func:`random_mask` hides the blocks
    and tops up with random tokens when the last block cannot fit (the visible count is exact).
    Blocks never overshoot the count: a rectangle is placed only if it adds at most what is
    still to hide (BEiT's rule), and tries ten times before the top-up takes over."""
    h, w = grid
    n = h * w
    hide = n - num_visible(n, ratio)
    least = max(2, round(BLOCK_MIN_SHARE * n))
    lo, hi = math.log(BLOCK_ASPECT[0]), math.log(BLOCK_ASPECT[1])
    rows = []
    for s in seeds:
        rng = random.Random(s)
        blocked = np.zeros((h, w), dtype=bool)
        count = 0
        while count < hide:
            room = hide - count
            added = 0
            for _ in range(10):
                area = rng.uniform(min(least, room), room)
                aspect = math.exp(rng.uniform(lo, hi))
                bh = min(h, max(1, round(math.sqrt(area * aspect))))
                bw = min(w, max(1, round(math.sqrt(area / aspect))))
                top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
                window = blocked[top : top + bh, left : left + bw]
                added = bh * bw - int(window.sum())
                if 0 < added <= room:
                    window[...] = True
                    break
                added = 0
            if not added:
                break
            count += added
        noise = np.array([rng.random() for _ in range(n)]).reshape(h, w)
        noise[blocked] = 2.0
        rows.append(torch.from_numpy(noise.reshape(-1)).float())
    return torch.stack(rows)


# ColorMAE's (Hinojosa et al., 2024) data-independent patterns: white noise filtered in the
# frequency domain, thresholded so the least-noise tokens stay visible. Frequencies are in
# cycles per token (0 to 0.71 radially); each filter is a Gaussian in that radius. Low-pass
# ("red") leaves blobs, high-pass ("blue") spreads the visible tokens evenly, band-pass
# ("green") leaves blobs of about 1 / 0.25 = 4 tokens' period.
NOISE_FILTERS = {
    "noise_lowpass": lambda r: torch.exp(-(r**2) / (2 * 0.08**2)),
    "noise_highpass": lambda r: 1 - torch.exp(-(r**2) / (2 * 0.25**2)),
    "noise_bandpass": lambda r: torch.exp(-((r - 0.25) ** 2) / (2 * 0.06**2)),
}


def radial_frequency(shape: tuple[int, int]) -> torch.Tensor:
    """``[H, W]`` radius of each 2-D FFT bin in cycles per token."""
    fy = torch.fft.fftfreq(shape[0]).view(-1, 1)
    fx = torch.fft.fftfreq(shape[1]).view(1, -1)
    return torch.sqrt(fy**2 + fx**2)


def filtered_noise(seeds: Sequence[int], grid: tuple[int, int], kind: str) -> torch.Tensor:
    """``[B, H*W]`` white noise filtered by ``NOISE_FILTERS[kind]``. Drawn on a grid twice the
    size and cropped, so the FFT's wrap-around does not join opposite edges (ColorMAE crops
    from a large noise image for the same reason)."""
    h, w = grid
    big = (2 * h, 2 * w)
    white = torch.stack([_white(s, big) for s in seeds])
    spectrum = torch.fft.fft2(white) * NOISE_FILTERS[kind](radial_frequency(big))
    return torch.fft.ifft2(spectrum).real[:, :h, :w].reshape(len(seeds), -1).contiguous()


def _white(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class HardPatchDraw:
    """A hard-patch (HPM, Wang et al., 2023) mask before the model has scored the tokens: the
    per-sample noise of its random part, how many tokens stay visible (``keep``) and how many
    of the hidden ones the predicted loss picks (``hard``). The model completes it with
    :func:`hard_patch_mask` from its own predicted losses, inside its forward pass."""

    noise: torch.Tensor
    keep: int
    hard: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> HardPatchDraw:
        return HardPatchDraw(self.noise.to(device, non_blocking=non_blocking), self.keep, self.hard)

    def pin_memory(self) -> HardPatchDraw:
        return HardPatchDraw(self.noise.pin_memory(), self.keep, self.hard)


def hard_share(end: float, progress: float) -> float:
    """HPM's easy-to-hard schedule: the share of hidden tokens chosen by predicted loss grows
    linearly from 0 to ``end`` (0.5 in HPM) over training (``progress`` in [0, 1]); the rest are
    hidden at random, so the model still learns what an easy patch is."""
    return end * min(max(progress, 0.0), 1.0)


def hard_patch_draw(seeds: Sequence[int], num_tokens: int, ratio: float, share: float):
    keep = num_visible(num_tokens, ratio)
    return HardPatchDraw(sample_noise(seeds, num_tokens), keep, int((num_tokens - keep) * share))


def hard_patch_mask(draw: HardPatchDraw, predicted_loss: torch.Tensor) -> Mask:
    """HPM's mask from per-token predicted losses ``[B, N]``: the ``hard`` tokens of highest
    predicted loss are hidden, and the rest of the hidden tokens are drawn at random among the
    others; exactly ``keep`` stay visible."""
    noise = draw.noise.to(predicted_loss.device)
    if draw.hard:
        hardest = predicted_loss.topk(draw.hard, dim=1).indices
        noise = noise.scatter(1, hardest, 2.0)  # above any uniform noise: hidden first
    return random_mask(noise, 0.0, keep=draw.keep)


def _planar_grid(kind: str, geometry) -> tuple[int, int]:
    if len(geometry.grid) != 2:
        raise ValueError(f"{kind} masking needs a (rows, cols) grid, got {geometry.grid}")
    return geometry.grid


def _block_masks(seed, step, keys, geometry, ratio) -> Mask:
    noise = block_noise(sample_seeds(seed, step, keys), _planar_grid("block", geometry), ratio)
    return random_mask(noise, ratio)


def _filtered_noise_masks(kind: str):
    def masks(seed, step, keys, geometry, ratio) -> Mask:
        grid = _planar_grid(kind, geometry)
        return random_mask(filtered_noise(sample_seeds(seed, step, keys), grid, kind), ratio)

    return masks


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
    "block": _block_masks,
    **{kind: _filtered_noise_masks(kind) for kind in NOISE_FILTERS},
}
MODEL_SCORED_KINDS = ("hpm",)  # completed by the model (HardPatchDraw), not from the grid alone


def make_masks(
    kind: str,
    seed: int,
    step: int,
    keys: Sequence[str],
    geometry,
    ratio: float,
    per_sample: int = 1,
    share: float = 0.0,
) -> Mask | HardPatchDraw:
    """The masks of one batch of kind ``kind`` over a token ``geometry``, ``per_sample`` views
    of each sample (rows ``i * per_sample + k``): what the loop calls. ``hpm`` gives a
    :class:`HardPatchDraw` whose hard share is ``share``."""
    keys = view_keys(keys, per_sample) if per_sample > 1 else keys
    if kind == "hpm":
        return hard_patch_draw(sample_seeds(seed, step, keys), geometry.num_tokens, ratio, share)
    return MASK_KINDS[kind](seed, step, keys, geometry, ratio)
