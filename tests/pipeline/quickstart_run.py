"""Running a shipped quickstart as a user does (``maskmill run CONFIG``, a fresh run_dir) for the
opt-in slow tests of each modality."""

import json
import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def quickstart_metrics(config: str, run_dir: Path, timeout: int = 2400) -> dict:
    """``metrics.json`` of ``configs/<config>`` run end to end in ``run_dir``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(CONFIGS / config), f"run_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run_dir / "report.html").exists()
    return json.loads((run_dir / "evaluate" / "metrics.json").read_text())
