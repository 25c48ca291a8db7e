"""The shipped quickstart, end to end, as `make demo` runs it (minutes: opt in with -m slow)."""

import subprocess
import sys
from pathlib import Path

import pytest

from training.metrics import read_eval_metrics

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart_image.yaml"


@pytest.mark.slow
def test_quickstart_pretraining_beats_random_init(tmp_path):
    run_dir = tmp_path / "quickstart"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(QUICKSTART), f"run_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run_dir / "report.html").exists()
    metrics = read_eval_metrics(run_dir / "evaluate")
    probe = metrics["linear_probe"]
    assert probe["pretrained"]["top1"] > probe["random_init"]["top1"], probe
