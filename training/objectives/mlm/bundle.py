"""The MLM objective's bundle: an encoder over every token, masked ones replaced 80/10/10, and a
head tied to the embeddings (``model.py``); which tokens are chosen depends on the ids
(``masking.py``); masked-token scores on the held-out corpus split (``scores.py``)."""

from __future__ import annotations

import dataclasses
import math

from training.objectives import Objective

PLACEHOLDER_VOCAB = 30522  # sizes an MLM before its tokenizer exists (BERT's vocabulary)


def build_model(cfg, geometry, mask_kind=None):
    from training.objectives.mlm.model import MaskedLanguageModel

    if not geometry.vocab_size:
        geometry = dataclasses.replace(geometry, vocab_size=PLACEHOLDER_VOCAB)
    return MaskedLanguageModel(cfg, geometry)


def step_inputs(mask_cfg, seed, step, keys, x, geometry, progress=0.0):
    """An ``MlmBatch`` (inputs, targets) made from the token ids in ``x``."""
    from training.objectives.mlm.masking import mlm_batch

    return mlm_batch(mask_cfg.kind, seed, step, keys, x, mask_cfg.ratio, geometry.vocab_size)


def loss(engine, modality, input_cfg, x, batch, device, dtype):
    """Token ids, already in ``batch``: nothing to tokenize or cast."""
    return engine(batch.inputs, batch.targets, batch.index, batch.picked, batch.padding)


def figure_inputs(mask_cfg, seed, keys, x, geometry):
    return step_inputs(mask_cfg, seed, 0, keys, x, geometry)


def head_fact(model_cfg) -> tuple[str, str]:
    return ("head", "MLM head tied to the token embeddings (run on the chosen tokens only)")


def mask_fact(mask_cfg, grid) -> tuple[str, str]:
    return (
        "mask",
        f"{mask_cfg.kind}, ratio {mask_cfg.ratio:.2f}: the encoder reads all {math.prod(grid)} "
        "tokens, so its cost does not fall with the ratio (MAE's does); the head's does",
    )


OBJECTIVE = Objective(
    name="mlm",
    build_model=build_model,
    step_inputs=step_inputs,
    loss=loss,
    figure_inputs=figure_inputs,
    head_fact=head_fact,
    mask_fact=mask_fact,
    figure_on_pretrain_split=True,  # held-out corpus sequences, shown with the tokenizer
    downstream_needs_head=True,  # the masked-token scores need the head
    allows_mixing=False,  # ids cannot be blended
    allows_per_sample=False,
)
