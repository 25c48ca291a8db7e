"""The fine-tuning recipe's per-image augmentations on decoded uint8 ``[H, W, 3]`` pictures, drawn
from the sample's own ``random.Random`` (so a resumed run redraws them), with OpenCV and numpy
rather than torchvision or timm (both pull in a CUDA torch).

* **RandAugment** (Cubuk et al., 2020) as timm's ``rand-m9-mstd0.5-inc1`` that MAE fine-tunes
  with: ``ops`` operations drawn with replacement from the 15 of timm's "increasing" set, each
  applied with probability 0.5 at a magnitude drawn from ``N(magnitude, std)`` clipped to
  [0, 10]; geometric and enhancement ops take a random sign. Geometric ops fill with the
  ImageNet mean colour, as timm.
* **Random erasing** (Zhong et al., 2020) as timm's ``RandomErasing(0.25, mode="pixel")``: with
  probability ``prob`` one box of 2%-33% of the area, aspect 0.3-3.3 (log-uniform, ten tries),
  filled with per-pixel normal noise. timm erases after normalisation (noise ``N(0, 1)`` in
  normalised units); here it is the same noise mapped back to pixels, clipped to [0, 255].
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from training.modalities.image.patches import PIXEL_MEAN, PIXEL_STD

MAX_LEVEL = 10.0
FILL = tuple(round(255 * m) for m in PIXEL_MEAN)  # (124, 116, 104)


def _signed(value: float, rng: random.Random) -> float:
    return -value if rng.random() < 0.5 else value


def _enhance_factor(level: float, rng: random.Random) -> float:
    return 1.0 + _signed(level / MAX_LEVEL * 0.9, rng)


def _warp(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``img`` sampled at ``matrix @ [x, y, 1]`` for every output pixel (PIL's affine form)."""
    h, w = img.shape[:2]
    return cv2.warpAffine(
        img,
        matrix.astype(np.float64),
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=FILL,
    )


def _gray(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as PIL's ``convert("L")``."""
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _blend(degenerate: np.ndarray, img: np.ndarray, factor: float) -> np.ndarray:
    out = degenerate + factor * (img.astype(np.float32) - degenerate)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def auto_contrast(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    lo = img.min(axis=(0, 1), keepdims=True).astype(np.float32)
    hi = img.max(axis=(0, 1), keepdims=True).astype(np.float32)
    scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1), 1.0)
    out = np.where(hi > lo, (img - lo) * scale, img)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def equalize(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(img[..., c])) for c in range(3)], -1)


def invert(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    return 255 - img


def rotate(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    degrees = _signed(level / MAX_LEVEL * 30.0, rng)
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=FILL)


def posterize(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    bits = 4 - int(level / MAX_LEVEL * 4)  # increasing: fewer bits kept as the level rises
    return img & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    threshold = 256 - int(level / MAX_LEVEL * 256)
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def solarize_add(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    add = int(level / MAX_LEVEL * 110)
    added = np.minimum(img.astype(np.int16) + add, 255).astype(np.uint8)
    return np.where(img < 128, added, img)


def color(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    return _blend(_gray(img)[..., None], img, _enhance_factor(level, rng))


def contrast(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    return _blend(np.float32(int(_gray(img).mean() + 0.5)), img, _enhance_factor(level, rng))


def brightness(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    return _blend(np.float32(0), img, _enhance_factor(level, rng))


def sharpness(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13  # PIL's SMOOTH
    smooth = cv2.filter2D(img.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REPLICATE)
    smooth[0, :], smooth[-1, :], smooth[:, 0], smooth[:, -1] = (
        img[0, :], img[-1, :], img[:, 0], img[:, -1]
    )  # fmt: skip
    return _blend(smooth, img, _enhance_factor(level, rng))


def shear_x(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    s = _signed(level / MAX_LEVEL * 0.3, rng)
    return _warp(img, np.array([[1, s, 0], [0, 1, 0]]))


def shear_y(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    s = _signed(level / MAX_LEVEL * 0.3, rng)
    return _warp(img, np.array([[1, 0, 0], [s, 1, 0]]))


def translate_x(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    pixels = _signed(level / MAX_LEVEL * 0.45, rng) * img.shape[1]
    return _warp(img, np.array([[1, 0, pixels], [0, 1, 0]]))


def translate_y(img: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    pixels = _signed(level / MAX_LEVEL * 0.45, rng) * img.shape[0]
    return _warp(img, np.array([[1, 0, 0], [0, 1, pixels]]))


Op = Callable[[np.ndarray, float, random.Random], np.ndarray]
OPS: dict[str, Op] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "PosterizeIncreasing": posterize,
    "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add,
    "ColorIncreasing": color,
    "ContrastIncreasing": contrast,
    "BrightnessIncreasing": brightness,
    "SharpnessIncreasing": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateXRel": translate_x,
    "TranslateYRel": translate_y,
}
APPLY_PROB = 0.5  # timm's RandAugment applies each drawn op with this chance


@dataclass(frozen=True)
class DrawnOp:
    name: str
    level: float  # the magnitude drawn for it, in [0, 10]
    applied: bool


def randaugment_plan(ops: int, magnitude: float, std: float, rng: random.Random) -> list[DrawnOp]:
    """The ``ops`` operations one picture gets: names drawn with replacement, each applied with
    probability 0.5, each at a magnitude ~ ``N(magnitude, std)`` clipped to [0, 10]."""
    names = list(OPS)
    plan = []
    for _ in range(ops):
        name = rng.choice(names)
        applied = rng.random() < APPLY_PROB
        level = rng.gauss(magnitude, std) if std > 0 else magnitude
        plan.append(DrawnOp(name, min(MAX_LEVEL, max(0.0, level)), applied))
    return plan


def rand_augment(
    img: np.ndarray, ops: int, magnitude: float, std: float, rng: random.Random
) -> np.ndarray:
    for op in randaugment_plan(ops, magnitude, std, rng):
        if op.applied:
            img = OPS[op.name](img, op.level, rng)
    return img


def erase_box(
    height: int, width: int, rng: random.Random, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3)
) -> tuple[int, int, int, int] | None:
    """``(top, left, h, w)`` of random erasing's box, or None when ten tries found none."""
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target = rng.uniform(*area) * height * width
        ratio = math.exp(rng.uniform(*log_aspect))
        h, w = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w < width and 0 < h < height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return None


def random_erase(img: np.ndarray, prob: float, rng: random.Random) -> np.ndarray:
    if prob <= 0 or rng.random() >= prob:
        return img
    box = erase_box(img.shape[0], img.shape[1], rng)
    if box is None:
        return img
    top, left, h, w = box
    noise = np.random.default_rng(rng.getrandbits(64)).standard_normal((h, w, 3))
    pixels = 255 * (np.array(PIXEL_MEAN) + np.array(PIXEL_STD) * noise)
    img = img.copy()
    img[top : top + h, left : left + w] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return img
