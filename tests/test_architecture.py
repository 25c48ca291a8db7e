"""How the packages may depend on each other, and what shared modules may not name.

Data flows one way: data_prep -> shards -> training -> export -> evaluate; pipeline drives and
cluster launches. So no package imports one above it: data_prep imports none of ours; cluster
imports none of ours (and no torch: a login node renders and submits jobs without it); training
reads what data_prep wrote through the on-disk format alone (``data_prep.shard_format``, and
``data_prep.audio_features``: the one definition of the log-mel features whose statistics the
prep measures and training normalises with; ``data_prep.video_codecs``: the forms a video clip
member is stored in, written by the prep and decoded by the loader) and uses cluster's node helpers (``cluster.local``: a free port, the preemption exit status);
pipeline may import them all.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_prep", "training", "pipeline", "cluster")
ALLOWED = {
    "data_prep": ("data_prep",),
    "cluster": ("cluster",),
    "training": (
        "training",
        "data_prep.shard_format",
        "data_prep.audio_features",
        "data_prep.video_codecs",
        "cluster.local",
    ),
    "pipeline": PACKAGES,
}


def _imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_one_above_it(package):
    allowed = ALLOWED[package]
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(_imports(path))
        if not any(name == a or name.startswith(a + ".") for a in allowed)
    ]
    assert not bad, "\n".join(bad)


def test_cluster_and_a_slurm_dry_run_load_no_torch(tmp_path):
    script = f"""
import sys, io, contextlib
import cluster.local, cluster.sbatch, cluster.slurm, cluster.slurm_config, cluster.ray_jobs
from pipeline.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["submit", "{ROOT / "configs" / "quickstart_image.yaml"}", "run_dir={tmp_path}", "--slurm", "--dry-run"])
assert code == 0 and "#SBATCH" in out.getvalue(), out.getvalue()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "deepspeed"))
print("LOADED", loaded)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout, proc.stdout[-2000:]


# Image-only words, and the modules where they belong: a modality's own (its reader, its demo
# corpus, its encoder, training/modalities/, the shared task helpers; video's codecs, which
# store frames as JPEG), the record of the
# image-only layout before modalities (pipeline/legacy_image.py), and the export to HF's ViT,
# whose config names its input `image_size` whatever the picture is (an image, a spectrogram).
IMAGE_WORDS = re.compile(r"\bjpg\b|image_size|patchify|ImagePrepConfig|images_per_s")
OWN = re.compile(r"image|imagenet|modalit|/tasks/|demo|video|export_interop")


def test_shared_modules_name_no_modality():
    hits = [
        str(path.relative_to(ROOT))
        for package in ("data_prep", "training", "pipeline", "cluster")
        for path in sorted((ROOT / package).rglob("*.py"))
        if not OWN.search(str(path.relative_to(ROOT))) and IMAGE_WORDS.search(path.read_text())
    ]
    assert hits == []
