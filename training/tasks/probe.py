"""Frozen-feature classification: MAE's linear probe and a weighted k-NN.

* linear probe: BatchNorm without affine + linear head, LARS, warmup + cosine lr;
* k-NN: cosine similarity of L2-normalised features, ``k`` neighbours, votes weighted by
  ``exp(sim / T)``.

The probe trains on a fresh augmented crop of each sample every epoch through the frozen
encoder (``augment``, MAE's ImageNet recipe), or on features of the unaugmented samples extracted
once per encoder (a forward pass per sample instead of one per sample and epoch; what k-NN uses
too). Either way it is a distributed, resumable job (``training.tasks.trainer``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from data_prep.shard_format import read_manifest
from training.distributed import all_gathered_rows, from_rank0
from training.lars import LARS
from training.schedule import warmup_cosine
from training.tasks import ACCURACY
from training.tasks.config import KnnConfig, ProbeConfig
from training.tasks.downstream import Downstream, topk_accuracy
from training.tasks.trainer import Job, TaskRun, schedule_for, train


class LinearProbe:
    name, title, directions = "linear_probe", "Linear probe", ACCURACY

    def __init__(self, cfg: ProbeConfig, train_input: Callable[[Any], Any] = lambda c: c):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.train_input = train_input  # the pretraining input config -> the probe's crops

    def run(self, encoder: nn.Module, data: Downstream, run: TaskRun) -> dict[str, float]:
        job = ProbeJob(encoder, data, self.cfg, self.train_input(data.input), run)
        return train(job, run, schedule_for(self.cfg, job.samples), "linear probe")


class Knn:
    name, title, directions = "knn", "k-NN", ACCURACY

    def __init__(self, cfg: KnnConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled

    def run(self, encoder: nn.Module, data: Downstream, run: TaskRun) -> dict[str, float]:
        """Sharded as the self-supervised codebases do it: each rank keeps only its share of
        the train features (N / world x D), finds every val query's k nearest among them, and
        the ranks' k best are merged; only the val features (and k neighbours a query per
        rank) travel."""
        encoder.eval()
        with torch.no_grad():
            mine = data.rank_rows(encoder.features, data.train_shards)
        val_x, val_y = data.features(encoder, data.val_shards)
        logits = sharded_knn_logits(val_x, mine["out"], mine["label"], data.num_classes,
                                    self.cfg.k, self.cfg.temperature)  # fmt: skip
        scores = topk_accuracy(logits, val_y, data.num_classes) if run.info.is_main else None
        return from_rank0(scores)


def sharded_knn_logits(queries, bank_x, bank_y, num_classes: int, k: int, temperature: float):
    """Votes ``[V, classes]`` of every query (the same on every rank) against the bank whose
    share each rank holds: each rank finds the k nearest in its share, the ranks' k best travel
    (``[world x V, k]``, rank order) and are merged."""
    sims, labels = nearest(queries, bank_x, bank_y, k)
    every_sims, every_labels = all_gathered_rows(sims, labels)
    world = dist.get_world_size() if dist.is_initialized() else 1
    shares = (world, len(queries), -1)
    return knn_logits(every_sims.view(shares), every_labels.view(shares), k, num_classes,
                      temperature)  # fmt: skip


class _GlobalSum(torch.autograd.Function):
    """Every rank's tensor summed, with the sum's gradient: each rank's input feeds every rank's
    sum, so its gradient is the sum of theirs. What ``torch.distributed.nn.functional.all_reduce``
    did; torch 2.13 deprecates it with a FutureWarning that reached the user's terminal."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are the global batch's, every rank's rows: one
    all-reduce of the per-feature sums (gradients flow through it), as SyncBatchNorm does on
    GPUs; torch's SyncBatchNorm does not run on CPU (gloo). One rank: plain BatchNorm1d. Before,
    each rank standardised by its own rows: the probe trained differently on 1 and 8 GPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dim = x.shape[1]
        count = torch.full((1,), float(x.shape[0]), dtype=x.dtype, device=x.device)
        sums = _GlobalSum.apply(torch.cat([x.sum(0), (x * x).sum(0), count]))
        n = sums[-1]
        mean = sums[:dim] / n
        var = (sums[dim : 2 * dim] / n - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1).clamp(min=1))
                self.num_batches_tracked += 1
        return (x - mean) / torch.sqrt(var + self.eps)


class ProbeHead(nn.Module):
    """BatchNorm without affine (MAE: a per-feature standardisation the linear layer could
    absorb, which makes LARS's lr insensitive to the features' scale), over the global batch,
    + a linear layer."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.norm = GlobalBatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(features.float()))


class ProbeJob(Job):
    """The head trained with LARS on the frozen encoder's pooled features: of a fresh augmented
    crop each step (``augment``, MAE's recipe), or of the unaugmented samples extracted once
    (each rank its share, gathered) and dealt in global batches from a seeded permutation per
    epoch."""

    optimizer = "lars"
    zero_stage = 0  # see EvalConfig: LARS needs each weight matrix whole

    def __init__(self, encoder, data: Downstream, cfg: ProbeConfig, train_input, run: TaskRun):
        self.encoder = encoder.to(data.device).eval()
        self.data, self.cfg, self.train_input, self.run = data, cfg, train_input, run
        self.rows = run.rows(cfg.batch_size)
        if cfg.augment:
            self.samples = sum(r.samples for r in read_manifest(data.train_shards))
        else:
            self.train_x, self.train_y = data.features(encoder, data.train_shards)
            self.samples = len(self.train_x)
        torch.manual_seed(data.seed)
        self.module = ProbeHead(encoder.cfg.embed_dim, data.num_classes).to(data.device)

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.module.parameters()), "lr": lr,
                 "weight_decay": self.cfg.weight_decay}]  # fmt: skip

    def batches(self, skip_steps: int):
        if self.cfg.augment:
            return self.data.train_batches(
                self.train_input, self.cfg.batch_size, self.rows, skip_steps
            )
        return self._feature_batches(skip_steps)

    def _feature_batches(self, skip_steps: int):
        """Global batch ``s`` is slice ``s mod E`` of epoch ``s div E``'s permutation (E whole
        batches an epoch); this rank takes its rows."""
        n, size = len(self.train_x), self.cfg.batch_size
        per_epoch = max(1, n // size)
        lo, hi = self.rows
        order, drawn_for = None, None
        for step in itertools.count(skip_steps):
            epoch, k = divmod(step, per_epoch)
            if epoch != drawn_for:  # one permutation an epoch, drawn from (seed, epoch)
                gen = torch.Generator().manual_seed(self.data.seed + epoch)
                order, drawn_for = torch.randperm(n, generator=gen), epoch
            take = order[k * size : (k + 1) * size][lo:hi]
            yield self.train_x[take], self.train_y[take], None

    @torch.no_grad()
    def features(self, x: torch.Tensor, input_cfg) -> torch.Tensor:
        tokens = self.data.modality.ops.tokenize(input_cfg, x.to(self.data.device))
        with self.data.autocast():
            return self.encoder.features(tokens).float()

    def loss(self, batch, step: int, first_row: int) -> torch.Tensor:
        x, labels, keys = batch
        feats = x if keys is None else self.features(x, self.train_input)
        logits = self.engine(feats.to(self.data.device))
        return F.cross_entropy(logits.float(), labels.to(logits.device))

    def val_rows(self):
        val_x, val_y = self.data.features(self.encoder, self.data.val_shards)
        # The features are every rank's; each scores its share.
        mine = torch.arange(self.run.info.rank, len(val_x), self.run.info.world_size)
        logits = [
            self.module(val_x[c].to(self.data.device)).float().cpu() for c in mine.split(4096)
        ]
        out = torch.cat(logits) if logits else torch.zeros(0, self.data.num_classes)
        return {"order": mine, "out": out, "label": val_y[mine]}

    def metrics(self, rows: dict) -> dict[str, float]:
        return topk_accuracy(rows["out"], rows["label"], self.data.num_classes)

    def weights(self) -> dict[str, torch.Tensor]:
        return {
            **{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
            **{f"probe.{k}": v for k, v in self.module.state_dict().items()},
        }


def linear_probe(
    train_x, train_y, val_x, val_y, num_classes: int, cfg: ProbeConfig, seed: int
) -> dict:
    """The probe's head and optimizer trained in one process on features in memory (what the
    masking frontier benchmark scores many encoders with); the stage trains the same head with
    the same optimizer and schedule through ``training.tasks.trainer``."""
    torch.manual_seed(seed)
    head = ProbeHead(train_x.shape[1], num_classes)
    lr = cfg.base_lr * cfg.batch_size / 256
    opt = LARS(head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step = 0
    head.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, total, cfg.warmup_epochs * steps_per_epoch, lr, 0.0)
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    with torch.no_grad():
        return topk_accuracy(head(val_x), val_y, num_classes)


def knn_classify(train_x, train_y, val_x, val_y, num_classes: int, cfg: KnnConfig) -> dict:
    """k-NN accuracy with every train feature in one process (the one-share case)."""
    sims, labels = nearest(val_x, train_x, train_y, cfg.k)
    logits = knn_logits(sims[None], labels[None], cfg.k, num_classes, cfg.temperature)
    return topk_accuracy(logits, val_y, num_classes)


def nearest(val_x, train_x, train_y, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine similarities ``[V, k]`` of each val row's k nearest train rows and their
    labels; where ``train_x`` has fewer than k rows (a rank's share), -inf and label 0 fill the
    rest (they get no vote)."""
    val_n, train_n = F.normalize(val_x.float(), dim=1), F.normalize(train_x.float(), dim=1)
    sims = torch.full((len(val_n), k), float("-inf"))
    labels = torch.zeros(len(val_n), k, dtype=torch.long)
    take = min(k, len(train_n))
    if take:
        for lo in range(0, len(val_n), 1024):
            sim, idx = (val_n[lo : lo + 1024] @ train_n.T).topk(take, dim=1)
            sims[lo : lo + 1024, :take], labels[lo : lo + 1024, :take] = sim, train_y[idx]
    return sims, labels


def knn_logits(sims, labels, k: int, num_classes: int, temperature: float) -> torch.Tensor:
    """Votes ``[V, classes]`` of the k best of every share's neighbours (``sims``, ``labels``:
    ``[shares, V, k]``), each weighted exp(similarity / temperature) as in the DINO k-NN."""
    sims, labels = sims.permute(1, 0, 2).flatten(1), labels.permute(1, 0, 2).flatten(1)
    best, at = sims.topk(min(k, sims.shape[1]), dim=1)
    votes = torch.zeros(len(sims), num_classes)
    return votes.scatter_add_(1, labels.gather(1, at), (best / temperature).exp())
