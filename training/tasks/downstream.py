"""What every downstream task may read: splits, modality, input config, class count, this rank's
place in the world, and the features of frozen encoders (extracted once per encoder, shared by
the probe and k-NN).

Passes over a split are shared by the ranks: each takes the samples whose place in the split is
its rank modulo the world size, and the outputs are gathered as fixed-shape tensors
(``distributed.all_gathered_rows``) and put back in split order, so every sample counts once
(``loader.indexed_eval_batches``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from data_prep.shard_format import read_labels, read_manifest, read_shard_samples, shard_urls
from training.config import LoaderConfig
from training.distributed import all_gathered_rows
from training.loader import Batch, eval_batches, indexed_eval_batches, train_loader, train_spec_for
from training.modalities import Modality
from training.stream_order import subset_ordinals


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
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(workers=1))
    # bf16: frozen passes (features, scoring) run under bf16 autocast, so the fused attention
    # kernel and bf16 matrix products serve them (~10x fp32's matmul rate on a GPU)
    precision: str = "fp32"
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

    def autocast(self):
        """The precision of frozen passes (see ``precision``)."""
        bf16 = self.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def tokens(self, batch: torch.Tensor) -> torch.Tensor:
        return self.modality.ops.tokenize(self.input, batch.to(self.device))

    def eval_batches(self, split_dir: str) -> Iterator[Batch]:
        """This rank's share of a split (every sample once across the ranks)."""
        return eval_batches(
            split_dir, self.modality.name, self.input, self.batch_size, self.rank, self.world_size
        )

    def indexed_eval_batches(self, split_dir: str):
        """:meth:`eval_batches` with each sample's place in the split."""
        return indexed_eval_batches(
            split_dir, self.modality.name, self.input, self.batch_size, self.rank, self.world_size
        )

    def train_subset(self, fraction: float) -> tuple[tuple[int, ...], ...]:
        """The seeded subset of the train split a low-label task trains on (each shard's
        ordinals; ``stream_order.subset_ordinals``), or () for the whole split."""
        if fraction >= 1:
            return ()
        counts = [r.samples for r in read_manifest(self.train_shards)]
        return subset_ordinals(counts, fraction, self.seed)

    def train_batches(
        self,
        input_cfg,
        batch_size: int,
        rows: tuple[int, int] | None = None,
        skip: int = 0,
        subset: tuple[tuple[int, ...], ...] = (),
    ) -> Iterator[Batch | None]:
        """An endless, augmented, seeded stream of the train split (or of its ``subset``) in
        global batches of ``batch_size``: this rank's ``rows`` of each, from batch ``skip`` on
        (the same batches whatever the world size; ``loader.TrainStreamSpec.rows``)."""
        spec = train_spec_for(
            self.train_shards,
            self.modality.name,
            input_cfg,
            self.loader,
            batch_size=batch_size,
            seed=self.seed,
            skip_batches=skip,
        )
        spec = dataclasses.replace(spec, rows=rows or (0, batch_size), subset=subset)
        return train_loader(spec, pin_memory=torch.cuda.is_available())

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
        labels: ``[N, ...]``, ``[N]``, on every rank. The ranks share the pass and gather the
        outputs as tensors (see the module docstring)."""
        return self.classified(gathered_in_order(self.rank_rows(fn, split_dir)), split_dir)

    def rank_rows(self, fn, split_dir: str) -> dict[str, torch.Tensor]:
        """This rank's share of a split through ``fn``, as tensors: ``order`` (view, then place
        in the split: where a row goes back to), ``out`` (the output rows), ``label`` and
        ``group`` (what video's multi-view test averages over: the sample's group key, hashed;
        else its place). The val split is scored under every view (``views``)."""
        is_val = split_dir == self.val_shards
        views = (self.views if is_val else []) or [self.input]
        group_of = self.group_of if is_val else None
        parts = {"order": [], "out": [], "label": [], "group": []}
        for v, view in enumerate(views):
            for x, y, keys, places in indexed_eval_batches(
                split_dir, self.modality.name, view, self.batch_size, self.rank, self.world_size
            ):
                tokens = self.modality.ops.tokenize(view, x.to(self.device))
                places = torch.as_tensor(places, dtype=torch.long)
                parts["order"].append(v * VIEW_STRIDE + places)
                with self.autocast():
                    parts["out"].append(fn(tokens).float().cpu())
                parts["label"].append(torch.as_tensor(y, dtype=torch.long))
                groups = [group_id(group_of(k)) for k in keys] if group_of else places.tolist()
                parts["group"].append(torch.tensor(groups, dtype=torch.long))
        return {
            k: torch.cat(v) if v else torch.zeros(0, dtype=_DTYPES[k]) for k, v in parts.items()
        }

    def classified(self, rows: dict[str, torch.Tensor], split_dir: str):
        """The gathered rows of :meth:`rank_rows` (in order) as outputs ``[N, ...]`` and labels
        ``[N]``; on the val split a group's outputs averaged (one row per group, in order of
        first appearance: video's views)."""
        if self.group_of is None or split_dir != self.val_shards:
            return rows["out"], rows["label"]
        return averaged_by_group(rows["out"], rows["label"], rows["group"].tolist())


VIEW_STRIDE = 2**40  # order = view x this + place: views one after the other, each in split order
_DTYPES = {"order": torch.long, "out": torch.float32, "label": torch.long, "group": torch.long}


def group_id(group: str) -> int:
    """A group key as a signed 64-bit integer, the same on every rank (no process-salted hash)."""
    return int.from_bytes(
        hashlib.blake2b(group.encode(), digest_size=8).digest(), "big", signed=True
    )


def gathered_in_order(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's ``rows`` (tensors sharing a first dimension, one of them ``order``), gathered
    as tensors and sorted by ``order``; a sample scored twice is a bug, and says so."""
    names = sorted(rows)
    gathered = dict(zip(names, all_gathered_rows(*(rows[k] for k in names))))
    order = gathered["order"].argsort()
    if len(gathered["order"].unique()) != len(order):
        raise AssertionError("a val sample was scored twice")
    return {k: v[order] for k, v in gathered.items()}


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


def num_classes_of(split_dir: str) -> int:
    """The classes of a labelled split: its label list beside the splits, else the largest
    label seen plus one."""
    labels = read_labels(str(split_dir).rstrip("/").rpartition("/")[0])
    if labels is not None:
        return len(labels)
    return 1 + max(  # no label list beside the splits: the largest label seen
        int(sample["cls"])
        for url in shard_urls(split_dir)
        for sample in read_shard_samples(url, members=("cls",))
    )
