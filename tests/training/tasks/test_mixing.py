"""Mixup and CutMix against their definitions: the inputs are the stated blends or pastes, the
targets mix label-smoothed one-hots by the share each input keeps, and the draws belong to the
global batch, not to how ranks split it."""

import random

import pytest
import torch

from training.tasks.mixing import (
    Mix,
    cutmix_box,
    mixed_batch,
    pair_draw,
    smoothed_one_hot,
    soft_cross_entropy,
)

CLASSES = 5


def _batch(n=8, size=16):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=gen) * 255, torch.arange(n) % CLASSES


def test_label_smoothing_puts_smoothing_over_classes_off_the_label():
    t = smoothed_one_hot(torch.tensor([2]), CLASSES, 0.1)[0]
    assert t[2].item() == pytest.approx(0.9 + 0.02)
    assert t[0].item() == pytest.approx(0.02)
    assert t.sum().item() == pytest.approx(1.0)


def test_mixup_blends_inputs_and_targets_by_the_same_lambda():
    x, y = _batch()
    mixed, targets = mixed_batch(x, y, CLASSES, 0.1, Mix(mixup_alpha=0.8), 0, 3, 0)
    hot = smoothed_one_hot(y, CLASSES, 0.1)
    for i in range(0, len(x), 2):
        lam = pair_draw(Mix(mixup_alpha=0.8), 0, 3, i // 2, 16, 16).lam
        assert 0 < lam < 1
        torch.testing.assert_close(mixed[i], lam * x[i] + (1 - lam) * x[i + 1])
        torch.testing.assert_close(mixed[i + 1], lam * x[i + 1] + (1 - lam) * x[i])
        torch.testing.assert_close(targets[i], lam * hot[i] + (1 - lam) * hot[i + 1])
    assert torch.allclose(targets.sum(1), torch.ones(len(x)))


def test_cutmix_pastes_a_box_and_weights_labels_by_area_kept():
    x, y = _batch()
    mix = Mix(cutmix_alpha=1.0)
    mixed, targets = mixed_batch(x, y, CLASSES, 0.0, mix, 0, 5, 0)
    for i in range(0, len(x), 2):
        draw = pair_draw(mix, 0, 5, i // 2, 16, 16)
        from_other = (mixed[i] == x[i + 1]).all(dim=0) & (mixed[i] != x[i]).any(dim=0)
        kept = 1 - from_other.float().mean().item()
        assert draw.kind == "cutmix"
        assert kept == pytest.approx(draw.lam)  # the label share is the pixel share
        assert targets[i, y[i]].item() == pytest.approx(draw.lam)
        assert targets[i, y[i + 1]].item() == pytest.approx(1 - draw.lam)
        top, bottom, left, right = draw.box
        torch.testing.assert_close(
            mixed[i + 1][..., top:bottom, left:right], x[i][..., top:bottom, left:right]
        )


def test_cutmix_box_area_follows_lambda_and_is_clipped():
    rng = random.Random(0)
    for _ in range(2000):
        lam = rng.random()
        (top, bottom, left, right), kept = cutmix_box(64, 64, lam, rng)
        assert 0 <= top <= bottom <= 64 and 0 <= left <= right <= 64
        assert kept == pytest.approx(1 - (bottom - top) * (right - left) / 64**2)
        assert kept >= lam - 0.05  # the box is never larger than asked (rounding aside)
    # centred in the frame, nothing is clipped: the box is sqrt(1 - lam) of each side
    (top, bottom, left, right), kept = cutmix_box(64, 64, 0.75, _Centre())
    assert (top, bottom, left, right, kept) == (16, 48, 16, 48, 0.75)


class _Centre(random.Random):
    def randrange(self, n):
        return n // 2


def test_switch_prob_picks_cutmix_that_often_and_prob_mixes_that_often():
    mix = Mix(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.5)
    kinds = [pair_draw(mix, 0, step, 0, 32, 32).kind for step in range(4000)]
    mixed = [k for k in kinds if k != "none"]
    assert len(mixed) / len(kinds) == pytest.approx(0.8, abs=0.03)
    assert mixed.count("cutmix") / len(mixed) == pytest.approx(0.5, abs=0.03)


def test_the_mixed_global_batch_is_the_same_split_over_two_ranks():
    x, y = _batch()
    mix = Mix(mixup_alpha=0.8, cutmix_alpha=1.0)
    whole, t_whole = mixed_batch(x, y, CLASSES, 0.1, mix, 7, 11, 0)
    first, t_first = mixed_batch(x[:4], y[:4], CLASSES, 0.1, mix, 7, 11, 0)
    second, t_second = mixed_batch(x[4:], y[4:], CLASSES, 0.1, mix, 7, 11, 4)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(torch.cat([t_first, t_second]), t_whole)


def test_soft_cross_entropy_equals_cross_entropy_on_one_hot_targets():
    logits = torch.randn(6, CLASSES)
    y = torch.randint(0, CLASSES, (6,))
    expected = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    got = soft_cross_entropy(logits, smoothed_one_hot(y, CLASSES, 0.1))
    torch.testing.assert_close(got, expected)


def test_an_odd_rank_batch_is_refused_when_mixing():
    x, y = _batch(5)
    with pytest.raises(ValueError, match="even"):
        mixed_batch(x, y, CLASSES, 0.1, Mix(mixup_alpha=0.8), 0, 0, 0)
