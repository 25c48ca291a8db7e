"""Frozen-feature classification: MAE's linear probe and a weighted k-NN.

* linear probe: BatchNorm without affine + linear head, LARS, warmup + cosine lr;
* k-NN: cosine similarity of L2-normalised features, ``k`` neighbours, votes weighted by
  ``exp(sim / T)``.

Features are pooled from unaugmented evaluation inputs once per encoder (MAE augments during its
90-epoch ImageNet probe, which matters little on small data and costs a forward pass per epoch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.lars import LARS
from training.schedule import warmup_cosine
from training.tasks import ACCURACY
from training.tasks.config import KnnConfig, ProbeConfig
from training.tasks.downstream import Downstream, topk_accuracy


class LinearProbe:
    name, title, directions = "linear_probe", "Linear probe", ACCURACY

    def __init__(self, cfg: ProbeConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled

    def run(self, encoder: nn.Module, data: Downstream) -> dict[str, float]:
        train_x, train_y = data.features(encoder, data.train_shards)
        val_x, val_y = data.features(encoder, data.val_shards)
        return linear_probe(train_x, train_y, val_x, val_y, data.num_classes, self.cfg, data.seed)


class Knn:
    name, title, directions = "knn", "k-NN", ACCURACY

    def __init__(self, cfg: KnnConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled

    def run(self, encoder: nn.Module, data: Downstream) -> dict[str, float]:
        train_x, train_y = data.features(encoder, data.train_shards)
        val_x, val_y = data.features(encoder, data.val_shards)
        return knn_classify(train_x, train_y, val_x, val_y, data.num_classes, self.cfg)


def linear_probe(
    train_x, train_y, val_x, val_y, num_classes: int, cfg: ProbeConfig, seed: int
) -> dict:
    torch.manual_seed(seed)
    head = nn.Sequential(
        nn.BatchNorm1d(train_x.shape[1], affine=False, eps=1e-6),
        nn.Linear(train_x.shape[1], num_classes),
    )
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
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
    train_n, val_n = F.normalize(train_x, dim=1), F.normalize(val_x, dim=1)
    k = min(cfg.k, len(train_n))
    logits = []
    for chunk in val_n.split(1024):
        sim, idx = (chunk @ train_n.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), num_classes)
        votes.scatter_add_(1, train_y[idx], (sim / cfg.temperature).exp())
        logits.append(votes)
    return topk_accuracy(torch.cat(logits), val_y, num_classes)
