"""Image bytes -> normalised RGB JPEG bytes, or a counted skip reason.

Normalising: decode fully (a truncated file fails here, not in training), convert any mode (CMYK,
grayscale, palette, RGBA) to RGB, shrink so the shorter side is at most ``shorter_side``, and
re-encode as JPEG. An input that is already an RGB JPEG no larger than that is passed through
byte for byte: re-encoding would cost time and quality for nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.writer import SkipSample

# Skip reasons, as counted in stats.json.
EMPTY = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated_or_corrupt"
TOO_SMALL = "too_small"
TOO_WIDE = "too_wide_for_jpeg"  # JPEG holds at most 65,535 px a side (libjpeg: 65,500)
JPEG_MAX_SIDE = 65500

Image.MAX_IMAGE_PIXELS = 1 << 28  # a 16k x 16k photo is fine; a decompression bomb is not


@dataclass(frozen=True)
class EncodedImage:
    jpeg: bytes
    width: int
    height: int
    source_format: str
    source_mode: str
    source_size: tuple[int, int]
    passthrough: bool


def normalize_image(
    data: bytes, shorter_side: int, quality: int, min_side: int = 8
) -> EncodedImage:
    """Return the normalised JPEG for ``data`` or raise :class:`SkipSample` with a reason."""
    if not data:
        raise SkipSample(EMPTY)
    try:
        img = Image.open(io.BytesIO(data))
        fmt, mode, size = img.format or "?", img.mode, img.size
        if fmt == "JPEG" and min(size) > shorter_side:
            img.draft("RGB", _target_size(size, shorter_side))  # DCT-domain downscale: fast
        img.load()
    except UnidentifiedImageError:  # its text names our in-memory buffer, not the file
        raise SkipSample(NOT_AN_IMAGE, "Pillow recognises no image format in it") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise SkipSample(TRUNCATED, str(err)) from None
    if min(size) < min_side:
        raise SkipSample(TOO_SMALL, f"{size[0]}x{size[1]}")
    if fmt == "JPEG" and mode == "RGB" and min(size) <= shorter_side:
        return EncodedImage(data, size[0], size[1], fmt, mode, size, passthrough=True)
    img = _eight_bit(img).convert("RGB")
    if min(img.size) > shorter_side:
        img = img.resize(_target_size(img.size, shorter_side), Image.Resampling.BICUBIC)
    if max(img.size) > JPEG_MAX_SIDE:
        raise SkipSample(TOO_WIDE, f"{img.size[0]}x{img.size[1]} after resizing")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return EncodedImage(out.getvalue(), *img.size, fmt, mode, size, passthrough=False)


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grayscale scaled to 8 bits. Pillow's own conversion clips
    them at 255, which turns a 16-bit ramp nearly white."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return img
    values = np.asarray(img, dtype=np.int64)
    top = 65535 if img.mode.startswith("I;16") or values.max() > 255 else 255
    return Image.fromarray((values.clip(0, top) * 255 // top).astype(np.uint8), mode="L")


def _target_size(size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    w, h = size
    scale = shorter_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))
