"""The pipeline end to end on a tiny run: real Ray prep, real 2-rank DeepSpeed, evaluation, report."""

import json
import subprocess
import sys

import pytest

from pipeline.runner import recorded_state, run_pipeline, stage_fingerprint, stage_views
from pipeline.schema import load_run_config
from pipeline.stages import STAGES
from pipeline.state import fingerprint, read_state, write_state
from training.metrics import read_eval_metrics
from training.modalities.image.legacy import v1_sections
from training.typed_config import to_yaml

RUN = """
name: tiny
run_dir: {run_dir}
seed: 0
demo_data: {{out: "${{run_dir}}/raw", classes: 4, train_per_class: 16, val_per_class: 5, min_size: 40, max_size: 80, corrupt: 2}}
prep: {{source: "${{demo_data.out}}", shorter_side: 36, samples_per_shard: 16, num_cpus: 2}}
pretrain:
  input: {{image_size: 32, patch_size: 4}}
  model: {{preset: nano, decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}}
  batch_size: 8
  steps: 6
  optim: {{lr: 1.0e-3, warmup_steps: 2}}
  checkpoint_every: 3
  log_every: 1
  loader: {{workers: 1, shuffle_buffer: 16}}
  export_formats: [hf]
evaluate:
  tasks:
    linear_probe: {{epochs: 5, batch_size: 32}}
    knn: {{k: 5}}
    finetune: {{epochs: 1, batch_size: 16}}
launch: {{ranks: 2}}
report: {{reconstructions: 3}}
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The tiny run, run as a user does (``maskmill run``); its terminal output is kept."""
    root = tmp_path_factory.mktemp("pipeline")
    path = root / "run.yaml"
    path.write_text(RUN.format(run_dir=root / "run"))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(path)], capture_output=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:].decode(errors="replace")
    (root / "terminal.txt").write_bytes(proc.stdout + proc.stderr)  # bytes: carriage returns kept
    return path, root / "run"


# What the first run printed that no user needs on screen (kept in the stage logs).
INTERNALS = (
    "Setting accelerator to CPU",  # DeepSpeed's accelerator guess
    "Unable to find hostfile",
    "CUDA_VISIBLE_DEVICES",
    "WORLD INFO DICT",
    "spawned with command",
    "built successfully",  # the JIT build of DeepSpeed's CPU communication op
    "Processing zero checkpoint",
    "\x1b[",  # raw colour codes of Ray's worker prefixes
    "object at 0x",
    "_write_unit_task",
    "FutureWarning",  # torch's deprecated autograd all-reduce, once in the probe (replaced)
)


def test_the_terminal_shows_no_deepspeed_or_ray_internals(finished_run):
    path, run_dir = finished_run
    terminal = (path.parent / "terminal.txt").read_bytes().decode()
    shown = [line for line in INTERNALS if line in terminal]
    assert shown == []
    assert "\r" not in terminal  # not a terminal: bars are lines, not redraws
    assert "WARNING data_prep.writer: skipped train/" in terminal  # what a user does want
    assert "Setting accelerator to CPU" in (run_dir / "logs" / "pretrain.log").read_text()


def test_every_stage_finishes_and_writes_its_outputs(finished_run):
    _, run = finished_run
    for stage in ("demo_data", "prep", "pretrain", "finetune", "probe", "report"):
        assert read_state(run, stage).status == "done"
    metrics = read_eval_metrics(run / "evaluate")
    for protocol in ("linear_probe", "knn", "finetune"):
        assert set(metrics[protocol]) == {"pretrained", "random_init"}
        assert 0.0 <= metrics[protocol]["pretrained"]["top1"] <= 100.0
    assert (run / "pretrain" / "export" / "encoder.safetensors").exists()
    html = (run / "report.html").read_text()
    assert "What pretraining bought" in html and "random init" in html
    # curves, reconstructions, and where the masking sits on the measured frontier
    assert html.count("data:image/png;base64,") == 4  # + the downstream curves
    assert "Masking: cost against quality" in html
    assert "empty_file: 1" in html  # the prep's skip reasons reach the report
    assert "<th>chance</th>" in html and " pp</span>" in html


def test_evaluation_scores_are_in_tensorboard_and_wall_clock_is_not(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = finished_run
    metrics = read_eval_metrics(run / "evaluate")
    scalars = {}
    for events in (run / "evaluate").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        encoder = events.parent.name.rpartition("_")[2]  # add_scalars: one folder per curve
        for tag in acc.Tags()["scalars"]:
            scalars[(tag, encoder)] = acc.Scalars(tag)[-1]
    probe = scalars[("eval/linear_probe/top1", "pretrained")]
    assert probe.step == 6 and probe.value == pytest.approx(
        metrics["linear_probe"]["pretrained"]["top1"]
    )
    assert ("eval/knn/top1", "init") in scalars  # random_init's folder ends in "init"
    pretrain = EventAccumulator(str(run / "pretrain" / "tensorboard"))
    pretrain.Reload()
    assert "pretrain/loss" in pretrain.Tags()["scalars"]
    assert "pretrain/time" not in pretrain.Tags()["scalars"]


def test_the_hf_export_of_a_run_gives_its_features(finished_run):
    transformers = pytest.importorskip("transformers", reason="transformers is the bench extra")
    import torch

    from training.export import load_encoder
    from training.loader import eval_batches
    from training.modalities.image.patches import normalize_pixels, patchify

    _, run = finished_run
    export = run / "pretrain" / "export"
    model = transformers.AutoModel.from_pretrained(export / "hf", add_pooling_layer=False).eval()
    encoder = load_encoder(export).eval()
    images, _, _ = next(
        eval_batches(str(run / "shards" / "val"), "image", encoder_input(export), 8)
    )
    images = normalize_pixels(images)  # what the processor does: / 255, ImageNet mean and std
    with torch.no_grad():
        theirs = model(pixel_values=images).last_hidden_state[:, 1:].mean(1)
        ours = encoder.features(patchify(images, 4))
    assert (theirs - ours).abs().max().item() <= 1e-5


def test_export_command_writes_a_format_for_a_finished_run(finished_run, tmp_path):
    path, _ = finished_run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "export",
            str(path),
            "--format",
            "timm",
            "--out",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "timm_config.json").read_text())["global_pool"] == "avg"


def encoder_input(export_dir):
    from training.export_format import read_export

    return read_export(export_dir).input


def test_second_run_skips_every_stage(finished_run):
    path, run = finished_run
    stages = ("prep", "pretrain", "finetune", "probe", "report")
    before = {s: read_state(run, s).finished for s in stages}
    run_pipeline(load_run_config(path))
    assert {s: read_state(run, s).finished for s in before} == before


def test_status_marks_every_stage_after_a_stale_one_stale(finished_run):
    path, _ = finished_run
    labels = {
        v.name: v.label for v in stage_views(load_run_config(path, ["pretrain.optim.lr=2.0e-3"]))
    }
    assert labels == {
        "demo_data": "done",
        "prep": "done",
        "pretrain": "stale (config or inputs changed)",
        "finetune": "stale (pretrain will run again)",
        "probe": "stale (pretrain will run again)",
        "report": "stale (pretrain will run again)",
    }


def test_changed_evaluation_reruns_only_downstream_stages(finished_run):
    """A probe setting reruns the probe and the report; fine-tuning keeps its result."""
    path, run = finished_run
    stages = ("prep", "pretrain", "finetune", "probe", "report")
    before = {s: read_state(run, s).finished for s in stages}
    run_pipeline(load_run_config(path, ["evaluate.tasks.knn.k=3"]))
    after = {s: read_state(run, s).finished for s in before}
    for kept in ("prep", "pretrain", "finetune"):
        assert after[kept] == before[kept], kept
    assert after["probe"] > before["probe"] and after["report"] > before["report"]
    views = {v.name: v.label for v in stage_views(load_run_config(path))}
    assert views["probe"] == "stale (config or inputs changed)"  # relative to the original YAML
    assert views["finetune"] == "done"
    assert {v.label for v in stage_views(load_run_config(path, ["evaluate.tasks.knn.k=3"]))} == {
        "done"
    }


def test_execution_only_settings_do_not_invalidate(finished_run):
    path, _ = finished_run
    cfg = load_run_config(  # k=3: the probe as the test above reran it; the rest: how it runs
        path, ["evaluate.tasks.knn.k=3", "evaluate.batch_size=7", "prep.num_cpus=1",
               "pretrain.log_every=5", "pretrain.activation_checkpointing=true",
               "pretrain.monitor.every=2"]
    )  # fmt: skip
    assert {v.label for v in stage_views(cfg)} == {"done"}


def test_status_command_shows_each_stage(finished_run):
    path, _ = finished_run
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", str(path), "evaluate.tasks.knn.k=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    for stage in ("demo_data", "prep", "pretrain", "finetune", "probe", "report"):
        assert stage in out.stdout
    assert "done" in out.stdout


def test_missing_inputs_stop_a_stage_before_it_starts(finished_run):
    path, run = finished_run
    cfg = load_run_config(
        path, ["evaluate.tasks.knn.k=4", "evaluate.export_dir=/nonexistent/export"]
    )
    with pytest.raises(FileNotFoundError):
        run_pipeline(cfg)
    assert read_state(run, "pretrain").status == "done"
    # run.yaml is the run that finished, not this attempt (before: written at every start)
    assert "/nonexistent/export" not in (run / "run.yaml").read_text()


def test_an_interrupted_stage_resumes_in_place(finished_run, caplog):
    # What a killed `maskmill run` leaves: the stage marked running by a process that is gone.
    path, run = finished_run
    cfg = load_run_config(path, ["evaluate.tasks.knn.k=3"])
    state = read_state(run, "pretrain")
    checkpoint = next((run / "pretrain" / "checkpoints").glob("step-*/_COMPLETE"))
    kept_mtime = checkpoint.stat().st_mtime_ns
    state.status, state.pid, state.finished = "running", 2**22 + 12345, None
    write_state(run, "pretrain", state)
    assert {v.name: v.label for v in stage_views(cfg)}["pretrain"] == "interrupted (will resume)"
    with caplog.at_level("INFO"):
        run_pipeline(cfg)
    assert "resuming after an interrupted or failed attempt" in caplog.text
    assert read_state(run, "pretrain").status == "done"
    assert checkpoint.stat().st_mtime_ns == kept_mtime  # resumed from, not thrown away


def test_a_stage_that_0_1_finished_with_the_same_config_stays_done(finished_run):
    path, run = finished_run
    cfg = load_run_config(path)
    stage = next(s for s in STAGES if s.name == "pretrain")
    today = stage_fingerprint(stage, cfg)
    v1 = fingerprint("pretrain", v1_sections("pretrain", stage.section(cfg))[0], stage.inputs(cfg))
    state = read_state(run, "pretrain")
    state.fingerprint = v1  # as 0.1 recorded it
    write_state(run, "pretrain", state)
    assert next(v for v in stage_views(cfg) if v.name == "pretrain").label == "done"
    assert read_state(run, "pretrain").fingerprint == v1  # status only looks
    assert recorded_state(stage, cfg, run, today, adopt=True).status == "done"
    assert read_state(run, "pretrain").fingerprint == today  # recorded under today's


def test_a_prep_finished_when_sources_were_stat_ed_per_file_stays_done(finished_run):
    """The prep's inputs are now the sources' listings (pipeline.state.listing_signature); a
    prep recorded under the per-file signature with today's config is kept, and recorded
    under today's fingerprint, so the per-file walk runs once."""
    path, run = finished_run
    cfg = load_run_config(path)
    stage = next(s for s in STAGES if s.name == "prep")
    today = stage_fingerprint(stage, cfg)
    before = fingerprint("prep", to_yaml(stage.section(cfg)), stage.older_inputs(cfg))
    assert before != today
    state = read_state(run, "prep")
    kept = state.fingerprint
    state.fingerprint = before  # as the per-file signature recorded it
    write_state(run, "prep", state)
    assert next(v for v in stage_views(cfg) if v.name == "prep").label == "done"
    assert recorded_state(stage, cfg, run, today, adopt=True).status == "done"
    assert read_state(run, "prep").fingerprint == today == kept


@pytest.mark.slow  # ~35 s; the prep-level repair (tests/data_prep/test_prep_record.py) runs by default
def test_a_damaged_prep_shows_in_status_and_verify_and_a_rerun_repairs_exactly_it(finished_run):
    """Before: status said done, prep trusted its completion records, and pretraining died with
    a traceback per rank. Now status says damaged, `maskmill verify` names the shards (exit 1),
    and rerunning rewrites exactly them, byte-identical, leaving later stages done."""
    path, run = finished_run
    cfg = load_run_config(path)
    train = run / "shards" / "train"
    shards = sorted(train.glob("shard-*.tar"))
    original = {p.name: p.read_bytes() for p in shards}
    manifest = (train / ".maskmill" / "manifest.parquet").read_bytes()
    untouched = shards[2].stat().st_mtime_ns
    shards[0].unlink()
    shards[1].write_bytes(original[shards[1].name][:-512])
    assert {v.name: v.label for v in stage_views(cfg)}["prep"] == "damaged (rerun repairs it)"
    verify = [sys.executable, "-m", "pipeline.cli", "verify", str(path)]
    out = subprocess.run(verify, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert f"BAD {shards[0].name}  missing" in out.stdout
    assert f"BAD {shards[1].name}" in out.stdout and "truncated" in out.stdout
    pretrained = read_state(run, "pretrain").finished
    run_pipeline(cfg)
    assert {p.name: p.read_bytes() for p in shards} == original
    assert (train / ".maskmill" / "manifest.parquet").read_bytes() == manifest
    assert shards[2].stat().st_mtime_ns == untouched  # only the damaged ones were written
    assert read_state(run, "pretrain").finished == pretrained
    # bytes changed in place (same size): verify's sha256 finds it, a forced prep repairs it
    flipped = bytearray(original[shards[3].name])
    flipped[900] ^= 0xFF
    shards[3].write_bytes(bytes(flipped))
    out = subprocess.run(verify, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "sha256" in out.stdout and "--force prep" in out.stdout
    run_pipeline(cfg, force=("prep",))
    assert shards[3].read_bytes() == original[shards[3].name]
    assert shards[2].stat().st_mtime_ns == untouched
    assert subprocess.run(verify, capture_output=True, timeout=300).returncode == 0
    assert read_state(run, "pretrain").finished == pretrained
