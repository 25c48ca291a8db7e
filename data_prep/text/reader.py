"""The text modality's corpus reader: C4 / Pile / Wikipedia / plain-text files -> packed token
sequences, and a labelled set -> one tokenised record per sample.

Splits: ``train`` and ``val`` are the corpus (``source``, every format of
``data_prep.text.layout``), a document going to ``val`` when the hash of its text falls in
``val_fraction``, so the held-out split is the same on every run and never shares a document with
``train``. ``labelled_train`` and ``labelled_val`` are the classification set the downstream tasks
train and score on (``labelled``: ``train.jsonl`` and ``val.jsonl``, any JSON-lines form, with
``text`` and ``label``).

At fit time, as Ray tasks (``data_prep.text.dedup``): every normalised document is hashed, a
task per file, and the hashes are merged a task per hash bucket (the first copy of a text is
kept, later exact copies are dropped as ``duplicate``); the tokenizer is trained on a seeded
sample of ``tokenizer_sample_docs`` unique training documents drawn by the same tasks (or
``tokenizer`` is loaded) and saved as ``OUT/tokenizer.json``. The driver holds neither the
hashes nor more than the sample. Each corpus file is then tokenised by a Ray task,
its documents packed end to end with ``[SEP]`` after each (``data_prep.text.pack``).

A sample is ``<file>_<seq>.tokens.npy.zst``: a ``[2, seq_len]`` array (uint16 while the vocabulary
fits, else uint32) of token ids and word-start flags, zstd-compressed; ``.json`` (source, real
tokens); labelled samples add ``.cls``. Skipped, by reason: ``invalid_utf8``, ``malformed_json``,
``missing_text``, ``empty_text`` (counted in ``train``: a bad line has no text to assign a split
by), ``duplicate``, ``near_duplicate`` (with ``near_dedup``), ``missing_label``, ``unknown_label``; converted: ``truncated_record`` (a
labelled record longer than ``seq_len``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from data_prep.corpus import SHARD_BYTES, TASK_BYTES, CorpusReader, LayoutError, prep_problems
from data_prep.job import run_prep
from data_prep.plan import pieces_of
from data_prep.shard_format import atomic_write_text, npy_zst_bytes
from data_prep.store import location
from data_prep.text import dedup, minhash
from data_prep.text.demo import TextDemoConfig, write_text_demo
from data_prep.text.layout import (
    BadLine,
    Document,
    TextFile,
    format_of,
    in_piece,
    read_documents,
    text_files,
)
from data_prep.text.pack import pack_stream
from data_prep.text.tokenizer import (
    KINDS,
    PAD,
    SEP,
    TOKENIZER_FILE,
    StreamEncoder,
    ids_dtype,
    load_tokenizer,
    train_tokenizer,
    word_starts,
)
from data_prep.writer import Converted, Sample, SkipSample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "labelled_train", "labelled_val")
TOKENS = "tokens.npy.zst"  # the member every text sample has
_ENCODE_BATCH = 256  # documents per tokenizer call


@dataclass
class TextPrepConfig:
    """``prep`` section: the corpus, the labelled set, the tokenizer and the packing."""

    source: str = "???"  # a folder of *.json.gz, *.jsonl(.zst), *.parquet, *.txt files
    labelled: str | None = None  # a folder with train.jsonl and val.jsonl (text, label)
    out: str = "???"
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    text_field: str = "text"
    label_field: str = "label"
    val_fraction: float = 0.01  # share of corpus documents held out (by a hash of their text)
    seq_len: int = 128  # tokens per packed sequence
    tokenizer: str | None = None  # a tokenizer.json to use instead of training one
    tokenizer_kind: str = "wordpiece"  # wordpiece (BERT's) or bpe (byte-level, RoBERTa's)
    vocab_size: int = 30522  # BERT's
    lowercase: bool = True
    tokenizer_sample_docs: int = 100_000  # unique training documents the tokenizer learns from
    # also drop near-duplicates (MinHash LSH, 5-word shingles, 14 bands x 8: data_prep.text.minhash)
    near_dedup: bool = False
    samples_per_shard: int = 1  # input files per shard (a corpus file gives many sequences)
    # a corpus file (JSON lines, parquet) larger than this is read by several tasks, each taking
    # every n-th block of 1,000 lines (data_prep.text.layout.in_piece); 0: a task per file
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
            yield ("splits", f"a non-empty list of {', '.join(SPLITS)}, got {self.splits}")
        if any(s.startswith("labelled") for s in self.splits) and not self.labelled:
            yield ("labelled", "a folder with train.jsonl and val.jsonl for the labelled splits")
        if not 0.0 <= self.val_fraction < 1.0:
            yield ("val_fraction", f"a float in [0, 1), got {self.val_fraction}")
        if self.seq_len < 8:
            yield ("seq_len", f"an int >= 8 (tokens), got {self.seq_len}")
        if self.tokenizer_kind not in KINDS:
            yield ("tokenizer_kind", f"one of {', '.join(KINDS)}, got {self.tokenizer_kind!r}")
        if self.vocab_size < 100:
            yield ("vocab_size", f"an int >= 100, got {self.vocab_size}")
        if self.task_bytes < 0:
            yield ("task_bytes", f"bytes >= 0 (0: a task per file), got {self.task_bytes}")
        if self.tokenizer_sample_docs < 1:
            yield ("tokenizer_sample_docs", f"an int >= 1, got {self.tokenizer_sample_docs}")


@dataclass(frozen=True)
class TextItem:
    """One input file read for one split (the corpus splits read every file), or one piece of
    a large one (``part`` of ``parts``: every ``parts``-th block of its lines)."""

    file: TextFile
    split: str
    number: int  # the file's place in the corpus listing (names it in the dedup records)
    part: int = 0
    parts: int = 1

    def __str__(self) -> str:
        piece = f" [piece {self.part + 1} of {self.parts}]" if self.parts > 1 else ""
        return f"{self.file.path}{piece} ({self.split})"

    def keep(self):
        """Which of the file's line indices this item reads (None: all)."""
        return None if self.parts == 1 else functools.partial(in_piece, self.part, self.parts)

    @property
    def key(self) -> str:
        """Its samples' key prefix: the file's, and the piece's number in a file read in pieces."""
        return self.file.key if self.parts == 1 else f"{self.file.key}_p{self.part:05d}"


def items(cfg: TextPrepConfig, split: str) -> Iterator[TextItem]:
    for n, f in enumerate(_split_files(cfg, split)):
        parts = _pieces(cfg, f) if split in ("train", "val") else 1
        yield from (TextItem(f, split, n, part, parts) for part in range(parts))


def _pieces(cfg: TextPrepConfig, file: TextFile) -> int:
    """How many tasks read a corpus file: one per ``task_bytes`` of it (a text file is one
    document: one)."""
    if not cfg.task_bytes or file.format == "txt":
        return 1
    return pieces_of(file.file.stat().st_size, cfg.task_bytes)


def _split_files(cfg: TextPrepConfig, split: str) -> list[TextFile]:
    if split in ("train", "val"):
        return text_files(location(cfg.source))
    name = split.removeprefix("labelled_")
    files = [f for f in text_files(location(cfg.labelled)) if f.path.split(".")[0] == name]
    if not files:
        raise LayoutError(f"{cfg.labelled} has no {name}.jsonl (text and label on each line)")
    return files


def held_out(text: str, fraction: float, seed: int) -> bool:
    """Whether a document belongs to ``val``: a hash of its text, uniform in [0, 1)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def fit(cfg: TextPrepConfig, train_items) -> dict:
    """Which documents are later copies, and the tokenizer (trained on a seeded sample, or
    reused from ``OUT/tokenizer.json`` on a rerun): distributed steps (``data_prep.text.dedup``)
    run as Ray tasks inside the prep's session."""
    saved = location(cfg.out) / TOKENIZER_FILE
    wanted = 0 if cfg.tokenizer or saved.exists() else cfg.tokenizer_sample_docs
    files = [i.file for i in train_items if i.part == 0]  # a file read in pieces, once
    plan, sizes = dedup.plan(cfg.out, files, cfg, wanted)
    found = dedup.find_copies(plan, files, sizes)
    near = minhash.find_near_copies(plan, files) if cfg.near_dedup else None
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    elif saved.exists():
        tok = load_tokenizer(saved)
    else:
        sample = dedup.tokenizer_sample(plan)
        log.info("training a %s tokenizer on %d documents", cfg.tokenizer_kind, len(sample))
        tok = train_tokenizer(sample, cfg.tokenizer_kind, cfg.vocab_size, cfg.lowercase)
    if not saved.exists() or cfg.tokenizer:
        atomic_write_text(saved, tok.to_str(pretty=True))  # the bytes tok.save writes
    dedup.drop_working_files(plan)
    log.info("%d unique documents, %d later copies%s", found["documents"] - found["copies"],
             found["copies"], f", {near['near_copies']} near-copies" if near else "")  # fmt: skip
    return {
        "copies": dedup.Copies(plan.folder, plan.files, tuple(found["buckets"])),
        "near": minhash.NearCopies(plan.folder, plan.files) if near else None,
        "tokenizer": str(saved),
        "classes": _classes(cfg),
    }


def labels(cfg: TextPrepConfig) -> list[dict] | None:
    classes = _classes(cfg)
    return [{"index": i, "name": n} for n, i in classes.items()] if classes else None


def _classes(cfg: TextPrepConfig) -> dict[str, int]:
    """Label name -> index, from the labelled train file (sorted names)."""
    if not cfg.labelled or "labelled_train" not in cfg.splits:
        return {}
    names = set()
    for file in _split_files(cfg, "labelled_train"):
        for doc in read_documents(file, cfg.text_field, cfg.label_field):
            if isinstance(doc, Document) and doc.label is not None:
                names.add(doc.label)
    return {n: i for i, n in enumerate(sorted(names))}


def encode(cfg: TextPrepConfig, state: dict, item: TextItem) -> Iterator:
    stream = _encoder(state["tokenizer"])
    tok, file = stream.tok, item.file
    if item.split.startswith("labelled"):
        yield from _labelled_samples(cfg, state, tok, file)
        return
    dtype = ids_dtype(tok.get_vocab_size())
    skips: list[SkipSample] = []

    def documents():
        for doc in _split_documents(cfg, state, item):
            if isinstance(doc, SkipSample):
                skips.append(doc)
            else:
                yield doc

    # Made once an item, not once a sample (the key's regex and json.dumps were 4% of the
    # prep at seq 128): the bytes json.dumps({"source": path, "tokens": n}) gives.
    key, meta = item.key, f'{{"source": {json.dumps(file.path)}, "tokens": '.encode()
    array = np.empty((2, cfg.seq_len), dtype)
    for n, seq in enumerate(pack_stream(_tokenised(stream, documents()), cfg.seq_len, PAD)):
        array[0], array[1] = seq.ids, seq.starts
        yield Sample(
            key=f"{key}_{n:06d}",
            members={TOKENS: npy_zst_bytes(array), "json": meta + b"%d}" % seq.tokens},
        )
    yield from skips


def _split_documents(cfg, state, text: TextItem):
    """The item's documents that belong to its split, first copies only; counts the rest."""
    item, split, number = text.file, text.split, text.number
    copies = dedup.copies_in(state["copies"], number)
    near = minhash.near_copies_in(state["near"], number) if state.get("near") else frozenset()
    for doc in read_documents(item, cfg.text_field, keep=text.keep()):
        if isinstance(doc, BadLine):
            if split == "train":
                yield SkipSample(doc.reason, doc.detail or f"{item.path}:{doc.index + 1}")
            continue
        if held_out(doc.text, cfg.val_fraction, cfg.seed) != (split == "val"):
            continue
        if doc.index in copies:
            yield SkipSample("duplicate", f"{item.path}:{doc.index + 1}")
            continue
        if doc.index in near:
            yield SkipSample("near_duplicate", f"{item.path}:{doc.index + 1}")
            continue
        yield doc


def _tokenised(stream: StreamEncoder, docs) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The token stream of the documents (ids and word starts, a separator after each), a
    tokenizer batch at a time."""
    batch: list[str] = []
    for doc in docs:
        batch.append(doc.text)
        if len(batch) == _ENCODE_BATCH:
            yield stream(batch)
            batch = []
    if batch:
        yield stream(batch)


def _labelled_samples(cfg, state, tok, item: TextFile) -> Iterator:
    classes = state["classes"]
    dtype = ids_dtype(tok.get_vocab_size())
    for doc in read_documents(item, cfg.text_field, cfg.label_field):
        if isinstance(doc, BadLine):
            yield SkipSample(doc.reason, doc.detail or f"{item.path}:{doc.index + 1}")
            continue
        if doc.label is None:
            yield SkipSample("missing_label", f"{item.path}:{doc.index + 1}")
            continue
        if doc.label not in classes:
            yield SkipSample("unknown_label", f"{item.path}:{doc.index + 1}: {doc.label!r}")
            continue
        enc = tok.encode(doc.text, add_special_tokens=False)
        ids, starts = enc.ids[: cfg.seq_len], word_starts(enc)[: cfg.seq_len]
        if len(enc.ids) > cfg.seq_len:
            yield Converted("truncated_record")
        pad = cfg.seq_len - len(ids)
        array = np.array([ids + [PAD] * pad, [*starts.tolist(), *[1] * pad]], dtype=dtype)
        yield Sample(
            key=f"{item.key}_{doc.index:07d}",
            members={
                TOKENS: npy_zst_bytes(array),
                "cls": str(classes[doc.label]).encode(),
                "json": json.dumps({"source": item.path, "tokens": len(ids)}).encode(),
            },
        )


_ENCODERS: dict[str, StreamEncoder] = {}


def _encoder(path: str) -> StreamEncoder:
    """The saved tokenizer's stream encoder, made once per worker process."""
    if path not in _ENCODERS:
        _ENCODERS[path] = StreamEncoder(load_tokenizer(path), SEP)
    return _ENCODERS[path]


READER = CorpusReader(
    modality="text",
    layout="a folder of *.json.gz / *.jsonl.gz (C4), *.jsonl.zst / *.jsonl (Pile), *.parquet "
    "(Wikipedia), *.txt (one document per file), *.json; any of them .gz/.bz2/.zst/.xz; labelled: "
    "train.jsonl and val.jsonl",
    config=TextPrepConfig,
    items=items,
    fit=fit,
    encode=encode,
    labels=labels,
    demo_config=TextDemoConfig,
    write_demo=write_text_demo,
    source_keys=("source", "labelled"),
    reads_stores=True,
    optional_splits={"labelled_train": "labelled", "labelled_val": "labelled"},
    input_file=lambda cfg, item: str(item.file.file),
    reads_format=lambda name: format_of(name) is not None,
)


def prep_text(cfg: TextPrepConfig) -> dict[str, dict]:
    """Prepare every configured split; returns ``{split: stats}``. Fails fast on a bad source."""
    return run_prep(READER, cfg)
