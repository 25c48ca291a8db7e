"""What a user with a messy disk types, through the real ``maskmill`` command: every case ends
in one line and its exit code (2: config or usage, refused before any work), never a traceback.
A table, so a new case is one row."""

from __future__ import annotations

import os
import shutil
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
    tables = {  # video and image label tables as users' tools leave them
        "kin_no_label/train.csv": b"name,youtube_id,time_start,time_end\nx,abc,0,10\n",
        "kin_bad_time/train.csv": b"label,youtube_id,time_start,time_end\nx,abc,zero,10\n",
        # a spreadsheet's BOM and its own name for the label column: read; its clip is missing
        "kin_bom/train.csv": b"\xef\xbb\xbfclass,youtube_id,time_start,time_end\nx,abc,0,10\n",
        "ssv2_bad/something-something-v2-labels.json": b"{not json",
        "ssv2_bad/something-something-v2-train.json": b'[{"id": 1, "template": "x"}]',
        "ssv2_missing/something-something-v2-labels.json": b"{}",
        "docx/report.docx": b"PK\x03\x04",
        "a_file": b"not a folder",
    }
    for rel, data in tables.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    for name, csv in (("csv_latin1", b"ImageId,PredictionString\n\xe9t\xe9,n01440764 1\n"),
                      ("csv_columns", b"image,label\nv1,n01440764\n")):  # fmt: skip
        shutil.copytree(train_only.parent.parent, tmp_path / name)
        (tmp_path / name / "val").mkdir()
        (tmp_path / name / "val" / "v1.JPEG").write_bytes(_tiny_jpeg())
        (tmp_path / name / "LOC_val_solution.csv").write_bytes(csv)
    named = [*made, "folder", "mine", "train_only", "not_images", "csv_latin1", "csv_columns",
             *{rel.split("/")[0] for rel in tables}]  # fmt: skip
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
    # a source of the wrong kind, or of none the layout reads: every file named by reason
    (["prep", "text", "{docx}", "{tmp}/out"], 2, "ignored 1 file: 1 × .docx (not a text format"),
    (["prep", "audio", "{tmp}/nowhere", "{tmp}/out"], 2, "source folder {tmp}/nowhere does not"),
    (["prep", "audio", "{not_images}", "{tmp}/out"], 2, "holds neither LibriLight"),
    (["prep", "video", "{docx}", "{tmp}/out"], 2, "holds no train.csv (Kinetics)"),
    # label tables as they come: renamed columns, bad values, BOMs, other encodings, bad JSON
    (
        ["prep", "video", "{kin_no_label}", "{tmp}/out"],
        2,
        "no label column (looked for label, class",
    ),
    (["prep", "video", "{kin_bad_time}", "{tmp}/out"], 2, "train.csv:2: time_start and time_end"),
    (["prep", "video", "{kin_bom}", "{tmp}/out", "splits=[train]"], 2, "(1 missing_file)"),
    (
        ["prep", "video", "{ssv2_bad}", "{tmp}/out", "splits=[train]"],
        2,
        "labels.json: not a JSON table",
    ),
    (["prep", "video", "{ssv2_missing}", "{tmp}/out"], 2, "v2-train.json is missing"),
    (["prep", "image", "{csv_latin1}", "{tmp}/out"], 2, "LOC_val_solution.csv: not UTF-8 text"),
    (["prep", "image", "{csv_columns}", "{tmp}/out"], 2, "no ImageId or PredictionString column"),
    # values of the wrong type or range, on the command line
    (["status", QUICKSTART, "pretrain.steps=abc"], 2, "pretrain.steps: wrong type"),
    (["config", QUICKSTART, "launch.ranks=0"], 2, "launch.ranks: an int >= 1, got 0"),
    (["prep", "text", "{docx}", "{tmp}/out", "vocab_size=5"], 2, "vocab_size: an int >= 100"),
    (["prep", "image", "{train_only}", "{tmp}/o", "samples_per_shard=0"], 2, "samples_per_shard"),
    # outputs that are files, commands and choices that do not exist
    (["demo-data", "{a_file}"], 2, "demo-data output {a_file} is a file"),
    (["prep", "image", "{train_only}", "{a_file}", "splits=[train]"], 2, "{a_file} is a file"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    (["export", QUICKSTART, "--format", "onnx"], 2, "invalid choice: 'onnx'"),
    (["stage", QUICKSTART, "nostage"], 2, "STAGE: stages from demo_data"),
    *(  # every reader reads a store: with no credentials here, one line before any work
        (
            ["prep", modality, "s3://bucket/raw", "{tmp}/out"],
            2,
            "prep.source s3://bucket/raw cannot be listed: NoCredentialsError",
        )
        for modality in ("image", "audio", "video")
    ),
]


@pytest.mark.parametrize(("argv", "code", "says"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_each_hostile_case_is_one_line_and_its_exit_code(argv, code, says, tmp_path):
    names = {**_files(tmp_path), "tmp": str(tmp_path)}
    args = [a.format(**names) for a in argv]
    # no store credentials or endpoint (another test's S3 server may have set them): a user's
    # first try at a bucket
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env)  # fmt: skip
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
