"""The maskmill command as a user types it."""

import dataclasses
import subprocess
import sys

import pytest

from data_prep.shard_format import read_manifest


def _maskmill(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_data_then_prep_reports_skips_and_exits_zero(tmp_path):
    made = _maskmill(
        "demo-data",
        str(tmp_path / "raw"),
        "--classes",
        "3",
        "--train-per-class",
        "6",
        "--val-per-class",
        "2",
        "--corrupt",
        "3",
    )
    assert made.returncode == 0, made.stderr[-2000:]
    prep = _maskmill(
        "prep",
        "imagenet",
        str(tmp_path / "raw"),
        str(tmp_path / "out"),
        "--shorter-side",
        "32",
        "--samples-per-shard",
        "5",
        "--num-cpus",
        "2",
    )
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert "prep train: 22 inputs -> 19 samples" in prep.stdout
    assert "skipped 3 (empty_file: 1, not_an_image: 1, truncated_or_corrupt: 1)" in prep.stdout
    assert sum(r.samples for r in read_manifest(tmp_path / "out" / "val")) == 6


def test_prep_of_a_missing_source_fails_with_a_clear_message(tmp_path):
    prep = _maskmill("prep", "imagenet", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert prep.returncode == 2
    assert f"source folder {tmp_path / 'missing'} does not exist" in prep.stderr


def test_prep_rejects_bad_options_by_name(tmp_path):
    prep = _maskmill("prep", "image", str(tmp_path), str(tmp_path / "out"), "jpeg_quality=0")
    assert prep.returncode == 2
    assert "jpeg_quality: an int in [1, 100], got 0" in prep.stderr
    # The flag of the form before modalities is now the key's name: a clear error, no work done.
    old = _maskmill("prep", "imagenet", str(tmp_path), str(tmp_path / "out"), "--quality", "0")
    assert old.returncode == 2
    assert (
        "quality: unknown key; did you mean jpeg_quality?; expected one of: source, out"
        in old.stderr
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["image", "audio", "video", "text", "imagenet"])
def test_prep_help_of_a_modality_lists_its_keys_with_defaults(name, capsys):
    from data_prep.corpus import corpus_reader, prep_aliases
    from pipeline.cli import parse_args

    with pytest.raises(SystemExit) as done:
        parse_args(["prep", name, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    reader = corpus_reader(prep_aliases().get(name, name))
    assert reader.layout in shown
    for f in dataclasses.fields(reader.config):
        assert f"\n  {f.name} = " in shown, f.name
    assert f"samples_per_shard = {reader.config().samples_per_shard}" in shown
