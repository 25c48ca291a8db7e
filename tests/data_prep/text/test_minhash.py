"""Near-duplicate removal (``prep.near_dedup``): MinHash bands catch edited copies and leave
unrelated documents; the steps find the same later copies in any bucket count; a prep counts
them as ``near_duplicate`` and two preps write the same shards."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np

from data_prep.shard_format import read_manifest, read_stats
from data_prep.text import dedup, minhash
from data_prep.text.layout import text_files
from data_prep.text.reader import TextPrepConfig, prep_text

WORDS = [f"w{i}" for i in range(5000)]


def _document(rng: random.Random, n: int = 120) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def _edited(words: list[str], rng: random.Random, changes: int = 1) -> list[str]:
    out = list(words)
    for _ in range(changes):
        out[rng.randrange(len(out))] = rng.choice(WORDS)
    return out


def test_an_edited_copy_shares_a_band_and_an_unrelated_document_none():
    rng = random.Random(0)
    base = _document(rng)
    bands = minhash.band_hashes(" ".join(base))
    assert bands.shape == (minhash.BANDS, 2)
    assert np.array_equal(bands, minhash.band_hashes(" ".join(base).upper()))  # lowercased
    edited = minhash.band_hashes(" ".join(_edited(base, rng)))
    assert (edited == bands).all(axis=1).any()  # Jaccard ~0.92: caught but once in ~16,000
    other = minhash.band_hashes(" ".join(_document(rng)))
    assert not (other == bands).all(axis=1).any()


def _corpus(folder: Path) -> tuple[Path, dict[int, set[int]]]:
    """Three files of 60 unrelated documents; 12 edited copies of earlier documents (some of a
    copy, a chain), placed later; returns the folder and the later copies by file number."""
    rng = random.Random(1)
    files = [[_document(rng) for _ in range(60)] for _ in range(3)]
    expected: dict[int, set[int]] = {}
    for k in range(12):
        f, d = 1 + k % 2, 10 + 3 * k  # into files 1 and 2
        source = files[0][k] if k < 8 else files[1][10 + 3 * (k - 8)]
        files[f][d] = _edited(source, rng)
        expected.setdefault(f, set()).add(d)
    folder.mkdir()
    for n, docs in enumerate(files):
        lines = [json.dumps({"text": " ".join(words)}) for words in docs]
        (folder / f"part-{n}.jsonl").write_text("\n".join(lines) + "\n")
    return folder, expected


def test_the_later_edited_copies_are_found_whatever_the_buckets(tmp_path):
    source, expected = _corpus(tmp_path / "corpus")
    files = text_files(source)
    for buckets in (1, 3):
        cfg = TextPrepConfig(source=str(source), out=str(tmp_path / f"out{buckets}"))
        plan, _ = dedup.plan(cfg.out, files, cfg, sample_docs=0)
        plan = dataclasses.replace(plan, buckets=buckets)
        found = minhash.find_near_copies(plan, files)
        near = minhash.NearCopies(plan.folder, plan.files)
        got = {n: set(minhash.near_copies_in(near, n)) for n in range(3)}
        assert {n: s for n, s in got.items() if s} == expected, buckets
        assert found["near_copies"] == 12


def test_a_prep_counts_near_duplicates_and_repeats_to_the_same_shards(tmp_path):
    source, _ = _corpus(tmp_path / "corpus")
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        prep_text(TextPrepConfig(source=str(source), out=str(out), near_dedup=True, seq_len=32,
                                 vocab_size=300, val_fraction=0.0, splits=["train"],
                                 tokenizer_kind="bpe"))  # fmt: skip
        outs.append([(r.file, r.samples, r.sha256) for r in read_manifest(out / "train")])
    assert outs[0] == outs[1]
    assert read_stats(tmp_path / "a" / "train")["skipped"] == {"near_duplicate": 12}
