"""The fault-injection suite: faults a careful user meets, injected into the real components
(Ray prep, the webdataset-format shards, DeepSpeed on gloo, the CLI), each printing one line,
``FAULT <case>: expected ... | got ...``. Run alone with ``pytest -m faults -s``; the cases
that take minutes are also marked slow (``-m 'faults or slow'``). Other faults have their own
tests beside the code they exercise: a killed training run resumes without repeating a step
(tests/training/test_pretrain_distributed.py, also a stopped rank), a planted pickle, hostile
shard members and decompression bombs (tests/training/test_loader.py), Ray leftovers
(tests/data_prep/test_ray_session.py)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from data_prep.image.reader import prep_imagenet
from data_prep.shard_format import read_manifest, verify_split
from tests.conftest import prep_config

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


def report(case: str, expected, got) -> None:
    sys.stdout.write(f"FAULT {case}: expected {expected} | got {got}\n")
    assert got == expected, case


def _shards(split: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(split.glob("shard-*.tar"))}


@pytest.mark.parametrize("after_shards", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_prep_killed_after_some_shards_reruns_to_the_same_output(
    demo_corpus, prepared, tmp_path, after_shards
):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "prep",
        "image",
        str(demo_corpus),
        str(out),
        "shorter_side=40",
        "samples_per_shard=20",
        "num_cpus=2",
    ]  # as tests.conftest.prep_config
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.glob("*/shard-*.tar"))) < after_shards and time.time() < deadline:
        assert proc.poll() is None, "the prep finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    prep_imagenet(prep_config(demo_corpus, out))
    same = all(_shards(out / s) == _shards(prepared / s) for s in ("train", "val"))
    report(f"prep killed after {after_shards} shard(s), rerun", "identical shards", (
        "identical shards" if same else "different shards"))  # fmt: skip


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_a_damaged_shard_is_found_named_and_refused(prepared, tmp_path, damage):
    from data_prep.shard_format import BadShardError
    from training.config import LoaderConfig
    from training.loader import train_loader, train_spec_for
    from training.modalities.image.bundle import ImageInputConfig

    split = tmp_path / "train"
    shutil.copytree(prepared / "train", split)
    shard = split / read_manifest(split)[0].file
    data = shard.read_bytes()
    if damage == "flip a byte":
        shard.write_bytes(data[:900] + bytes([data[900] ^ 1]) + data[901:])
    elif damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    else:
        shard.unlink()
    _, problems = verify_split(split)
    found = sorted(f for f, p in problems.items() if p)
    report(f"{damage}: maskmill verify", [shard.name], found)
    # The size is checked at every open; a same-size flip needs the opt-in sha256 per worker
    # (prep and `maskmill verify` check it otherwise: hashing reads every byte of a shard).
    flip = damage == "flip a byte"
    loader = LoaderConfig(workers=0, verify_sha256=flip)
    spec = train_spec_for(str(split), "image", ImageInputConfig(32), loader, batch_size=8, seed=0)
    try:
        for _ in zip(range(30), train_loader(spec)):
            pass
        got = "trained on"
    except BadShardError as err:
        got = "BadShardError naming it" if shard.name in str(err) else f"BadShardError: {err}"
    where = "the training loader" + (" (loader.verify_sha256: true)" if flip else "")
    report(f"{damage}: {where}", "BadShardError naming it", got)


def _run_yaml(tmp_path) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart_image.yaml").read_text())
    cfg["run_dir"] = str(tmp_path / "run")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_yaml(tmp_path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"train_shards": str(tmp_path), "out_dir": str(tmp_path / "o")}))
    return path


ENTRY_POINTS = {
    "maskmill run": lambda t: ["pipeline.cli", "run", str(_run_yaml(t)), "pretrain.steps=ten"],
    "maskmill status": lambda t: ["pipeline.cli", "status", str(_run_yaml(t)), "pretrain.batch_size=-4"],
    "maskmill submit": lambda t: ["pipeline.cli", "submit", str(_run_yaml(t)), "--slurm", "--dry-run", "launch.nodes=0"],
    "maskmill verify": lambda t: ["pipeline.cli", "verify", str(_run_yaml(t)), "pretrain.loader.on_bad_shard=maybe"],
    "maskmill prep": lambda t: ["pipeline.cli", "prep", "image", str(t), str(t / "o"), "samples_per_shard=0"],
    "python -m training.pretrain": lambda t: ["training.pretrain", str(_train_yaml(t)), "mask.ratio=1.5"],
    "a YAML syntax error": lambda t: ["pipeline.cli", "run", str(_broken_yaml(t))],
}  # fmt: skip


def _broken_yaml(tmp_path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text("pretrain:\n  steps: 10\n   batch_size: 8\n")
    return path


# A bad value at every entry point is also tested beside each (tests/pipeline/test_cli.py,
# tests/training/test_config_ranges.py); the suite keeps three in the default run.
FAST_ENTRIES = ("maskmill run", "python -m training.pretrain", "a YAML syntax error")


@pytest.mark.parametrize(
    "entry",
    [e if e in FAST_ENTRIES else pytest.param(e, marks=pytest.mark.slow) for e in ENTRY_POINTS],
)
def test_a_bad_config_at_each_entry_point_is_one_line_before_any_work(tmp_path, entry):
    proc = subprocess.run(
        [sys.executable, "-m", *ENTRY_POINTS[entry](tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    got = (proc.returncode, len(errors), "Traceback" in proc.stderr)
    report(f"bad config, {entry}", (2, 1, False), got)
    assert not (tmp_path / "run").exists() and not (tmp_path / "o").exists()  # no work done


@pytest.fixture
def tiny_disk(tmp_path):
    """A 10 MiB tmpfs: room for one checkpoint of the test model (6.6 MiB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("a small disk needs a tmpfs mount (root); none could be made here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # ~12 s: two 2-rank launches around a full tmpfs
def test_a_full_disk_during_a_checkpoint_keeps_the_last_one_and_the_rerun_resumes(
    prepared, tmp_path, tiny_disk
):
    cfg = {
        "train_shards": str(prepared / "train"), "out_dir": str(tiny_disk / "run"),
        "input": {"image_size": 32, "patch_size": 4},
        "model": {"preset": "nano", "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
        "batch_size": 8, "steps": 3, "checkpoint_every": 1, "keep_checkpoints": 2,
        "optim": {"lr": 1e-3, "warmup_steps": 1}, "loader": {"workers": 0},
    }  # fmt: skip
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = [sys.executable, "-m", "training.pretrain", str(path)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    ckpt = tiny_disk / "run" / "checkpoints"
    complete = sorted(p.parent.name for p in ckpt.glob("step-*/_COMPLETE"))
    one_line = "could not write checkpoint step-00000002" in proc.stderr
    report("disk full at the second checkpoint", (1, True, ["step-00000001"], False),
           (proc.returncode, one_line, complete, "Traceback" in proc.stderr))  # fmt: skip
    # room made, as a user freeing space would
    subprocess.run(["mount", "-o", "remount,size=40m", str(tiny_disk)], check=True)
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    report("rerun after the full disk", (0, True), (proc.returncode, "(from 1)" in proc.stderr))


@pytest.mark.slow  # a 2-rank launch killed mid-run, then resumed: about a minute
def test_one_rank_killed_ends_the_job_and_the_rerun_resumes(prepared, tmp_path):
    import psutil

    from tests.training.test_pretrain_distributed import _config, _deepspeed, _port

    config = _config(tmp_path, prepared, steps=60, checkpoint_every=5, precision="fp32")
    ckpt = tmp_path / "run" / "checkpoints"
    port = _port()
    proc = subprocess.Popen(_deepspeed(config, port=port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while not list(ckpt.glob("step-*/_COMPLETE")) and time.time() < deadline:
        time.sleep(0.2)
    rank1 = next(
        p for p in psutil.Process(proc.pid).children(recursive=True)
        if "training.pretrain" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"
    )  # fmt: skip
    rank1.send_signal(signal.SIGKILL)
    start = time.time()
    proc.wait(timeout=120)
    ended = time.time() - start
    report("one rank killed", ("non-zero exit", True), (
        "non-zero exit" if proc.returncode else "exit 0", ended < 60))  # fmt: skip
    again = subprocess.run(_deepspeed(config), capture_output=True, text=True, timeout=400)
    report("rerun after a killed rank", (0, True), (again.returncode, "(from " in again.stderr))


@pytest.mark.slow  # two single-rank runs, one killed while a checkpoint is half written
def test_training_killed_mid_checkpoint_resumes_from_the_last_complete_one(prepared, tmp_path):
    from tests.training.test_pretrain_distributed import _config
    from training.metrics import read_metrics

    config = _config(tmp_path, prepared, steps=40, checkpoint_every=2, precision="fp32")
    ckpt = tmp_path / "run" / "checkpoints"
    run = [sys.executable, "-m", "training.pretrain", str(config)]
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, half = time.time() + 240, None
    while half is None and time.time() < deadline and proc.poll() is None:
        tags = [p for p in ckpt.glob("step-*") if any(p.iterdir())] if ckpt.is_dir() else []
        half = next((t for t in tags if not (t / "_COMPLETE").exists()), None)
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = sorted(p.parent.name for p in ckpt.glob("step-*/_COMPLETE"))
    again = subprocess.run(run, capture_output=True, text=True, timeout=300)
    steps = [r["step"] for r in read_metrics(tmp_path / "run")]
    resumed_from = int(complete[-1].split("-")[1]) if complete else 0
    report(
        "training killed mid-checkpoint, rerun",
        (True, 0, f"(from {resumed_from})", list(range(1, 41))),
        (half is not None, again.returncode,
         f"(from {resumed_from})" if f"(from {resumed_from})" in again.stderr else "elsewhere",
         steps),
    )  # fmt: skip
