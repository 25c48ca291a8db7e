"""What only a GPU run would otherwise show, shown on CPU.

* Collectives on the rank's device. DeepSpeed's NCCL group serves CUDA tensors only; here a real
  gloo group is bound to the ``meta`` device type instead (``init_process_group("meta:gloo")``),
  so a CPU tensor handed to it fails exactly as on NCCL ("No backend type associated with device
  type cpu"), and the training loop runs on ``meta`` tensors against it.
* Host-device synchronisation. Meta tensors hold no values, so any read of one fails; a
  ``TorchDispatchMode`` counts every device-to-host read and every blocking host-to-device copy
  that the loop issues, step by step.
* The CUDA ordinal under ``--gpus-per-task=1``: torch's CUDA calls are replaced (there is no GPU
  here) to show which ordinal is asked for and what DeepSpeed is told.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from cluster.local import free_port
from training import checkpoint, distributed, pretrain
from training.config import LoaderConfig, ModelConfig, PretrainConfig, default_mask
from training.modalities import modality
from training.modalities.image.bundle import ImageInputConfig

META = torch.device("meta")


@pytest.fixture
def meta_group(monkeypatch):
    """A one-rank gloo group that serves ``meta`` tensors only, as NCCL serves only CUDA ones."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("meta:gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_cpu_tensor_on_a_group_bound_to_another_device_fails(meta_group):
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.all_reduce(torch.zeros(3))


class HostSyncs(TorchDispatchMode):
    """Counts the calls that make a GPU's host wait: reading a device tensor's values, and
    copies onto the device that are not ``non_blocking``."""

    def __init__(self):
        super().__init__()
        self.reads = 0
        self.blocking_uploads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense" and args[0].device.type != "cpu":
            self.reads += 1
        elif name == "_to_copy":
            src, dst = args[0].device, kwargs.get("device") or args[0].device
            if src.type != "cpu" and dst.type == "cpu":
                self.reads += 1
            elif src.type == "cpu" and dst.type != "cpu" and not kwargs.get("non_blocking"):
                self.blocking_uploads += 1
        elif name == "copy_" and args[0].device != args[1].device:
            if args[0].device.type == "cpu":
                self.reads += 1
            elif not kwargs.get("non_blocking", args[2] if len(args) > 2 else False):
                self.blocking_uploads += 1
        return func(*args, **kwargs)


class MetaEngine:
    """DeepSpeed's engine reduced to what the loop calls, on a device that cannot run here: the
    modality's real model (bf16, as DeepSpeed casts it) forward and backward on meta tensors."""

    def __init__(self, cfg: PretrainConfig):
        m = modality(cfg.modality)
        self.model = m.objective.build_model(cfg.model, m.geometry(cfg.input), cfg.mask.kind)
        self.model.to(META, torch.bfloat16)

    def __call__(self, *inputs):
        return self.model(*inputs)

    def backward(self, loss):
        loss.backward()

    def step(self):
        pass

    def get_lr(self):
        return [0.0]


# Small inputs per modality (the contract test's), so a step costs milliseconds.
SMALL_INPUT = {
    "image": {"image_size": 32, "patch_size": 4},
    "audio": {"frames": 64, "patch_size": 16, "mel_mean": -6.0, "mel_std": 4.0},
    "video": {"num_frames": 4, "frame_size": 32, "patch_size": 8, "tubelet": 2},
    "text": {"seq_len": 32, "vocab_size": 400},
}


@pytest.fixture(params=sorted(SMALL_INPUT))
def modality_split(request, tmp_path):
    """(modality name, a train split of 16 inputs written by its reader through the writer)."""
    import functools

    from data_prep.corpus import corpus_reader
    from data_prep.plan import WorkUnit
    from data_prep.writer import finish_split, write_unit

    name = request.param
    source, prep_keys = request.getfixturevalue(f"{name}_corpus")
    reader = corpus_reader(name)
    cfg = reader.config(source=str(source), out=str(tmp_path), **prep_keys)
    items = list(reader.items(cfg, "train"))[:16]
    encode = functools.partial(reader.encode, cfg, reader.fit(cfg, items))
    split = tmp_path / "train"
    finish_split(split, [write_unit(WorkUnit(0, tuple(items)), split, encode)], 0.0)
    return name, split


def test_training_steps_keep_collectives_on_the_device_and_read_the_host_once(
    meta_group, modality_split, tmp_path, monkeypatch
):
    """Every modality and objective (MAE on image, audio and video; MLM on text): the masks
    come from the loader, the one collective stays on the device, and the host reads it once a
    step; nothing else waits on the device."""
    name, split = modality_split
    m = modality(name)
    steps, accum = 4, 2
    cfg = PretrainConfig(
        modality=name,
        train_shards=str(split),
        out_dir=str(tmp_path),
        input=m.input_config(**SMALL_INPUT[name]),
        mask=default_mask(m),
        model=ModelConfig(
            preset="nano", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2
        ),
        loader=LoaderConfig(workers=0, shuffle_buffer=8),
        batch_size=4,
        grad_accum=accum,
        steps=steps,
        checkpoint_every=100,
        log_every=100,
    )
    info = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=META)
    plan = pretrain.make_plan(cfg, 1, 96)
    counter = HostSyncs()
    per_step: list[tuple[int, int]] = []
    reduced_on: list[torch.device] = []

    def agree(self, stop):
        # The real collective, on the device; the one read of its three numbers is counted
        # (meta tensors have no values to read).
        sums = self.reduce(stop)
        reduced_on.append(sums.device)
        counter.reads += 1
        per_step.append((counter.reads, counter.blocking_uploads))
        return distributed.Verdict(loss=1.0, non_finite_ranks=0, stop=False)

    monkeypatch.setattr(distributed.StepAgreement, "agree", agree)
    with counter:
        pretrain._train(cfg, m, plan, info, MetaEngine(cfg), 0, tmp_path / "checkpoints")
    assert reduced_on == [META] * steps
    reads = [after[0] - before[0] for before, after in zip([(0, 0), *per_step], per_step)]
    uploads = [after[1] - before[1] for before, after in zip([(0, 0), *per_step], per_step)]
    assert reads == [1] * steps  # the agreement's one read per step, none per micro step
    assert uploads[1:] == [0] * (steps - 1)  # constants are made once, in the first step


def test_step_agreement_sums_micro_steps_and_flags_non_finite(meta_group):
    agreement = distributed.StepAgreement(torch.device("cpu"), micro_steps_per_rank=2)
    with pytest.raises(RuntimeError, match="device type cpu"):
        agreement.agree(stop=False)  # its tensors are on the CPU, the group serves meta only


def test_step_agreement_on_cpu_reads_mean_loss_and_flags(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        agreement = distributed.StepAgreement(torch.device("cpu"), micro_steps_per_rank=2)
        agreement.add(torch.tensor(1.0))
        agreement.add(torch.tensor(3.0))
        assert agreement.agree(stop=True) == distributed.Verdict(2.0, 0, True)
        agreement.add(torch.tensor(float("nan")))
        agreement.add(torch.tensor(1.0))
        verdict = agreement.agree(stop=False)
        assert verdict.non_finite_ranks == 1 and not verdict.stop
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("local_rank, visible, ordinal", [(3, 1, 0), (3, 8, 3), (9, 8, 1)])
def test_cuda_ordinal_is_local_rank_modulo_the_visible_devices(local_rank, visible, ordinal):
    assert distributed.cuda_ordinal(local_rank, visible) == ordinal


def test_a_rank_that_sees_one_gpu_uses_it_and_tells_deepspeed(monkeypatch):
    """``srun --gpus-per-task=1``: LOCAL_RANK 3, one visible GPU. No GPU here: torch's CUDA
    calls and DeepSpeed's NCCL set-up are replaced by recorders."""
    import deepspeed

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: chosen.append(kw))
    for var, value in dict(RANK="3", WORLD_SIZE="8", LOCAL_RANK="3", MASTER_ADDR="h").items():
        monkeypatch.setenv(var, value)
    info = distributed.init_distributed("cuda")
    assert chosen[0] == 0 and info.device == torch.device("cuda", 0)
    assert chosen[1]["dist_backend"] == "nccl"

    told = {}

    def initialize(**kwargs):
        told.update(kwargs)
        return (None, None, None, None)

    monkeypatch.setattr(deepspeed, "initialize", initialize)
    cfg = PretrainConfig(
        train_shards="-", out_dir="-", input=ImageInputConfig(32, 4), steps=1,
        model=ModelConfig(preset="nano", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
    )  # fmt: skip
    pretrain._build_engine(cfg, modality("image"), pretrain.make_plan(cfg, 8, 1000), info, 2)
    assert told["args"].device_rank == 0  # not LOCAL_RANK 3: "invalid device ordinal"


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows what happens without CUDA")
def test_device_cuda_without_a_gpu_fails_fast(tmp_path, prepared):
    config = tmp_path / "pretrain.yaml"
    config.write_text(
        f"train_shards: {prepared / 'train'}\nout_dir: {tmp_path / 'run'}\nsteps: 1\n"
        "device: cuda\nmodel: {preset: nano}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "training.pretrain", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "device: cuda, but torch" in proc.stderr and "sees no CUDA device" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_other_ranks_wait_for_rank_0s_universal_checkpoint_without_a_process_group(tmp_path):
    tag = checkpoint.tag_for(4)
    (tmp_path / tag).mkdir()
    for rank in range(2):  # written by 2 ranks under ZeRO-2
        (tmp_path / tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (tmp_path / tag / checkpoint.COMPLETE).write_text("4\n")
    assert not checkpoint.needs_universal(tmp_path, 2)
    assert checkpoint.needs_universal(tmp_path, 4)

    marker = tmp_path / checkpoint.UNIVERSAL / tag / checkpoint.COMPLETE

    def rank_0_converts():
        time.sleep(1.0)  # as long as it takes: nobody waits inside a collective
        marker.parent.mkdir(parents=True)
        marker.write_text("4\n")

    threading.Thread(target=rank_0_converts).start()
    start = time.monotonic()
    assert checkpoint.prepare_universal(tmp_path, 4, rank=1, poll_seconds=0.1)
    assert time.monotonic() - start >= 0.9 and marker.exists()


FINISH_RANK = """
import sys, time, datetime, os
from pathlib import Path
import torch.distributed as dist
from training import pretrain
from training.config import PretrainConfig
from training.distributed import DistInfo
from training.modalities import modality
from training.modalities.image.bundle import ImageInputConfig

rank, out = int(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=3))
def slow_export(ckpt_dir, tag, out_dir, export, zero_stage):
    time.sleep(8)  # rank 0 alone, longer than the collective timeout
    out_dir.mkdir(parents=True)
pretrain.export_from_checkpoint = slow_export
cfg = PretrainConfig(train_shards="-", out_dir=str(out), input=ImageInputConfig(32, 4), steps=2)
plan = pretrain.make_plan(cfg, 2, 100)
image = modality("image")
pretrain._finish(cfg, image, plan, DistInfo(rank, 2, rank, None), None, out / "checkpoints", 2)
print("finished", rank)
"""


def test_rank_0s_export_does_not_run_against_the_collective_timeout(tmp_path):
    tag = checkpoint.tag_for(2)
    (tmp_path / "checkpoints" / tag).mkdir(parents=True)
    (tmp_path / "checkpoints" / tag / checkpoint.COMPLETE).write_text("2\n")  # saved already
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FINISH_RANK, str(rank), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, err[-2000:]
        assert f"finished {rank}" in out
    assert (tmp_path / "export").is_dir() and (tmp_path / pretrain.DONE).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows what happens without CUDA")
def test_the_pipeline_refuses_a_cuda_recipe_on_a_machine_without_one(tmp_path, caplog):
    from pipeline.cli import main

    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            str(Path(__file__).resolve().parents[2] / "configs" / "imagenet_mae_vitb.yaml"),
            "prep.source=/nonexistent",
            f"run_dir={run_dir}",
        ]
    )
    assert code == 2
    assert "pretrain.device: device: cuda, but torch" in caplog.text
    assert not run_dir.exists()  # nothing started, not even the prep of the recipe


def test_zero_stage_and_device_are_not_part_of_the_pretrain_fingerprint():
    from pipeline.schema import RunConfig
    from pipeline.stages import STAGES

    stage = next(s for s in STAGES if s.name == "pretrain")
    base = RunConfig(name="x", prep=None)
    sections = [
        stage.section(dataclasses.replace(base, pretrain=dataclasses.replace(base.pretrain, **kw)))
        for kw in ({"zero_stage": None}, {"zero_stage": 1}, {"zero_stage": 3}, {"device": "cuda"})
    ]
    assert all(s == sections[0] for s in sections)


def test_ranks_started_by_srun_know_their_world_before_the_process_group(monkeypatch):
    """The universal-checkpoint decision is taken before the group exists; under srun only
    Slurm's variables say how many ranks there are (a 1-rank guess converted a 2-rank
    checkpoint on every requeue)."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.setenv(var, "recorded")  # so that monkeypatch restores what launch_env sets
        monkeypatch.delenv(var)
    for var, value in dict(SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_LOCALID="1").items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("MASTER_ADDR", "node1")
    assert distributed.launch_env() == (1, 2)
    assert os.environ["LOCAL_RANK"] == "1"


def test_the_watchdog_of_a_single_rank_writes_nothing(tmp_path):
    """One rank has no peer to watch: no heartbeat folder, and beats (forced ones around a
    checkpoint too) are no-ops rather than writes into a folder that does not exist."""
    from training.watchdog import Watchdog

    dog = Watchdog(tmp_path, rank=0, world_size=1, timeout_s=600)
    dog.beat(1, force=True)
    dog.close()
    assert list(tmp_path.iterdir()) == []
