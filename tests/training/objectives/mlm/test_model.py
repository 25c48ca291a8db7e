"""Masked language modelling: which tokens are chosen (random, whole words, spans), BERT's
80/10/10, the tied head, padding, and the FLOPs counted from the geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from training.config import ModelConfig
from training.flops import mlm_forward_flops
from training.modalities import TokenGeometry
from training.objectives.mlm.masking import IGNORE, MASK, NUM_SPECIAL, PAD, chosen_tokens, mlm_batch
from training.objectives.mlm.model import MaskedLanguageModel

VOCAB, N = 500, 64
CFG = ModelConfig(preset="nano", attention="matmul")
G = TokenGeometry((N,), 1, vocab_size=VOCAB)


def _batch(rows: int = 8, pad_from: int = 56, seed: int = 0) -> torch.Tensor:
    """[rows, 2, N]: random ids with a separator every 20 tokens, words of 1-3 pieces, padding
    from ``pad_from``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, VOCAB, (rows, N), generator=gen)
    starts = (torch.rand(rows, N, generator=gen) < 0.5).long()
    starts[:, 0] = 1
    ids[:, 19::20] = 3  # [SEP]
    starts[:, 19::20] = 1
    starts[:, 20::20] = 1
    ids[:, pad_from:] = PAD
    starts[:, pad_from:] = 1
    return torch.stack([ids, starts], dim=1)


def _words(starts: list[int], ids: list[int]) -> list[list[int]]:
    words, current = [], []
    for i, (s, t) in enumerate(zip(starts, ids)):
        if (s or t < NUM_SPECIAL) and current:
            words.append(current)
            current = []
        if t >= NUM_SPECIAL:
            current.append(i)
    return [*words, current] if current else words


@pytest.mark.parametrize("kind", ["random", "whole_word", "span"])
def test_chosen_tokens_are_about_the_ratio_and_never_special(kind):
    x = _batch()
    for row in range(x.shape[0]):
        ids, starts = x[row, 0], x[row, 1]
        chosen = chosen_tokens(kind, ids, starts, 0.3, np.random.default_rng(row))
        maskable = int((ids >= NUM_SPECIAL).sum())
        assert not chosen[ids < NUM_SPECIAL].any()
        budget = round(0.3 * maskable)
        if kind == "random":
            assert int(chosen.sum()) == budget
        else:  # whole words: within one word (3 pieces) of the budget
            assert abs(int(chosen.sum()) - budget) <= 3, int(chosen.sum())
            for word in _words(starts.tolist(), ids.tolist()):
                assert len({bool(chosen[i]) for i in word}) == 1, word  # all or none


def test_spans_are_runs_of_several_words():
    x = _batch(rows=32)
    runs = []
    for row in range(x.shape[0]):
        ids, starts = x[row, 0], x[row, 1]
        chosen = chosen_tokens("span", ids, starts, 0.3, np.random.default_rng(row))
        words = _words(starts.tolist(), ids.tolist())
        flags = [bool(chosen[w[0]]) for w in words]
        run = 0
        for f in [*flags, False]:
            if f:
                run += 1
            elif run:
                runs.append(run)
                run = 0
    assert sum(runs) / len(runs) > 1.8  # random words would give runs of about 1.4


def test_eighty_ten_ten_and_reproducible_from_seed_step_and_key():
    x = _batch(rows=64)
    keys = [f"s{i}" for i in range(64)]
    batch = mlm_batch("random", 0, 5, keys, x, 0.3, VOCAB)
    chosen = batch.targets != IGNORE
    assert torch.equal(batch.targets[chosen], x[:, 0][chosen])
    assert torch.equal(batch.inputs[~chosen], x[:, 0][~chosen])
    n = int(chosen.sum())
    masked = int((batch.inputs[chosen] == MASK).sum()) / n
    kept = int((batch.inputs[chosen] == x[:, 0][chosen]).sum()) / n
    assert 0.75 < masked < 0.85 and 0.06 < kept < 0.14, (masked, kept)
    again = mlm_batch("random", 0, 5, keys, x, 0.3, VOCAB)
    assert torch.equal(again.inputs, batch.inputs) and torch.equal(again.targets, batch.targets)
    other = mlm_batch("random", 0, 6, keys, x, 0.3, VOCAB)
    assert not torch.equal(other.targets, batch.targets)


def test_the_head_is_tied_to_the_embeddings_and_saves_as_one_tensor(tmp_path):
    torch.manual_seed(0)
    model = MaskedLanguageModel(CFG, G)
    x = _batch()
    batch = mlm_batch("random", 0, 0, [f"k{i}" for i in range(8)], x, 0.15, VOCAB)
    model(batch.inputs, batch.targets).backward()
    table = model.encoder.patch_embed.weight
    assert table.grad is not None
    # the head's share of the gradient reaches rows of tokens the encoder never read
    unread = torch.ones(VOCAB, dtype=torch.bool)
    unread[batch.inputs.flatten()] = False
    assert table.grad[unread].abs().sum() > 0
    names = [n for n, _ in model.named_parameters()]
    assert sum("embed" in n for n in names) == 1
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))  # shared tensors would fail


def test_padding_changes_nothing_for_the_real_tokens():
    torch.manual_seed(0)
    encoder = MaskedLanguageModel(CFG, G).encoder.eval()
    ids = _batch(rows=2, pad_from=N)[:, 0]
    short = ids[:, :40]
    padded = torch.cat([short, torch.full((2, N - 40), PAD)], dim=1)
    shorter_geometry = TokenGeometry((40,), 1, vocab_size=VOCAB)
    other = MaskedLanguageModel(CFG, shorter_geometry).encoder.eval()
    other.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        a = encoder(padded)[:, : 1 + 40]
        b = other(short)
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(encoder.features(padded), other.features(short), atol=1e-5)


def test_flops_from_the_geometry_match_torch_flop_counter():
    model = MaskedLanguageModel(CFG, G)
    x = _batch(rows=1, pad_from=N)
    for ratio in (0.15, 0.4):
        batch = mlm_batch("random", 0, 0, ["a"], x, ratio, VOCAB)
        with FlopCounterMode(display=False) as counter:
            model(batch.inputs, batch.targets)
        chosen = int(batch.chosen.sum())
        assert counter.get_total_flops() == mlm_forward_flops(CFG, G, chosen), ratio


@pytest.mark.parametrize("kind", ["random", "whole_word", "span"])
def test_a_row_is_masked_alike_in_any_batch(kind):
    """A sample's mask depends on (seed, step, key) alone, not on the rows beside it: the
    masks are drawn for the whole batch at once, and a rank holds any subset of a global batch."""
    x = _batch(rows=16, seed=3)
    keys = [f"s{i}" for i in range(16)]
    whole = mlm_batch(kind, 0, 2, keys, x, 0.3, VOCAB)
    for part in (slice(0, 5), slice(5, 16), slice(7, 8)):
        alone = mlm_batch(kind, 0, 2, keys[part], x[part], 0.3, VOCAB)
        assert torch.equal(alone.inputs, whole.inputs[part])
        assert torch.equal(alone.targets, whole.targets[part])
