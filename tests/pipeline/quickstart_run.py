"""Running pipelines for the end-to-end tests of each modality: a tiny run from a YAML template,
in process, and a shipped quickstart as a user does (``maskmill run CONFIG``, a fresh run_dir)
for the opt-in slow tests."""

import subprocess
import sys
from pathlib import Path

from training.metrics import read_eval_metrics

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
    return read_eval_metrics(run_dir / "evaluate")


def tiny_run(root: Path, template: str):
    """(config, run dir) of the run YAML ``template`` (``{run_dir}`` filled in) run end to end."""
    from pipeline.runner import run_pipeline
    from pipeline.schema import load_run_config

    path = root / "run.yaml"
    path.write_text(template.format(run_dir=root / "run"))
    cfg = load_run_config(path)
    run_pipeline(cfg)
    return cfg, root / "run"
