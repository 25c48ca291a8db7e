"""Running a per-rank entry point: the ``deepspeed`` launcher, ``srun`` inside a Slurm job, or
one process.

The child's output goes both to the console (progress bars intact: bytes are copied as they
come, carriage returns included) and to a log file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from training.distributed import free_port


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


def srun_command(module: str, args: list[str]) -> list[str]:
    """One rank per task of the enclosing Slurm allocation; a rank that fails stops the others."""
    return ["srun", "--kill-on-bad-exit=1", sys.executable, "-m", module, *args]


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
