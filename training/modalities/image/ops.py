"""What the image modality does to data: decode + augment a shard sample, turn a batch into
patch tokens, its downstream tasks, its report figure.

Training samples get a random-resized crop and a horizontal flip, seeded by the sample's place in
the stream; evaluation samples are resized and centre-cropped (the usual ImageNet protocol).

Decoding is OpenCV's, planned from the JPEG header: the crop box is drawn from the image's size
(read without decoding), the JPEG is decoded at 1/2, 1/4 or 1/8 scale when the box stays at
least the output size there (libjpeg's DCT scaling), only the box is resized (bicubic), and the
channel swap and flip touch only the small output, which stays in the decoder's HWC memory order
(``x`` is a ``[3, S, S]`` view; the loader stacks a batch in that order).
Per core this is 2.5-3x Pillow's decode + ``resize(box=...)`` on ImageNet-shaped shards
(``python -m benchmarks.image_loader``). ``cv2.setNumThreads(0)``: each loader worker is one
thread, so workers do not oversubscribe the rank's cores.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import random

import cv2
import numpy as np
import torch
from PIL import Image

from training.modalities import Example, ModalityOps
from training.modalities.figures import masked_and_reconstructed, picture_grid
from training.modalities.image.augment import rand_augment, random_erase
from training.modalities.image.bundle import (
    AugmentedInputConfig,
    ImageInputConfig,
    ImageTasksConfig,
)
from training.modalities.image.patches import (
    denormalize_pixels,
    normalize_pixels,
    patchify,
    unpatchify,
)
from training.tasks.finetune import Finetune
from training.tasks.probe import Knn, LinearProbe

log = logging.getLogger(__name__)
cv2.setNumThreads(0)

Box = tuple[int, int, int, int]  # left, top, right, bottom
REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


# Larger pictures are refused before decoding: Pillow's bomb limit (2x its warning size), far
# over what prep writes (shorter side 256 by default).
MAX_PIXELS = 178_956_970


def decode(cfg: ImageInputConfig, sample: dict, rng: random.Random | None) -> Example | None:
    """A shard sample -> uint8 ``[3, S, S]``: random-resized crop + flip with ``rng``, else
    resize and centre-crop."""
    data = sample.get("jpg")
    size = None if data is None else _header_size(data)
    if size is None:
        log.warning("cannot decode sample %s: not an image", sample.get("__key__"))
        return None
    if size[0] * size[1] > MAX_PIXELS:
        log.warning(
            "cannot decode sample %s: %dx%d pixels (a decompression bomb?)",
            sample.get("__key__"),
            *size,
        )
        return None
    flip = False
    if rng is not None:
        box = random_resized_crop_box(size, cfg.crop_scale, rng)
        flip = cfg.hflip and rng.random() < 0.5
    else:
        box = centre_crop_box(size, cfg.image_size)
    pixels = crop_resized(data, size, box, cfg.image_size, flip)
    if pixels is None:
        log.warning("cannot decode sample %s: corrupt image data", sample.get("__key__"))
        return None
    if rng is not None and isinstance(cfg, AugmentedInputConfig):
        pixels = rand_augment(pixels, cfg.randaug_ops, cfg.randaug_magnitude, cfg.randaug_std, rng)
        pixels = random_erase(pixels, cfg.erase_prob, rng)
    return Example(torch.from_numpy(pixels).permute(2, 0, 1), int(sample["cls"]), sample["__key__"])


def crop_resized(data: bytes, size: tuple[int, int], box: Box, out: int, flip: bool):
    """RGB ``[out, out, 3]`` uint8 of ``box`` (in full-size pixels) of the encoded image, or None
    when it does not decode."""
    left, top, right, bottom = box
    reduce = reduction_for(right - left, bottom - top, out)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[reduce])
    if img is None:
        return None
    if reduce > 1:  # the box in the reduced image; DCT scaling rounds sizes up
        sy, sx = img.shape[0] / size[1], img.shape[1] / size[0]
        left, right = int(left * sx), max(int(left * sx) + 1, round(right * sx))
        top, bottom = int(top * sy), max(int(top * sy) + 1, round(bottom * sy))
    region = img[top:bottom, left:right]
    # Bicubic, as Pillow's was; the area filter (an anti-aliasing average) only where shrinking
    # by 2x or more, which reduced decoding leaves for boxes over 8x the output: it costs 5x
    # bicubic at ImageNet's shrink ratios (1-2x) and changes little there.
    far = min(region.shape[:2]) >= 2 * out
    resized = cv2.resize(
        region, (out, out), interpolation=cv2.INTER_AREA if far else cv2.INTER_CUBIC
    )
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return cv2.flip(rgb, 1) if flip else rgb


def reduction_for(width: int, height: int, out: int) -> int:
    """The largest JPEG decode scale divisor (1, 2, 4, 8) that keeps a ``width`` x ``height``
    box at least ``out`` pixels on each side."""
    for factor in (8, 4, 2):
        if min(width, height) // factor >= out:
            return factor
    return 1


def tokenize(cfg: ImageInputConfig, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> normalised patch values ``[B, N, p*p*3]`` (float32)."""
    return patchify(normalize_pixels(images), cfg.patch_size)


def tasks(cfg: ImageTasksConfig) -> list:
    ft, probe = cfg.finetune, cfg.linear_probe
    return [
        LinearProbe(
            probe,
            train_input=lambda c: dataclasses.replace(c, crop_scale=list(probe.crop_scale)),
        ),
        Knn(cfg.knn),
        Finetune(
            ft,
            train_input=lambda c: AugmentedInputConfig(
                **{**dataclasses.asdict(c), "crop_scale": list(ft.crop_scale)},
                randaug_ops=ft.randaug_ops,
                randaug_magnitude=ft.randaug_magnitude,
                randaug_std=ft.randaug_std,
                erase_prob=ft.erase_prob,
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


def centre_crop_box(size: tuple[int, int], out: int) -> Box:
    """The box that resizing the shorter side to ``out / 0.875`` and centre-cropping ``out`` keeps
    (the usual ImageNet evaluation), in full-size pixels."""
    w, h = size
    side = max(1, round(min(w, h) * 0.875))
    left, top = (w - side) // 2, (h - side) // 2
    return (left, top, left + side, top + side)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header alone, or None when it is not an image."""
    size = jpeg_size(data)
    if size is not None:
        return size
    try:  # not a baseline/progressive JPEG: any format Pillow reads (it parses only the header)
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except OSError:
        return None


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking its marker segments (a few, before
    any image data); None when ``data`` is not a JPEG. 1.2 µs against Pillow's open at 17 µs."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF:
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return (width, height) if width and height else None
        pos += 2 + length
    return None


@torch.no_grad()
def reconstruction_figure(cfg: ImageInputConfig, model, images: torch.Tensor, mask, title: str):
    """Rows of images: original | masked input | reconstruction (visible patches pasted)."""
    size, patch = cfg.image_size, cfg.patch_size
    x = normalize_pixels(images)
    target = patchify(x, patch)
    masked, reconstructed = masked_and_reconstructed(model, target, mask, fill=-10.0)
    columns = [
        ("original", x),
        (title, unpatchify(masked, patch, size, size)),
        ("reconstruction", unpatchify(reconstructed, patch, size, size)),
    ]
    pictures = [(h, denormalize_pixels(b).permute(0, 2, 3, 1).numpy()) for h, b in columns]
    return picture_grid(pictures, (5.4, 1.8), interpolation="nearest")


OPS = ModalityOps(
    decode=decode,
    tokenize=tokenize,
    tasks=tasks,
    reconstruction_figure=reconstruction_figure,
)
