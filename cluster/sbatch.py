"""Rendering sbatch scripts: pure functions from a :class:`JobSpec` to the script's text.

Three kinds of job:

* ``plain``: one task runs the stage (demo data, evaluation, report).
* ``training``: the stage's process starts one rank per Slurm task with ``srun``; rendezvous comes
  from the allocation (``MASTER_ADDR`` = first host of the node list, ``MASTER_PORT`` derived from
  the job id, so a requeued job gets the same one). The job asks for ``SIGUSR2`` before its time
  limit; the batch shell forwards it to every rank (``scancel --signal``), the ranks checkpoint
  at one common step and exit 75, and the script requeues the job, which resumes from there.
* ``ray``: starts a Ray head on the first node and one Ray worker on every other node (each a
  job step), waits for them, runs the stage against that cluster, and stops Ray. The cluster's
  token is made per job and lives only in the environment.

Values in ``#SBATCH`` lines are double-quoted with backslash escapes (how sbatch reads them);
values in the body go through :func:`shlex.quote`, so paths with spaces and quotes are safe.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from cluster.local import PREEMPTED_EXIT
from cluster.slurm_config import time_limit_seconds

KINDS = ("plain", "training", "ray")
_PLAIN = re.compile(r"^[A-Za-z0-9_.,:@%/+=-]+$")
# Ports a job listens on lie below Linux's ephemeral range (ip_local_port_range, 32768-60999 by
# default), where outgoing connections take their local ports: a port in that range can be held
# by any client on the node when the job starts. The rendezvous takes [10000, 20000) (less where
# the node's range starts lower), Ray [20000, 30000).
MASTER_PORT_LOW, MASTER_PORT_HIGH = 10000, 20000
RAY_PORT_BASE = 20000  # + 4 x (job id mod 2500): Ray's four ports per job
RAY_JOBS = 2500


@dataclass(frozen=True)
class JobSpec:
    name: str  # Slurm job name
    kind: str  # plain | training | ray
    command: list[str]  # argv that runs the stage in the batch step
    workdir: str
    log: str  # --output pattern (%j = job id)
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    time: str = "01:00:00"
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_seconds: int = 300
    setup: list[str] = field(default_factory=list)
    extra_sbatch: list[str] = field(default_factory=list)
    python: str = "python3"  # used by the ray kind's helpers
    master_port: int | None = None  # training: a fixed rendezvous port (launch.master_port)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


def sbatch_value(value: object) -> str:
    """A value for an ``#SBATCH`` line: as is when plainly safe, else double-quoted with ``"``
    and ``\\`` escaped (sbatch's own rules for these lines, not the shell's)."""
    text = str(value)
    if "\n" in text:
        raise ValueError(f"an #SBATCH value cannot hold a newline: {text!r}")
    if _PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sbatch_options(spec: JobSpec) -> list[tuple[str, object]]:
    """The job's ``(option, value)`` pairs, in the order they are written."""
    opts: list[tuple[str, object]] = [
        ("--job-name", spec.name),
        ("--chdir", spec.workdir),
        ("--output", spec.log),
        ("--open-mode", "append"),  # a requeued job appends to the same log
        ("--nodes", spec.nodes),
        ("--ntasks-per-node", spec.tasks_per_node),
        ("--cpus-per-task", spec.cpus_per_task),
        ("--time", spec.time),
    ]
    if spec.gpus_per_node:
        opts.append(("--gpus-per-node", spec.gpus_per_node))
    for key, value in (
        ("--mem", spec.mem),
        ("--partition", spec.partition),
        ("--account", spec.account),
        ("--qos", spec.qos),
    ):
        if value:
            opts.append((key, value))
    if spec.kind == "training":
        if spec.signal_seconds >= time_limit_seconds(spec.time):
            raise ValueError(
                f"signal_seconds {spec.signal_seconds} is not below the time limit {spec.time}: "
                "USR2 would arrive as the job starts and requeue it forever"
            )
        opts += [("--requeue", None), ("--signal", f"B:USR2@{spec.signal_seconds}")]
    if spec.kind == "ray":
        # A lost node must not end the allocation: Ray retries its tasks on the nodes left
        # (measured: without this Slurm cancelled the prep at the node failure, 2 shards short).
        opts.append(("--no-kill", None))
    for extra in spec.extra_sbatch:
        key, _, value = extra.partition("=")
        opts.append((key, value or None))
    return opts


def render(spec: JobSpec) -> str:
    """The whole sbatch script for ``spec``."""
    lines = ["#!/bin/bash", f"# maskmill {spec.kind} job: {spec.name}"]
    for key, value in sbatch_options(spec):
        lines.append(f"#SBATCH {key}" if value is None else f"#SBATCH {key}={sbatch_value(value)}")
    lines += ["", "set -euo pipefail", *spec.setup]
    lines.append(
        'echo "maskmill: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST,'
        ' restart ${SLURM_RESTART_COUNT:-0}, $(date -Is)"'
    )
    body = {"plain": _plain_body, "training": _training_body, "ray": _ray_body}[spec.kind]
    lines += body(spec)
    return "\n".join(lines) + "\n"


def master_port_lines(fixed: int | None) -> list[str]:
    """Shell lines that set MASTER_ADDR and MASTER_PORT: ``fixed`` when given, else a port below
    this node's ephemeral range (read here, on the first node, where rank 0 listens) drawn from
    the job id and the requeue count, so a requeued attempt does not meet the port its
    predecessor's ranks may still hold (TIME_WAIT, a straggler)."""
    lines = ['MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)']
    if fixed is not None:
        return [*lines, f"MASTER_PORT={fixed}  # launch.master_port"]
    return [
        *lines,
        "# The port: below the node's ephemeral range, moved by each requeue.",
        f"port_high={MASTER_PORT_HIGH}",
        "read -r ephemeral_low _ < /proc/sys/net/ipv4/ip_local_port_range || ephemeral_low=32768",
        '[ "$ephemeral_low" -lt "$port_high" ] && port_high=$ephemeral_low',
        f'if [ "$port_high" -le {MASTER_PORT_LOW + 100} ]; then',
        '  echo "maskmill: this node\'s ephemeral ports start at $ephemeral_low; set launch.master_port" >&2',
        "  exit 2",
        "fi",
        f"MASTER_PORT=$(( {MASTER_PORT_LOW} + (SLURM_JOB_ID * 7 + ${{SLURM_RESTART_COUNT:-0}} * 1009)"
        f" % (port_high - {MASTER_PORT_LOW}) ))",
    ]


def _plain_body(spec: JobSpec) -> list[str]:
    return [f"exec {shlex.join(spec.command)}"]


def _training_body(spec: JobSpec) -> list[str]:
    return [
        "",
        "# Rendezvous from the allocation: rank 0 runs on the first node, where this script runs.",
        *master_port_lines(spec.master_port),
        "export MASTER_ADDR MASTER_PORT",
        "",
        "# CPU binding: every rank and its loader workers get --cpus-per-task CPUs, bound to cores.",
        "# srun does not inherit --cpus-per-task on Slurm 22.05-23.02; the ranks' srun passes",
        "# --cpus-per-task=$SLURM_CPUS_PER_TASK --cpu-bind=cores, and 23.11+ reads these too.",
        'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK" SLURM_CPU_BIND=cores',
        "",
        "# Preemption: Slurm sends USR2 to this shell before the time limit (or `scancel",
        "# --signal=USR2 --batch`); pass it to every rank, which checkpoints and exits "
        f"{PREEMPTED_EXIT}.",
        "preempted=0",
        "interrupted=0",
        "on_usr2() {",
        "  preempted=1",
        "  interrupted=1",
        '  echo "maskmill: USR2 received; asking every rank to checkpoint"',
        '  scancel --signal=USR2 "$SLURM_JOB_ID" || true',
        "}",
        "trap on_usr2 USR2",
        "",
        f"{shlex.join(spec.command)} &",
        "child=$!",
        "while :; do",
        "  interrupted=0",
        '  wait "$child" && rc=0 || rc=$?',
        "  [[ $interrupted -eq 1 ]] || break  # a trap ended `wait` early: wait again",
        "done",
        "",
        f"if [[ $rc -eq {PREEMPTED_EXIT} ]] || [[ $preempted -eq 1 && $rc -ne 0 ]]; then",
        '  echo "maskmill: requeueing job $SLURM_JOB_ID; it resumes from the newest checkpoint"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        "exit $rc",
    ]


def _ray_body(spec: JobSpec) -> list[str]:
    py = shlex.quote(spec.python)
    cpus = "${SLURM_CPUS_PER_TASK:-1}"
    common = (
        f"--num-cpus={cpus} --block --disable-usage-stats"
        ' --dashboard-agent-listen-port="$((ray_port + 2))"'
        ' --metrics-export-port="$((ray_port + 3))"'
    )
    return [
        "",
        "# A Ray cluster inside the allocation: head on the first node, a worker on each other.",
        "# Token auth on; the token is made for this job and never written to disk.",
        'nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))',
        "head_node=${nodes[0]}",
        'head_ip=$(srun --overlap --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address'
        " | awk '{print $1}')",
        f"ray_port=$(({RAY_PORT_BASE} + SLURM_JOB_ID % {RAY_JOBS} * 4))",
        'ray_address="$head_ip:$ray_port"',
        "export RAY_AUTH_MODE=token",
        f"RAY_AUTH_TOKEN=$({py} -c 'import secrets; print(secrets.token_hex(32))')",
        "export RAY_AUTH_TOKEN",
        "ray_steps=()",
        'stop_ray() { kill "${ray_steps[@]}" 2>/dev/null || true; wait || true; }',
        "trap stop_ray EXIT",
        f'srun --overlap --nodes=1 --ntasks=1 -w "$head_node" {py} -m ray.scripts.scripts start'
        ' --head --node-ip-address="$head_ip" --port="$ray_port"'
        ' --ray-client-server-port="$((ray_port + 1))" --include-dashboard=false'
        f' --temp-dir="/tmp/ray-$SLURM_JOB_ID" {common} &',
        "ray_steps+=($!)",
        f'{py} -m cluster.ray_nodes wait "$ray_address" --nodes 1',
        "if ((${#nodes[@]} > 1)); then",
        '  srun --overlap --nodes="$((${#nodes[@]} - 1))" --ntasks-per-node=1 --exclude="$head_node"'
        f' {py} -m ray.scripts.scripts start --address="$ray_address" {common} &',
        "  ray_steps+=($!)",
        "fi",
        f'{py} -m cluster.ray_nodes wait "$ray_address" --nodes "${{#nodes[@]}}"',
        "",
        f'{shlex.join(spec.command)} "prep.ray_address=$ray_address"',
    ]
