"""The contract every registered modality keeps (datatrove's step-contract test is the model).

For each name in ``training.modalities.names()``: its corpus reader's samples are accepted by the
shard writer; its inputs decode what the writer wrote, for training and evaluation; a batch
tokenizes to the geometry it declares; every mask kind it allows keeps exactly the visible count;
and the FLOPs counted from the geometry are those torch counts on a real forward pass. A new
modality adds a ``<name>_corpus`` fixture (``tests/conftest.py``): a tiny raw corpus in its layout
and the prep keys that make it small.
"""

from __future__ import annotations

import functools
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from data_prep.corpus import corpus_reader
from data_prep.plan import WorkUnit
from data_prep.shard_format import read_shard_samples, shard_name
from data_prep.writer import write_unit
from training.config import ModelConfig
from training.flops import mae_forward_flops
from training.loader import _collate
from training.modalities import modality, names
from training.objectives.mae.masking import (
    HardPatchDraw,
    hard_patch_mask,
    make_masks,
    num_visible,
    visible_count,
)
from training.objectives.mae.model import MaskedAutoencoder

# Small inputs per modality, so a forward pass costs milliseconds.
SMALL_INPUT = {
    "image": {"image_size": 32, "patch_size": 8},
    "audio": {"frames": 64, "patch_size": 16, "mel_mean": -6.0, "mel_std": 4.0},
    "video": {"num_frames": 4, "frame_size": 32, "patch_size": 8, "tubelet": 2},
    "text": {"seq_len": 32, "vocab_size": 400},
}
MAE_NAMES = [n for n in names() if modality(n).objective.name == "mae"]


@pytest.fixture(params=names())
def written(request, tmp_path):
    """(modality name, shard samples) written by the modality's own reader through the writer."""
    name = request.param
    source, prep_keys = request.getfixturevalue(f"{name}_corpus")
    reader = corpus_reader(name)
    cfg = reader.config(source=str(source), out=str(tmp_path), **prep_keys)
    items = list(reader.items(cfg, "train"))[:12]
    state = reader.fit(cfg, items)
    result = write_unit(
        WorkUnit(0, tuple(items)), tmp_path, functools.partial(reader.encode, cfg, state)
    )
    assert result.samples >= 4, result.skipped
    return name, list(read_shard_samples(tmp_path / shard_name(0)))


def test_inputs_decode_what_the_writer_wrote(written):
    name, samples = written
    m = modality(name)
    seen = m.input_config(**SMALL_INPUT.get(name, {}))
    for rng in (random.Random(0), None):  # training (augmented) and evaluation
        examples = [m.ops.decode(seen, s, rng) for s in samples]
        assert all(e is not None for e in examples)
        assert [e.key for e in examples] == [s["__key__"] for s in samples]
        assert len({tuple(e.x.shape) for e in examples}) == 1  # batches collate


def test_a_batch_tokenizes_to_the_declared_geometry(written):
    name, samples = written
    m = modality(name)
    seen = m.input_config(**SMALL_INPUT.get(name, {}))
    x, labels, keys = _collate([m.ops.decode(seen, s, None) for s in samples])
    assert labels.shape == (len(samples),) and keys == [s["__key__"] for s in samples]
    tokens = m.ops.tokenize(seen, x)
    g = m.geometry(seen)
    if g.vocab_size:  # ids into the vocabulary
        assert tokens.shape == (len(samples), g.num_tokens) and tokens.dtype == torch.int64
        assert int(tokens.min()) >= 0 and int(tokens.max()) < g.vocab_size
        return
    assert tokens.shape == (len(samples), g.num_tokens, g.values_per_token)
    assert tokens.dtype == torch.float32 and torch.isfinite(tokens).all()


def completed(mask):
    """A mask kind the model completes (HPM) completed with fixed made-up scores."""
    if isinstance(mask, HardPatchDraw):
        scores = torch.linspace(0, 1, mask.noise.shape[1]).expand_as(mask.noise)
        return hard_patch_mask(mask, scores)
    return mask


@pytest.mark.parametrize("name", MAE_NAMES)  # MLM chooses by content: test_mlm_masking
@pytest.mark.parametrize("ratio", [0.0, 0.75, 0.9, 0.95, 0.98])
def test_every_mask_kind_keeps_exactly_the_visible_count(name, ratio):
    m = modality(name)
    g = m.geometry(m.input_config(**SMALL_INPUT.get(name, {})))
    keys = [f"k{i}" for i in range(6)]
    for kind in m.mask_kinds:
        mask = completed(make_masks(kind, 0, 3, keys, g, ratio))
        visible = visible_count(kind, g.grid, ratio)
        if kind != "tube":  # tubes round the visible share per time step
            assert visible == num_visible(g.num_tokens, ratio)
        assert mask.ids_keep.shape == (6, visible), kind
        assert (mask.masked.sum(dim=1) == g.num_tokens - visible).all(), kind
        for row in mask.ids_keep:
            assert len(set(row.tolist())) == visible
        again = completed(make_masks(kind, 0, 3, keys, g, ratio))  # from (seed, step, key)
        assert torch.equal(mask.ids_keep, again.ids_keep)


@pytest.mark.parametrize(
    "name", MAE_NAMES
)  # MLM's count: tests/training/objectives/mlm/test_model.py
@pytest.mark.parametrize("decoder", ["self", "cross"])
def test_flops_from_the_geometry_match_torch_flop_counter(name, decoder):
    m = modality(name)
    g = m.geometry(m.input_config(**SMALL_INPUT.get(name, {})))
    cfg = ModelConfig(
        preset="nano",
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
        decoder_type=decoder,
        attention="matmul",  # plain products, which the counter sees
    )
    model = MaskedAutoencoder(cfg, g)
    tokens = torch.randn(1, g.num_tokens, g.values_per_token)
    for ratio in (0.0, 0.75, 0.9):
        kind = m.mask_kinds[0]
        mask = make_masks(kind, 0, 0, ["a"], g, ratio)
        with FlopCounterMode(display=False) as counter:
            model(tokens, mask)
        assert counter.get_total_flops() == mae_forward_flops(cfg, g, ratio, kind=kind), ratio
