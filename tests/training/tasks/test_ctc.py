"""CTC fine-tuning's pure parts: the character vocabulary, greedy decoding, error rates, and a
head that learns to spell on a toy problem."""

from __future__ import annotations

import torch

from training.config import ModelConfig
from training.modalities import TokenGeometry
from training.objectives.mae.model import ViTEncoder
from training.tasks.ctc import (
    BLANK,
    VOCAB,
    CtcHead,
    ctc_loss,
    edit_distance,
    error_rates,
    greedy_decode,
    spec_keep,
    text_to_ids,
)


def _path(ids: list[int]) -> torch.Tensor:
    """Log-probabilities whose best path is ``ids``."""
    out = torch.full((len(ids), len(VOCAB) + 1), -10.0)
    out[torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    return out


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    s, e, v, n, bar = (VOCAB.index(c) + 1 for c in "SEVN|")
    # "SS_E_VV_E_NN" then a word break, then "S_E_V_E_N"; the blank between E and E keeps both
    path = [s, s, BLANK, e, v, v, e, BLANK, n, n, bar, bar, s, e, v, e, n, BLANK]
    assert greedy_decode(_path(path)) == "SEVEN SEVEN"
    assert greedy_decode(_path([BLANK] * 5)) == ""


def test_text_round_trips_through_ids():
    ids = text_to_ids("four  seven one")
    assert greedy_decode(_path(ids)) == "FOUR SEVEN ONE"
    assert BLANK not in ids


def test_error_rates_count_edits_over_reference_words():
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    rates = error_rates(["FOUR SEVEN ONE", "TWO"], ["FOUR SEVEN", "TOO"])
    assert rates["wer"] == 50.0  # one deletion + one substitution over four words
    assert rates["cer"] == round(100 * (4 + 1) / (14 + 3), 2)
    assert error_rates(["ONE"], ["ONE"]) == {"wer": 0.0, "cer": 0.0}


def test_the_head_learns_to_spell_a_toy_utterance():
    torch.manual_seed(0)
    geometry = TokenGeometry((6, 2), 8)
    cfg = ModelConfig(preset="nano", embed_dim=32, depth=1, num_heads=2)
    head = CtcHead(ViTEncoder(cfg, geometry), geometry.grid, upsample=3)
    tokens = torch.randn(2, 12, 8)
    texts = ["ONE TWO", "NINE"]
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = ctc_loss(head(tokens), texts)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10
    log_probs = head(tokens)
    assert log_probs.shape == (2, 18, len(VOCAB) + 1)
    assert [greedy_decode(row) for row in log_probs] == texts


def test_spec_augment_zeroes_whole_time_columns_and_frequency_rows_per_row():
    grid = (16, 8)
    keep = spec_keep(0, step=3, batch_size=6, grid=grid, shares=(0.25, 0.25)).reshape(6, *grid)
    for row in keep:
        dropped_columns = (~row).all(dim=1)  # every frequency of that time column
        dropped_rows = (~row).all(dim=0)
        assert dropped_columns.sum() == 4 and dropped_rows.sum() == 2
        # what is kept is exactly the other columns' other rows
        assert torch.equal(row, ~dropped_columns[:, None] & ~dropped_rows[None, :])
    assert not all(torch.equal(keep[0], other) for other in keep[1:])  # drawn per row
    # the global batch's rows own their draws: a rank slicing its rows sees the same masks,
    # and another step draws others
    assert torch.equal(keep, spec_keep(0, 3, 6, grid, (0.25, 0.25)).reshape(6, *grid))
    assert not torch.equal(keep, spec_keep(0, 4, 6, grid, (0.25, 0.25)).reshape(6, *grid))


def test_spec_augment_off_keeps_every_patch():
    assert spec_keep(0, 0, 4, (16, 8), (0.0, 0.0)).all()
    only_time = spec_keep(0, 0, 4, (16, 8), (0.5, 0.0)).reshape(4, 16, 8)
    assert (~only_time).all(dim=2).sum(dim=1).tolist() == [8] * 4
    assert only_time.any(dim=1).all()  # no frequency row dropped


def test_spec_augment_shares_and_a_freeze_longer_than_the_run_are_named():
    from training.tasks.config import CtcConfig

    problems = dict(CtcConfig(mask_time=1.0, mask_freq=-0.1).problems())
    assert problems["mask_time"] == "a share in [0, 1), got 1.0"
    assert "mask_freq" in problems and not dict(CtcConfig(mask_time=0.3).problems())
    frozen_throughout = dict(CtcConfig(epochs=5, freeze_epochs=5).problems())
    assert frozen_throughout["freeze_epochs"] == "an int in [0, epochs), got 5"
