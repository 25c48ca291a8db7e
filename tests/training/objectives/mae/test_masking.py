import pytest
import torch

from training.objectives.mae.masking import (
    masks_for_batch,
    num_visible,
    random_mask,
    sample_noise,
    sample_seeds,
)

KEYS = [f"img{i}" for i in range(16)]


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9, 0.95])
@pytest.mark.parametrize("n", [49, 64, 196])
def test_exact_visible_count(ratio, n):
    mask = masks_for_batch(0, 0, KEYS, n, ratio)
    keep = num_visible(n, ratio)
    assert mask.ids_keep.shape == (len(KEYS), keep)
    assert torch.all(mask.masked.sum(1) == n - keep)
    assert keep == max(1, round(n * (1 - ratio)))


def test_masked_and_kept_agree():
    mask = masks_for_batch(0, 3, KEYS, 64, 0.75)
    for row in range(len(KEYS)):
        visible = set(mask.ids_keep[row].tolist())
        hidden = set(torch.nonzero(mask.masked[row]).flatten().tolist())
        assert visible.isdisjoint(hidden) and len(visible | hidden) == 64


def test_ids_restore_inverts_the_shuffle():
    noise = sample_noise(sample_seeds(1, 2, KEYS), 64)
    mask = random_mask(noise, 0.75)
    shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(
        torch.gather(shuffle, 1, mask.ids_restore), torch.arange(64).expand(len(KEYS), -1)
    )


def test_each_sample_gets_its_own_mask():
    mask = masks_for_batch(0, 0, KEYS, 196, 0.75)
    assert len({tuple(r.tolist()) for r in mask.masked}) == len(KEYS)


def test_same_seed_step_key_same_mask_whatever_the_batch():
    a = masks_for_batch(7, 11, KEYS, 196, 0.9)
    b = masks_for_batch(7, 11, KEYS[::-1], 196, 0.9)  # other batch order / composition
    assert torch.equal(a.masked, b.masked.flip(0))


def test_step_and_seed_change_the_mask():
    base = masks_for_batch(0, 0, KEYS, 196, 0.75).masked
    assert not torch.equal(base, masks_for_batch(0, 1, KEYS, 196, 0.75).masked)
    assert not torch.equal(base, masks_for_batch(1, 0, KEYS, 196, 0.75).masked)


def test_impossible_ratio_is_rejected():
    with pytest.raises(ValueError):
        num_visible(196, 1.0)
