"""A small corpus in the real ImageNet layout, generated locally, with learnable structure.

Each class is a shape or texture (disc, square, triangle, ring, stripes, checker, cross, dots)
drawn with random colours, size, position and rotation over a random noisy gradient background.
Colour and position say nothing about the class; only structure does, so a linear probe can tell
an encoder that learned shapes from a random one.

ImageNet's quirks are reproduced: some CMYK JPEGs, grayscale JPEGs, and one PNG saved under a
``.JPEG`` name. With ``corrupt > 0`` the train split also gets broken files (truncated JPEG,
zero bytes, text named ``.JPEG``) that the prep must skip and count.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from data_prep.image.layout import SYNSETS, VAL_CSV

log = logging.getLogger(__name__)

SHAPES = ("disc", "square", "triangle", "ring", "stripes", "checker", "cross", "dots")
CMYK_EVERY = 17
GRAY_EVERY = 13


@dataclass
class DemoCorpusConfig:
    """``demo_data`` section: the generated corpus (ImageNet layout)."""

    # where (ImageNet layout)
    out: str = "???"
    # 2–8 shape/texture classes
    classes: int = 8
    train_per_class: int = 80  # images per class
    val_per_class: int = 20  # images per class
    min_size: int = 64  # random image sides (px)
    max_size: int = 160
    # broken files added to train/ (truncated, empty, non-image)
    corrupt: int = 0
    seed: int = 0
    object_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])  # of the shorter side

    def problems(self):
        if not 2 <= self.classes <= len(SHAPES):
            yield ("classes", f"an int in [2, {len(SHAPES)}], got {self.classes}")
        if self.train_per_class < 1 or self.val_per_class < 1:
            yield ("train_per_class", "train_per_class and val_per_class must be >= 1")
        if not 32 <= self.min_size <= self.max_size:
            yield ("min_size", f"32 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if (
            len(self.object_scale) != 2
            or not 0.1 <= self.object_scale[0] <= self.object_scale[1] <= 1
        ):
            yield (
                "object_scale",
                f"[min, max] with 0.1 <= min <= max <= 1, got {self.object_scale}",
            )


def wnid(index: int) -> str:
    """Synthetic synset ids in the real format (``n`` + 8 digits), outside WordNet's range."""
    return f"n9{index:07d}"


def write_demo_corpus(cfg: DemoCorpusConfig) -> Path:
    """Write the corpus under ``cfg.out`` and return that path."""
    root = Path(cfg.out)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "val").mkdir(parents=True, exist_ok=True)
    classes = [(wnid(i), SHAPES[i]) for i in range(cfg.classes)]
    (root / SYNSETS).write_text("".join(f"{w} {name}\n" for w, name in classes))
    total = cfg.classes * (cfg.train_per_class + cfg.val_per_class)
    with tqdm(total=total, desc="demo corpus", unit="img", dynamic_ncols=True) as bar:
        n = 0
        for label, (w, _) in enumerate(classes):
            (root / "train" / w).mkdir(exist_ok=True)
            for i in range(cfg.train_per_class):
                img, _ = draw_sample(label, _rng(cfg.seed, 0, label, i), cfg)
                _save(img, root / "train" / w / f"{w}_{i + 1}.JPEG", n)
                n += 1
                bar.update()
        order = np.random.default_rng([cfg.seed, 1]).permutation(cfg.classes * cfg.val_per_class)
        rows = []
        for val_index, flat in enumerate(order, start=1):
            label, i = divmod(int(flat), cfg.val_per_class)
            img, box = draw_sample(label, _rng(cfg.seed, 1, label, i), cfg)
            image_id = f"ILSVRC2012_val_{val_index:08d}"
            _save(img, root / "val" / f"{image_id}.JPEG", n)
            n += 1
            rows.append((image_id, f"{wnid(label)} {' '.join(str(v) for v in box)}"))
            bar.update()
    with open(root / VAL_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        writer.writerows(rows)
    _write_png_named_jpeg(root, classes[0][0], cfg)
    _write_corrupt_files(root, classes, cfg.corrupt)
    log.info("demo corpus: %d classes, %d images under %s", cfg.classes, total, root)
    return root


def draw_sample(label: int, rng: np.random.Generator, cfg: DemoCorpusConfig):
    """One image of class ``label`` and its bounding box ``[x0, y0, x1, y1]``."""
    w, h = (int(v) for v in rng.integers(cfg.min_size, cfg.max_size + 1, size=2))
    img = Image.fromarray(_background(rng, w, h))
    bg_mean = np.asarray(img).reshape(-1, 3).mean(0)
    fg = _contrasting_colour(rng, bg_mean)
    side = min(w, h)
    size = int(side * rng.uniform(*cfg.object_scale))
    x0 = int(rng.integers(0, w - size + 1))
    y0 = int(rng.integers(0, h - size + 1))
    box = [x0, y0, x0 + size, y0 + size]
    patch = _DRAW[SHAPES[label]](size, fg, rng)
    img.paste(patch, (x0, y0), patch)
    return img, box


def _background(rng, w, h) -> np.ndarray:
    a, b = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1) / 2
    grad = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    noise = rng.normal(0, rng.uniform(4, 20), size=(h, w, 3))
    return np.clip(grad + noise, 0, 255).astype(np.uint8)


def _contrasting_colour(rng, bg_mean) -> tuple[int, int, int]:
    for _ in range(32):
        c = rng.integers(0, 256, size=3)
        if np.abs(c - bg_mean).sum() > 180:
            break
    return tuple(int(v) for v in c)


def _canvas(size):
    patch = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    return patch, ImageDraw.Draw(patch)


def _rotated(patch: Image.Image, rng) -> Image.Image:
    return patch.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR)


def _disc(size, fg, rng):
    patch, d = _canvas(size)
    d.ellipse([0, 0, size - 1, size - 1], fill=fg)
    return patch


def _square(size, fg, rng):
    patch, d = _canvas(size)
    m = size // 6
    d.rectangle([m, m, size - 1 - m, size - 1 - m], fill=fg)
    return _rotated(patch, rng)


def _triangle(size, fg, rng):
    patch, d = _canvas(size)
    d.polygon([(size / 2, 2), (size - 2, size - 3), (2, size - 3)], fill=fg)
    return _rotated(patch, rng)


def _ring(size, fg, rng):
    patch, d = _canvas(size)
    d.ellipse([0, 0, size - 1, size - 1], outline=fg, width=max(2, size // 7))
    return patch


def _stripes(size, fg, rng):
    patch, d = _canvas(size)
    period = max(4, size // int(rng.integers(3, 6)))
    for x in range(0, size, period):
        d.rectangle([x, 0, x + period // 2 - 1, size - 1], fill=fg)
    return _rotated(patch, rng)


def _checker(size, fg, rng):
    patch, d = _canvas(size)
    cell = max(3, size // int(rng.integers(3, 6)))
    for i, y in enumerate(range(0, size, cell)):
        for j, x in enumerate(range(0, size, cell)):
            if (i + j) % 2 == 0:
                d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fg)
    return patch


def _cross(size, fg, rng):
    patch, d = _canvas(size)
    t = max(2, size // 5)
    c = size // 2
    d.rectangle([c - t // 2, 0, c + t // 2, size - 1], fill=fg)
    d.rectangle([0, c - t // 2, size - 1, c + t // 2], fill=fg)
    return _rotated(patch, rng)


def _dots(size, fg, rng):
    patch, d = _canvas(size)
    n = int(rng.integers(3, 5))
    step = size / n
    r = step * 0.28
    for i in range(n):
        for j in range(n):
            cx, cy = (i + 0.5) * step, (j + 0.5) * step
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    return patch


_DRAW: dict[str, Callable] = {
    "disc": _disc,
    "square": _square,
    "triangle": _triangle,
    "ring": _ring,
    "stripes": _stripes,
    "checker": _checker,
    "cross": _cross,
    "dots": _dots,
}


def _rng(seed: int, split: int, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, label, index])


def _save(img: Image.Image, path: Path, n: int) -> None:
    """Save as JPEG; a few as CMYK or grayscale JPEGs, as in the real ImageNet."""
    if n % CMYK_EVERY == CMYK_EVERY - 1:
        img = img.convert("CMYK")
    elif n % GRAY_EVERY == GRAY_EVERY - 1:
        img = img.convert("L")
    img.save(path, format="JPEG", quality=92)


def _write_png_named_jpeg(root: Path, first_wnid: str, cfg: DemoCorpusConfig) -> None:
    img, _ = draw_sample(0, _rng(cfg.seed, 2, 0, 0), cfg)
    img.save(root / "train" / first_wnid / f"{first_wnid}_png.JPEG", format="PNG")


def _write_corrupt_files(root: Path, classes, count: int) -> None:
    """Broken inputs a real crawl or copy produces; the prep must skip and count each."""
    for i in range(count):
        w = classes[i % len(classes)][0]
        kind = i % 3
        path = root / "train" / w / f"{w}_broken{i}.JPEG"
        if kind == 0:
            buf = io.BytesIO()
            Image.new("RGB", (96, 96), (200, 10, 10)).save(buf, format="JPEG")
            path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
        elif kind == 1:
            path.write_bytes(b"")
        else:
            path.write_text("<html>404 Not Found</html>\n")
