"""Classification fine-tuning: the whole encoder + LayerNorm/linear head on mean-pooled tokens,
AdamW with layer-wise lr decay, drop path and label smoothing (MAE's / BEiT's recipe), trained on
the modality's augmented stream and scored on the val split.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from data_prep.shard_format import read_manifest
from training.schedule import warmup_cosine
from training.tasks import ACCURACY
from training.tasks.config import FinetuneConfig
from training.tasks.downstream import Downstream, topk_accuracy


class Classifier(nn.Module):
    """Encoder + global average pooling + LayerNorm + linear head (MAE's fine-tuning model)."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(encoder.cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(encoder.cfg.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        encoded = self.encoder(tokens)
        return self.head(self.fc_norm(self.encoder.mean_pool(encoded, tokens)))


class Finetune:
    name, title, directions = "finetune", "Fine-tune", ACCURACY

    def __init__(self, cfg: FinetuneConfig, train_input: Callable[[Any], Any] = lambda c: c):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.train_input = train_input  # the pretraining input config -> fine-tuning's

    def run(self, encoder: nn.Module, data: Downstream) -> dict[str, float]:
        return finetune(encoder, data, self.cfg, self.train_input(data.input))


def layer_decay_groups(
    model: Classifier, base_lr: float, weight_decay: float, decay: float
) -> list[dict]:
    """Param groups with lr scaled by ``decay ** (L + 1 - layer)``: embeddings are layer 0,
    block i is layer i + 1, the head is layer L + 1 (BEiT / MAE fine-tuning)."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith(("encoder.patch_embed", "encoder.cls_token")):
            layer = 0
        else:
            layer = depth + 1
        no_decay = p.ndim < 2 or name.endswith("cls_token")
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": decay ** (depth + 1 - layer),
            },
        )
        group["params"].append(p)
    for g in groups.values():
        g["lr"] = base_lr * g["lr_scale"]
    return list(groups.values())


def train_layer_decayed(
    model: nn.Module, data: Downstream, cfg, train_input, samples: int, loss_of, desc: str
) -> None:
    """Train ``model`` (an encoder plus a head) for ``cfg.epochs`` epochs of ``samples``: AdamW
    with layer-wise lr decay, linear warmup then cosine, on the augmented train stream.
    ``loss_of(x, labels, keys)`` gives a batch's loss, or None to skip the batch."""
    lr = cfg.base_lr * cfg.batch_size / 256
    opt = torch.optim.AdamW(
        layer_decay_groups(model, lr, cfg.weight_decay, cfg.layer_decay), lr=lr, betas=(0.9, 0.999)
    )
    steps_per_epoch = math.ceil(samples / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    batches = data.train_batches(train_input, cfg.batch_size)
    model.train()
    for step in tqdm(range(total), desc=desc, unit="step", dynamic_ncols=True, leave=False):
        scale = warmup_cosine(step, total, cfg.warmup_epochs * steps_per_epoch, 1.0, 0.0)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"] * scale
        loss = loss_of(*next(batches))
        if loss is None:
            continue
        opt.zero_grad()
        loss.backward()
        opt.step()


def finetune(encoder: nn.Module, data: Downstream, ft: FinetuneConfig, train_input) -> dict:
    torch.manual_seed(data.seed)
    encoder = copy.deepcopy(encoder)  # the tasks after this one get the encoder as it was
    encoder.train()
    for block, rate in zip(
        encoder.blocks, torch.linspace(0, ft.drop_path, len(encoder.blocks)).tolist()
    ):
        block.drop_path = rate
    model = Classifier(encoder, data.num_classes)
    train_samples = sum(r.samples for r in read_manifest(data.train_shards))

    def loss_of(x, labels, keys):
        return F.cross_entropy(model(data.tokens(x)), labels, label_smoothing=ft.label_smoothing)

    train_layer_decayed(model, data, ft, train_input, train_samples, loss_of, "fine-tune")
    model.eval()
    logits, labels = data.scored(model, data.val_shards)
    return topk_accuracy(logits, labels, data.num_classes)
