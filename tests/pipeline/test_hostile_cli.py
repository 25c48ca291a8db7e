"""What a user with a messy disk types, through the real ``maskmill`` command: every case ends
in one line and its exit code (2: config or usage, refused before any work), never a traceback.
A table, so a new case is one row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart_image.yaml")


def _files(tmp_path: Path) -> dict[str, str]:
    """The messy disk: the files the cases name, made in ``tmp_path``."""
    made = {
        "missing_key.yaml": "name: x\nrun_dir: ${nothere.x}\nprep: {source: /nonexistent}\n",
        "broken.yaml": "name: x\nprep: [unclosed\n",
        "list.yaml": "- a\n- b\n",
    }
    for name, text in made.items():
        (tmp_path / name).write_text(text)
    for split in ("train", "val"):  # an ImageNet layout of files that are not pictures
        cls = tmp_path / "not_images" / split / "n01440764"
        cls.mkdir(parents=True)
        (cls / "a.JPEG").write_text("a shopping list, not a picture")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.yaml").write_text("name: a\n")
    (tmp_path / "mine").mkdir()  # a folder of the user's own files
    (tmp_path / "mine" / "thesis.tex").write_text("\\documentclass{article}\n")
    train_only = tmp_path / "train_only" / "train" / "n01440764"
    train_only.mkdir(parents=True)
    (train_only / "a.JPEG").write_bytes(_tiny_jpeg())
    named = [*made, "folder", "mine", "train_only", "not_images"]
    return {k.removesuffix(".yaml"): str(tmp_path / k) for k in named}


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 80, 10)).save(buf, "JPEG")
    return buf.getvalue()


CASES = [
    # (argv with {placeholders}, exit code, what the one line must say)
    (["status", "{missing_key}"], 2, "run_dir: cannot resolve interpolation"),
    (["status", QUICKSTART, "name=${{oops}}"], 2, "(from the command line)"),
    (["status", "{folder}"], 2, "is a folder; name a run YAML in it (it holds a.yaml"),
    (
        ["status", QUICKSTART, "--pretrain.steps=50"],
        2,
        "config keys go without dashes: pretrain.steps=50",
    ),
    (["verify", "{tmp}/nowhere"], 2, "does not exist: name a run YAML or a prepared split folder"),
    (["status", "{tmp}/nowhere.yaml"], 2, "does not exist"),
    (["status", "{broken}"], 2, "is not valid YAML"),
    (["status", "{list}"], 2, "must hold a mapping at the top level"),
    (
        ["config", QUICKSTART, "pretrain.stepz=5"],
        2,
        "pretrain.stepz: unknown key; did you mean steps?",
    ),
    (["config", QUICKSTART, "pretrain.mask.ratio=1.5"], 2, "pretrain.mask.ratio"),
    (["config", QUICKSTART, "modality=smell"], 2, "modality: one of audio, image, text, video"),
    (["run", QUICKSTART, "launch.nodes=2"], 2, "launch.nodes: 1 on one machine"),
    (["prep", "smell", "{tmp}", "{tmp}/out"], 2, "invalid choice: 'smell'"),
    (["prep", "image", "{tmp}/nowhere", "{tmp}/out"], 2, "nowhere"),
    (["prep", "image", "{tmp}", "{tmp}/out", "shorter_sid=5"], 2, "shorter_sid: unknown key"),
    (["demo-data", "{tmp}/demo", "--modality", "smell"], 2, "--modality: one of"),
    (["verify", QUICKSTART, "run_dir={tmp}/norun"], 2, "nothing is prepared in"),
    (
        ["prep", "image", "{tmp}/not_images", "{tmp}/out", "num_cpus=1"],
        2,
        "prep train: 1 inputs gave no sample (1 not_an_image)",
    ),
    (
        ["prep", "image", "{tmp}/not_images", "{tmp}/out", "ray_address=127.0.0.1:9"],
        2,
        "prep.ray_address 127.0.0.1:9: nothing answers there",
    ),
    (["prep", "image"], 2, "the following arguments are required: source, out\n"),
    (
        ["prep", "image", "{not_images}", "{mine}"],
        2,
        "already holds files that maskmill did not write",
    ),
    (["prep", "image", "{not_images}", "{not_images}/out"], 2, "is inside source"),
    (
        ["demo-data", "{mine}"],
        2,
        "demo-data output {mine} already holds files that maskmill did not write",
    ),
    (
        ["prep", "image", "{train_only}", "{tmp}/out"],
        2,
        "to prepare train alone: splits=[train]",
    ),
]


@pytest.mark.parametrize(("argv", "code", "says"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_each_hostile_case_is_one_line_and_its_exit_code(argv, code, says, tmp_path):
    names = {**_files(tmp_path), "tmp": str(tmp_path)}
    args = [a.format(**names) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == code, out[-2000:]
    assert says.format(**names) in out, out[-2000:]
    assert "object at 0x" not in out  # no Python reprs in what a user reads


def test_env_says_what_a_bug_report_needs():
    import torch

    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "env"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("maskmill", "python", "deepspeed", "ray", "devices", "c++ compiler", "slurm"):
        assert f"\n{row} " in "\n" + proc.stdout, row
    assert torch.__version__ in proc.stdout
