"""What every downstream task may read: splits, modality, input config, class count, and the
features of frozen encoders (extracted once per encoder, shared by the probe and k-NN)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    # The input configs the val split is scored under (empty: ``input``), and the function of a
    # sample key whose equal values are averaged (video's multi-view test: crops x clips).
    views: list = field(default_factory=list)
    group_of: Callable[[str], str] | None = None
    # the whole pretraining model of the encoder being scored (tasks that need the MLM head)
    _model: torch.nn.Module | None = field(default=None, repr=False)
    _features: dict = field(default_factory=dict, repr=False)

    def register(self, model: torch.nn.Module) -> torch.nn.Module:
        """Keep ``model`` for :meth:`pretraining_model`; returns its encoder (what tasks get)."""
        self._model = model
        return model.encoder

    def pretraining_model(self, encoder: torch.nn.Module) -> torch.nn.Module:
        if self._model is not None and self._model.encoder is encoder:
            return self._model
        raise LookupError("this task needs the whole pretraining model, not only its encoder")

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
            self._features[split_dir] = self.scored(encoder.features, split_dir)
        return self._features[split_dir]

    @torch.no_grad()
    def scored(self, fn: Callable[[torch.Tensor], torch.Tensor], split_dir: str):
        """``fn`` (tokens -> one output row per sample) over every sample of a split, and the
        labels: ``[N, ...]``, ``[N]``. The val split is scored under every view, the outputs of
        a group averaged (one row per group, in order of first appearance)."""
        is_val = split_dir == self.val_shards
        views = (self.views if is_val else []) or [self.input]
        group_of = self.group_of if is_val else None
        outputs, labels, groups = [], [], []
        for view in views:
            for x, y, keys in eval_batches(split_dir, self.modality.name, view, self.batch_size):
                outputs.append(fn(self.modality.ops.tokenize(view, x)).float())
                labels.append(y)
                groups.extend(keys)
        out, lab = torch.cat(outputs), torch.cat(labels)
        if group_of is None:
            return out, lab
        return averaged_by_group(out, lab, [group_of(k) for k in groups])


def averaged_by_group(outputs: torch.Tensor, labels: torch.Tensor, groups: list[str]):
    """The mean output row and the label of each group, in order of first appearance."""
    index: dict[str, int] = {}
    ids = torch.tensor([index.setdefault(g, len(index)) for g in groups])
    sums = torch.zeros(len(index), *outputs.shape[1:]).index_add_(0, ids, outputs)
    counts = torch.bincount(ids, minlength=len(index)).clamp(min=1)
    first = torch.full((len(index),), len(groups), dtype=torch.long).scatter_reduce(
        0, ids, torch.arange(len(groups)), reduce="amin"
    )
    return sums / counts.view(-1, *[1] * (outputs.dim() - 1)), labels[first]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    scores = {}
    for k in (1, 5):
        if k == 1 or num_classes >= 5:
            hit = logits.topk(k, dim=1).indices.eq(labels[:, None]).any(dim=1)
            scores[f"top{k}"] = round(100.0 * hit.float().mean().item(), 2)
    return scores
