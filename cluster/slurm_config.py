"""The ``slurm:`` section of a run YAML: what each stage asks the scheduler for.

The training world size is not here: it lives in ``launch`` (``nodes`` x ``ranks`` per node),
because it decides the global batch, the data order and the checkpoint layout, and a run must get
the same answer locally and on Slurm. The training jobs (pretrain, finetune, probe) ask for
``launch.nodes`` nodes with ``launch.ranks`` tasks each; the prep job asks for
``slurm.prep.nodes`` nodes (one Ray node each); every other stage runs as one task on one node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TRAINING_STAGES = ("pretrain", "finetune", "probe")  # every rank of `launch`, requeued on USR2
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]


def time_limit_seconds(text: str) -> int:
    """Seconds in a Slurm time limit: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``
    (sbatch(1) reads a bare number as minutes, and after a day count the first field as hours)."""
    if not _TIME.match(text):
        raise ValueError(f"not a Slurm time limit: {text!r}")
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, minutes, seconds = 0, parts[0], parts[1] if len(parts) == 2 else 0
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass
class SlurmStage:
    """Resources of one stage's job."""

    nodes: int | None = None  # prep only: Ray nodes (head + workers); others use launch/1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str | None = None  # e.g. "64G"; None: the partition's default
    time: str = "01:00:00"  # Slurm time limit: MM, HH:MM:SS or D-HH:MM:SS
    partition: str | None = None  # None: slurm.partition

    def problems(self):
        if self.nodes is not None and self.nodes < 1:
            yield ("nodes", f"an int >= 1, got {self.nodes}")
        if self.cpus_per_task < 1:
            yield ("cpus_per_task", f"an int >= 1, got {self.cpus_per_task}")
        if not _TIME.match(self.time):
            yield (
                "time",
                f"a Slurm time limit such as 30, 04:00:00 or 2-00:00:00, got {self.time!r}",
            )
        if self.mem is not None and not re.match(r"^\d+[KMGT]?$", self.mem):
            yield ("mem", f"a size such as 64G or 512000M, got {self.mem!r}")


@dataclass
class SlurmConfig:
    partition: str | None = None  # default partition of every stage
    account: str | None = None  # of every stage's job
    qos: str | None = None
    # Shell lines run before each stage, e.g. "module load cuda/12.4" or "source ~/venv/bin/activate".
    setup: list[str] = field(default_factory=list)
    python: str | None = None  # interpreter on the nodes; None: the one running `maskmill submit`
    signal_seconds: int = 300  # training jobs get SIGUSR2 this long before their time limit
    extra_sbatch: list[str] = field(default_factory=list)  # more options, e.g. "--constraint=a100"
    demo_data: SlurmStage = field(default_factory=SlurmStage)
    prep: SlurmStage = field(default_factory=lambda: SlurmStage(nodes=1, cpus_per_task=8))
    pretrain: SlurmStage = field(default_factory=lambda: SlurmStage(cpus_per_task=8))
    finetune: SlurmStage = field(default_factory=lambda: SlurmStage(cpus_per_task=8))
    probe: SlurmStage = field(default_factory=lambda: SlurmStage(cpus_per_task=8))
    report: SlurmStage = field(default_factory=SlurmStage)

    def problems(self):
        for name in ("demo_data", *TRAINING_STAGES, "report"):
            if getattr(self, name).nodes is not None:
                where = "launch.nodes" if name in TRAINING_STAGES else "nothing: one node"
                yield (f"{name}.nodes", f"unset (the node count comes from {where})")
        for name in TRAINING_STAGES:
            limit = getattr(self, name).time
            seconds = time_limit_seconds(limit) if _TIME.match(limit) else None
            if seconds is not None and not 0 < self.signal_seconds < seconds:
                yield (
                    "signal_seconds",
                    f"between 0 and {name}.time ({limit} = {seconds} s): USR2 "
                    f"that long before the limit would arrive as the job starts and requeue it "
                    f"forever, got {self.signal_seconds}",
                )
                break
        for option in self.extra_sbatch:
            if not option.startswith("--"):
                yield ("extra_sbatch", f"long options such as --constraint=a100, got {option!r}")

    def stage(self, name: str) -> SlurmStage:
        return getattr(self, name)
