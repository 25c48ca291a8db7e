"""A k-NN score while pretraining: every ``monitor.every`` steps the encoder embeds the first
``monitor.samples`` of a labelled split (the bank) and of another (the queries), and the queries
are classified by their k nearest bank rows (DINO's weighted vote) - the representation's
quality as a curve against step and wall-clock, without waiting for the evaluation stages.

Distributed as the k-NN task is (``training.tasks.probe``): each rank embeds its share of both
sets, finds every query's k nearest in its share of the bank, and the ranks' k best are merged;
the frozen passes run under bf16 autocast when the run trains in bf16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from training.config import MonitorConfig
from training.distributed import all_gathered_rows
from training.loader import indexed_eval_batches
from training.modalities import Modality
from training.tasks.downstream import topk_accuracy
from training.tasks.probe import sharded_knn_logits


@dataclass
class Monitor:
    cfg: MonitorConfig
    modality: Modality
    input: object  # the pretraining's input config
    num_classes: int
    rank: int
    world_size: int
    device: torch.device
    bf16: bool
    batch_size: int = 64
    seconds: float = 0.0  # spent scoring, over the run

    def due(self, step: int) -> bool:
        return bool(self.cfg.every) and step % self.cfg.every == 0

    @torch.no_grad()
    def score(self, encoder: torch.nn.Module) -> dict:
        """``{"knn_top1": %, "seconds": s}``, the same on every rank."""
        start = time.perf_counter()
        was_training = encoder.training
        encoder.eval()
        bank_x, bank_y, _ = self._features(encoder, self.cfg.train_shards)
        query_x, query_y, places = self._features(encoder, self.cfg.val_shards)
        query_x, query_y, places = all_gathered_rows(query_x, query_y, places)
        order = places.argsort()
        query_x, query_y = query_x[order], query_y[order]
        logits = sharded_knn_logits(query_x, bank_x, bank_y, self.num_classes, self.cfg.k,
                                    self.cfg.temperature)  # fmt: skip
        encoder.train(was_training)
        took = time.perf_counter() - start
        self.seconds += took
        return {"knn_top1": topk_accuracy(logits, query_y, self.num_classes)["top1"],
                "seconds": took}  # fmt: skip

    def _features(self, encoder, split: str):
        """This rank's share of the split's first ``samples``: features, labels, places."""
        xs, ys, places = [], [], []
        for x, y, _, at in indexed_eval_batches(split, self.modality.name, self.input,
                                                self.batch_size, self.rank, self.world_size,
                                                limit=self.cfg.samples):  # fmt: skip
            tokens = self.modality.ops.tokenize(self.input, x.to(self.device))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                xs.append(encoder.features(tokens).float().cpu())
            ys.append(torch.as_tensor(y, dtype=torch.long))
            places.append(torch.as_tensor(at, dtype=torch.long))
        if not xs:
            return (
                torch.zeros(0, 1),
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.long),
            )
        return torch.cat(xs), torch.cat(ys), torch.cat(places)
