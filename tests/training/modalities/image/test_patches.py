import pytest
import torch

from training.modalities.image.patches import (
    denormalize_pixels,
    normalize_pixels,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)


@pytest.mark.parametrize(("size", "patch"), [(32, 4), (64, 8), (224, 16)])
def test_patchify_round_trip(size, patch):
    images = torch.randn(3, 3, size, size)
    patches = patchify(images, patch)
    assert patches.shape == (3, (size // patch) ** 2, patch * patch * 3)
    assert torch.equal(unpatchify(patches, patch, size, size), images)


def test_patch_vectors_hold_one_spatial_patch():
    images = torch.zeros(1, 3, 8, 8)
    images[0, :, 4:, :4] = 1.0  # bottom-left patch of a 2x2 grid
    patches = patchify(images, 4)
    assert patches[0].sum(1).tolist() == [0.0, 0.0, 48.0, 0.0]


def test_non_multiple_sizes_fail():
    with pytest.raises(ValueError):
        patchify(torch.zeros(1, 3, 10, 10), 4)


def test_pixel_normalisation_round_trip():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    back = denormalize_pixels(normalize_pixels(images))
    assert torch.allclose(back * 255, images.float(), atol=1e-3)


def test_sincos_positions_are_distinct():
    pos = sincos_pos_embed_2d(64, 8)
    assert pos.shape == (64, 64)
    assert torch.cdist(pos, pos).fill_diagonal_(1.0).min() > 1e-3
