"""A whole run whose shards live in an object store (``prep.out: s3://...``): the prep uploads,
pretraining and the probe stream their shards from the store, a rerun skips every stage. Against
a real S3-API server on loopback (moto's standalone server, the ``s3_bucket`` fixture)."""

from __future__ import annotations

import subprocess
import sys

import fsspec
import pytest

from training.metrics import read_eval_metrics

RUN = """
name: in_a_store
run_dir: {run_dir}
seed: 0
demo_data: {{out: "${{run_dir}}/raw", classes: 2, train_per_class: 16, val_per_class: 4, min_size: 40, max_size: 80}}
prep: {{source: "${{demo_data.out}}", out: "{out}", shorter_side: 36, samples_per_shard: 8}}
pretrain:
  input: {{image_size: 32, patch_size: 4}}
  model: {{preset: nano, decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}}
  batch_size: 8
  steps: 3
  optim: {{lr: 1.0e-3, warmup_steps: 1}}
  checkpoint_every: 3
  log_every: 1
  loader: {{workers: 1, shuffle_buffer: 16}}
evaluate:
  tasks:
    linear_probe: {{epochs: 1, batch_size: 8}}
    knn: {{k: 3}}
    finetune: {{enabled: false}}
launch: {{ranks: 1}}
report: {{reconstructions: 2}}
"""


@pytest.mark.slow  # ~40 s: the loaders' reads from the store are tests/data_prep/test_store.py's
def test_a_run_with_its_shards_in_a_store_finishes_and_reruns_as_done(s3_bucket, tmp_path):
    out = f"{s3_bucket}/runs/in_a_store/shards"
    config = tmp_path / "run.yaml"
    config.write_text(RUN.format(run_dir=tmp_path / "run", out=out))
    run = [sys.executable, "-m", "pipeline.cli", "run", str(config)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    assert fsspec.filesystem("s3").exists(f"{out}/train/.maskmill/_SUCCESS")
    assert not (tmp_path / "run" / "shards").exists()  # nothing of the prep written locally
    metrics = read_eval_metrics(tmp_path / "run" / "evaluate")
    assert {"linear_probe", "knn"} <= set(metrics)
    again = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("up to date, skipped") == 5, again.stderr
