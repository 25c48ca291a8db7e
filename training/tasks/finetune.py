"""Classification fine-tuning: the whole encoder + LayerNorm/linear head on mean-pooled tokens,
AdamW with layer-wise lr decay, warmup + cosine, drop path, label smoothing and mixup / cutmix
(MAE's / BEiT's recipe), trained on the modality's augmented stream and scored on the val split,
as a distributed, resumable job (``training.tasks.trainer``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from data_prep.shard_format import read_manifest
from training.tasks import ACCURACY
from training.tasks.config import FinetuneConfig
from training.tasks.downstream import Downstream, topk_accuracy
from training.tasks.mixing import Mix, mixed_batch, soft_cross_entropy
from training.tasks.trainer import Job, TaskRun, schedule_for, train
from training.transformer import checkpoint_blocks

log = logging.getLogger(__name__)


class Classifier(nn.Module):
    """Encoder + global average pooling + LayerNorm + linear head (MAE's fine-tuning model)."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(encoder.cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(encoder.cfg.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, classes]``; ``draws`` ``[B, depth, 2]`` decide drop path (training)."""
        for i, block in enumerate(self.encoder.blocks):
            block.path_draws = None if draws is None else draws[:, i]
        encoded = self.encoder(tokens)
        return self.head(self.fc_norm(self.encoder.mean_pool(encoded, tokens)))


class Finetune:
    name, title, directions = "finetune", "Fine-tune", ACCURACY

    def __init__(self, cfg: FinetuneConfig, train_input: Callable[[Any], Any] = lambda c: c):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.train_input = train_input  # the pretraining input config -> fine-tuning's

    def run(self, encoder: nn.Module, data: Downstream, run: TaskRun) -> dict[str, float]:
        job = FinetuneJob(encoder, data, self.cfg, self.train_input(data.input), run)
        return train(job, run, schedule_for(self.cfg, job.samples), "fine-tune")


def layer_decay_groups(
    model: nn.Module, base_lr: float, weight_decay: float, decay: float, apart: bool = False
) -> list[dict]:
    """Param groups with lr scaled by ``decay ** (L + 1 - layer)``: embeddings are layer 0,
    block i is layer i + 1, the head is layer L + 1 (BEiT / MAE fine-tuning). ``apart``: the
    encoder's final norm in groups of its own, not the head's (for a frozen start: the
    groupings give the same updates, but DeepSpeed's flattened partitions follow the groups,
    and the quickstarts' fine-tunes moved by a sample when they changed)."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith(("encoder.patch_embed", "encoder.cls_token")):
            layer = 0
        else:
            layer = depth + 1
        no_decay = p.ndim < 2 or name.endswith("cls_token")
        encoder = apart and name.startswith("encoder.")  # its final norm shares the head's layer
        group = groups.setdefault(
            (layer, no_decay, encoder),
            {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": decay ** (depth + 1 - layer),
                "encoder": encoder,
            },
        )
        group["params"].append(p)
    for g in groups.values():
        g["lr"] = base_lr * g["lr_scale"]
    return list(groups.values())


def path_draws(seed: int, step: int, batch_size: int, depth: int) -> torch.Tensor:
    """``[B, depth, 2]`` uniforms deciding drop path for every row of a global batch at
    ``step`` (rows, not ranks, own them: the same drops whatever the world size)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(batch_size, depth, 2, generator=gen)


class EncoderJob(Job):
    """Training the whole encoder with a head: AdamW with layer-wise lr decay, drop path drawn
    per row, on this rank's rows of the augmented global stream."""

    def __init__(self, module: nn.Module, data: Downstream, cfg, train_input, run: TaskRun):
        self.module, self.data, self.cfg, self.run = module, data, cfg, run
        self.train_input = train_input
        self.rows = run.rows(cfg.batch_size)
        self.subset: tuple[tuple[int, ...], ...] = ()  # the train split's, unless a task says
        module.to(data.device)

    def param_groups(self, lr: float) -> list[dict]:
        return layer_decay_groups(self.module, lr, self.cfg.weight_decay, self.cfg.layer_decay,
                                  apart=self.cfg.freeze_epochs > 0)  # fmt: skip

    def batches(self, skip_steps: int):
        return self.data.train_batches(
            self.train_input, self.cfg.batch_size, self.rows, skip_steps, self.subset
        )

    def draws(self, step: int, first_row: int, rows: int) -> torch.Tensor:
        depth = len(self.module.encoder.blocks)
        draws = path_draws(self.data.seed, step, self.cfg.batch_size, depth)
        return draws[first_row : first_row + rows]


class FinetuneJob(EncoderJob):
    """Classification: soft-target cross-entropy on mixed, label-smoothed targets."""

    def __init__(self, encoder, data: Downstream, cfg: FinetuneConfig, train_input, run: TaskRun):
        torch.manual_seed(data.seed)  # the head's initialisation
        encoder = copy.deepcopy(encoder)  # the tasks after this one get the encoder as it was
        for block, rate in zip(
            encoder.blocks, torch.linspace(0, cfg.drop_path, len(encoder.blocks)).tolist()
        ):
            block.drop_path = rate
        if cfg.activation_checkpointing:
            checkpoint_blocks(encoder)
        super().__init__(Classifier(encoder, data.num_classes), data, cfg, train_input, run)
        self.samples = sum(r.samples for r in read_manifest(data.train_shards))
        if cfg.label_fraction < 1:
            self.subset = data.train_subset(cfg.label_fraction)
            held = sum(map(len, self.subset))
            log.info("fine-tuning on %d of the %d train samples (label_fraction %g, seed %d)",
                     held, self.samples, cfg.label_fraction, data.seed)  # fmt: skip
            self.samples = held
        self.mix = Mix(cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.switch_prob)
        self.rows_multiple = 2 if self.mix.enabled else 1

    def loss(self, batch, step: int, first_row: int) -> torch.Tensor:
        x, labels, _ = batch
        device = self.data.device  # mixed there: the batch goes up once, as it came (uint8)
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        x, targets = mixed_batch(
            x, labels, self.data.num_classes, self.cfg.label_smoothing, self.mix,
            self.data.seed, step, first_row,
        )  # fmt: skip
        draws = self.draws(step, first_row, len(x)).to(self.data.device)
        logits = self.engine(self.cast(self.data.tokens(x)), draws)
        return soft_cross_entropy(logits, targets.to(logits.device))

    def val_rows(self):
        return self.data.rank_rows(lambda t: self.module(self.cast(t)), self.data.val_shards)

    def metrics(self, rows: dict) -> dict[str, float]:
        logits, labels = self.data.classified(rows, self.data.val_shards)
        return topk_accuracy(logits, labels, self.data.num_classes)
