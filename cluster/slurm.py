"""Talking to Slurm: ``sbatch`` a chain of scripts, read job states from ``sacct``/``squeue``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class SlurmError(RuntimeError):
    pass


@dataclass(frozen=True)
class JobState:
    job_id: int
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, REQUEUED, ... (Slurm's words)
    exit_code: str = ""
    elapsed: str = ""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"`{name}` not found: submit from a Slurm login node")
    return path


def submit(script: Path, after: Sequence[int | str] = ()) -> int:
    """``sbatch`` one script, to start after every job of ``after`` succeeds; returns its id.

    A job whose dependency can never be met (the earlier job failed) is cancelled by Slurm
    instead of waiting forever.
    """
    cmd = sbatch_command(script, after, sbatch=_tool("sbatch"))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {script} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return int(proc.stdout.strip().split(";")[0])


def sbatch_command(
    script: Path, after: Sequence[int | str] = (), sbatch: str = "sbatch"
) -> list[str]:
    """The ``sbatch`` argv that submits ``script`` to start after every job of ``after``
    succeeds."""
    cmd = [sbatch, "--parsable"]
    if after:
        cmd += [f"--dependency=afterok:{':'.join(map(str, after))}", "--kill-on-invalid-dep=yes"]
    return [*cmd, str(script)]


def submit_graph(scripts: Sequence[Path], needs: Sequence[Sequence[int]]) -> list[int]:
    """Submit scripts in order, each to start once the earlier ones it ``needs`` (indices)
    succeeded; returns the job ids."""
    ids: list[int] = []
    for script, wanted in zip(scripts, needs):
        ids.append(submit(script, after=[ids[i] for i in wanted]))
    return ids


def job_states(job_ids: Sequence[int]) -> dict[int, JobState]:
    """Each job's state: ``sacct`` where accounting runs, else ``squeue`` (which forgets jobs
    shortly after they end)."""
    if not job_ids:
        return {}
    ids = ",".join(str(i) for i in job_ids)
    if shutil.which("sacct"):
        proc = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", ids, "-o", "JobID,State,ExitCode,Elapsed"],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return _parse(proc.stdout)
    proc = subprocess.run(
        # every state: by default squeue lists pending and running jobs only
        [_tool("squeue"), "-h", "-t", "all", "-j", ids, "-o", "%i|%T||%M"],
        capture_output=True,
        text=True,
    )
    return _parse(proc.stdout) if proc.returncode == 0 else {}


# Why a pending job waits, when waiting cannot help: it asks for more than its partition or QOS
# will ever give (Slurm's reason codes).
NEVER_STARTS = (
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxNodePerJobLimit",
    "QOSMaxWallDurationPerJobLimit",
    "AssocMaxCpuPerJobLimit",
    "AssocMaxNodePerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
)


def stuck_jobs(job_ids: Sequence[int]) -> dict[int, str]:
    """The pending jobs among ``job_ids`` that can never start, with Slurm's reason."""
    if not job_ids:
        return {}
    ids = ",".join(str(i) for i in job_ids)
    proc = subprocess.run([_tool("squeue"), "-h", "-t", "PD", "-j", ids, "-o", "%i|%r"],
                          capture_output=True, text=True)  # fmt: skip
    found = (line.split("|", 1) for line in proc.stdout.split("\n") if "|" in line)
    return {
        int(j): r.strip() for j, r in found if j.strip().isdigit() and r.strip() in NEVER_STARTS
    }


def _parse(text: str) -> dict[int, JobState]:
    states = {}
    for line in text.strip().splitlines():
        job, state, exit_code, elapsed = ([*line.split("|"), "", "", "", ""])[:4]
        if job.isdigit():
            states[int(job)] = JobState(int(job), state.split()[0], exit_code, elapsed)
    return states
