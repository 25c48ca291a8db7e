"""Dry-run sbatch scripts for a multi-node YAML: node and rank counts, preemption lines, quoting.

A second physical node cannot be had here, so the 2-node x 8-GPU and 4-node scripts are checked
as text (and by bash's parser); tests/cluster/test_local_slurm.py runs the same renderer's
scripts on the real one-node Slurm.
"""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from cluster.sbatch import JobSpec, render, sbatch_value
from pipeline.cli import main
from pipeline.schema import load_run_config
from pipeline.submit import render_slurm, slurm_jobs
from training.typed_config import ConfigError

ODD_DIR = '/scratch/it\'s a "run" $HOME'

MULTI_NODE = f"""
name: vitb
run_dir: '{ODD_DIR.replace("'", "''")}'
prep: {{source: /data/imagenet}}
pretrain: {{model: {{preset: base}}, batch_size: 128, epochs: 800}}
launch: {{nodes: 2, ranks: 8}}
slurm:
  partition: gpu
  account: proj-42
  setup: ["module load cuda/12.4", "source /opt/venv/bin/activate"]
  signal_seconds: 600
  prep: {{nodes: 4, cpus_per_task: 64, time: "04:00:00"}}
  pretrain: {{gpus_per_node: 8, cpus_per_task: 12, mem: 480G, time: "2-00:00:00"}}
  finetune: {{gpus_per_node: 8, cpus_per_task: 12, partition: gpu-short}}
  probe: {{gpus_per_node: 8, time: "04:00:00"}}
"""


@pytest.fixture
def multi_node(tmp_path):
    path = tmp_path / "vitb.yaml"
    path.write_text(MULTI_NODE)
    return load_run_config(path)


def sbatch_lines(script: str) -> dict[str, str | None]:
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH ") :].partition("=")
            out[key] = value or None
    return out


def test_training_job_asks_for_every_node_and_rank_and_preemption(multi_node):
    scripts = dict(render_slurm(multi_node, python="/opt/venv/bin/python"))
    assert list(scripts) == ["prep", "pretrain", "finetune", "probe", "report"]
    opts = sbatch_lines(scripts["pretrain"])
    assert opts["--nodes"] == "2" and opts["--ntasks-per-node"] == "8"
    assert opts["--cpus-per-task"] == "12" and opts["--gpus-per-node"] == "8"
    # srun does not inherit --cpus-per-task on Slurm 22.05-23.02: the binding is spelled out
    assert (
        'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK" SLURM_CPU_BIND=cores'
        in scripts["pretrain"]
    )
    assert opts["--gpus-per-node"] == "8" and opts["--cpus-per-task"] == "12"
    assert opts["--mem"] == "480G" and opts["--time"] == "2-00:00:00"
    assert opts["--partition"] == "gpu" and opts["--account"] == "proj-42"
    assert "--requeue" in opts and opts["--signal"] == "B:USR2@600"
    body = scripts["pretrain"]
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in body
    assert 'scancel --signal=USR2 "$SLURM_JOB_ID"' in body and "scontrol requeue" in body
    assert body.index("module load cuda/12.4") < body.index("-m pipeline.cli stage")


def test_prep_job_starts_ray_on_every_node(multi_node):
    script = dict(render_slurm(multi_node, python="/opt/venv/bin/python"))["prep"]
    opts = sbatch_lines(script)
    assert opts["--nodes"] == "4" and opts["--ntasks-per-node"] == "1"
    assert opts["--cpus-per-task"] == "64" and "--requeue" not in opts
    assert "start --head" in script and '--exclude="$head_node"' in script
    assert 'cluster.ray_nodes wait "$ray_address" --nodes "${#nodes[@]}"' in script
    assert "export RAY_AUTH_MODE=token" in script and "RAY_AUTH_TOKEN=$(" in script
    assert '"prep.ray_address=$ray_address"' in script


def test_finetune_and_probe_are_training_jobs_with_their_own_resources(multi_node):
    """Each evaluation stage is its own job on every rank of ``launch``, requeued on USR2 as
    pretraining is, with its partition and time from its own ``slurm:`` entry."""
    scripts = dict(render_slurm(multi_node, python="/opt/venv/bin/python"))
    for stage in ("finetune", "probe"):
        opts = sbatch_lines(scripts[stage])
        assert opts["--nodes"] == "2" and opts["--ntasks-per-node"] == "8"
        assert opts["--gpus-per-node"] == "8"
        assert "--requeue" in opts and opts["--signal"] == "B:USR2@600"
        assert "scontrol requeue" in scripts[stage]
    assert sbatch_lines(scripts["finetune"])["--partition"] == "gpu-short"
    assert sbatch_lines(scripts["probe"])["--time"] == "04:00:00"
    report = sbatch_lines(scripts["report"])
    assert report["--nodes"] == "1" and report["--ntasks-per-node"] == "1"
    assert "--signal" not in report


def test_paths_with_spaces_quotes_and_dollars_survive_both_parsers(multi_node):
    scripts = render_slurm(multi_node, python="/opt/my venv/bin/python")
    for name, script in scripts:
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        # sbatch's reading of the line: double quotes with backslash escapes
        raw = sbatch_lines(script)["--output"]
        assert raw.startswith('"') and raw.endswith('"')
        unquoted = re.sub(r"\\(.)", r"\1", raw[1:-1])
        assert unquoted == f"{ODD_DIR}/logs/slurm/{name}-%j.out"
        # the shell's reading of the command: the argv comes back exactly
        line = next(x for x in script.splitlines() if "-m pipeline.cli stage" in x)
        words = shlex.split(line.split(" &")[0].removeprefix("exec "), posix=True)
        assert words[0] == "/opt/my venv/bin/python"
        assert words[4] == f"{ODD_DIR}/submit/run.yaml" and words[5] == name
        echoed = subprocess.run(
            ["bash", "-c", f"printf '%s\\n' {shlex.join(words[:6])}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert echoed == words[:6]


def test_sbatch_value_quotes_only_what_needs_it():
    assert sbatch_value(8) == "8"
    assert sbatch_value("B:USR2@300") == "B:USR2@300"
    assert sbatch_value('a "b"\\c') == '"a \\"b\\"\\\\c"'
    with pytest.raises(ValueError, match="newline"):
        sbatch_value("a\nb")


def test_job_spec_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        JobSpec(name="x", kind="mpi", command=["true"], workdir="/", log="/x")
    assert render(JobSpec(name="x", kind="plain", command=["true"], workdir="/", log="/x"))


def test_bad_slurm_settings_fail_before_anything_is_written(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\nprep: {source: /data}\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path, ["slurm.pretrain.nodes=2", "slurm.prep.time=tomorrow"])
    text = str(err.value)
    assert "slurm.pretrain.nodes: unset (the node count comes from launch.nodes)" in text
    assert "slurm.prep.time: a Slurm time limit" in text
    assert main(["submit", str(path), "slurm.prep.cpus_per_task=0", "--slurm", "--dry-run"]) == 2
    assert main(["run", str(path), "launch.nodes=2"]) == 2  # more nodes need a cluster
    assert not (tmp_path / "runs").exists() and not Path("runs/x").exists()


def test_a_usr2_lead_as_long_as_the_time_limit_is_refused(tmp_path):
    """Before: ``--time=5 --signal=B:USR2@300`` was rendered; Slurm sent USR2 as the job began,
    the job checkpointed and requeued itself, and so on without end."""
    from cluster.slurm_config import time_limit_seconds

    assert [time_limit_seconds(t) for t in ("5", "5:30", "01:00:00", "2-00:00:00", "1-2:30")] == [
        300, 330, 3600, 172800, 95400,
    ]  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text("name: x\nprep: {source: /data}\n")
    with pytest.raises(ConfigError, match=r"slurm\.signal_seconds: between 0 and pretrain\.time"):
        load_run_config(path, ["slurm.pretrain.time=5"])
    spec = JobSpec(name="x", kind="training", command=["true"], workdir="/", log="/x", time="5")
    with pytest.raises(ValueError, match="requeue it forever"):
        render(spec)


def test_dry_run_prints_every_script_and_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(MULTI_NODE)
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch reachable: a submit would fail
    run_dir = tmp_path / 'it\'s a "run" $HOME'  # the scripts are written there, quoted
    assert main(["submit", str(path), "--slurm", "--dry-run", f"run_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 5  # prep, pretrain, finetune, probe, report
    assert f"# ---- pretrain: {run_dir}/submit/01-pretrain.sbatch ----" in out
    assert len(list((run_dir / "submit").glob("*.sbatch"))) == 5  # the chain can be pasted


def test_world_size_comes_from_launch(multi_node, tmp_path):
    jobs = dict(slurm_jobs(multi_node, tmp_path, "python"))
    assert (jobs["pretrain"].nodes, jobs["pretrain"].tasks_per_node) == (2, 8)
    assert multi_node.launch.world_size == 16


def _master_port(script: str, ephemeral: str, job_id: int, restarts: int, tmp_path) -> str:
    """What the training script's rendezvous lines export, run in bash with a node whose
    ip_local_port_range reads ``ephemeral``."""
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text(ephemeral + "\n")
    start = script.index("MASTER_ADDR=")
    end = script.index("export MASTER_ADDR MASTER_PORT")
    lines = script[start:end].replace("/proc/sys/net/ipv4/ip_local_port_range", str(ranges))
    lines = lines.replace('$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)', "node1")
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": str(job_id)}
    if restarts:
        env["SLURM_RESTART_COUNT"] = str(restarts)
    proc = subprocess.run(["bash", "-c", lines + 'echo "$MASTER_PORT"'], env=env,
                          capture_output=True, text=True)  # fmt: skip
    return proc.stdout.strip() or proc.stderr.strip()


def _training_script(master_port=None) -> str:
    spec = JobSpec(name="j", kind="training", command=["true"], workdir="/w", log="/w/%j.out",
                   master_port=master_port)  # fmt: skip
    return render(spec)


@pytest.mark.parametrize("job_id", [1, 12345, 19999, 987654])
@pytest.mark.parametrize("ephemeral", ["32768\t60999", "15000\t60999"])
def test_the_rendezvous_port_lies_below_the_nodes_ephemeral_range(job_id, ephemeral, tmp_path):
    low = int(ephemeral.split()[0])
    ports = {
        int(_master_port(_training_script(), ephemeral, job_id, restarts, tmp_path))
        for restarts in range(4)
    }
    assert all(10000 <= p < min(low, 20000) for p in ports), ports
    assert len(ports) == 4  # each requeue (SLURM_RESTART_COUNT) gets another port


def test_a_node_without_room_below_its_ephemeral_range_asks_for_launch_master_port(tmp_path):
    said = _master_port(_training_script(), "10050\t60999", 7, 0, tmp_path)
    assert "set launch.master_port" in said
    assert (
        _master_port(_training_script(master_port=29500), "10050\t60999", 7, 0, tmp_path) == "29500"
    )


def test_the_real_nodes_range_gives_a_port_outside_it(tmp_path):
    real = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().strip()
    port = int(_master_port(_training_script(), real, 424242, 0, tmp_path))
    assert port < int(real.split()[0])
