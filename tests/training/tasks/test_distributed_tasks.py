"""Fine-tuning as a distributed, resumable job, with real DeepSpeed on CPU (gloo) under the
``deepspeed`` launcher: the MAE recipe in full (RandAugment, erasing, mixup / cutmix, drop path,
label smoothing, layer decay, warmup + cosine) on a random nano encoder, in fp32.

* 2 ranks of 8 (each in 4 micro steps of 2) take the steps 1 rank of 16 takes: the per-step
  losses agree to 1e-4 (relative) and the val scores to one sample (what fp32 summation order
  can move).
* A run killed with SIGKILL, and one stopped with SIGUSR2 (exit 75), both resume: every step is
  logged once and the losses and scores equal the uninterrupted run's (same tolerance).
* The val split is scored exactly once across ranks with an odd number of samples.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from cluster.local import PREEMPTED_EXIT, free_port, remove_shm_segments
from data_prep.shard_format import read_manifest
from training.checkpoint import COMPLETE
from training.config import ModelConfig
from training.export import write_export
from training.export_format import ExportInfo, read_export
from training.metrics import read_metrics
from training.modalities.image.bundle import ImageInputConfig
from training.objectives import objective

FINETUNE = {
    "epochs": 2,
    "batch_size": 16,
    "base_lr": 2e-3,
    "warmup_epochs": 1,
    "drop_path": 0.1,
    "randaug_ops": 2,
    "erase_prob": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "crop_scale": [0.3, 1.0],
}
RTOL = 1e-4


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A random nano MAE export (32 px pictures, 8 px patches)."""
    out = tmp_path_factory.mktemp("export")
    info = ExportInfo(
        "image",
        "mae",
        ImageInputConfig(32, 8),
        ModelConfig(
            preset="nano",
            embed_dim=32,
            depth=2,
            num_heads=2,
            decoder_embed_dim=32,
            decoder_depth=1,
            decoder_num_heads=2,
        ),
        {"step": 0},
    )
    model = objective("mae").build_model(info.model, info.geometry, None)
    write_export(model.state_dict(), out, info)
    return out


def _config(tmp_path, prepared, export, name, val="val", **finetune):
    cfg = {
        "modality": "image",
        "export_dir": str(export),
        "train_shards": str(prepared / "train"),
        "val_shards": str(prepared / val),
        "out_dir": str(tmp_path / name),
        "seed": 0,
        "batch_size": 8,
        "baseline": False,
        "precision": "fp32",
        "zero_stage": 2,
        "checkpoint_every": 3,
        "device": "cpu",
        "loader": {"workers": 1, "shuffle_buffer": 50},
        "tasks": {
            "linear_probe": {"enabled": False},
            "knn": {"enabled": False},
            "finetune": {**FINETUNE, **finetune},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _deepspeed(config, ranks, port):
    return [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
        "--master_port", str(port), "--module", "training.evaluate", "finetune", str(config),
    ]  # fmt: skip


def _run(config, ranks):
    port = free_port()
    try:
        proc = subprocess.run(_deepspeed(config, ranks, port), capture_output=True, text=True,
                              timeout=400)  # fmt: skip
    finally:
        remove_shm_segments(port)
    return proc


def _task_dir(tmp_path, name):
    return tmp_path / name / "finetune" / "pretrained"


def _steps(task_dir):
    records = read_metrics(task_dir)
    return [r for r in records if "loss" in r], [r for r in records if "val" in r]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, prepared, export):
    """The uninterrupted reference: 1 rank, global batch 16."""
    tmp = tmp_path_factory.mktemp("one_rank")
    proc = _run(_config(tmp, prepared, export, "run"), ranks=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _task_dir(tmp, "run")


def _assert_same_training(task_dir, reference):
    steps, scored = _steps(task_dir)
    ref_steps, ref_scored = _steps(reference)
    assert [r["step"] for r in steps] == list(range(1, 13))  # each step once
    assert [r["step"] for r in scored] == [6, 12]  # after each epoch
    for got, want in zip(steps, ref_steps):
        assert got["loss"] == pytest.approx(want["loss"], rel=RTOL), got["step"]
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9)
    one_sample = 100 / scored[-1]["val_samples"]
    for got, want in zip(scored, ref_scored):
        assert abs(got["val"]["top1"] - want["val"]["top1"]) <= one_sample + 1e-9
    result = json.loads((task_dir / "result.json").read_text())
    assert result["last"] == scored[-1]["val"]


# micro_batch 2: each rank's 8 rows in 4 micro steps whose gradients add up (training.batching),
# so one run shows the world split and the accumulation both keep the 1-rank training.
@pytest.mark.parametrize("micro_batch", [2, pytest.param(None, marks=pytest.mark.slow)])
def test_two_ranks_train_as_one_rank_with_the_same_global_batch(
    tmp_path, prepared, export, one_rank, micro_batch
):
    config = _config(tmp_path, prepared, export, "run", micro_batch=micro_batch)
    proc = _run(config, ranks=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    task_dir = _task_dir(tmp_path, "run")
    _assert_same_training(task_dir, one_rank)
    if micro_batch:
        assert "4 micro steps of 2 a rank" in proc.stderr
    # the best and the last models, each loadable alone
    for name in ("best", "last"):
        info = read_export(task_dir / name)
        assert info.info["task"] == "finetune"
        assert (task_dir / name / "model.safetensors").exists()
        assert (task_dir / name / "encoder.safetensors").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (
        metrics["finetune"]["pretrained"]
        == json.loads((task_dir / "result.json").read_text())["last"]
    )
    assert not (task_dir / "checkpoints").exists()  # removed once the exports are written


def _wait_for_checkpoint(proc, ckpt_dir, log_path, deadline):
    while not list(ckpt_dir.glob(f"step-*/{COMPLETE}")):
        assert proc.poll() is None, log_path.read_text()[-4000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)


def _rank_pids(launcher_pid):
    import psutil

    ranks = []
    for child in psutil.Process(launcher_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "training.evaluate" in " ".join(child.cmdline()) and "RANK" in child.environ():
                ranks.append(child.pid)
    return ranks


# Both opt-in (~25 s each): pretraining's kill-and-resume runs by default
# (test_pretrain_distributed), through the same checkpoint module.
@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGUSR2"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    tmp_path, prepared, export, one_rank, how
):
    """SIGKILL: the whole job dies mid-step after its first checkpoint (step 3). SIGUSR2: every
    rank is asked to stop, as Slurm's preemption signal does; they checkpoint at one step and
    exit 75. Either way a rerun finishes with every step logged once and the same results."""
    config = _config(tmp_path, prepared, export, "run")
    task_dir = _task_dir(tmp_path, "run")
    port = free_port()
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_deepspeed(config, 2, port), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_for_checkpoint(proc, task_dir / "checkpoints", log_path, time.time() + 300)
        if how == "SIGKILL":
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            for pid in _rank_pids(proc.pid):
                os.kill(pid, signal.SIGUSR2)
            assert proc.wait(timeout=200) == PREEMPTED_EXIT, log_path.read_text()[-4000:]
            assert "preempted" in log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        remove_shm_segments(port)
    first_steps, _ = _steps(task_dir)
    assert first_steps and first_steps[-1]["step"] < 12  # it was stopped part way
    proc = _run(config, ranks=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stderr
    _assert_same_training(task_dir, one_rank)


@pytest.mark.slow  # ~15 s; tests/training/test_rank_share.py checks each sample scored once by default
def test_every_val_sample_is_scored_once_by_two_ranks_with_an_odd_count(tmp_path, prepared, export):
    """The train split of the fixture holds an odd number of samples; scored as the val split
    by 2 ranks (one epoch), the scoring counts each once: no padding, no drop."""
    samples = sum(r.samples for r in read_manifest(prepared / "train"))
    assert samples % 2 == 1
    config = _config(tmp_path, prepared, export, "odd", val="train", epochs=1)
    proc = _run(config, ranks=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _, scored = _steps(_task_dir(tmp_path, "odd"))
    assert [r["val_samples"] for r in scored] == [samples]


@pytest.mark.slow  # ~20 s: a bf16 fine-tune under DeepSpeed
def test_a_bf16_fine_tune_exports_its_fp32_master_weights(tmp_path, prepared, export):
    """bf16 training keeps bf16 weights in the module and fp32 masters in the optimizer; the
    exports hold the masters (before: the bf16 copy, upcast: every weight's low bits lost)."""
    from safetensors.torch import load_file

    config = _config(tmp_path, prepared, export, "run", epochs=1, mixup=0.0, cutmix=0.0)
    text = config.read_text().replace("precision: fp32", "precision: bf16")
    config.write_text(text)
    proc = _run(config, ranks=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    weights = load_file(_task_dir(tmp_path, "run") / "last" / "model.safetensors")
    matrices = [w for k, w in weights.items() if w.dim() == 2]
    assert all(w.dtype == torch.float32 for w in matrices)
    assert any(not torch.equal(w, w.bfloat16().float()) for w in matrices)
