"""Real DeepSpeed runs on CPU (gloo): 2 ranks under the ``deepspeed`` launcher, ZeRO-2 (the
default for every ViT preset) and ZeRO-3."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from cluster.local import remove_shm_segments, shm_segments
from training.checkpoint import COMPLETE
from training.export import load_encoder, load_mae
from training.metrics import read_metrics


def _config(tmp_path, prepared, **extra):
    cfg = {
        "train_shards": str(prepared / "train"),
        "out_dir": str(tmp_path / "run"),
        "input": {"image_size": 32, "patch_size": 4},
        "model": {
            "preset": "nano",
            "decoder_embed_dim": 32,
            "decoder_depth": 1,
            "decoder_num_heads": 2,
        },
        "batch_size": 8,
        "steps": 4,
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "checkpoint_every": 2,
        "log_every": 1,
        "loader": {"workers": 1, "shuffle_buffer": 20},
    }
    cfg.update(extra)
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _deepspeed(config, *overrides, ranks=2, port=None):
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(port or _port()),
        "--module",
        "training.pretrain",
        str(config),
        *overrides,
    ]


def _port():
    from cluster.local import free_port

    return free_port()


# ZeRO-3's run (~14 s) is opt-in: ZeRO-3 trains by default in the HPM test below.
@pytest.mark.parametrize("zero_stage", [None, pytest.param(3, marks=pytest.mark.slow)])
def test_two_rank_run_trains_checkpoints_and_exports(tmp_path, prepared, zero_stage):
    # bf16 with accumulation: ZeRO-2 accumulates gradients in fp32 (data_types.grad_accum_dtype)
    config = _config(tmp_path, prepared, precision="bf16", grad_accum=2, zero_stage=zero_stage)
    port = _port()
    proc = subprocess.run(
        _deepspeed(config, port=port), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert shm_segments(port) == []  # each rank unlinked its DeepSpeed /dev/shm segment
    out = tmp_path / "run"
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert (out / "checkpoints" / "step-00000004" / COMPLETE).exists()
    # ZeRO partitioned the optimizer state (and at stage 3 the parameters) over both ranks; the
    # export gathered them whole.
    parts = list((out / "checkpoints" / "step-00000004").glob("*optim_states.pt"))
    assert len(parts) == 2
    assert f"ZeRO-{zero_stage or 2}" in proc.stdout + proc.stderr
    encoder = load_encoder(out / "export")
    mae = load_mae(out / "export")
    assert all(torch.isfinite(p).all() for p in encoder.parameters())
    assert torch.equal(mae.encoder.patch_embed.weight, encoder.patch_embed.weight)
    model_json = json.loads((out / "export" / "model.json").read_text())
    assert model_json["step"] == 4 and model_json["model"]["embed_dim"] == 96
    # 4 optimizer steps x 2 micro steps x batch 8 x 2 ranks: the effective batch DeepSpeed used.
    assert "effective batch 32" in proc.stdout + proc.stderr


@pytest.mark.slow  # ~16 s; HPM's masks and ZeRO-3 have their own fast tests
def test_hpm_with_two_masks_per_sample_trains_under_zero3_and_exports(tmp_path, prepared):
    """HPM's scoring pass runs inside the engine's forward (ZeRO-3 gathers the weights for it
    too); K views multiply the rows; the export leaves the loss head out."""
    mask = {"kind": "hpm", "ratio": 0.9, "per_sample": 2}
    config = _config(tmp_path, prepared, precision="bf16", zero_stage=3, mask=mask)
    proc = subprocess.run(_deepspeed(config), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert "mask hpm 0.90" in proc.stdout + proc.stderr
    mae = load_mae(tmp_path / "run" / "export")
    assert mae.loss_head is None


def test_killed_run_resumes_from_its_last_checkpoint_without_repeating_steps(tmp_path, prepared):
    # killed at its first checkpoint (step 8), 32 steps after it: a rerun long enough to show
    # none repeated and none lost, with 3 checkpoints rather than the 59 of 120 steps saved
    # every 2 (which made this the suite's longest test)
    steps = 40
    config = _config(tmp_path, prepared, steps=steps, precision="fp32", checkpoint_every=8)
    ckpt = tmp_path / "run" / "checkpoints"
    port = _port()
    proc = subprocess.Popen(
        _deepspeed(config, port=port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while (
        not list(ckpt.glob(f"step-*/{COMPLETE}")) and time.time() < deadline and proc.poll() is None
    ):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole launcher + ranks, as a node failure would
    proc.wait()
    # Killed ranks cannot unlink their DeepSpeed /dev/shm segments (RAM); the pipeline's
    # launcher wrapper removes them by port, as here.
    assert len(shm_segments(port)) == 2
    assert remove_shm_segments(port) == 2 and shm_segments(port) == []
    finished = sorted(p.parent.name for p in ckpt.glob(f"step-*/{COMPLETE}"))
    assert finished, "no checkpoint was completed before the kill"
    resumed_from = int(finished[-1].split("-")[1])
    assert resumed_from < steps

    again = subprocess.run(_deepspeed(config), capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"(from {resumed_from})" in again.stdout + again.stderr
    logged = [r["step"] for r in read_metrics(tmp_path / "run")]
    assert logged == list(range(1, steps + 1))  # every step once: none repeated, none lost


@pytest.mark.slow  # ~40 s; the rollback tests stop a run on non-finite losses in the default run
def test_non_finite_loss_stops_the_run_with_a_clear_message(tmp_path, prepared):
    # Single rank, no launcher: also covers `python -m training.pretrain` on its own.
    config = _config(
        tmp_path,
        prepared,
        steps=50,
        checkpoint_every=100,
        optim={"lr": 1e12, "warmup_steps": 0, "grad_clip": 0.0},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "training.pretrain", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "non-finite loss nan at step" in proc.stderr
    assert "no checkpoint to roll back to yet" in proc.stderr  # it diverges before the first
    assert "Lower optim.lr" in proc.stderr


def test_bad_config_fails_before_any_work(tmp_path, prepared):
    config = _config(tmp_path, prepared)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.pretrain",
            str(config),
            "mask.ratio=1.0",
            "model.prest=base",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "model.prest: unknown key; did you mean preset?; expected one of: preset," in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["mask.ratio=1.0", "steps=ten", "precision=fp8"])
def test_each_bad_value_names_its_key(tmp_path, prepared, override):
    config = _config(tmp_path, prepared)
    proc = subprocess.run(
        [sys.executable, "-m", "training.pretrain", str(config), override],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert override.split("=")[0] in proc.stderr


@pytest.mark.slow  # ~33 s; the data side of it (exact order at another world) is fast:
# tests/training/test_rank_share.py
def test_resume_on_another_world_size_goes_through_a_universal_checkpoint(tmp_path, prepared):
    """2 ranks train to step 4; 1 rank (same global batch) resumes and takes one more step with
    a vanishing lr, so its export must equal the 2-rank run's step-4 weights, re-partitioned.
    The run directory's name holds regular-expression characters (DeepSpeed's converter matched
    paths unescaped)."""
    out = tmp_path / "it's a $run (1)"
    first = _config(tmp_path, prepared, precision="fp32", batch_size=4, out_dir=str(out))
    proc = subprocess.run(_deepspeed(first), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = {k: v.clone() for k, v in load_mae(out / "export").state_dict().items()}

    resumed = _config(
        tmp_path, prepared, precision="fp32", batch_size=8, steps=5, out_dir=str(out),
        optim={"lr": 1e-30, "warmup_steps": 0, "min_lr": 0.0},
    )  # fmt: skip
    proc = subprocess.run(_deepspeed(resumed, ranks=1), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "converting it to a universal checkpoint" in log
    assert "resumed from" in log and "(step 4)" in log
    assert (out / "checkpoints" / "universal" / "step-00000004" / COMPLETE).exists()
    assert len(list((out / "checkpoints" / "step-00000005").glob("*optim_states.pt"))) == 1
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5]
    after = load_mae(out / "export").state_dict()
    for name, value in trained.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=1e-6, msg=name)
    fresh = _fresh_init(resumed)
    assert not torch.allclose(
        fresh["encoder.patch_embed.weight"], trained["encoder.patch_embed.weight"]
    )


@pytest.mark.slow  # three 2-rank launches (~42 s) for runs begun before ZeRO-2 was the default
def test_a_run_begun_under_zero3_resumes_under_zero3_unless_told_otherwise(tmp_path, prepared):
    """A run started before ZeRO-2 became the default goes on under the stage it began with;
    asking for a stage its checkpoint cannot be loaded under fails before any work."""
    out = tmp_path / "run"
    first = _config(tmp_path, prepared, precision="fp32", zero_stage=3, steps=2)
    proc = subprocess.run(_deepspeed(first), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    refused = _config(tmp_path, prepared, precision="fp32", zero_stage=2, steps=3)
    proc = subprocess.run(_deepspeed(refused), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "zero_stage: 3 to resume" in proc.stderr and "got 2" in proc.stderr
    unset = _config(tmp_path, prepared, precision="fp32", steps=3)
    proc = subprocess.run(_deepspeed(unset), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "(from 2)" in log and "ZeRO-3" in log
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def _fresh_init(config_path):
    """The weights a run would start from without a checkpoint (same seed, same init)."""
    from training.config import pretrain_schema
    from training.modalities import modality
    from training.objectives.mae.model import MaskedAutoencoder
    from training.typed_config import load_config

    cfg = load_config(pretrain_schema, [config_path])
    torch.manual_seed(cfg.seed)
    geometry = modality(cfg.modality).geometry(cfg.input)
    return MaskedAutoencoder(cfg.model, geometry).state_dict()


@pytest.mark.slow
def test_a_compiled_model_trains_under_zero2(tmp_path, prepared):
    """``compile: true`` (about a minute of inductor compiling per rank on 2 cores: opt-in)."""
    config = _config(tmp_path, prepared, precision="bf16", compile=True, steps=3)
    proc = subprocess.run(_deepspeed(config), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    assert all(
        torch.isfinite(p).all() for p in load_encoder(tmp_path / "run" / "export").parameters()
    )


class _Payload:
    """What an attacker plants: unpickling it calls ``open(path, "w")``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow  # a 2-rank launch (~12 s); the weights-only loading itself is tested below
def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(tmp_path, prepared):
    """Before: resume unpickled checkpoints with weights_only=False (ours and DeepSpeed's
    loader), so the payload ran. Now the resume refuses the file, naming it and the global."""
    run = [sys.executable, "-m", "training.pretrain"]
    first = _config(tmp_path, prepared, steps=2, checkpoint_every=1)
    proc = subprocess.run([*run, str(first)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tag = sorted((tmp_path / "run" / "checkpoints").glob(f"step-*/{COMPLETE}"))[-1].parent
    marker = tmp_path / "PAYLOAD_RAN"
    for name in ("mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        state = torch.load(tag / name, weights_only=False)
        state["note"] = _Payload(str(marker))
        torch.save(state, tag / name)
    again = _config(tmp_path, prepared, steps=4, checkpoint_every=1)
    proc = subprocess.run([*run, str(again)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "holds objects other than weights" in proc.stderr and tag.name in proc.stderr
    assert "builtins.open" in proc.stderr or "GLOBAL" in proc.stderr
    assert not marker.exists()


def test_deepspeeds_own_loader_is_weights_only_inside_our_loading():
    """DeepSpeed's checkpoint engine hard-codes weights_only=False; inside
    ``weights_only_loading`` it is refused as well, while real DeepSpeed state still loads."""
    import tempfile

    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from training.safe_load import UnsafeCheckpointError, weights_only_loading

    with tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "PAYLOAD_RAN")
        planted, fine = os.path.join(tmp, "planted.pt"), os.path.join(tmp, "fine.pt")
        torch.save({"w": torch.ones(2), "x": _Payload(marker)}, planted)
        torch.save({"w": torch.ones(2), "stage": ZeroStageEnum.gradients}, fine)
        engine = TorchCheckpointEngine(None)
        with weights_only_loading():
            with pytest.raises(UnsafeCheckpointError, match=r"planted\.pt"):
                engine.load(planted)
            assert engine.load(fine)["stage"] == ZeroStageEnum.gradients
        assert not os.path.exists(marker)


def _rank_process(launcher_pid: int, rank: int, deadline: float):
    import psutil

    while time.time() < deadline:
        for child in psutil.Process(launcher_pid).children(recursive=True):
            try:
                if "training.pretrain" in " ".join(child.cmdline()) and (
                    child.environ().get("RANK") == str(rank)
                ):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} process found")


@pytest.mark.slow  # ~17 s: a 2-rank run stopped and watched out (the watchdog's stall timeout)
def test_a_stopped_rank_ends_the_job_naming_it_and_the_step(tmp_path, prepared):
    """Before: with one rank stopped (SIGSTOP: a wedged GPU or an NFS stall looks the same) the
    job waited 634 s in a collective and said nothing. Now its ring neighbour sees its heartbeat
    stand still for stall_timeout_s and ends the job, naming the rank and its last step; the
    last complete checkpoint is kept."""
    config = _config(
        tmp_path, prepared, steps=100000, checkpoint_every=3, stall_timeout_s=6, precision="fp32"
    )
    ckpt = tmp_path / "run" / "checkpoints"
    port = _port()
    log_path = tmp_path / "launcher.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            _deepspeed(config, port=port), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + 240
        while not list(ckpt.glob(f"step-*/{COMPLETE}")) and time.time() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.2)
        rank1 = _rank_process(proc.pid, 1, deadline)
        os.kill(rank1.pid, signal.SIGSTOP)
        try:
            proc.wait(timeout=200)  # generous: 6 s to notice, the launcher's 30 s grace, slack
        except subprocess.TimeoutExpired:
            pytest.fail("the job still ran 200 s after one rank was stopped")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        remove_shm_segments(port)
    out = log_path.read_text()
    assert proc.returncode != 0
    assert "rank 1 (pid" in out and "made no progress for" in out and "after step" in out
    assert list(ckpt.glob(f"step-*/{COMPLETE}"))  # kept for the rerun
