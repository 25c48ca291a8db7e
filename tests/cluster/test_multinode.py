"""Two real nodes on this machine: network, UTS and mount namespaces joined by a bridge
(``cluster/local_cluster.sh``), each with its own hostname, IP address, /dev/shm and /tmp, one
slurmd per node, the project folder shared. The pipeline goes in through the command users type,
``maskmill submit RUN.yaml --slurm`` with ``launch.nodes=2 launch.ranks=1``: prep, then
DeepSpeed ranks on node1 and node2 talking over the bridge (gloo; the fabric is the one thing a
real cluster has that this does not).

The ranks cannot meet through /dev/shm (each node has its own), so a multi-node path that leaned
on a shared-memory transport, or on one node's /tmp, fails here. A 2-node x 1-rank pretraining
gives the losses of 1 node x 2 ranks with the same global batch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster" / "local_cluster.sh"
# Shared by every node (each has its own /tmp, so pytest's tmp_path would not be).
SHARED = Path("/var/tmp/maskmill-tests")
STEPS = 8

RUN = """
name: two_nodes
run_dir: {run_dir}
seed: 0
demo_data: {{out: "${{run_dir}}/raw", classes: 4, train_per_class: 16, val_per_class: 5, min_size: 40, max_size: 80}}
prep: {{source: "${{demo_data.out}}", shorter_side: 36, samples_per_shard: 16, num_cpus: 2}}
pretrain:
  input: {{image_size: 32, patch_size: 4}}
  model: {{preset: nano, decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}}
  global_batch: 16
  batch_size: 8
  steps: {steps}
  precision: fp32
  optim: {{lr: 1.0e-3, warmup_steps: 2}}
  checkpoint_every: 4
  log_every: 1
  loader: {{workers: 1, shuffle_buffer: 16}}
evaluate:
  tasks:
    linear_probe: {{enabled: false}}
    knn: {{enabled: false}}
    finetune: {{enabled: false}}
launch: {{ranks: 1, nodes: 2}}
report: {{reconstructions: 2}}
slurm:
  prep: {{cpus_per_task: 2, time: "10"}}
  pretrain: {{cpus_per_task: 1, time: "10"}}
  finetune: {{cpus_per_task: 1, time: "10"}}
  probe: {{cpus_per_task: 1, time: "10"}}
"""


@pytest.fixture(scope="module")
def two_nodes():
    """The environment that talks to a 2-node cluster made for these tests (torn down after)."""
    if os.geteuid() != 0:
        pytest.skip("not root: the namespaced nodes need root (make test runs as root in CI)")
    proc = subprocess.run([str(CLUSTER), "up", "2"], capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:  # the kernel or sandbox refused a namespace: it says which
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield {**os.environ, "SLURM_CONF": "/etc/slurm-mm/slurm.conf"}
    subprocess.run([str(CLUSTER), "down"], capture_output=True, timeout=120)


@pytest.fixture
def shared_dir():
    path = SHARED / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _losses(out_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["step"]) if "loss" in r]


def _on(node: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), "on", node, "sh", "-c", command],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_pretraining_across_two_nodes_gives_the_losses_of_two_ranks_on_one(two_nodes, shared_dir):
    run_dir = shared_dir / "run"
    config = shared_dir / "run.yaml"
    # A corpus of at most 48 inputs, with no Ray head asked for, is prepared in the prep job's
    # own process (data_prep.job.IN_PROCESS_INPUTS): the Ray prep across nodes has its own drill.
    small = (
        RUN.format(run_dir=run_dir, steps=STEPS)
        .replace(
            "classes: 4, train_per_class: 16, val_per_class: 5",
            "classes: 2, train_per_class: 16, val_per_class: 4",
        )
        .replace(", num_cpus: 2}", "}")
    )
    assert small.count("classes: 2") == 1 and "num_cpus" not in small
    config.write_text(small)
    # What a SIGKILLed rank of an earlier job leaves in node2's own /dev/shm: only a process on
    # node2 can see it, so node2's first rank must remove it (the launching step is on node1).
    orphan = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_node1_29999_1"
    assert _on("node2", f"touch {orphan} && test -e {orphan}").returncode == 0
    assert not Path(orphan).exists()  # node2's /dev/shm is its own
    submit = [sys.executable, "-m", "pipeline.cli", "submit", str(config), "--slurm", "--wait"]
    proc = subprocess.run(submit, env=two_nodes, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    logs = "".join(p.read_text() for p in sorted((run_dir / "logs" / "slurm").glob("*.out")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-4000:]
    pretrain_log = next((run_dir / "logs" / "slurm").glob("pretrain-*.out")).read_text()
    assert "2 ranks on 2 host(s): 0 node1, 1 node2" in pretrain_log
    assert "node2: removed 1 /dev/shm segments of killed ranks" in pretrain_log
    assert _on("node2", f"test -e {orphan}").returncode == 1
    two_nodes_losses = _losses(run_dir / "pretrain")
    assert len(two_nodes_losses) == STEPS

    # The same pretraining section, 2 ranks on this machine under the deepspeed launcher.
    one_node_losses = _reference_losses(run_dir, shared_dir / "one_node", timeout=600)
    for step, (a, b) in enumerate(zip(two_nodes_losses, one_node_losses), start=1):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {step}: 2x1 {a} vs 1x2 {b}"
    print("step | 2 nodes x 1 rank | 1 node x 2 ranks")
    for step, (a, b) in enumerate(zip(two_nodes_losses, one_node_losses), start=1):
        print(f"{step:4d} | {a:.6f} | {b:.6f}")


def _reference_losses(run_dir: Path, out: Path, timeout: float = 900) -> list[float]:
    """The run's pretraining section, uninterrupted, on 2 ranks of this machine."""
    from cluster.local import free_port

    local = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
             "--master_port", str(free_port()), "--module", "training.pretrain",
             str(run_dir / ".maskmill" / "pretrain.yaml"), f"out_dir={out}"]  # fmt: skip
    proc = subprocess.run(local, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _losses(out)


def _job_id(log: Path) -> int:
    """``pretrain-12.out`` -> 12 (by name, ``-12`` sorts before ``-7``)."""
    return int(log.stem.rpartition("-")[2])


def _logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow  # ~4 min: a 2-node pretraining loses node2 mid-run, then is resubmitted
def test_a_lost_node_ends_the_job_naming_it_and_a_resubmit_resumes_exactly(two_nodes, shared_dir):
    import time

    steps, bound_s = 60, 120
    run_dir = shared_dir / "run"
    config = shared_dir / "run.yaml"
    text = RUN.format(run_dir=run_dir, steps=steps)
    text = text.replace("checkpoint_every: 4", "checkpoint_every: 10")
    config.write_text(text.replace("  log_every: 1\n", "  log_every: 1\n  stall_timeout_s: 20\n"))
    submit = [sys.executable, "-m", "pipeline.cli", "submit", str(config), "--slurm"]
    proc = subprocess.run(
        submit, env=two_nodes, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    deadline = time.monotonic() + 600
    while len(_logged_steps(run_dir / "pretrain")) < 25:
        assert time.monotonic() < deadline, "pretraining did not reach step 25"
        time.sleep(1)
    # node2 dies: its link goes (no goodbye reaches node1), then every process on it.
    lost = time.monotonic()
    subprocess.run(["ip", "link", "set", "mmh2", "down"], check=True)
    subprocess.run([str(CLUSTER), "kill", "node2"], check=True)
    log_path = next((run_dir / "logs" / "slurm").glob("pretrain-*.out"))
    # The attempt ends when a rank's watchdog or Slurm's node check says so, whichever is first.
    while not any(s in log_path.read_text() for s in ("made no progress", "NODE FAILURE")):
        assert time.monotonic() - lost < bound_s * 3, "the job outlived the lost node"
        time.sleep(0.5)
    ended_s = time.monotonic() - lost
    log_text = log_path.read_text()
    said = [line for line in log_text.splitlines() if "node2" in line]
    print(
        f"node2 lost at step {len(_logged_steps(run_dir / 'pretrain'))}; the attempt ended "
        f"{ended_s:.0f} s later:\n" + "\n".join(said)
    )
    assert ended_s < bound_s
    assert any("rank 1" in line for line in said)

    # node2 comes back, and the chain is submitted again: whether Slurm requeued the job (node
    # failure) or it failed first (the watchdog's exit 4) varies; the first chain is cancelled
    # either way, and the new one resumes pretraining from its last checkpoint.
    subprocess.run(["ip", "link", "set", "mmh2", "up"], check=True)
    subprocess.run([str(CLUSTER), "up", "2"], check=True, capture_output=True, timeout=300)
    first = json.loads((run_dir / ".maskmill" / "submissions.json").read_text())[-1]["jobs"]
    subprocess.run(["scancel", *first], env=two_nodes, check=True)
    while subprocess.run(["squeue", "-h", "-j", ",".join(first)], env=two_nodes,
                         capture_output=True, text=True).stdout.strip():  # fmt: skip
        time.sleep(1)
    proc = subprocess.run([*submit, "--wait"], env=two_nodes, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_log = max((run_dir / "logs" / "slurm").glob("pretrain-*.out"), key=_job_id).read_text()
    start = re.search(r"\(from (\d+)\)", resumed_log)
    assert start and int(start.group(1)) >= 20, resumed_log[-2000:]  # a checkpoint, not step 0
    logged = _logged_steps(run_dir / "pretrain")
    assert logged == list(range(1, steps + 1))  # each step once: the lost ones redone
    resumed = _losses(run_dir / "pretrain")
    reference = _reference_losses(run_dir, shared_dir / "uninterrupted")
    for step, (a, b) in enumerate(zip(resumed, reference), start=1):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {step}: resumed {a} vs uninterrupted {b}"


@pytest.mark.slow  # ~3 min: every stage of the chain, one rank per node
def test_every_stage_runs_across_the_nodes(two_nodes, shared_dir):
    run_dir = shared_dir / "run"
    config = shared_dir / "run.yaml"
    text = RUN.format(run_dir=run_dir, steps=STEPS)
    for task in ("linear_probe", "knn", "finetune"):
        text = text.replace(f"{task}: {{enabled: false}}", f"{task}: {TASKS[task]}")
    config.write_text(text.replace("prep: {cpus_per_task: 2", "prep: {nodes: 2, cpus_per_task: 2"))
    submit = [sys.executable, "-m", "pipeline.cli", "submit", str(config), "--slurm", "--wait"]
    proc = subprocess.run(submit, env=two_nodes, cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    logs = {p.name.split("-")[0]: p.read_text() for p in (run_dir / "logs" / "slurm").glob("*.out")}
    assert proc.returncode == 0, proc.stderr[-3000:] + "".join(logs.values())[-4000:]
    for stage in ("pretrain", "finetune", "probe"):
        assert "2 ranks on 2 host(s): 0 node1, 1 node2" in logs[stage], stage
    assert "node[1-2]" in logs["prep"]  # the Ray cluster of the prep job spans both nodes
    assert (run_dir / "report.html").exists()


TASKS = {
    "linear_probe": "{epochs: 2, batch_size: 32, augment: false}",
    "knn": "{k: 5}",
    "finetune": "{epochs: 1, batch_size: 16}",
}


def _manifest_rows(split: Path) -> list[tuple]:
    from data_prep.shard_format import read_manifest

    return [(r.file, r.samples, r.bytes, r.sha256, r.first_input, r.last_input)
            for r in read_manifest(split)]  # fmt: skip


@pytest.mark.slow  # ~4 min: a prep on a Ray cluster of two nodes loses node2 halfway
def test_a_lost_ray_worker_node_leaves_the_manifest_of_an_undisturbed_prep(two_nodes, shared_dir):
    import time

    run_dir = shared_dir / "run"
    config = shared_dir / "run.yaml"
    text = RUN.format(run_dir=run_dir, steps=2)
    text = text.replace("train_per_class: 16", "train_per_class: 150")
    text = text.replace("samples_per_shard: 16", "samples_per_shard: 4")
    config.write_text(text.replace("prep: {cpus_per_task: 2", "prep: {nodes: 2, cpus_per_task: 2"))
    submit = [sys.executable, "-m", "pipeline.cli", "submit", str(config), "--slurm"]
    proc = subprocess.run(submit, env=two_nodes, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = json.loads((run_dir / ".maskmill" / "submissions.json").read_text())[-1]["jobs"]
    records = run_dir / "shards" / "train" / ".maskmill" / "work"
    deadline = time.monotonic() + 600
    while len(list(records.glob("*.json"))) < 40:  # of 150 shards
        assert time.monotonic() < deadline, "the prep did not get going"
        time.sleep(0.5)
    subprocess.run(["ip", "link", "set", "mmh2", "down"], check=True)
    subprocess.run([str(CLUSTER), "kill", "node2"], check=True)
    lost_at = len(list(records.glob("*.json")))
    log_path = next((run_dir / "logs" / "slurm").glob("prep-*.out"))
    while "prep      done" not in log_path.read_text():
        assert "prep      failed" not in log_path.read_text(), log_path.read_text()[-3000:]
        assert time.monotonic() < deadline + 600, log_path.read_text()[-3000:]
        time.sleep(1)
    subprocess.run(["scancel", *jobs], env=two_nodes, capture_output=True)
    subprocess.run(["ip", "link", "set", "mmh2", "up"], check=True)
    subprocess.run([str(CLUSTER), "up", "2"], check=True, capture_output=True, timeout=300)
    print(f"node2 lost after {lost_at} of 150 train shards; the prep finished on node1")

    # The same prep, undisturbed, on this machine.
    undisturbed = shared_dir / "undisturbed"
    local = [sys.executable, "-m", "pipeline.cli", "prep", "image", str(run_dir / "raw"),
             str(undisturbed), "shorter_side=36", "samples_per_shard=4", "num_cpus=2"]  # fmt: skip
    proc = subprocess.run(local, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "val"):
        assert _manifest_rows(run_dir / "shards" / split) == _manifest_rows(undisturbed / split)
