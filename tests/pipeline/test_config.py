"""A bad run YAML fails before any work starts, naming the key and what was expected."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.schema import load_run_config
from training.typed_config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

MINIMAL = """
name: t
run_dir: {run_dir}
prep: {{source: /data/imagenet}}
pretrain: {{model: {{preset: nano}}, steps: 10}}
"""


def _write(tmp_path, text=MINIMAL):
    path = tmp_path / "run.yaml"
    path.write_text(text.format(run_dir=tmp_path / "run"))
    return path


def test_defaults_wire_the_stages_together(tmp_path):
    cfg = load_run_config(_write(tmp_path), ["seed=5"])
    run = tmp_path / "run"
    assert cfg.pretrain.train_shards == f"{run}/shards/train"
    assert cfg.evaluate.export_dir == f"{run}/pretrain/export"
    assert cfg.evaluate.val_shards == f"{run}/shards/val"
    assert cfg.pretrain.seed == cfg.prep.seed == cfg.evaluate.seed == 5


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("pretrain.mask.ratio=1.0", "pretrain.mask.ratio", "a float in [0, 0.95]"),
        (
            "pretrain.mask.ration=0.5",
            "pretrain.mask.ration",
            "unknown key; expected one of: kind, ratio",
        ),
        ("pretrain.steps=many", "pretrain.steps", "wrong type"),
        ("pretrain.model.preset=gigantic", "pretrain.model.preset", "one of nano, tiny"),
        (
            "pretrain.input.image_size=100",
            "pretrain.input.image_size",
            "a multiple of patch_size 16",
        ),
        (
            "pretrain.input.sise=100",
            "pretrain.input.sise",
            "unknown key; expected one of: image_size",
        ),
        ("pretrain.mask.kind=tube", "pretrain.mask.kind", "one of random for image"),
        ("modality=smell", "modality", "one of image"),
        (
            "pretrain.model.image_size=64",
            "pretrain.model.image_size",
            "moved to pretrain.input.image_size",
        ),
        ("evaluate.tasks.knn.k=0", "evaluate.tasks.knn.k", "an int >= 1"),
        ("pretrain.precision=fp16", "pretrain.precision", "one of fp32, bf16"),
        ("prep.jpeg_quality=0", "prep.jpeg_quality", "[1, 100]"),
        ("launch.ranks=0", "launch.ranks", ">= 1"),
        ("pretrain.epochs=3", "pretrain.steps", "exactly one of steps or epochs"),
    ],
)
def test_bad_values_name_the_key_and_the_expectation(tmp_path, override, key, expected):
    with pytest.raises(ConfigError) as err:
        load_run_config(_write(tmp_path), [override])
    assert any(k == key and expected in what for k, what in err.value.problems), str(err.value)


def test_missing_mandatory_source_is_named(tmp_path):
    path = _write(tmp_path, "name: t\nrun_dir: {run_dir}\npretrain: {{steps: 1}}\n")
    with pytest.raises(ConfigError, match=r"prep\.source"):
        load_run_config(path)


def test_cli_rejects_a_bad_config_before_any_work(tmp_path):
    path = _write(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(path), "pretrain.mask.ratio=1.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "pretrain.mask.ratio: a float in [0, 0.95]" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_shipped_configs_validate():
    load_run_config(CONFIGS / "quickstart_image.yaml")
    cfg = load_run_config(CONFIGS / "imagenet_mae_vitb.yaml", ["prep.source=/data/imagenet"])
    model, seen = cfg.pretrain.model.resolved(), cfg.pretrain.input
    assert (model.embed_dim, model.depth, seen.patch_size, seen.image_size) == (768, 12, 16, 224)
    assert (model.decoder_depth, model.decoder_embed_dim) == (8, 512)
    assert cfg.pretrain.batch_size * cfg.pretrain.grad_accum * cfg.launch.ranks == 4096
    assert cfg.pretrain.mask.ratio == 0.75 and cfg.pretrain.epochs == 800


def test_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for command in ("run", "status", "prep", "demo-data"):
        assert command in out
