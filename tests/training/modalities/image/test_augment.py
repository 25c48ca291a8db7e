"""The fine-tuning recipe's per-image augmentations against their definitions: RandAugment's op
count, application chance and magnitudes (timm's rand-m9-mstd0.5-inc1), what single ops do at a
known level, and random erasing's area, aspect, chance and fill."""

import collections
import math
import random

import numpy as np
import pytest

from training.modalities.image.augment import (
    OPS,
    invert,
    posterize,
    rand_augment,
    randaugment_plan,
    random_erase,
    rotate,
    solarize,
    translate_x,
)
from training.modalities.image.patches import PIXEL_MEAN, PIXEL_STD


def _picture(size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_randaugment_draws_n_ops_from_the_fifteen_and_applies_each_half_the_time():
    rng = random.Random(0)
    plans = [randaugment_plan(2, 9.0, 0.5, rng) for _ in range(6000)]
    assert {len(p) for p in plans} == {2}
    ops = [op for plan in plans for op in plan]
    assert len(OPS) == 15
    counts = collections.Counter(op.name for op in ops)
    assert set(counts) == set(OPS)
    expected = len(ops) / 15
    assert all(abs(c - expected) < 0.15 * expected for c in counts.values())
    applied = sum(op.applied for op in ops) / len(ops)
    assert applied == pytest.approx(0.5, abs=0.02)
    # with replacement, as timm: the same op twice in about 1 plan in 15
    twice = sum(p[0].name == p[1].name for p in plans) / len(plans)
    assert twice == pytest.approx(1 / 15, abs=0.015)


def test_magnitudes_are_normal_around_m_and_clipped_to_ten():
    rng = random.Random(1)
    levels = [op.level for _ in range(5000) for op in randaugment_plan(2, 9.0, 0.5, rng)]
    assert min(levels) >= 0 and max(levels) <= 10
    assert np.mean(levels) == pytest.approx(9.0, abs=0.03)
    assert np.std(levels) == pytest.approx(0.5, abs=0.03)
    fixed = [op.level for op in randaugment_plan(4, 9.0, 0.0, rng)]
    assert fixed == [9.0] * 4
    clipped = [op.level for _ in range(2000) for op in randaugment_plan(2, 10.0, 0.5, rng)]
    assert max(clipped) == 10.0 and np.mean(clipped) < 10.0


def test_zero_ops_leave_the_picture_alone():
    img = _picture()
    assert np.array_equal(rand_augment(img, 0, 9.0, 0.5, random.Random(0)), img)


def test_posterize_and_solarize_at_known_levels():
    img = _picture()
    # level 9: 4 - int(3.6) = 1 bit kept
    assert set(np.unique(posterize(img, 9.0, random.Random(0)))) <= {0, 128}
    # level 5: threshold 256 - 128 = 128; at and above it pixels are inverted
    out = solarize(img, 5.0, random.Random(0))
    assert np.array_equal(out, np.where(img >= 128, 255 - img, img))
    assert np.array_equal(invert(img, 9.0, random.Random(0)), 255 - img)


def test_translate_moves_by_forty_five_percent_of_the_width_at_level_ten():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 30] = 255  # a bright column at x = 30
    rng = random.Random(0)
    out = translate_x(img, 10.0, rng)
    shift = 0.45 * 40
    bright = np.flatnonzero(out[10, :, 0] == 255)
    assert len(bright) == 1
    assert bright[0] in (round(30 - shift), round(30 + shift))  # the sign is random


def test_rotate_turns_by_thirty_degrees_at_level_ten():
    size = 65
    img = np.zeros((size, size, 3), np.uint8)
    img[32, 32:60] = 255  # a horizontal ray from the centre
    out = rotate(img, 10.0, random.Random(0))
    ys, xs = np.nonzero(out[..., 0] > 128)
    far = np.argmax((xs - 32) ** 2 + (ys - 32) ** 2)
    angle = math.degrees(math.atan2(-(ys[far] - 32), xs[far] - 32))
    assert abs(abs(angle) - 30) < 3


def test_erasing_area_aspect_chance_and_fill():
    size = 64
    rng = random.Random(0)
    boxes, erased = [], 0
    fills = []
    for _ in range(3000):
        img = np.full((size, size, 3), 7, np.uint8)  # 7 is no normal fill in practice
        out = random_erase(img, 0.25, rng)
        changed = (out != img).any(axis=2)
        if not changed.any():
            continue
        erased += 1
        ys, xs = np.nonzero(changed)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        boxes.append((h * w / size**2, h / w))
        fills.append(out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].reshape(-1, 3))
    assert erased / 3000 == pytest.approx(0.25, abs=0.03)
    areas, aspects = zip(*boxes)
    assert min(areas) >= 0.02 * 0.9 and max(areas) <= 1 / 3 * 1.1
    assert min(aspects) >= 0.3 * 0.8 and max(aspects) <= 1 / 0.3 * 1.25
    normalised = (np.concatenate(fills) / 255 - PIXEL_MEAN) / PIXEL_STD
    assert np.abs(normalised.mean(axis=0)).max() < 0.05  # N(0, 1) in normalised units
    assert normalised.std(axis=0) == pytest.approx([0.95] * 3, abs=0.07)  # clipped tails
