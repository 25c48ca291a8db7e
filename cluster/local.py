"""Running a per-rank entry point: the ``deepspeed`` launcher, ``srun`` inside a Slurm job, or
one process; and what launchers need on a node (a free port, cleaning up after killed ranks).

Torch-free on purpose, like all of ``cluster``: a login node renders and submits jobs without it.

The child's output goes both to the console (progress bars intact: bytes are copied as they
come, carriage returns included) and to a log file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

# A training job that stopped on request after saving a checkpoint exits with this status
# (sysexits' EX_TEMPFAIL); the Slurm script requeues it and the pipeline reports "preempted".
PREEMPTED_EXIT = os.EX_TEMPFAIL


def deepspeed_command(
    module: str, args: list[str], ranks: int, master_port: int | None
) -> list[str]:
    """``deepspeed --num_gpus N --master_port P --module MODULE ARGS`` with this interpreter."""
    return [
        sys.executable, "-m", "deepspeed.launcher.runner",
        "--num_gpus", str(ranks),
        "--master_port", str(master_port or free_port()),
        "--module", module,
        *args,
    ]  # fmt: skip


def srun_command(module: str, args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """One rank per task of the enclosing Slurm allocation; a rank that fails stops the others.

    The job's CPUs per task are passed on explicitly: srun does not inherit ``--cpus-per-task``
    on Slurm 22.05-23.02 (23.11 reads ``SRUN_CPUS_PER_TASK``), and with CPU binding each rank
    would then be bound to one CPU, shared with all its loader workers."""
    env = os.environ if env is None else env
    binding = []
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        binding = [f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}", "--cpu-bind=cores"]
    return ["srun", "--kill-on-bad-exit=1", *binding, sys.executable, "-m", module, *args]


def python_command(module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_logged(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Run ``cmd``, copying its output to the console and ``log_path``; returns its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env
        )
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        except KeyboardInterrupt:
            proc.terminate()
            raise
        return proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments(port: int | str, rank: int | str = "*") -> list[Path]:
    """DeepSpeed's CPU all-reduce segments in ``/dev/shm`` for the process group on ``port``
    (named ``deepspeed_allreduce_buffer_<uid>_<master addr>_<port>_<rank>``)."""
    pattern = f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}"
    return sorted(Path("/dev/shm").glob(pattern))


def remove_shm_segments(port: int | str | None, rank: int | str = "*") -> int:
    """Unlink DeepSpeed's CPU all-reduce segments for ``port``; returns how many were removed.

    DeepSpeed's CPU communication op maps a 64 MiB ``/dev/shm`` segment per rank and never
    unlinks it. ``/dev/shm`` is RAM, so every run would leak 64 MiB per rank until the machine
    reboots (200 test and benchmark runs held 12 GiB here). Unlinking while peers still have
    the segment mapped is safe: the memory goes when the last mapping does."""
    removed = 0
    for path in shm_segments(port, rank) if port else []:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:  # a peer rank got there first
            pass
    return removed
