"""A small pipeline submitted to the real local Slurm, preempted twice mid-training.

The chain (demo data -> prep on a Ray cluster inside the allocation -> 2-rank DeepSpeed training
launched by srun -> fine-tuning and the probe, each a 2-rank srun job -> report) runs in a run directory whose path holds spaces, quotes
and a dollar sign. The training job is preempted twice: once the polite way (USR2 to the batch
shell, as ``--signal=B:USR2@N`` delivers before the time limit: every rank checkpoints, the job
requeues itself), once the rude way (``scontrol requeue``: Slurm kills the job and requeues it;
it resumes from its last periodic checkpoint). It must finish with every step logged once.

A requeued job may start again only once its old job credential has expired: 120 s by default,
15 s on the test cluster (``AuthInfo=cred_expire=15`` in cluster/local_slurm.sh).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.slurm import job_states
from data_prep.shard_format import read_manifest, read_stats
from pipeline.schema import load_run_config
from pipeline.submit import read_submissions, wait_slurm
from training.metrics import read_eval_metrics

STEPS = 240

RUN = """
name: slurm_tiny
run_dir: '{run_dir}'
seed: 0
demo_data: {{out: "${{run_dir}}/raw", classes: 4, train_per_class: 16, val_per_class: 5, min_size: 40, max_size: 80, corrupt: 2}}
prep: {{source: "${{demo_data.out}}", shorter_side: 36, samples_per_shard: 16}}
pretrain:
  input: {{image_size: 32, patch_size: 4}}
  model: {{preset: nano, decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}}
  batch_size: 32
  steps: {steps}
  optim: {{lr: 1.0e-3, warmup_steps: 2}}
  checkpoint_every: 40
  log_every: 1
  loader: {{workers: 1, shuffle_buffer: 16}}
evaluate:
  tasks:
    linear_probe: {{epochs: 3, batch_size: 32}}
    knn: {{k: 5}}
    finetune: {{epochs: 1, batch_size: 16}}
launch: {{ranks: 2}}
report: {{reconstructions: 2}}
slurm:
  prep: {{cpus_per_task: 2, time: "10"}}
  pretrain: {{cpus_per_task: 1, time: "20"}}
  finetune: {{cpus_per_task: 1, time: "10"}}
  probe: {{cpus_per_task: 1, time: "10"}}
"""


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_until(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "pretrain" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def requeued(job_id: str, restarts: int) -> bool:
    return int(scontrol_job(job_id)["Restarts"]) >= restarts


@pytest.fixture(scope="module")
def preempted_run(slurm_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    run_dir = root / 'it\'s a "run" $dir'
    path = root / "run.yaml"
    path.write_text(RUN.format(run_dir=str(run_dir).replace("'", "''"), steps=STEPS))
    cfg = load_run_config(path)
    submitted = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", str(path), "--slurm"],
        capture_output=True,
        text=True,
    )
    assert submitted.returncode == 0, submitted.stderr
    (sub,) = read_submissions(cfg)
    pretrain_job = sub.jobs[sub.stages.index("pretrain")]

    # 1. USR2 to the batch shell mid-run: a checkpoint on every rank, then a self-requeue.
    wait_until(lambda: len(logged_steps(run_dir)) >= 20, 300, "pretraining to log 20 steps")
    subprocess.run(["scancel", "--signal=USR2", "--batch", pretrain_job], check=True)
    wait_until(lambda: requeued(pretrain_job, 1), 120, "the job to requeue itself")

    # 2. An outright requeue mid-run: the job is killed and resumes from its periodic checkpoint.
    wait_until(
        lambda: (
            scontrol_job(pretrain_job)["JobState"] == "RUNNING"
            and max(logged_steps(run_dir) or [0]) >= 130
        ),
        400,
        "the requeued job to pass step 130",
    )
    subprocess.run(["scontrol", "requeue", pretrain_job], check=True)

    completed = wait_slurm(sub, poll_seconds=2, timeout=600)
    return cfg, sub, Path(run_dir), completed


@pytest.mark.slow  # the preempted chain (~2.5 min); the fast stand-ins: test_multinode (submit --slurm --wait, Ray prep, srun ranks), the SIGUSR2 resume in tasks/test_distributed_tasks
def test_every_job_of_the_chain_completes(preempted_run):
    _, sub, run_dir, completed = preempted_run
    assert sub.stages == ["demo_data", "prep", "pretrain", "finetune", "probe", "report"]
    states = job_states([int(j) for j in sub.jobs])
    assert completed, {j: s.state for j, s in states.items()}
    assert {s.state for s in states.values()} == {"COMPLETED"}
    assert (run_dir / "report.html").exists()
    metrics = read_eval_metrics(run_dir / "evaluate")
    assert metrics["encoder"]["step"] == STEPS
    assert set(metrics["tasks"]) == {"linear_probe", "knn", "finetune"}
    # fine-tuning and the probe ran on both ranks of their own jobs, under srun
    for stage in ("finetune", "probe"):
        log = Path(sub.logs[sub.stages.index(stage)]).read_text(errors="replace")
        assert re.search(r": 2 ranks, \d+ steps", log), log[-3000:]


@pytest.mark.slow  # the preempted chain (~2.5 min); the fast stand-ins: test_multinode (submit --slurm --wait, Ray prep, srun ranks), the SIGUSR2 resume in tasks/test_distributed_tasks
def test_preempted_training_resumed_with_no_repeated_or_lost_steps(preempted_run):
    _, sub, run_dir, _ = preempted_run
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))
    # A rank killed mid-write can leave half a UTF-8 character of a progress bar behind.
    log = Path(sub.logs[sub.stages.index("pretrain")]).read_text(errors="replace")
    saved = re.findall(r"preempted: checkpoint saved at step (\d+)", log)
    assert saved, log[-3000:]
    assert f"resumed from {run_dir}/pretrain/checkpoints/step-{int(saved[0]):08d}" in log
    assert "restart 1" in log and "restart 2" in log
    assert "requeueing job" in log  # the script's own requeue after USR2


@pytest.mark.slow  # the preempted chain (~2.5 min); the fast stand-ins: test_multinode (submit --slurm --wait, Ray prep, srun ranks), the SIGUSR2 resume in tasks/test_distributed_tasks
def test_prep_ran_on_a_ray_cluster_inside_the_allocation(preempted_run):
    _, sub, run_dir, _ = preempted_run
    log = Path(sub.logs[sub.stages.index("prep")]).read_text(errors="replace")
    assert "ray cluster at" in log and "has 1 node(s)" in log
    assert read_manifest(run_dir / "shards" / "train")
    stats = read_stats(run_dir / "shards" / "train")
    assert sum(stats["skipped"].values()) == 2


@pytest.mark.slow  # the preempted chain (~2.5 min); the fast stand-ins: test_multinode (submit --slurm --wait, Ray prep, srun ranks), the SIGUSR2 resume in tasks/test_distributed_tasks
def test_status_shows_the_jobs(preempted_run):
    _, sub, run_dir, _ = preempted_run
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", str(run_dir / "submit" / "run.yaml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for stage, job in zip(sub.stages, sub.jobs):
        assert re.search(rf"{stage}\s+job {job}\s+COMPLETED", out), out
    assert "pretrain   done" in out


QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart_image.yaml"


@pytest.mark.slow
def test_quickstart_submitted_to_slurm_runs_to_the_end(slurm_cluster, tmp_path):
    """The shipped quickstart, as the README submits it (about 5 minutes: opt in with -m slow)."""
    run_dir = tmp_path / "quickstart"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", str(QUICKSTART), f"run_dir={run_dir}",
         "--slurm", "--wait"],
        capture_output=True,
        text=True,
        timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sub,) = read_submissions(load_run_config(QUICKSTART, [f"run_dir={run_dir}"]))
    assert {s.state for s in job_states([int(j) for j in sub.jobs]).values()} == {"COMPLETED"}
    probe = read_eval_metrics(run_dir / "evaluate")["linear_probe"]
    assert probe["pretrained"]["top1"] > probe["random_init"]["top1"], probe


SRUN_BEFORE_23_11 = """#!/bin/sh
# srun as Slurm 22.05-23.02 runs it: it does not take the job's CPUs per task from the
# environment (Debian's 22.05.8 still does, so the test puts this shim first in PATH).
unset SLURM_CPUS_PER_TASK SRUN_CPUS_PER_TASK
exec {srun} "$@"
"""


def test_each_rank_and_its_loader_workers_get_the_jobs_cpus_per_task(slurm_cluster, tmp_path):
    """A training job rendered by cluster.sbatch with 2 CPUs per task (this machine has 2):
    the rank started by ``srun_command`` and its DataLoader worker are bound to both."""
    from cluster.local import srun_command
    from cluster.sbatch import JobSpec, render

    shim = tmp_path / "bin"
    shim.mkdir()
    real = subprocess.run(["which", "srun"], capture_output=True, text=True).stdout.strip()
    (shim / "srun").write_text(SRUN_BEFORE_23_11.format(srun=real))
    (shim / "srun").chmod(0o755)
    launch = (
        "import subprocess, sys; from cluster.local import srun_command; "
        "sys.exit(subprocess.call(srun_command('tests.cluster.affinity_probe', sys.argv[1:])))"
    )
    spec = JobSpec(
        name="affinity",
        kind="training",
        command=[sys.executable, "-c", launch, str(tmp_path)],
        workdir=str(Path(__file__).resolve().parents[2]),
        log=str(tmp_path / "job.log"),
        cpus_per_task=2,
        time="10",  # above the USR2 lead (300 s), or USR2 arrives at the start
        setup=[f"export PATH={shim}:$PATH"],
    )
    script = tmp_path / "job.sh"
    script.write_text(render(spec))
    subprocess.run(["sbatch", "--wait", str(script)], check=True, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "rank0.json").read_text())
    log = (tmp_path / "job.log").read_text()
    assert result == {"rank": [0, 1], "worker": [0, 1]}, log
    assert srun_command("m", [], {"SLURM_CPUS_PER_TASK": "12"})[2:4] == [
        "--cpus-per-task=12",
        "--cpu-bind=cores",
    ]


def test_waiting_on_a_job_that_can_never_start_says_so_instead_of_waiting(slurm_cluster, tmp_path):
    """A job that asks for more than its partition gives passes sbatch behind a dependency and
    then pends forever (PartitionConfig); ``--wait`` names it and the keys to change."""
    from cluster.slurm import SlurmError, submit
    from pipeline.submit import Submission

    first, greedy = tmp_path / "first.sbatch", tmp_path / "greedy.sbatch"
    first.write_text("#!/bin/bash\n#SBATCH --time=1\ntrue\n")
    greedy.write_text("#!/bin/bash\n#SBATCH --time=1\n#SBATCH --cpus-per-task=512\ntrue\n")
    ids = [submit(first)]
    ids.append(submit(greedy, after=[ids[0]]))
    sub = Submission("slurm", ["pretrain", "finetune"], [str(i) for i in ids])
    try:
        with pytest.raises(SlurmError, match=r"\(finetune\) can never start: PartitionConfig"):
            wait_slurm(sub, poll_seconds=0.5, timeout=120)
    finally:
        subprocess.run(["scancel", *map(str, ids)], capture_output=True)
