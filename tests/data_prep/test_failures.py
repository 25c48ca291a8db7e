"""Failures stay with their input (issue: prep at corpus scale): an unexpected error on one input
is counted and listed and the prep goes on; a task whose worker dies is run again by Ray; too
many failed inputs fail the split by name; a resume does not hash finished shards again."""

from __future__ import annotations

import json
import os
import signal

import pytest

from data_prep.plan import WorkUnit
from data_prep.shard_format import SUCCESS, read_manifest, read_stats, shard_name
from data_prep.writer import (
    FAILURES,
    FailedInputsError,
    Sample,
    finish_split,
    unit_is_done,
    write_unit,
)


def _encode(item: str):
    if item.startswith("eio"):
        raise OSError(5, "Input/output error", f"/mnt/nfs/{item}.jpg")
    yield Sample(key=item, members={"txt": item.encode(), "cls": b"1"})


def test_an_unexpected_error_stops_its_input_only_and_is_listed(tmp_path):
    """Before: the OSError ended write_unit, and with it the whole prep."""
    result = write_unit(WorkUnit(0, ("a", "eio1", "b")), tmp_path, _encode)
    assert result.samples == 2 and result.skipped == {"failed": 1}
    stats = finish_split(tmp_path, [result], 0.0, max_failed_share=0.5)
    assert stats["skipped"] == {"failed": 1} and (tmp_path / SUCCESS).exists()
    (listed,) = [json.loads(line) for line in (tmp_path / FAILURES).read_text().splitlines()]
    assert listed == {
        "input": "eio1",
        "error": "OSError: [Errno 5] Input/output error: '/mnt/nfs/eio1.jpg'",
    }


def test_more_failures_than_the_share_allowed_fail_the_split_by_name(tmp_path):
    results = [write_unit(WorkUnit(0, ("a", "eio1", "eio2", "b")), tmp_path, _encode)]
    with pytest.raises(FailedInputsError) as err:
        finish_split(tmp_path, results, 0.0, max_failed_share=0.25)
    assert "2 of 4 inputs failed (50.0%, more than prep.max_failed_share 25.0%)" in str(err.value)
    assert str(tmp_path / FAILURES) in str(err.value)
    assert not (tmp_path / SUCCESS).exists()  # a rerun does it again, rather than trusting it


def test_a_resume_checks_finished_shards_by_size_not_by_hash(tmp_path, monkeypatch):
    """Before: every finished shard was hashed again on the driver (~40 min for LibriLight)."""
    from data_prep import shard_format, writer

    unit = WorkUnit(0, ("a", "b"))
    write_unit(unit, tmp_path, _encode)

    def no_hash(path):
        raise AssertionError(f"{path} hashed on resume")

    monkeypatch.setattr(shard_format, "file_sha256", no_hash)
    monkeypatch.setattr(writer, "file_sha256", no_hash)
    assert unit_is_done(tmp_path, unit) is not None
    (tmp_path / shard_name(0)).write_bytes(b"short")  # resized: written again
    assert unit_is_done(tmp_path, unit) is None


def test_a_task_whose_worker_dies_is_run_again_and_the_prep_finishes(tmp_path):
    """A real local Ray session: the first attempt at unit 1 kills its own worker (as the OOM
    killer or a lost node would); Ray runs it again and the split is whole. An input failing
    with an OSError is counted and listed on the way."""
    from data_prep.ray_job import prepare_split, ray_session

    marker = tmp_path / "killed-once"

    def encode(item: str):
        if item == "die" and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return _encode(item)

    units = [WorkUnit(0, ("a", "b")), WorkUnit(1, ("c", "die")), WorkUnit(2, ("eio", "d"))]
    split = tmp_path / "train"
    with ray_session(2, None):
        stats = prepare_split(units, split, encode, max_failed_share=0.5)
    assert marker.exists()  # the first attempt died
    assert [r.samples for r in read_manifest(split)] == [2, 2, 1]
    assert stats["skipped"] == {"failed": 1} and read_stats(split)["inputs"] == 6
    assert "eio" in (split / FAILURES).read_text()
