"""The pretraining objectives, looked up by the modality's ``objective`` word: which model a run
trains, and what one micro step feeds it.

* ``mae`` (``training.mae``): the encoder sees the visible tokens only; a light decoder
  reconstructs the masked ones. Masks depend on the token grid alone (``training.masking``).
* ``mlm`` (``training.mlm``): the encoder sees every token, masked ones replaced 80/10/10; a head
  tied to the embeddings predicts them. Which tokens are chosen depends on the ids themselves
  (special tokens and word boundaries: ``training.mlm_masking``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from training.config import ModelConfig
from training.modalities import TokenGeometry

OBJECTIVES = ("mae", "mlm")
PLACEHOLDER_VOCAB = 30522  # sizes an MLM before its tokenizer exists (BERT's vocabulary)


def build_model(
    objective: str, cfg: ModelConfig, geometry: TokenGeometry, mask_kind: str | None = None
) -> nn.Module:
    """The pretraining model; a ``mask_kind`` of ``hpm`` gives the MAE its loss head."""
    if objective == "mae":
        from training.mae import MaskedAutoencoder

        return MaskedAutoencoder(cfg, geometry, predict_loss=mask_kind == "hpm")
    if objective == "mlm":
        from training.mlm import MaskedLanguageModel

        if not geometry.vocab_size:
            geometry = dataclasses.replace(geometry, vocab_size=PLACEHOLDER_VOCAB)
        return MaskedLanguageModel(cfg, geometry)
    raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")


def step_inputs(
    objective: str,
    mask_cfg,
    seed: int,
    step: int,
    keys,
    x: torch.Tensor,
    geometry,
    progress: float = 0.0,
):
    """The masking of one micro step, on the CPU: a ``Mask`` over the token grid for MAE (the
    modality tokenizes ``x`` on the device; ``per_sample`` rows per sample; HPM's draw that the
    model completes, its hard share from the run's ``progress`` in [0, 1]), an ``MlmBatch``
    (inputs, targets) made from the ids in ``x`` for MLM."""
    if objective == "mlm":
        from training.mlm_masking import mlm_batch

        return mlm_batch(mask_cfg.kind, seed, step, keys, x, mask_cfg.ratio, geometry.vocab_size)
    from training.masking import hard_share, make_masks

    share = hard_share(mask_cfg.hard_share, progress)
    c = mask_cfg
    return make_masks(c.kind, seed, step, keys, geometry, c.ratio, c.per_sample, share)
