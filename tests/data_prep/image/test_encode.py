import io

import pytest
from PIL import Image

from data_prep.image.encode import EMPTY, NOT_AN_IMAGE, TRUNCATED, normalize_image
from data_prep.writer import SkipSample


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_small_rgb_jpeg_passes_through_byte_for_byte():
    data = _encode(Image.new("RGB", (60, 40), (10, 200, 30)))
    out = normalize_image(data, shorter_side=64, quality=90)
    assert out.passthrough and out.jpeg == data


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_cmyk_and_grayscale_become_rgb_jpeg(mode):
    data = _encode(Image.new("RGB", (50, 50), (200, 40, 40)).convert(mode))
    out = normalize_image(data, shorter_side=64, quality=90)
    decoded = Image.open(io.BytesIO(out.jpeg))
    assert (decoded.format, decoded.mode) == ("JPEG", "RGB")
    assert out.source_mode == mode and not out.passthrough


def test_png_under_a_jpeg_name_is_reencoded():
    out = normalize_image(_encode(Image.new("RGB", (50, 50)), "PNG"), shorter_side=64, quality=90)
    assert out.source_format == "PNG"
    assert Image.open(io.BytesIO(out.jpeg)).format == "JPEG"


def test_large_images_are_shrunk_to_the_shorter_side():
    out = normalize_image(_encode(Image.new("RGB", (400, 200))), shorter_side=64, quality=90)
    assert (out.width, out.height) == (128, 64)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", EMPTY),
        (b"<html>not found</html>", NOT_AN_IMAGE),
    ],
)
def test_bad_inputs_are_skipped_with_a_reason(payload, reason):
    with pytest.raises(SkipSample) as err:
        normalize_image(payload, shorter_side=64, quality=90)
    assert err.value.reason == reason


def test_truncated_jpeg_is_skipped():
    data = _encode(Image.effect_noise((80, 80), 50).convert("RGB"))
    with pytest.raises(SkipSample) as err:
        normalize_image(data[: len(data) // 2], shorter_side=64, quality=90)
    assert err.value.reason == TRUNCATED


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_a_16_bit_png_keeps_its_tonal_range():
    import numpy as np

    ramp = (np.arange(256 * 64, dtype=np.uint32).reshape(64, 256) * 4).astype(np.uint16)  # 0..65532
    data = _png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # Pillow reads it as 16-bit
    out = np.asarray(Image.open(io.BytesIO(normalize_image(data, 64, 95).jpeg)).convert("L"))
    # A ramp stays a ramp: Pillow's own convert clipped at 255, 90% of the pixels white.
    assert abs(float(np.median(out)) - 127.5) < 10
    assert np.percentile(out, 10) < 40 and np.percentile(out, 90) > 215


def test_a_picture_too_wide_for_jpeg_is_skipped_not_fatal():
    from data_prep.image.encode import TOO_WIDE

    data = _png(Image.new("RGB", (70000, 8), "gray"))
    with pytest.raises(SkipSample) as err:
        normalize_image(data, 8, 90)
    assert err.value.reason == TOO_WIDE
