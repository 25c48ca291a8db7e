"""One word adds a modality: a throwaway one (1-D signals) from a temporary package, outside
this tree, goes through the modality contract test, the prep job and a whole run.

The package (``tests/plugin_modality``, copied to a temporary folder) holds only the new
modality's files, laid out like ours: ``data_prep/signal/`` (reader, demo) and
``training/modalities/signal/`` (bundle, ops); its ``data_prep/`` and ``training/modalities/``
folders join our packages of those names (``data_prep/__init__.py``). Nothing of this tree is
edited; the count of files is what docs/architecture.md states.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugin_modality"
RUN_YAML = """
name: signal_run
modality: signal
run_dir: {run_dir}
demo_data: {{out: "${{run_dir}}/raw"}}
prep: {{source: "${{demo_data.out}}", num_cpus: 1}}
pretrain:
  model: {{preset: nano, decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}}
  batch_size: 16
  steps: 6
  optim: {{lr: 1.0e-3, warmup_steps: 1}}
  precision: fp32
  loader: {{workers: 0}}
evaluate:
  batch_size: 16
  loader: {{workers: 0}}
  tasks:
    linear_probe: {{epochs: 2, batch_size: 16, warmup_epochs: 0}}
    knn: {{k: 5}}
launch: {{ranks: 1, launcher: python}}
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> dict:
    """The throwaway modality as a temporary package, and the environment that finds it."""
    where = tmp_path_factory.mktemp("plugin") / "pkg"
    shutil.copytree(PLUGIN, where, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(where), str(ROOT)])}
    return {"dir": where, "env": env}


def _run(args, plugin, cwd, timeout=600):
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=plugin["env"], capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return proc


def test_the_new_modality_needs_only_its_own_files(plugin):
    files = sorted(str(p.relative_to(plugin["dir"])) for p in plugin["dir"].rglob("*.py"))
    own = [f for f in files if "/signal/" in f and not f.endswith("__init__.py")]
    assert own == [
        "data_prep/signal/demo.py",
        "data_prep/signal/reader.py",
        "training/modalities/signal/bundle.py",
        "training/modalities/signal/ops.py",
    ]
    assert len(files) == 4 + 2 + 1  # + the two rooms' empty __init__.py, the test fixture


def test_it_is_listed_and_passes_the_modality_contract_test(plugin, tmp_path):
    listed = _run(["-m", "pipeline.cli", "modalities"], plugin, tmp_path)
    assert listed.returncode == 0 and "\nsignal\n" in listed.stdout, listed.stderr[-2000:]
    contract = ROOT / "tests" / "training" / "modalities" / "test_contract.py"
    proc = _run(
        ["-m", "pytest", "-q", "-p", "signal_fixtures", "-p", "no:cacheprovider", "-k", "signal",
         "--rootdir", str(ROOT), str(contract)],
        plugin, ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


@pytest.mark.slow  # ~30 s: the plugin's whole pipeline; its contract test above runs by default
def test_a_whole_run_prepares_pretrains_probes_and_reports(plugin, tmp_path):
    run_dir = tmp_path / "run"
    config = tmp_path / "signal.yaml"
    config.write_text(RUN_YAML.format(run_dir=run_dir))
    proc = _run(["-m", "pipeline.cli", "run", str(config)], plugin, tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "shards" / "train" / ".maskmill" / "_SUCCESS").exists()
    assert (run_dir / "pretrain" / "export" / "model.json").exists()
    assert "signal" in (run_dir / "report.html").read_text()
