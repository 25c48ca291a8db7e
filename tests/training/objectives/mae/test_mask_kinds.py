"""The image mask kinds beside MAE's random one, each against the property that defines it:
block masks are contiguous, filtered-noise masks have their noise's spectrum, HPM hides what
the loss head predicts to be hard; every kind keeps exactly the visible count and is the same
from the same (seed, step, key) (also tests/training/modalities/test_contract.py)."""

import pytest
import torch

from training.modalities.image.bundle import ImageInputConfig, geometry
from training.objectives.mae.masking import (
    HardPatchDraw,
    filtered_noise,
    hard_patch_mask,
    hard_share,
    make_masks,
    num_visible,
    radial_frequency,
    random_mask,
    sample_noise,
    sample_seeds,
    view_keys,
)

G14 = geometry(ImageInputConfig(image_size=224, patch_size=16))  # 14 x 14
KEYS = [f"img{i}" for i in range(128)]
KINDS = ("random", "block", "noise_lowpass", "noise_highpass", "noise_bandpass")


def masked_neighbour_share(masked: torch.Tensor, grid) -> float:
    """Of the horizontally or vertically adjacent pairs with a masked token, the share where
    both are masked: 1 for one solid block, about the ratio for independent tokens."""
    x = masked.view(-1, *grid).bool()
    both = either = 0
    for a, b in ((x[:, :, :-1], x[:, :, 1:]), (x[:, :-1, :], x[:, 1:, :])):
        both += (a & b).sum().item()
        either += (a | b).sum().item()
    return both / either


def spectral_centroid(masked: torch.Tensor, grid) -> float:
    """Mean radial frequency (cycles per token) of the masks' power, their mean removed."""
    x = masked.view(-1, *grid)
    power = torch.fft.fft2(x - x.mean(dim=(1, 2), keepdim=True)).abs().pow(2).mean(0)
    return float((power * radial_frequency(grid)).sum() / power.sum())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ratio", [0.4, 0.75, 0.95, 0.98])
def test_each_kind_hides_exactly_the_count_and_only_its_seed_changes_it(kind, ratio):
    mask = make_masks(kind, 0, 5, KEYS[:16], G14, ratio)
    hidden = 196 - num_visible(196, ratio)
    assert (mask.masked.sum(1) == hidden).all()
    assert mask.ids_keep.shape == (16, 196 - hidden)
    assert torch.equal(mask.masked, make_masks(kind, 0, 5, KEYS[:16], G14, ratio).masked)
    assert torch.equal(  # a sample's mask is its own, whatever the batch around it
        mask.masked[3], make_masks(kind, 0, 5, KEYS[3:4], G14, ratio).masked[0]
    )
    assert not torch.equal(mask.masked, make_masks(kind, 0, 6, KEYS[:16], G14, ratio).masked)


def test_block_masks_are_contiguous_where_random_ones_are_not():
    """BEiT's blocks: at 40% about 3/4 of the pairs touching a masked token are both masked
    (random: about a quarter, 0.4 / (2 - 0.4))."""
    block = make_masks("block", 0, 0, KEYS, G14, 0.4).masked
    rand = make_masks("random", 0, 0, KEYS, G14, 0.4).masked
    assert masked_neighbour_share(rand, (14, 14)) == pytest.approx(0.4 / 1.6, abs=0.03)
    assert masked_neighbour_share(block, (14, 14)) > 0.65


def test_filtered_noise_keeps_its_power_in_its_band():
    """The noise behind ColorMAE's patterns, measured: the share of its power at each kind's
    frequencies, against white noise's share there."""
    seeds = sample_seeds(0, 0, KEYS)
    r = radial_frequency((14, 14))

    def share(noise, band):
        power = torch.fft.fft2(noise.view(-1, 14, 14)).abs().pow(2).mean(0)
        power[0, 0] = 0  # the mean is no frequency of the pattern
        return float(power[band].sum() / power.sum())

    low, high, mid = r < 0.15, r > 0.3, (r > 0.15) & (r < 0.35)
    white = torch.randn(128, 196)  # measured: 6% of its power below 0.15, 29% in 0.15-0.35
    lowpass, highpass, bandpass = (
        filtered_noise(seeds, (14, 14), k)
        for k in ("noise_lowpass", "noise_highpass", "noise_bandpass")
    )
    assert share(lowpass, low) > 0.75 and share(white, low) < 0.1
    assert share(highpass, low) < 0.02 and share(highpass, high) > 0.85
    assert share(bandpass, mid) > 0.75 and share(white, mid) < 0.35


def test_noise_masks_inherit_the_spectrum_low_blobs_high_spread():
    centroid = {
        k: spectral_centroid(make_masks(k, 0, 0, KEYS, G14, 0.75).masked, (14, 14)) for k in KINDS
    }
    assert centroid["noise_lowpass"] < centroid["noise_bandpass"] < centroid["random"]
    assert centroid["random"] < centroid["noise_highpass"]
    lowpass = make_masks("noise_lowpass", 0, 0, KEYS, G14, 0.4).masked
    assert masked_neighbour_share(lowpass, (14, 14)) > 0.6


def test_hpm_hides_every_token_the_loss_head_ranks_hardest_and_the_rest_at_random():
    draw = make_masks("hpm", 0, 0, KEYS[:32], G14, 0.75, share=0.5)
    assert isinstance(draw, HardPatchDraw) and draw.keep == 49 and draw.hard == 73  # 147 / 2
    predicted = torch.randn(32, 196, generator=torch.Generator().manual_seed(1))
    mask = hard_patch_mask(draw, predicted)
    hardest = predicted.topk(73, dim=1).indices
    assert mask.masked.gather(1, hardest).eq(1).all()
    assert (mask.masked.sum(1) == 147).all()
    # the other 74 hidden are drawn from the remaining 123 tokens, not the next hardest
    rest = predicted.scatter(1, hardest, float("-inf"))
    next_hardest = rest.topk(74, dim=1).indices
    assert mask.masked.gather(1, next_hardest).mean() < 0.85
    # preference measured: hidden tokens' mean predicted-loss rank far above the visible ones'
    rank = predicted.argsort(1).argsort(1).float()
    hidden_rank = (rank * mask.masked).sum(1) / mask.masked.sum(1)
    visible_rank = (rank * (1 - mask.masked)).sum(1) / (1 - mask.masked).sum(1)
    assert (hidden_rank > visible_rank + 30).all()  # random: equal on average
    # with nothing hard yet (the schedule's start) HPM is MAE's random mask on the same noise
    start = make_masks("hpm", 0, 0, KEYS[:32], G14, 0.75, share=0.0)
    assert torch.equal(
        hard_patch_mask(start, predicted).masked, random_mask(start.noise, 0.75).masked
    )


def test_hpm_schedule_goes_from_easy_to_hard():
    assert [hard_share(0.5, p) for p in (0.0, 0.5, 1.0, 1.2)] == [0.0, 0.25, 0.5, 0.5]


def test_k_masks_per_sample_are_k_different_views_the_first_the_plain_mask():
    one = make_masks("random", 0, 3, KEYS[:8], G14, 0.9)
    four = make_masks("block", 0, 3, KEYS[:8], G14, 0.9, per_sample=4)
    assert four.ids_keep.shape == (32, num_visible(196, 0.9))
    plain = make_masks("random", 0, 3, KEYS[:8], G14, 0.9, per_sample=4)
    assert torch.equal(plain.masked[::4], one.masked)  # view 0 of sample i = its K=1 mask
    views = plain.masked.view(8, 4, 196)
    for i in range(8):
        assert len({tuple(v.tolist()) for v in views[i]}) == 4
    assert view_keys(["a", "b"], 2) == ["a", "a#1", "b", "b#1"]
    draw = make_masks("hpm", 0, 3, KEYS[:8], G14, 0.9, per_sample=2, share=0.5)
    assert torch.equal(draw.noise[::2], sample_noise(sample_seeds(0, 3, KEYS[:8]), 196))
