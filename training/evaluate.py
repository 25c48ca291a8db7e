"""Evaluate an exported encoder: ``python -m training.evaluate CONFIG.yaml [key=value ...]``.

Three protocols, each run on the pretrained encoder and on a randomly initialised encoder of the
same shape, so every report shows what pretraining bought:

* linear probe (MAE): frozen features, BatchNorm without affine + linear head, LARS, cosine lr;
* k-NN: cosine similarity of L2-normalised features, ``k`` neighbours, votes weighted by
  ``exp(sim / T)``;
* fine-tuning: the whole encoder + LayerNorm/linear head on mean-pooled tokens, AdamW with
  layer-wise lr decay, drop path, label smoothing, random-resized-crop + flip.

Top-1 (and top-5 with >= 5 classes) on the val split, in percent, go to ``OUT_DIR/metrics.json``.
Probe features are taken from centre crops once (no probe augmentation; MAE augments during its
90-epoch ImageNet probe, which matters little on small data and costs a forward pass per epoch).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from data_prep.shard_format import read_manifest
from training.config import LoaderConfig
from training.entry import config_from_argv
from training.export import load_encoder, read_model_config
from training.lars import LARS
from training.loader import eval_batches, train_loader, train_spec_for
from training.mae import ViTEncoder, init_weights
from training.patches import normalize_pixels, patchify
from training.schedule import warmup_cosine

log = logging.getLogger("training.evaluate")

METRICS = "metrics.json"


@dataclass
class ProbeConfig:
    enabled: bool = True
    epochs: int = 90
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256
    batch_size: int = 256
    weight_decay: float = 0.0
    warmup_epochs: int = 10

    def problems(self):
        if self.batch_size < 2:
            yield (
                "batch_size",
                f"an int >= 2 (BatchNorm needs two samples), got {self.batch_size}",
            )
        if self.epochs < 1 or self.base_lr <= 0:
            yield ("epochs", "epochs >= 1 and base_lr > 0")


@dataclass
class KnnConfig:
    enabled: bool = True
    k: int = 20
    temperature: float = 0.07

    def problems(self):
        if self.k < 1:
            yield ("k", f"an int >= 1, got {self.k}")
        if self.temperature <= 0:
            yield ("temperature", f"a float > 0, got {self.temperature}")


@dataclass
class FinetuneConfig:
    enabled: bool = True
    epochs: int = 100
    base_lr: float = 5e-4  # lr = base_lr * batch_size / 256
    batch_size: int = 64
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    warmup_epochs: int = 5
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])

    def problems(self):
        if self.batch_size < 1 or self.epochs < 1:
            yield (
                "batch_size",
                f"batch_size and epochs must be >= 1, got {self.batch_size}, {self.epochs}",
            )
        if not 0 < self.layer_decay <= 1:
            yield ("layer_decay", f"a float in (0, 1], got {self.layer_decay}")
        if not 0 <= self.drop_path < 1:
            yield ("drop_path", f"a float in [0, 1), got {self.drop_path}")


@dataclass
class EvalConfig:
    """``evaluate`` section: which encoder, which splits, which protocols."""

    export_dir: str = "???"
    train_shards: str = "???"
    val_shards: str = "???"
    out_dir: str = "???"
    seed: int = 0
    batch_size: int = 256  # for feature extraction
    baseline: bool = True  # also evaluate a randomly initialised encoder
    linear_probe: ProbeConfig = field(default_factory=ProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def run(cfg: EvalConfig) -> dict:
    torch.manual_seed(cfg.seed)
    model_cfg = read_model_config(cfg.export_dir)
    encoders = {"pretrained": lambda: load_encoder(cfg.export_dir)}
    if cfg.baseline:
        encoders["random_init"] = lambda: random_encoder(model_cfg, cfg.seed)
    num_classes = _num_classes(cfg.train_shards)
    results: dict = {
        "encoder": {"export_dir": str(cfg.export_dir), **_export_info(cfg.export_dir)},
        "data": {
            "train_samples": sum(r.samples for r in read_manifest(cfg.train_shards)),
            "val_samples": sum(r.samples for r in read_manifest(cfg.val_shards)),
            "classes": num_classes,
        },
    }
    for name, make in encoders.items():
        encoder = make()
        if cfg.linear_probe.enabled or cfg.knn.enabled:
            train_x, train_y = extract_features(
                encoder, cfg.train_shards, model_cfg.image_size, cfg.batch_size
            )
            val_x, val_y = extract_features(
                encoder, cfg.val_shards, model_cfg.image_size, cfg.batch_size
            )
        if cfg.linear_probe.enabled:
            scores = linear_probe(
                train_x, train_y, val_x, val_y, num_classes, cfg.linear_probe, cfg.seed
            )
            results.setdefault("linear_probe", {})[name] = scores
            log.info("linear probe, %s: %s", name, scores)
        if cfg.knn.enabled:
            scores = knn_classify(train_x, train_y, val_x, val_y, num_classes, cfg.knn)
            results.setdefault("knn", {})[name] = scores
            log.info("k-NN, %s: %s", name, scores)
        if cfg.finetune.enabled:
            scores = finetune(encoder, cfg, num_classes, name)
            results.setdefault("finetune", {})[name] = scores
            log.info("fine-tune, %s: %s", name, scores)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS).write_text(json.dumps(results, indent=2) + "\n")
    return results


def random_encoder(model_cfg, seed: int) -> ViTEncoder:
    torch.manual_seed(seed)
    encoder = ViTEncoder(model_cfg)
    init_weights(encoder)
    return encoder


@torch.no_grad()
def extract_features(encoder: ViTEncoder, split_dir: str, image_size: int, batch_size: int):
    """Pooled features ``[N, D]`` and labels ``[N]`` of every sample of a split."""
    encoder.eval()
    feats, labels = [], []
    for images, y, _ in eval_batches(split_dir, image_size, batch_size):
        feats.append(encoder.features(normalize_pixels(images)).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    scores = {}
    for k in (1, 5):
        if k == 1 or num_classes >= 5:
            hit = logits.topk(k, dim=1).indices.eq(labels[:, None]).any(dim=1)
            scores[f"top{k}"] = round(100.0 * hit.float().mean().item(), 2)
    return scores


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


class Classifier(nn.Module):
    """Encoder + global average pooling + LayerNorm + linear head (MAE's fine-tuning model)."""

    def __init__(self, encoder: ViTEncoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(encoder.cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(encoder.cfg.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(patchify(images, self.encoder.patch_size))
        return self.head(self.fc_norm(tokens[:, 1:].mean(dim=1)))


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


def finetune(encoder: ViTEncoder, cfg: EvalConfig, num_classes: int, name: str) -> dict:
    ft = cfg.finetune
    torch.manual_seed(cfg.seed)
    encoder.train()
    for block, rate in zip(
        encoder.blocks, torch.linspace(0, ft.drop_path, len(encoder.blocks)).tolist()
    ):
        block.drop_path = rate
    model = Classifier(encoder, num_classes)
    lr = ft.base_lr * ft.batch_size / 256
    opt = torch.optim.AdamW(
        layer_decay_groups(model, lr, ft.weight_decay, ft.layer_decay), lr=lr, betas=(0.9, 0.999)
    )
    train_samples = sum(r.samples for r in read_manifest(cfg.train_shards))
    steps_per_epoch = math.ceil(train_samples / ft.batch_size)
    total = ft.epochs * steps_per_epoch
    spec = train_spec_for(
        cfg.train_shards,
        image_size=encoder.cfg.image_size,
        batch_size=ft.batch_size,
        rank=0,
        world_size=1,
        seed=cfg.seed,
        skip_batches=0,
        loader=LoaderConfig(workers=1, shuffle_buffer=1000, crop_scale=list(ft.crop_scale)),
    )
    batches = train_loader(spec)
    model.train()
    for step in tqdm(range(total), desc=f"fine-tune ({name})", unit="step", dynamic_ncols=True):
        scale = warmup_cosine(step, total, ft.warmup_epochs * steps_per_epoch, 1.0, 0.0)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"] * scale
        images, labels, _ = next(batches)
        loss = F.cross_entropy(
            model(normalize_pixels(images)), labels, label_smoothing=ft.label_smoothing
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for images, y, _ in eval_batches(cfg.val_shards, encoder.cfg.image_size, cfg.batch_size):
            logits.append(model(normalize_pixels(images)))
            labels.append(y)
    return topk_accuracy(torch.cat(logits), torch.cat(labels), num_classes)


def _num_classes(split_dir: str) -> int:
    classes = Path(split_dir).parent / "classes.json"
    if classes.is_file():
        return len(json.loads(classes.read_text()))
    labels = torch.cat([y for _, y, _ in eval_batches(split_dir, 32, 256)])
    return int(labels.max()) + 1


def _export_info(export_dir: str) -> dict:
    desc = json.loads((Path(export_dir) / "model.json").read_text())
    return {k: v for k, v in desc.items() if k != "model"}


def main(argv: list[str] | None = None) -> int:
    run(config_from_argv(EvalConfig, argv, __doc__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
