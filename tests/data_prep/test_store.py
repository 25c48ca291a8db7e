"""Prepared splits in an object store: a prep writes its shards to ``s3://`` (atomic per shard:
the shard, its index, then its record), ``maskmill verify`` checks them there, a rerun repairs
exactly a damaged one, and the training and evaluation loaders read the same samples from the
store as from a disk. Against a real S3-API server on loopback (moto's standalone server, the
``s3_bucket`` fixture), as s3fs's own tests run."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys

import fsspec
import pytest
import torch

from data_prep.image.reader import prep_imagenet
from data_prep.shard_format import read_manifest
from data_prep.store import is_url, location, read_ranges
from tests.conftest import S3_SECRET, prep_config
from training.config import LoaderConfig
from training.loader import TrainStream, indexed_eval_batches, train_spec_for
from training.modalities.image.bundle import ImageInputConfig

SEEN = ImageInputConfig(32)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def s3_prepared(s3_bucket, demo_corpus) -> str:
    """The demo corpus prepared straight into the store, by Ray tasks that upload."""
    out = f"{s3_bucket}/prepared/shards"
    prep_imagenet(prep_config(demo_corpus, out))  # type: ignore[arg-type]
    return out


def test_a_prep_into_a_store_writes_what_a_prep_to_disk_writes(s3_prepared, prepared):
    for split in ("train", "val"):
        assert read_manifest(f"{s3_prepared}/{split}") == read_manifest(prepared / split)
    fs = fsspec.filesystem("s3")
    shard = f"{s3_prepared}/train/shard-000000.tar"
    assert fs.cat(shard) == (prepared / "train" / "shard-000000.tar").read_bytes()


def test_verify_reads_the_store_and_a_rerun_repairs_exactly_the_damaged_shard(
    s3_prepared, demo_corpus
):
    fs = fsspec.filesystem("s3")
    train = f"{s3_prepared}/train"
    proc = _cli("verify", train)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 damaged" in proc.stdout and "Traceback" not in proc.stderr
    victim = f"{train}/shard-000001.tar"
    whole = fs.cat(victim)
    fs.pipe(victim, whole[: len(whole) // 2])  # truncated in the store
    proc = _cli("verify", train)
    assert proc.returncode == 1 and "BAD shard-000001.tar" in proc.stdout, proc.stdout
    before = {p: fs.info(p)["LastModified"] for p in fs.find(train) if p.endswith(".tar")}
    prep_imagenet(prep_config(demo_corpus, s3_prepared))  # type: ignore[arg-type]
    assert fs.cat(victim) == whole
    after = {p: fs.info(p)["LastModified"] for p in fs.find(train) if p.endswith(".tar")}
    assert [p for p in after if after[p] != before[p]] == [victim.removeprefix("s3://")]


def test_training_reads_the_same_samples_from_the_store(s3_prepared, prepared):
    def batches(split, count=3):
        loader = LoaderConfig(workers=0, shuffle_buffer=50)
        spec = train_spec_for(str(split), "image", SEEN, loader, batch_size=8, seed=0,
                              rank=1, world_size=2)  # fmt: skip
        stream = TrainStream(spec)._rows_of_global_batches(0, 1)
        return list(itertools.islice(stream, count))

    got, want = batches(f"{s3_prepared}/train"), batches(prepared / "train")
    assert len(got) == len(want) == 3
    for batch, expected in zip(got, want):
        assert batch[2] == expected[2]  # the keys, in order
        torch.testing.assert_close(batch[0], expected[0])  # the decoded, augmented images


def test_evaluation_reads_the_same_samples_from_the_store(s3_prepared, prepared):
    def scored(split):
        return [
            (labels.tolist(), places)
            for _, labels, _, places in indexed_eval_batches(str(split), "image", SEEN, 8, 0, 2)
        ]

    assert scored(f"{s3_prepared}/val") == scored(prepared / "val")


def test_no_record_and_no_line_holds_the_credentials(s3_prepared):
    fs = fsspec.filesystem("s3")
    for path in fs.find(s3_prepared):
        assert S3_SECRET.encode() not in fs.cat(path), path
    proc = _cli("verify", f"{s3_prepared}/val")
    assert S3_SECRET not in proc.stdout + proc.stderr


def test_a_missing_split_in_the_store_is_one_line(s3_bucket):
    proc = _cli("verify", f"{s3_bucket}/nothing/here")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "does not exist" in out


def test_ranges_of_a_local_file_and_of_an_object_are_the_same_bytes(s3_bucket, tmp_path):
    data = bytes(range(256)) * 40
    (tmp_path / "f").write_bytes(data)
    fsspec.filesystem("s3").pipe(f"{s3_bucket}/ranges/f", data)
    spans = [(0, 10), (100, 612), (5000, 10240)] * 30  # more than one concurrent fetch
    want = [data[a:b] for a, b in spans]
    assert read_ranges(location(tmp_path / "f"), spans) == want
    assert read_ranges(location(f"{s3_bucket}/ranges/f"), spans) == want
    assert is_url(s3_bucket) and not is_url(tmp_path)


def test_a_text_corpus_in_a_store_preps_as_its_copy_on_disk(s3_bucket, text_demo, tmp_path):
    """``prep.source: s3://...`` for text (every format, read through fsspec): the same
    manifests and counts as the corpus copied to a disk, and a file no split reads in the
    bucket named by reason as on a disk."""
    import shutil

    from data_prep.shard_format import read_stats
    from data_prep.text.reader import TextPrepConfig, prep_text
    from tests.conftest import TEXT_PREP_KEYS

    local = tmp_path / "corpus"
    shutil.copytree(text_demo / "corpus", local)
    (local / "notes.docx").write_bytes(b"not a text format")
    fs = fsspec.filesystem("s3")
    fs.put(str(local), f"{s3_bucket}/text/corpus", recursive=True)
    outs = {}
    for name, source in (("store", f"{s3_bucket}/text/corpus"), ("disk", str(local))):
        outs[name] = tmp_path / name
        prep_text(TextPrepConfig(source=source, out=str(outs[name]), splits=["train", "val"],
                                 tokenizer_kind="bpe", **TEXT_PREP_KEYS))  # fmt: skip
    for split in ("train", "val"):
        store, disk = read_stats(outs["store"] / split), read_stats(outs["disk"] / split)
        assert {k: store[k] for k in ("inputs", "samples", "skipped", "ignored")} == {
            k: disk[k] for k in ("inputs", "samples", "skipped", "ignored")
        }
        assert [(r.samples, r.sha256) for r in read_manifest(outs["store"] / split)] == [
            (r.samples, r.sha256) for r in read_manifest(outs["disk"] / split)
        ]
    assert read_stats(outs["store"] / "train")["ignored"] == {"unsupported_format": 1}


def _same_prep(out, disk, splits) -> None:
    """Each split prepared from the store holds what the one prepared from the folder holds: the
    same counts by reason and the same shards, sha256 for sha256; the broken files came along
    and were counted."""
    from data_prep.shard_format import read_stats

    for split in splits:
        store, local = read_stats(out / split), read_stats(disk / split)
        keys = ("inputs", "samples", "skipped", "converted", "ignored")
        assert {k: store.get(k) for k in keys} == {k: local.get(k) for k in keys}, split
        assert [(r.samples, r.sha256) for r in read_manifest(out / split)] == [
            (r.samples, r.sha256) for r in read_manifest(disk / split)
        ]
    assert read_stats(out / "train")["skipped"]


def test_an_image_corpus_in_a_store_preps_as_its_copy_on_disk(s3_bucket, demo_corpus, prepared,
                                                              tmp_path):  # fmt: skip
    """``prep.source: s3://...`` for the ImageNet layout (train/<wnid>/, val/ with its label
    CSV, quirks and broken files included), walked and read through fsspec: the same
    manifests, counts and ignored files as the folder it was uploaded from (``prepared``)."""

    fsspec.filesystem("s3").put(str(demo_corpus), f"{s3_bucket}/images/raw", recursive=True)
    out = tmp_path / "from_store"
    prep_imagenet(prep_config(f"{s3_bucket}/images/raw", out))  # type: ignore[arg-type]
    _same_prep(out, prepared, ("train", "val"))
    assert (out / "labels.json").read_text() == (prepared / "labels.json").read_text()


@pytest.mark.slow  # ~40 s; the image and text readers' store tests run by default
def test_an_audio_corpus_in_a_store_preps_as_its_copy_on_disk(s3_bucket, speech_corpus,
                                                              speech_prepared, tmp_path):  # fmt: skip
    """``prep.source`` and the labelled sets as ``s3://...`` for audio (LibriLight chapters with
    their voice-activity JSONs, LibriSpeech-form digit strings with transcripts; the broken and
    quirky inputs included), walked and each recording read through fsspec: the same
    manifests, counts, feature statistics and classes as the folders they were uploaded from
    (``speech_prepared``)."""
    from data_prep.audio.reader import prep_audio
    from data_prep.shard_format import FEATURE_STATS
    from tests.conftest import audio_prep_config

    fsspec.filesystem("s3").put(str(speech_corpus), f"{s3_bucket}/speech/raw", recursive=True)
    raw, out = f"{s3_bucket}/speech/raw", tmp_path / "from_store"
    cfg = audio_prep_config(speech_corpus, out, source=f"{raw}/librilight",
                            labelled_train=f"{raw}/digits/train",
                            labelled_val=f"{raw}/digits/val")  # fmt: skip
    prep_audio(cfg)
    _same_prep(out, speech_prepared, ("train", "val", "labelled_train", "labelled_val"))
    for name in (FEATURE_STATS, "labels.json"):
        assert (out / name).read_text() == (speech_prepared / name).read_text()
    # chapters in pieces: each task reads its span by ranged reads of the object
    pieces = tmp_path / "pieces"
    prep_audio(dataclasses.replace(cfg, out=str(pieces), splits=["train", "val"],
                                   task_bytes=100_000))  # fmt: skip
    for split in ("train", "val"):
        assert _samples(pieces / split) == _samples(speech_prepared / split)


@pytest.mark.slow  # ~40 s; the image and text readers' store tests run by default
def test_a_video_corpus_in_a_store_preps_as_its_copy_on_disk(s3_bucket, clip_corpus,
                                                             clips_prepared, tmp_path):  # fmt: skip
    """``prep.source: s3://...`` for video (the Kinetics layout: CSVs, clips in mp4, mkv and
    webm, truncated and audio-only files, a row without its file), walked and each video read
    through fsspec and decoded from memory: the same manifests and counts as the folder."""
    from data_prep.video.reader import prep_video
    from tests.conftest import video_prep_config

    fsspec.filesystem("s3").put(str(clip_corpus), f"{s3_bucket}/clips/raw", recursive=True)
    out = tmp_path / "from_store"
    prep_video(video_prep_config(f"{s3_bucket}/clips/raw", out))  # type: ignore[arg-type]
    _same_prep(out, clips_prepared, ("train", "val"))


def test_a_reader_that_reads_only_folders_refuses_a_store_source_in_one_line(tmp_path):
    """The contract for a reader added later: without ``reads_stores`` a URL source is refused
    before any work, saying to mount the bucket."""
    import dataclasses

    from data_prep.corpus import SourceError
    from data_prep.image.reader import READER
    from data_prep.job import run_prep

    folders_only = dataclasses.replace(READER, reads_stores=False)
    cfg = prep_config("s3://bucket/raw", tmp_path / "out")
    with pytest.raises(SourceError, match=r"prep\.source s3://bucket/raw: .* mount the bucket"):
        run_prep(folders_only, cfg)


def _samples(split_dir) -> dict:
    from data_prep.shard_format import read_shard_samples, shard_urls

    return {
        s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
        for url in shard_urls(split_dir)
        for s in read_shard_samples(url)
    }
