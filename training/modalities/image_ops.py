"""What the image modality does to data: decode + augment a shard sample, turn a batch into
patch tokens, its downstream tasks, its report figure.

Training samples get a random-resized crop and a horizontal flip, seeded by the sample's place in
the stream; evaluation samples are resized and centre-cropped (the usual ImageNet protocol).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import random

import numpy as np
import torch
from PIL import Image

from training.modalities import Example, ModalityOps
from training.modalities.image import ImageInputConfig, ImageTasksConfig
from training.modalities.image_patches import (
    denormalize_pixels,
    normalize_pixels,
    patchify,
    unpatchify,
)
from training.tasks.finetune import Finetune
from training.tasks.probe import Knn, LinearProbe

log = logging.getLogger(__name__)


def decode(cfg: ImageInputConfig, sample: dict, rng: random.Random | None) -> Example | None:
    """A shard sample -> uint8 ``[3, S, S]``: random-resized crop + flip with ``rng``, else
    resize and centre-crop."""
    img = _open(sample)
    if img is None:
        return None
    img = _augmented(img, cfg, rng) if rng is not None else _centre_crop(img, cfg.image_size)
    return Example(_to_tensor(img), int(sample["cls"]), sample["__key__"])


def tokenize(cfg: ImageInputConfig, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> normalised patch values ``[B, N, p*p*3]`` (float32)."""
    return patchify(normalize_pixels(images), cfg.patch_size)


def tasks(cfg: ImageTasksConfig) -> list:
    return [
        LinearProbe(cfg.linear_probe),
        Knn(cfg.knn),
        Finetune(
            cfg.finetune,
            train_input=lambda input_cfg: dataclasses.replace(
                input_cfg, crop_scale=list(cfg.finetune.crop_scale)
            ),
        ),
    ]


def random_resized_crop_box(size: tuple[int, int], scale: list[float], rng: random.Random):
    """Crop box ``(left, top, right, bottom)`` as torchvision's RandomResizedCrop picks it."""
    w, h = size
    area = w * h
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return (left, top, left + cw, top + ch)
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return (left, top, left + side, top + side)


def _augmented(img: Image.Image, cfg: ImageInputConfig, rng: random.Random) -> Image.Image:
    box = random_resized_crop_box(img.size, cfg.crop_scale, rng)
    img = img.resize((cfg.image_size, cfg.image_size), Image.Resampling.BICUBIC, box=box)
    if cfg.hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _centre_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    # Resize the shorter side to size/0.875 then centre-crop, the usual ImageNet evaluation.
    short = round(size / 0.875)
    scale = short / min(w, h)
    img = img.resize(
        (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
    )
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _open(sample: dict) -> Image.Image | None:
    try:
        return Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    except (OSError, KeyError) as err:
        log.warning("cannot decode sample %s: %s", sample.get("__key__"), err)
        return None


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


@torch.no_grad()
def reconstruction_figure(cfg: ImageInputConfig, model, images: torch.Tensor, mask, title: str):
    """Rows of images: original | masked input | reconstruction (visible patches pasted)."""
    from matplotlib.figure import Figure  # only the report stage draws

    size, patch = cfg.image_size, cfg.patch_size
    x = normalize_pixels(images)
    target = patchify(x, patch)
    _, pred = model.reconstruct(target, mask)
    if model.cfg.norm_pix_loss:  # predictions are per-patch normalised: undo with the true stats
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    m = mask.masked.unsqueeze(-1)
    columns = [
        ("original", x),
        (title, unpatchify(target * (1 - m) + m * -10.0, patch, size, size)),
        ("reconstruction", unpatchify(target * (1 - m) + pred * m, patch, size, size)),
    ]
    n = len(images)
    fig = Figure(figsize=(5.4, 1.8 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for col, (heading, batch) in enumerate(columns):
        pictures = denormalize_pixels(batch).permute(0, 2, 3, 1).numpy()
        for row in range(n):
            ax = axes[row][col]
            ax.imshow(pictures[row], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(heading, fontsize=9)
    fig.tight_layout()
    return fig


OPS = ModalityOps(
    decode=decode,
    tokenize=tokenize,
    tasks=tasks,
    reconstruction_figure=reconstruction_figure,
)
