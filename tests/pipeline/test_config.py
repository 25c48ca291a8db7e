"""A bad run YAML fails before any work starts, naming the key and what was expected."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.schema import load_run_config
from training.config import pretrain_split
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
        ("pretrain.mask.ratio=1.0", "pretrain.mask.ratio", "a float in [0, 0.98]"),
        (
            "pretrain.mask.ration=0.5",
            "pretrain.mask.ration",
            "unknown key; did you mean ratio?; expected one of: kind, ratio",
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
            "expected one of: image_size",
        ),
        (
            "pretrain.mask.kind=tube",
            "pretrain.mask.kind",
            "one of random, block, noise_lowpass, noise_highpass, noise_bandpass, hpm for image",
        ),
        ("modality=smell", "modality", "one of audio, image"),
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
    assert "pretrain.mask.ratio: a float in [0, 0.98]" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_shipped_configs_validate():
    load_run_config(CONFIGS / "quickstart_image.yaml")
    cfg = load_run_config(CONFIGS / "imagenet_mae_vitb.yaml", ["prep.source=/data/imagenet"])
    model, seen = cfg.pretrain.model.resolved(), cfg.pretrain.input
    assert (model.embed_dim, model.depth, seen.patch_size, seen.image_size) == (768, 12, 16, 224)
    assert (model.decoder_depth, model.decoder_embed_dim) == (8, 512)
    split = pretrain_split(cfg.pretrain, cfg.launch.world_size)
    assert (split.global_batch, split.micro, split.accum) == (4096, 128, 4)  # MAE's, on 8 GPUs
    assert cfg.pretrain.mask.ratio == 0.75 and cfg.pretrain.epochs == 800


def test_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for command in ("run", "status", "prep", "demo-data"):
        assert command in out


def _cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_typo_on_the_command_line_is_blamed_on_the_command_line(tmp_path):
    path = _write(tmp_path)
    err = _cli("status", path, "pretrain.stepz=5").stderr
    assert "invalid configuration (from the command line):" in err
    assert "pretrain.stepz: unknown key" in err and str(path) not in err
    (tmp_path / "typo.yaml").write_text(MINIMAL.format(run_dir=tmp_path) + "seeed: 1\n")
    err = _cli("status", tmp_path / "typo.yaml", "seed=2").stderr
    assert f"invalid configuration (in {tmp_path / 'typo.yaml'}):" in err and "seeed" in err
    # A bad value is blamed on the file that set it, not on an override of its section.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        MINIMAL.format(run_dir=tmp_path).replace("steps: 10", "steps: 10, mask: {ratio: 1.5}")
    )
    err = _cli("status", bad, "pretrain.steps=5").stderr
    assert f"(in {bad}):\n  pretrain.mask.ratio: a float in [0, 0.98]" in err


def test_a_missing_name_is_reported_as_name(tmp_path):
    path = _write(tmp_path, "prep: {{source: /data}}\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert err.value.problems == [("name", "required: no value is set")]


def test_a_yaml_syntax_error_is_one_line_naming_the_place(tmp_path):
    path = _write(tmp_path, "name: t\nprep: {{source: [1,\n")
    proc = _cli("status", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not valid YAML" in proc.stderr and "line 3" in proc.stderr


def test_several_yaml_files_merge_in_order_and_overrides_go_anywhere(tmp_path):
    base = _write(tmp_path)
    site = tmp_path / "site.yaml"
    site.write_text("seed: 3\npretrain: {steps: 20}\nlaunch: {ranks: 4}\n")
    cfg = load_run_config([base, site], ["launch.ranks=1"])
    assert (cfg.seed, cfg.pretrain.steps, cfg.launch.ranks) == (3, 20, 1)
    # On the command line: overrides between the files and after the options, applied last.
    from pipeline.cli import _run_config, parse_args

    args = parse_args(
        ["run", str(base), "seed=9", str(site), "--force", "report", "launch.ranks=1"]
    )
    assert args.force == ["report"]
    cfg = _run_config(args.config)
    assert (cfg.seed, cfg.pretrain.steps, cfg.launch.ranks) == (9, 20, 1)
    assert _cli("status", base, "--bogus").returncode == 2  # not an override: a usage error


def test_submit_dry_run_prints_the_jobs_and_writes_the_scripts_it_chains(tmp_path):
    """Before: ~240 lines with no summary, a chain naming scripts it never wrote, and the probe
    waiting for the fine-tune, which it does not read."""
    proc = _cli("submit", _write(tmp_path), "--slurm", "--dry-run")
    out = proc.stdout
    chain = out.split("# ---- the chain")[1].strip().splitlines()[1:]
    assert [line.split("=")[0] for line in chain] == [
        "JOB_PREP",
        "JOB_PRETRAIN",
        "JOB_FINETUNE",
        "JOB_PROBE",
        "JOB_REPORT",
    ]
    assert "--dependency" not in chain[0]
    assert '"--dependency=afterok:${JOB_PREP}"' in chain[1]
    assert '"--dependency=afterok:${JOB_PRETRAIN}"' in chain[3]  # the probe: pretrain only
    assert '"--dependency=afterok:${JOB_PRETRAIN}:${JOB_FINETUNE}:${JOB_PROBE}"' in chain[4]
    for line in chain:  # every script the chain submits is there to submit
        script = line.rsplit(" ", 1)[1].rstrip(")").strip("'")
        assert Path(script).is_file(), script
    jobs = out.split("# ---- the jobs ----")[1].split("# ---- the chain")[0]
    table = [line for line in jobs.splitlines() if line.strip()]
    assert table[0].split() == ["#", "job", "nodes", "x", "tasks", "GPUs/node", "CPUs/task",
                                "time", "waits", "for"]  # fmt: skip
    probe = next(row for row in table if row.split()[1:2] == ["probe"])
    assert probe.rstrip().endswith("pretrain")


def test_every_argument_of_every_command_has_help():
    from pipeline.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"maskmill {name} {action.dest} has no help"
    assert _cli("--version").stdout.startswith("maskmill ")
    # Their options are free-form (key=value or --key value); --help among them still helps.
    for command in (["demo-data", "out"], ["prep", "image", "src", "out"]):
        proc = _cli(*command, "--classes", "3", "--help")
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: maskmill {command[0]}")


def test_the_training_entry_points_list_their_config_keys():
    helps = {
        module: subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
        ).stdout
        for module in ("training.pretrain", "training.evaluate")
    }
    assert "config keys (type = default):\n" in helps["training.evaluate"]
    assert "\n  mask.ratio: float = 0.75\n" in helps["training.pretrain"]
    assert "\n  train_shards: str = (required)\n" in helps["training.pretrain"]


def test_an_output_folder_holding_the_users_files_is_refused_in_one_line_before_any_work(tmp_path):
    path = _write(tmp_path)
    mine = tmp_path / "run" / "shards" / "notes.txt"  # prep's output folder
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    proc = _cli("run", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "prep: its output" in proc.stderr and "already holds files" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["shards"]  # nothing ran
    assert mine.read_text() == "mine"
