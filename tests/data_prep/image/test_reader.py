"""Prep of the demo corpus with the real Ray job, read back with the plain webdataset library."""

import hashlib
import io
import json
import os
import shutil

import pytest
import webdataset as wds
from PIL import Image

from data_prep.image.layout import LayoutError
from data_prep.image.reader import prep_imagenet
from data_prep.shard_format import SUCCESS, WORK_DIR, read_manifest, read_stats, shard_urls
from tests.conftest import CORRUPT, prep_config


def _read_all(split_dir):
    # Plain webdataset, no maskmill code in the read path; no decoders (nothing is unpickled).
    return list(wds.WebDataset(shard_urls(split_dir), shardshuffle=False, empty_check=False))


def test_every_prepared_sample_reads_back_with_plain_webdataset(prepared, demo_corpus):
    classes = json.loads((prepared / "labels.json").read_text())
    for split in ("train", "val"):
        samples = _read_all(prepared / split)
        assert len(samples) == sum(r.samples for r in read_manifest(prepared / split))
        for s in samples:
            assert {"jpg", "cls", "json"} <= set(s)
            img = Image.open(io.BytesIO(s["jpg"]))
            assert (img.format, img.mode) == ("JPEG", "RGB")
            assert min(img.size) <= 40
            meta = json.loads(s["json"])
            assert int(s["cls"]) == meta["label"]
            assert classes[meta["label"]]["wnid"] == meta["wnid"]
            assert (demo_corpus / meta["source"]).is_file()


def test_counts_and_hashes_match_the_manifest(prepared, demo_corpus):
    train_images = sum(1 for _ in (demo_corpus / "train").rglob("*.JPEG"))
    stats = read_stats(prepared / "train")
    assert stats["inputs"] == train_images
    assert stats["samples"] == train_images - CORRUPT
    for split in ("train", "val"):
        for r in read_manifest(prepared / split):
            assert hashlib.sha256((prepared / split / r.file).read_bytes()).hexdigest() == r.sha256


def test_broken_inputs_are_skipped_and_counted_by_reason(prepared):
    stats = read_stats(prepared / "train")
    assert stats["skipped"] == {"empty_file": 1, "not_an_image": 1, "truncated_or_corrupt": 1}
    assert read_stats(prepared / "val")["skipped_total"] == 0


def test_val_labels_come_from_the_solution_csv(prepared, demo_corpus):
    truth = {}
    for line in (demo_corpus / "LOC_val_solution.csv").read_text().splitlines()[1:]:
        image_id, pred = line.split(",")
        truth[image_id] = pred.split()[0]
    samples = _read_all(prepared / "val")
    assert {s["__key__"]: json.loads(s["json"])["wnid"] for s in samples} == truth


def test_quirky_images_are_normalised(prepared):
    modes = {json.loads(s["json"])["source_mode"] for s in _read_all(prepared / "train")}
    formats = {json.loads(s["json"])["source_format"] for s in _read_all(prepared / "train")}
    assert {"CMYK", "L", "RGB"} <= modes
    assert "PNG" in formats
    # each conversion counted by what it converted (before: `converted` never said any)
    samples = _read_all(prepared / "train")
    converted = read_stats(prepared / "train")["converted"]
    for mode, reason in (("CMYK", "cmyk_to_rgb"), ("L", "grayscale_to_rgb")):
        assert converted[reason] == sum(
            json.loads(s["json"])["source_mode"] == mode for s in samples
        )
    assert converted["png_to_jpeg"] == 1


def test_rerun_after_a_kill_rewrites_only_missing_shards(prepared, demo_corpus, tmp_path):
    split = tmp_path / "shards" / "train"
    shutil.copytree(prepared, tmp_path / "shards")
    before = {r.file: r.sha256 for r in read_manifest(split)}
    # What a kill leaves behind: two shards never finished, no _SUCCESS.
    lost, kept = sorted(before)[:2], sorted(before)[2]
    for name in lost:
        (split / name).unlink()
        (split / WORK_DIR / f"{name}.json").unlink()
    (split / SUCCESS).unlink()
    mtime = os.stat(split / kept).st_mtime_ns
    prep_imagenet(prep_config(demo_corpus, tmp_path / "shards", splits=["train"]))
    assert {r.file: r.sha256 for r in read_manifest(split)} == before
    assert os.stat(split / kept).st_mtime_ns == mtime  # finished shards were not rewritten


def test_missing_source_fails_at_once(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        prep_imagenet(prep_config(tmp_path / "nope", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_empty_source_fails_at_once(tmp_path):
    (tmp_path / "src" / "train").mkdir(parents=True)
    with pytest.raises(LayoutError, match="no synset folders"):
        prep_imagenet(prep_config(tmp_path / "src", tmp_path / "out"))


def test_files_of_the_same_name_in_two_classes_get_distinct_keys(demo_corpus, tmp_path):
    from data_prep.image.layout import unique_keys

    src = tmp_path / "raw"
    shutil.copytree(demo_corpus, src)
    wnids = sorted(p.name for p in (src / "train").iterdir())
    donor = next((src / "train" / wnids[0]).glob("*_1.JPEG"))
    for wnid in wnids[:3]:  # the same file name in three classes, and beside a PNG of it
        shutil.copy(donor, src / "train" / wnid / "same.JPEG")
    Image.open(donor).save(src / "train" / wnids[0] / "same.png")
    prep_imagenet(prep_config(src, tmp_path / "out"))
    samples = _read_all(tmp_path / "out" / "train")
    keys = [s["__key__"] for s in samples]
    assert (
        len(keys)
        == len(set(keys))
        == sum(r.samples for r in read_manifest(tmp_path / "out" / "train"))
    )
    same = [json.loads(s["json"])["source"] for s in samples if "same" in s["__key__"]]
    assert len(same) == 4
    # Keys that do not collide are the stems they always were (they seed masks and crops).
    assert unique_keys(["train/n1/n1_7.JPEG", "train/n2/x.JPEG"]) == ["n1_7", "x"]


def test_long_and_non_utf8_file_names_are_stored_under_hashed_keys(demo_corpus, tmp_path):
    from data_prep.shard_format import read_shard_samples

    src = tmp_path / "raw"
    shutil.copytree(demo_corpus, src)
    wnid = sorted(p.name for p in (src / "train").iterdir())[0]
    donor = next((src / "train" / wnid).glob("*_1.JPEG"))
    long_name = "x" * 150 + ".JPEG"  # over ustar's 100-byte member name
    shutil.copy(donor, src / "train" / wnid / long_name)
    latin1 = os.fsencode(src / "train" / wnid) + b"/caf\xe9.JPEG"  # not UTF-8
    shutil.copy(donor, latin1)
    prep_imagenet(prep_config(src, tmp_path / "out"))
    split = tmp_path / "out" / "train"
    plain = _read_all(split)  # plain webdataset
    ours = [s for url in shard_urls(split) for s in read_shard_samples(url)]
    assert len(plain) == len(ours) == sum(r.samples for r in read_manifest(split))
    sources = {json.loads(s["json"])["source"]: s["__key__"] for s in ours}
    assert sources[f"train/{wnid}/{long_name}"].startswith("h")
    assert sources[f"train/{wnid}/caf\udce9.JPEG"].startswith("h")  # the name as Python reads it
    assert len(set(sources.values())) == len(ours)


def test_odd_entries_in_the_source_tree_are_counted_skips_not_tracebacks(
    demo_corpus, tmp_path, caplog
):
    """Before: a symlink loop or a folder named *.JPEG ended the prep with a traceback, a val
    image without a CSV row vanished without a count, an empty class folder said nothing."""
    import os
    import shutil

    from data_prep.shard_format import read_stats

    src = tmp_path / "raw"
    shutil.copytree(demo_corpus, src, symlinks=True)
    wnid = sorted(p.name for p in (src / "train").iterdir())[0]
    os.symlink("loop.JPEG", src / "train" / wnid / "loop.JPEG")  # points at itself
    os.symlink("/nonexistent/x.JPEG", src / "train" / wnid / "dangling.JPEG")
    (src / "train" / wnid / "folder.JPEG").mkdir()
    (src / "train" / "n99999999").mkdir()  # an empty class
    unlabelled = next((src / "val").glob("*.JPEG"))
    shutil.copy(unlabelled, src / "val" / "ILSVRC2012_val_99999999.JPEG")
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        prep_imagenet(prep_config(src, out))
    train, val = read_stats(out / "train"), read_stats(out / "val")
    assert train["skipped"]["unreadable_file"] == 2 and train["skipped"]["not_a_file"] == 1
    assert val["skipped"]["no_label_row"] == 1
    assert "n99999999 holds no image files" in caplog.text


def test_a_val_folder_without_labels_says_so(demo_corpus, tmp_path):
    """Before: "holds no image files", though it held them."""
    import shutil

    src = tmp_path / "raw"
    shutil.copytree(demo_corpus, src)
    (src / "LOC_val_solution.csv").unlink()
    with pytest.raises(LayoutError, match=r"image files but nothing labels them"):
        prep_imagenet(prep_config(src, tmp_path / "out"))
