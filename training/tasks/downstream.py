"""What every downstream task may read: splits, modality, input config, class count, and the
features of frozen encoders (extracted once per encoder, shared by the probe and k-NN)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from training.config import LoaderConfig
from training.loader import Batch, eval_batches, train_loader, train_spec_for
from training.modalities import Modality


@dataclass
class Downstream:
    """The data side of evaluation, shared by every task of one run."""

    modality: Modality
    input: Any  # the input config the encoder was pretrained with
    train_shards: str
    val_shards: str
    num_classes: int
    batch_size: int  # for feature extraction and evaluation passes
    seed: int
    _features: dict = field(default_factory=dict, repr=False)

    def tokens(self, batch: torch.Tensor) -> torch.Tensor:
        return self.modality.ops.tokenize(self.input, batch)

    def eval_batches(self, split_dir: str) -> Iterator[Batch]:
        return eval_batches(split_dir, self.modality.name, self.input, self.batch_size)

    def train_batches(self, input_cfg, batch_size: int) -> Iterator[Batch]:
        """An endless, augmented, seeded stream of the train split (one process)."""
        spec = train_spec_for(
            self.train_shards,
            self.modality.name,
            input_cfg,
            LoaderConfig(workers=1, shuffle_buffer=1000),
            batch_size=batch_size,
            seed=self.seed,
        )
        return train_loader(spec)

    @torch.no_grad()
    def features(self, encoder: torch.nn.Module, split_dir: str):
        """Pooled features ``[N, D]`` and labels ``[N]`` of every sample of a split, once per
        encoder (the cache is dropped when the next encoder asks)."""
        if self._features.get("encoder") is not encoder:
            self._features = {"encoder": encoder}
        if split_dir not in self._features:
            encoder.eval()
            feats, labels = [], []
            for x, y, _ in self.eval_batches(split_dir):
                feats.append(encoder.features(self.tokens(x)).float())
                labels.append(y)
            self._features[split_dir] = (torch.cat(feats), torch.cat(labels))
        return self._features[split_dir]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    scores = {}
    for k in (1, 5):
        if k == 1 or num_classes >= 5:
            hit = logits.topk(k, dim=1).indices.eq(labels[:, None]).any(dim=1)
            scores[f"top{k}"] = round(100.0 * hit.float().mean().item(), 2)
    return scores
