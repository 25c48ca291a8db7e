"""A real one-node Slurm (munge, slurmdbd, slurmctld, slurmd), started once per test session by
the project's own cluster/local_slurm.sh, exactly as CI and a developer's machine start it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "local_slurm.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    if os.geteuid() != 0:
        pytest.skip("starting the Slurm daemons needs root (CI runs as root)")
    proc = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"local_slurm.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
