"""The audio prep, run for real (local Ray) on the espeak-ng demo corpus with its broken inputs."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import soundfile as sf
import webdataset as wds

from data_prep.audio.reader import prep_audio
from data_prep.audio.segments import clean_intervals, plan_segments
from data_prep.corpus import LayoutError
from data_prep.shard_format import (
    FEATURE_STATS,
    file_sha256,
    read_labels,
    read_manifest,
    read_shard_samples,
    read_stats,
    shard_urls,
)
from tests.conftest import audio_prep_config
from training.modalities.audio.ops import waveform_of


def _segments(prepared: Path) -> dict[str, list[tuple[float, float]]]:
    """source chapter -> its (start, end) segments, from the shards of train and val."""
    found: dict[str, list] = {}
    for split in ("train", "val"):
        for sample in wds.WebDataset(shard_urls(prepared / split), shardshuffle=False):
            meta = json.loads(sample["json"])
            found.setdefault(meta["source"], []).append((meta["start"], meta["end"]))
    return found


def test_every_second_of_voice_activity_lands_in_exactly_one_segment(
    speech_corpus, speech_prepared
):
    """Summed over the shards: the speech each segment holds, plus what the prep counted as
    dropped (pieces shorter than min_segment_seconds), is the chapter's voice activity."""
    segments = _segments(speech_prepared)
    root = speech_corpus / "librilight"
    checked = 0
    for meta_path in sorted(root.glob("*/*/*/*.json")):
        flac = meta_path.with_suffix(".flac")
        rel = str(flac.relative_to(root))
        activity = json.loads(meta_path.read_text())["voice_activity"]
        if not activity or rel not in segments:
            continue  # fixed windows, or skipped (empty / truncated): counted elsewhere
        duration = sf.info(str(flac)).duration
        plan = plan_segments(activity, duration, 4.0, 1.0)  # the fixture's prep keys
        spans = sorted(segments[rel])
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "segments overlap"
        # Segments never overlap, so no second is in two of them; a long interval is split
        # over neighbouring segments, each second still in one.
        landed = sum(
            max(0.0, min(end, i.end) - max(start, i.start))
            for i in clean_intervals(activity, duration)[0]
            for start, end in spans
        )
        assert landed + plan.dropped_seconds == pytest.approx(plan.speech_seconds, abs=1e-3)
        assert landed > 0.9 * plan.speech_seconds
        checked += 1
    assert checked >= 3


def test_bad_inputs_are_counted_by_reason(speech_prepared):
    stats = {s: read_stats(speech_prepared / s) for s in
             ("train", "val", "labelled_train", "labelled_val")}  # fmt: skip
    skipped = {k: v for s in ("train", "val") for k, v in stats[s]["skipped"].items()}
    converted: dict[str, int] = {}
    for s in ("train", "val"):
        for k, v in stats[s]["converted"].items():
            converted[k] = converted.get(k, 0) + v
    assert skipped == {"empty_audio": 1, "truncated_audio": 1}
    assert converted["missing_json"] == 1
    assert converted["no_voice_activity"] == 1  # the JSON with empty voice activity
    assert converted["resampled_22050"] == 1 and converted["downmixed_channels"] == 1
    assert converted.get("interval_clipped", 0) + converted.get("interval_out_of_range", 0) == 1
    assert stats["labelled_train"]["skipped"] == {"missing_transcript": 1}


def test_webdataset_reads_the_shards_and_the_manifest_checks_out(speech_prepared):
    for split in ("train", "labelled_val"):
        records = read_manifest(speech_prepared / split)
        for record in records:
            assert file_sha256(speech_prepared / split / record.file) == record.sha256
        samples = list(wds.WebDataset(shard_urls(speech_prepared / split), shardshuffle=False))
        assert len(samples) == sum(r.samples for r in records)
        audio = waveform_of(samples[0]["flac"])
        meta = json.loads(samples[0]["json"])
        assert len(audio) / 16000 == pytest.approx(meta["seconds"], abs=2e-3)
        if split == "labelled_val":
            assert meta["transcript"] and int(samples[0]["cls"]) >= 0


def test_feature_stats_and_classes_are_written(speech_prepared):
    stats = json.loads((speech_prepared / FEATURE_STATS).read_text())
    assert -20 < stats["mel_mean"] < 5 and 0.5 < stats["mel_std"] < 10
    names = [row["name"] for row in read_labels(speech_prepared)]
    assert len(names) == 3 and all(name.isupper() for name in names)  # the digit strings


def test_a_labelled_set_in_the_wrong_form_fails_before_any_work(speech_corpus, tmp_path):
    from data_prep.audio.reader import items

    cfg = audio_prep_config(
        speech_corpus, tmp_path, labelled_train=str(speech_corpus / "librilight")
    )
    with pytest.raises(LayoutError, match="labelled_train"):
        items(cfg, "labelled_train")


def test_a_long_chapter_is_cut_by_several_tasks_to_the_same_samples(
    speech_corpus, speech_prepared, tmp_path
):
    """``task_bytes``: a chapter over it is several tasks, each decoding only the span of its
    range of segments (before, a LibriLight chapter of hours was one task). The pieces give the
    samples one task per chapter gave, key for key and byte for byte, the 22.05 kHz chapter's
    resampled ones and the stereo one's downmixed ones included, and the same counts."""
    cfg = audio_prep_config(
        speech_corpus, tmp_path / "pieces", splits=["train", "val"], task_bytes=100_000
    )
    pieces = prep_audio(dataclasses.replace(cfg, num_cpus=None))  # few inputs: in process
    for split in ("train", "val"):
        whole_stats = read_stats(speech_prepared / split)
        assert pieces[split]["inputs"] > whole_stats["inputs"]  # 430 KB: five pieces
        for count in ("samples", "skipped", "converted"):
            assert pieces[split][count] == whole_stats[count], (split, count)
        assert _samples(tmp_path / "pieces" / split) == _samples(speech_prepared / split)


def _samples(split_dir: Path) -> dict[str, tuple[bytes, bytes]]:
    return {
        s["__key__"]: (s["flac"], s["json"])
        for url in shard_urls(split_dir)
        for s in read_shard_samples(url)
    }
