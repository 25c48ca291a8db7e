"""The image decode: header-planned crop, reduced-size decoding, Pillow parity, bad data."""

import io
import random

import numpy as np
import pytest
from PIL import Image

from training.modalities.image.bundle import ImageInputConfig
from training.modalities.image.ops import (
    centre_crop_box,
    crop_resized,
    decode,
    jpeg_size,
    random_resized_crop_box,
    reduction_for,
)


def _jpeg(width: int, height: int, **save) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=95, **save)
    return out.getvalue()


@pytest.mark.parametrize("save", [{}, {"progressive": True}])
def test_jpeg_size_reads_the_frame_header(save):
    assert jpeg_size(_jpeg(341, 256, **save)) == (341, 256)
    png = io.BytesIO()
    Image.new("RGB", (5, 7)).save(png, "PNG")
    assert jpeg_size(png.getvalue()) is None and jpeg_size(b"\xff\xd8garbage") is None


def test_reduction_keeps_the_box_at_least_the_output_size():
    assert reduction_for(300, 256, 224) == 1  # ImageNet at shorter side 256: never reduced
    assert reduction_for(448, 500, 224) == 2
    assert reduction_for(1000, 1800, 224) == 4
    assert reduction_for(4000, 4000, 64) == 8


def test_a_reduced_decode_gives_the_crop_a_full_decode_gives():
    data = _jpeg(1024, 960)
    box = (100, 40, 1000, 940)  # 900 px: decoded at 1/4
    assert reduction_for(900, 900, 224) == 4
    reduced = crop_resized(data, (1024, 960), box, 224, flip=False).astype(int)
    full = np.asarray(
        Image.open(io.BytesIO(data)).resize((224, 224), Image.Resampling.BICUBIC, box=box)
    ).astype(int)
    assert np.abs(reduced - full).mean() < 3  # of 255: the same picture, smooth gradients


def test_training_decode_matches_pillows_crop_and_flip_on_the_same_draws():
    data = _jpeg(341, 256)
    cfg = ImageInputConfig(image_size=64, patch_size=8, crop_scale=[0.3, 1.0])
    for seed in range(6):
        example = decode(cfg, {"jpg": data, "cls": "3", "__key__": "k"}, random.Random(seed))
        rng = random.Random(seed)
        box = random_resized_crop_box((341, 256), cfg.crop_scale, rng)
        ref = Image.open(io.BytesIO(data)).resize((64, 64), Image.Resampling.BICUBIC, box=box)
        if rng.random() < 0.5:
            ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        ours = example.x.permute(1, 2, 0).numpy().astype(int)
        assert example.label == 3 and example.x.shape == (3, 64, 64)
        assert np.abs(ours - np.asarray(ref).astype(int)).mean() < 3


def test_evaluation_keeps_the_centre_at_the_usual_ratio():
    assert centre_crop_box((341, 256), 224) == (58, 16, 282, 240)  # 0.875 of the shorter side
    example = decode(
        ImageInputConfig(image_size=32, patch_size=8),
        {"jpg": _jpeg(80, 60), "cls": 0, "__key__": "k"},
        None,
    )
    assert example.x.shape == (3, 32, 32)


@pytest.mark.parametrize("data", [b"", b"not an image", _jpeg(64, 64)[:300]])
def test_bad_bytes_are_skipped_not_raised(data, caplog):
    cfg = ImageInputConfig(image_size=32, patch_size=8)
    assert decode(cfg, {"jpg": data, "cls": 0, "__key__": "bad"}, random.Random(0)) is None
    assert "cannot decode sample bad" in caplog.text
