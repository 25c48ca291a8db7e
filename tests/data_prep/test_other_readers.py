"""A prepared split folder opened by the readers users already have: Ray Data and HF
``datasets``, pointed at the folder with no other arguments, labels included."""

from __future__ import annotations

import os
import shutil

import pytest

from data_prep.shard_format import (
    INDEX_DIR,
    MANIFEST,
    META_DIR,
    STATS,
    SUCCESS,
    WORK_DIR,
    adopt_legacy_records,
    read_manifest,
    read_shard_samples,
    read_stats,
    shard_urls,
)


def _our_labels(split) -> dict[str, int]:
    return {
        s["__key__"]: int(s["cls"]) for url in shard_urls(split) for s in read_shard_samples(url)
    }


@pytest.mark.parametrize("split", ["val", "train"])
def test_hf_datasets_loads_a_split_folder_with_its_labels(prepared, split, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="HF datasets is a test dependency")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = datasets.load_dataset(
        "webdataset", data_dir=str(prepared / split), cache_dir=str(tmp_path)
    )
    rows = ds["train"]  # HF names a split it cannot place "train"
    got = {row["__key__"]: row["cls"] for row in rows.select_columns(["__key__", "cls"])}
    assert got == _our_labels(prepared / split)
    assert rows[0]["jpg"].size[0] > 0  # decoded by HF as an image


def test_ray_data_reads_a_split_folder_with_its_labels(prepared, clips_prepared):
    import ray.data

    from data_prep.ray_job import ray_session

    with ray_session(num_cpus=1, address=None):
        image = ray.data.read_webdataset(str(prepared / "val")).take_all()
        video = ray.data.read_webdataset(str(clips_prepared / "val")).take_all()
    assert {r["__key__"]: r["cls"] for r in image} == _our_labels(prepared / "val")
    assert image[0]["jpg"].ndim == 3  # decoded to an array
    assert {r["__key__"]: r["cls"] for r in video} == _our_labels(clips_prepared / "val")


def test_a_split_folder_shows_only_its_shards(prepared):
    visible = sorted(p.name for p in (prepared / "train").iterdir() if p.name != META_DIR)
    assert visible == [r.file for r in read_manifest(prepared / "train")]


def test_a_split_prepared_with_records_beside_the_tars_is_read_and_adopted(prepared, tmp_path):
    split = tmp_path / "train"
    shutil.copytree(prepared / "train", split)
    records, stats = read_manifest(split), read_stats(split)
    # The layout before the records folder: manifest, stats, _SUCCESS and _work/ beside the tars.
    for name in (MANIFEST, STATS, SUCCESS):
        os.replace(split / name, split / os.path.basename(name))
    os.replace(split / WORK_DIR, split / "_work")
    shutil.rmtree(split / INDEX_DIR)  # that layout had no sample offsets either,
    (split / META_DIR / "failures.jsonl").unlink()  # nor a list of failed inputs
    (split / META_DIR / "ignored.jsonl").unlink()  # nor of unread files
    (split / META_DIR).rmdir()
    assert read_manifest(split) == records and read_stats(split) == stats

    adopt_legacy_records(split)
    assert sorted(p.name for p in split.iterdir() if not p.name.startswith("shard-")) == [META_DIR]
    assert read_manifest(split) == records
    # a rerun resumes: every unit's completion record is where the writer looks
    assert all((split / WORK_DIR / f"{r.file}.json").is_file() for r in records)
