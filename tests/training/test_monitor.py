"""The k-NN monitor: it scores what the k-NN task scores on the same samples, and a pretraining
run writes its curve (before the first step, then every ``every`` steps) to metrics.jsonl."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from tests.training.test_pretrain_distributed import _config
from training.config import ModelConfig, MonitorConfig
from training.metrics import read_metrics
from training.modalities import modality
from training.modalities.image.bundle import ImageInputConfig
from training.monitor import Monitor
from training.objectives.mae.model import MaskedAutoencoder
from training.tasks.config import KnnConfig
from training.tasks.downstream import num_classes_of
from training.tasks.probe import knn_classify

SEEN = ImageInputConfig(32, patch_size=4)


def test_it_scores_what_the_knn_task_scores_on_the_same_samples(prepared):
    m = modality("image")
    torch.manual_seed(0)
    encoder = MaskedAutoencoder(ModelConfig(preset="nano"), m.geometry(SEEN)).encoder.eval()
    cfg = MonitorConfig(every=1, samples=40, k=5, train_shards=str(prepared / "train"),
                        val_shards=str(prepared / "val"))  # fmt: skip
    classes = num_classes_of(cfg.train_shards)
    monitor = Monitor(cfg, m, SEEN, classes, 0, 1, torch.device("cpu"), bf16=False, batch_size=16)
    got = monitor.score(encoder)["knn_top1"]
    bank_x, bank_y, _ = monitor._features(encoder, cfg.train_shards)
    query_x, query_y, _ = monitor._features(encoder, cfg.val_shards)
    assert len(bank_x) == 40 and len(query_x) == 24  # the val split holds 24 (4 classes x 6)
    want = knn_classify(bank_x, bank_y, query_x, query_y, classes, KnnConfig(k=5))["top1"]
    assert got == want


@pytest.mark.slow  # ~50 s; the monitor's scores are checked against k-NN's in the default run
def test_a_pretraining_run_writes_the_monitor_curve(tmp_path, prepared):
    monitor = {"every": 2, "samples": 32, "k": 5, "train_shards": str(prepared / "train"),
               "val_shards": str(prepared / "val")}  # fmt: skip
    config = _config(tmp_path, prepared, steps=4, monitor=monitor)
    proc = subprocess.run([sys.executable, "-m", "training.pretrain", str(config)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in read_metrics(tmp_path / "run") if "monitor" in r]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all(0 <= r["monitor"]["knn_top1"] <= 100 and r["monitor"]["seconds"] > 0 for r in rows)
    assert re.search(r"k-NN monitor: [\d.]+ s of the [\d.]+ s trained \([\d.]+%\)", proc.stderr)
