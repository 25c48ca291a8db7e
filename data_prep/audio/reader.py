"""The audio modality's corpus reader: LibriLight chapters (unlabelled) and LibriSpeech-form
utterances (labelled) -> 16 kHz mono FLAC samples.

Splits: ``train`` and ``val`` are LibriLight's chapters (``source``), cut into segments from their
voice activity (``data_prep.audio.segments``); LibriLight has no validation split, so ``val`` is
whole speakers held out (``val_speakers``). ``labelled_train`` and ``labelled_val`` are the
LibriSpeech-form sets the downstream tasks train and score on (LibriLight's limited-resource
set and a dev set), one sample per utterance with its transcript.

Each sample is ``<key>.flac`` (16-bit, 16 kHz, mono), ``<key>.json`` (speaker, book, chapter,
source, start, end, seconds; transcript when known) and, for labelled utterances, ``<key>.cls``
(the class index: which transcript or which speaker, per ``label``). At fit time the log-mel
mean and std of a spread of train recordings are written to ``OUT/feature_stats.json``, which
training normalises its features with. What is converted (resampled, downmixed, windowed for
want of voice activity, voice activity repaired) or skipped (empty, truncated, unreadable
audio; an utterance without a transcript) is counted by reason in ``stats.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.audio.decode import RATE, audio_info, flac_bytes, read_audio, read_span, to_mono_16k
from data_prep.audio.demo import SpeechDemoConfig, write_speech_demo
from data_prep.audio.layout import (
    AUDIO_SUFFIXES,
    AudioItem,
    detect_layout,
    held_out_speakers,
    is_layout_file,
    librilight_items,
    librilight_speakers,
    librispeech_items,
    voice_activity,
)
from data_prep.audio.resample import input_span
from data_prep.audio.segments import plan_segments
from data_prep.corpus import SHARD_BYTES, TASK_BYTES, CorpusReader, LayoutError, prep_problems
from data_prep.job import run_prep
from data_prep.plan import piece_range
from data_prep.shard_format import FEATURE_STATS, atomic_write_text
from data_prep.store import location
from data_prep.writer import Converted, Sample, SkipSample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "labelled_train", "labelled_val")
LABELS = ("transcript", "speaker")


@dataclass
class AudioPrepConfig:
    """``prep`` section: a LibriLight folder for pretraining, LibriSpeech-form sets for the
    downstream tasks, and how to cut and shard them."""

    source: str = "???"  # LibriLight: <subset>/<speaker>/<book>/<chapter>.flac + .json
    labelled_train: str | None = None  # LibriSpeech form: <speaker>/<chapter>/*.flac + .trans.txt
    labelled_val: str | None = None
    out: str = "???"
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    val_speakers: float = 0.05  # share of LibriLight speakers held out as `val`
    segment_seconds: float = 10.0  # join voice-activity intervals up to this length
    min_segment_seconds: float = 1.0  # shorter segments are dropped (their speech counted)
    label: str = "transcript"  # the class of a labelled utterance: its transcript or its speaker
    stats_files: int = 64  # train recordings read at fit time for the log-mel mean and std
    samples_per_shard: int = 500
    # a chapter larger than this is cut by several tasks, each a contiguous range of its
    # segments (0: a task per chapter)
    task_bytes: int = TASK_BYTES
    # a shard reaching this size is closed and its unit goes on in a next part (0: no limit)
    shard_bytes: int = SHARD_BYTES
    # memory each Ray task reserves (MB; 0: none): Ray runs no more tasks on a node than fit
    task_memory_mb: int = 0
    seed: int = 0
    num_cpus: int | None = None  # local Ray head size; None = every core
    # A split whose inputs failed with unexpected errors (listed in failures.jsonl) beyond
    # this share fails the prep; below it they are counted and the prep goes on.
    max_failed_share: float = 0.01
    ray_address: str | None = None  # join a running Ray cluster instead of a local head

    def problems(self):
        yield from prep_problems(self)
        if any(s not in SPLITS for s in self.splits):
            yield ("splits", f"a list from {', '.join(SPLITS)}, got {self.splits}")
        for split in ("labelled_train", "labelled_val"):
            if split in self.splits and not getattr(self, split):
                yield (split, f"a LibriSpeech-form folder (the '{split}' split is listed)")
        if not 0.0 <= self.val_speakers < 1.0 or ("val" in self.splits and not self.val_speakers):
            yield ("val_speakers", f"a share in (0, 1) of speakers, got {self.val_speakers}")
        if not 0 < self.min_segment_seconds <= self.segment_seconds:
            yield (
                "min_segment_seconds",
                f"0 < min_segment_seconds <= segment_seconds, got {self.min_segment_seconds}",
            )
        if self.label not in LABELS:
            yield ("label", f"one of {', '.join(LABELS)}, got {self.label!r}")
        if self.task_bytes < 0:
            yield ("task_bytes", f"bytes >= 0 (0: a task per chapter), got {self.task_bytes}")
        if self.stats_files < 1:
            yield ("stats_files", f"an int >= 1, got {self.stats_files}")


def items(cfg: AudioPrepConfig, split: str) -> Iterator[AudioItem]:
    if split in ("labelled_train", "labelled_val"):
        root = location(getattr(cfg, split))
        _expect(root, "librispeech", split)
        return iter(librispeech_items(root))
    _expect(location(cfg.source), "librilight", "source")
    held = _held_out(cfg.source, cfg.val_speakers, cfg.seed)
    chapters = librilight_items(location(cfg.source), cfg.task_bytes)
    return (c for c in chapters if (c.speaker in held) == (split == "val"))


def _held_out(source: str, fraction: float, seed: int) -> frozenset[str]:
    """The speakers held out as ``val``: a walk of the source before its items are listed (not
    cached across calls: a corpus may change between two preps in one process)."""
    if not fraction:
        return frozenset()
    return held_out_speakers(librilight_speakers(location(source)), fraction, seed)


def _expect(root, layout: str, key: str) -> None:
    found = detect_layout(root)
    if found != layout:
        raise LayoutError(f"prep.{key}: {root} is in {found} form; expected {layout}")


def labels(cfg: AudioPrepConfig) -> list[dict] | None:
    names = class_names(cfg)
    return None if names is None else [{"index": i, "name": n} for i, n in enumerate(names)]


def class_names(cfg: AudioPrepConfig) -> list[str] | None:
    """The classes of labelled utterances: every transcript (or speaker) of ``labelled_train``,
    sorted."""
    if not cfg.labelled_train:
        return None
    found = librispeech_items(location(cfg.labelled_train))
    return sorted({getattr(u, cfg.label) for u in found if u.transcript is not None})


def fit(cfg: AudioPrepConfig, train_items) -> dict:
    """Measure the log-mel statistics (written beside the splits) and fix the class indices."""
    names = class_names(cfg) or []
    _write_feature_stats(cfg, train_items)
    return {"classes": {name: i for i, name in enumerate(names)}}


def _write_feature_stats(cfg: AudioPrepConfig, train_items: Sequence[AudioItem]) -> None:
    """Log-mel mean and std over ``stats_files`` recordings spread evenly over the train split;
    kept from an earlier run when it read the same recordings."""
    step = max(1, len(train_items) // cfg.stats_files)
    chosen = train_items[::step][: cfg.stats_files]
    digest = hashlib.sha256("\n".join(map(str, chosen)).encode()).hexdigest()
    path = location(cfg.out) / FEATURE_STATS
    if path.is_file() and json.loads(path.read_text()).get("inputs_sha256") == digest:
        return
    import torch  # here: reading a run YAML (a login node rendering Slurm jobs) needs no torch

    from data_prep.audio.features import log_mel

    total = np.zeros(3)  # count, sum, sum of squares (float64)
    for item in chosen:
        try:
            samples, _ = to_mono_16k(*read_audio(item.file))
        except SkipSample as skip:
            log.warning("feature statistics: skipped %s (%s)", item, skip)
            continue
        mel = log_mel(torch.from_numpy(samples)).double()
        total += [mel.numel(), mel.sum().item(), mel.square().sum().item()]
    if total[0] == 0:
        raise LayoutError(f"no readable train recording under {cfg.source} for feature stats")
    mean = total[1] / total[0]
    std = float(np.sqrt(max(total[2] / total[0] - mean**2, 1e-12)))
    stats = {"mel_mean": mean, "mel_std": std, "files": len(chosen), "inputs_sha256": digest}
    atomic_write_text(path, json.dumps(stats, indent=1) + "\n")


def encode(cfg: AudioPrepConfig, state: dict, item: AudioItem) -> Iterator:
    """One recording (or one piece of a long chapter) -> its samples, with what was converted;
    a SkipSample for bad input."""
    if item.problem == "missing_transcript":
        raise SkipSample("missing_transcript", item.path)
    if item.transcript is not None:
        samples, conversions = to_mono_16k(*read_audio(item.file))
        yield from map(Converted, conversions)
        yield _utterance(item, samples, state["classes"].get(getattr(item, cfg.label), -1))
        return
    yield from _chapter_segments(cfg, item)


def _chapter_segments(cfg: AudioPrepConfig, item: AudioItem) -> Iterator:
    """A LibriLight chapter cut at its voice activity (fixed windows without it). A chapter in
    pieces: each plans the whole chapter's segments from the header's length and decodes only
    the span of its range (``resample.input_span``: resampled, the very samples the whole
    chapter gave), so the pieces together give the samples one task gave, key for key and byte
    for byte. The chapter's conversions are counted once: the JSON's by piece 0, the audio's by
    the piece holding the first segment."""
    activity, problem = voice_activity(item)
    if item.parts == 1:
        samples, conversions = to_mono_16k(*read_audio(item.file))
        length, first = len(samples), 0
    else:
        frames, rate = audio_info(item.file)
        length = -(-frames * RATE // rate)  # the 16 kHz samples the whole chapter resamples to
    plan = plan_segments(activity, length / RATE, cfg.segment_seconds, cfg.min_segment_seconds)
    lo, hi = piece_range(len(plan.segments), item.part, item.parts)
    mine = plan.segments[lo:hi]
    end = min(length, round(mine[-1].end * RATE)) if mine else 0
    if item.parts > 1 and mine:
        a, b, first = input_span(round(mine[0].start * RATE), end, frames, rate, RATE)
        samples, conversions = to_mono_16k(*read_span(item.file, a, b))
    if item.part == 0:
        yield from _plan_conversions(plan, problem)
    if item.parts == 1 or (mine and lo == 0):  # a piece without segments read no audio
        yield from map(Converted, conversions)
    for k, span in enumerate(mine, start=lo):
        piece = samples[round(span.start * RATE) - first : min(end, round(span.end * RATE)) - first]
        meta = json.dumps(_meta(item, span.start, span.end)).encode()
        yield Sample(
            key=f"{_stem(item)}_{k:04d}", members={"flac": flac_bytes(piece), "json": meta}
        )


def _plan_conversions(plan, problem: str | None) -> Iterator[Converted]:
    if problem:  # missing or unreadable JSON: fixed windows
        yield Converted(problem)
    for reason in plan.problems:
        if not (reason == "no_voice_activity" and problem):
            yield Converted(reason)
    if plan.dropped_seconds:
        yield Converted("short_segment_dropped")


def _piece_range(count: int, part: int, parts: int) -> tuple[int, int]:
    """The segments ``[lo, hi)`` piece ``part`` of ``parts`` cuts: contiguous, sizes within one."""
    return part * count // parts, (part + 1) * count // parts


def _utterance(item: AudioItem, samples: np.ndarray, label: int) -> Sample:
    meta = {**_meta(item, 0.0, len(samples) / RATE), "transcript": item.transcript}
    return Sample(
        key=_stem(item),
        members={
            "flac": flac_bytes(samples),
            "cls": str(label).encode(),
            "json": json.dumps(meta).encode(),
        },
    )


def _meta(item: AudioItem, start: float, end: float) -> dict:
    return {
        "speaker": item.speaker,
        "book": item.book,
        "chapter": item.chapter,
        "source": item.path,
        "start": round(start, 4),
        "end": round(end, 4),
        "seconds": round(end - start, 4),
    }


def _stem(item: AudioItem) -> str:
    """A dot-free key: ``<speaker>_<book>_<chapter>`` for LibriLight, the utterance id else."""
    if item.transcript is not None:
        return item.chapter.replace(".", "_")
    return f"{item.speaker}_{item.book}_{item.chapter}".replace(".", "_").replace("/", "_")


READER = CorpusReader(
    modality="audio",
    layout="LibriLight: <subset>/<speaker>/<book>/<chapter>.flac + .json; labelled sets in "
    "LibriSpeech form: <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + .trans.txt",
    config=AudioPrepConfig,
    items=items,
    fit=fit,
    encode=encode,
    labels=labels,
    demo_config=SpeechDemoConfig,
    write_demo=write_speech_demo,
    source_keys=("source", "labelled_train", "labelled_val"),
    optional_splits={"labelled_train": "labelled_train", "labelled_val": "labelled_val"},
    input_file=lambda cfg, item: str(item.file),
    reads_format=lambda name: Path(name).suffix.lower() in AUDIO_SUFFIXES,
    layout_file=is_layout_file,
    # the layout is walked and each recording read through fsspec (fetched whole: libsndfile
    # seeks in it)
    reads_stores=True,
)


def prep_audio(cfg: AudioPrepConfig) -> dict[str, dict]:
    """Prepare every configured split; returns ``{split: stats}``. Fails fast on a bad source."""
    return run_prep(READER, cfg)
