"""Masked language model: the transformer encoder over every token, and BERT's prediction head
tied to the token embeddings.

Reads top to bottom: the head, then the model and its loss. Unlike MAE, the encoder sees all
tokens (masked ones as ``[MASK]``, a random token or themselves: ``training.objectives.mlm.masking``), so
its cost does not fall with the ratio. Only the head's work does: it runs on the chosen positions
alone, not on every position as HF's ``BertForMaskedLM`` does, and at seq 128 with a 30k
vocabulary that projection is a fifth of BERT-base's matrix FLOPs per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.modalities import TokenGeometry
from training.objectives.mae.model import ViTEncoder
from training.objectives.mlm.masking import IGNORE, MlmBatch
from training.transformer import init_weights


class MlmHead(nn.Module):
    """Dense + GELU + LayerNorm, then the token embedding table transposed (the tie: the table
    is passed in, not held, so it is one parameter and one tensor in every state dict) and a
    bias."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))
        return x @ table.to(x.dtype).T + self.bias.to(x.dtype)


class MaskedLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig, geometry: TokenGeometry):
        super().__init__()
        if not geometry.vocab_size:
            raise ValueError("masked language modelling needs id tokens (a vocabulary)")
        self.cfg = cfg.resolved()
        self.geometry = geometry
        self.encoder = ViTEncoder(self.cfg, geometry)
        self.head = MlmHead(self.cfg.embed_dim, geometry.vocab_size)
        init_weights(self)

    def forward(self, inputs, targets, index=None, picked=None, padding=None) -> torch.Tensor:
        """Token ids ``[B, N]`` as the encoder reads them, and the ids to predict (:data:`IGNORE`
        elsewhere) -> the mean cross-entropy over the chosen positions. ``index``, ``picked``
        and ``padding``: an ``MlmBatch``'s host-side facts (found here when not given)."""
        return self.loss_and_logits(MlmBatch(inputs, targets, index, picked, padding))[0]

    def loss_and_logits(self, batch: MlmBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits ``[M, V]`` of the ``M`` chosen positions in row-major order)."""
        encoded = self.encoder(batch.inputs, padding=batch.padding)[:, 1:]
        if batch.index is None:  # made on the device: found there (a host read)
            chosen = (batch.targets != IGNORE).flatten()
            index = chosen.nonzero().squeeze(1)
            picked = batch.targets.flatten()[index]
        else:
            index, picked = batch.index, batch.picked
        mine = encoded.flatten(0, 1).index_select(0, index)
        logits = self.head(mine, self.encoder.patch_embed.weight)
        return F.cross_entropy(logits.float(), picked), logits

    @torch.no_grad()
    def reconstruct(self, batch: MlmBatch) -> torch.Tensor:
        """The ids ``[B, N]`` the model reads, with its best guess at every chosen position."""
        _, logits = self.loss_and_logits(batch)
        out = batch.inputs.clone()
        out[batch.chosen] = logits.argmax(-1)
        return out
