"""Text dedup as distributed steps (``data_prep.text.dedup``): the copies one pass over the
corpus finds, a seeded tokenizer sample spread over every file, finished steps reused, the same
shards from two preps, and a driver whose memory does not grow with the corpus."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest

from data_prep.shard_format import read_manifest, read_stats
from data_prep.text import dedup
from data_prep.text.layout import BadLine, read_documents, text_files
from data_prep.text.reader import TextPrepConfig, fit, held_out, items, prep_text
from tests.conftest import TEXT_PREP_KEYS


def _corpus(folder: Path, files: int, docs: int, repeat_every: int = 7) -> Path:
    """``files`` JSON-lines files of ``docs`` short documents; every ``repeat_every``-th one
    repeats a text of an earlier file (or of its own), so copies cross files and buckets."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = []
        for d in range(docs):
            n = f * docs + d
            source = (n * 5) // 7 if n % repeat_every == 0 else n  # an earlier text
            lines.append(json.dumps({"text": f"document {source} says {source % 97} things."}))
        (folder / f"part-{f:03d}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _one_pass_copies(files) -> dict[int, set[int]]:
    """The reference: the single pass the driver used to make, first copy in file order."""
    seen, copies = set(), {}
    for number, file in enumerate(files):
        for doc in read_documents(file):
            if isinstance(doc, BadLine):
                continue
            if doc.text in seen:
                copies.setdefault(number, set()).add(doc.index)
            seen.add(doc.text)
    return copies


def _cfg(source: Path, out: Path, **keys) -> TextPrepConfig:
    return TextPrepConfig(source=str(source), out=str(out), splits=["train", "val"], **keys)


def test_the_copies_found_over_buckets_are_those_one_pass_finds(tmp_path):
    source = _corpus(tmp_path / "corpus", files=5, docs=120)
    cfg = _cfg(source, tmp_path / "out")
    files = text_files(source)
    plan, sizes = dedup.plan(cfg.out, files, cfg, sample_docs=0)
    plan = dataclasses.replace(
        plan, buckets=4
    )  # the demo's size makes one; the merge is per bucket
    found = dedup.find_copies(plan, files, sizes)
    expected = _one_pass_copies(files)
    assert sum(map(len, expected.values())) > 60  # copies across files, and within them
    copies = dedup.Copies(plan.folder, plan.files, tuple(found["buckets"]))
    got = {n: set(dedup.copies_in(copies, n)) for n in range(len(files))}
    assert {n: s for n, s in got.items() if s} == expected
    assert found["copies"] == sum(map(len, expected.values()))
    assert found["documents"] == 5 * 120 and len(found["buckets"]) > 1


def test_the_tokenizer_sample_is_seeded_spread_over_the_corpus_and_unique(tmp_path):
    source = _corpus(tmp_path / "corpus", files=6, docs=200)
    cfg = _cfg(source, tmp_path / "out", val_fraction=0.1)
    files = text_files(source)
    samples = {}
    for seed in (0, 1):
        plan, sizes = dedup.plan(cfg.out, files, dataclasses.replace(cfg, seed=seed), 100)
        dedup.find_copies(plan, files, sizes)
        samples[seed] = dedup.tokenizer_sample(plan)
        # the reference: the 100 unique training texts of smallest keyed hash, in corpus order
        unique = {}
        for doc in (d for f in files for d in read_documents(f)):
            if doc.text not in unique and not held_out(doc.text, 0.1, seed):
                unique[doc.text] = dedup._priority(
                    hashlib.blake2b(doc.text.encode(), digest_size=16).digest(), plan
                )
        smallest = set(sorted(unique, key=unique.get)[:100])
        assert samples[seed] == [t for t in unique if t in smallest]
    first_file = {d.text for d in read_documents(files[0])}
    assert len(set(samples[0]) - first_file) > 50  # not the first documents in file order
    assert samples[0] != samples[1]


def test_a_rerun_reuses_the_finished_steps_and_keeps_only_the_copies_lists(tmp_path, monkeypatch):
    source = _corpus(tmp_path / "corpus", files=3, docs=50)
    cfg = _cfg(source, tmp_path / "out", vocab_size=200)
    state = fit(cfg, items(cfg, "train"))
    folder = Path(state["copies"].folder)
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == ["dup", "dups.json"]

    def fails(*args):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(dedup, "write_signatures", fails)
    monkeypatch.setattr(dedup, "write_copies", fails)
    assert fit(cfg, items(cfg, "train"))["copies"] == state["copies"]
    (source / "part-003.jsonl").write_text('{"text": "a new file"}\n')  # another corpus
    monkeypatch.undo()
    again = fit(cfg, items(cfg, "train"))
    assert again["copies"].folder != state["copies"].folder and not folder.exists()


def test_two_preps_of_one_corpus_write_the_same_manifests_dedup_included(prepared_twice):
    (first, second) = prepared_twice
    for split in ("train", "val"):
        a, b = read_manifest(first / split), read_manifest(second / split)
        assert [(r.file, r.samples, r.sha256) for r in a] == [
            (r.file, r.samples, r.sha256) for r in b
        ]
        assert read_stats(first / split)["skipped"] == read_stats(second / split)["skipped"]
    assert read_stats(first / "train")["skipped"]["duplicate"] > 0


@pytest.fixture(scope="module")
def prepared_twice(text_demo, tmp_path_factory):
    """The demo corpus prepared twice, with the default tokenizer (WordPiece: HF's trainer gave
    another vocabulary each time before, tokenizers#1794). In this process both times (below 48
    inputs, no Ray head): the Ray tasks' path is test_reader's fixture and the memory test
    below."""
    outs = []
    for cpus in (None, None):
        out = tmp_path_factory.mktemp("twice") / "shards"
        prep_text(TextPrepConfig(source=str(text_demo / "corpus"), out=str(out), num_cpus=cpus,
                                 splits=["train", "val"], **TEXT_PREP_KEYS))  # fmt: skip
        outs.append(out)
    return outs


def test_the_drivers_memory_does_not_grow_with_the_corpus(tmp_path):
    """The fit's steps run as Ray tasks; the driver's Python allocations (tracemalloc) at 16 k
    and 128 k documents. The one-process pass held a 16-byte hash per document (≈ 80 bytes with
    its set entry: ≈ 9 MB more at the larger size)."""
    from data_prep.ray_job import ray_session

    peaks = {}
    with ray_session(2, None):
        for docs in (2_000, 16_000):
            source = _corpus(tmp_path / f"c{docs}", files=8, docs=docs)
            cfg = _cfg(source, tmp_path / f"out{docs}", vocab_size=200, tokenizer_sample_docs=500)
            train = items(cfg, "train")
            tracemalloc.start()
            fit(cfg, train)
            peaks[docs] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    grew = peaks[16_000] - peaks[2_000]
    print(
        f"driver peak: {peaks[2_000] / 1e6:.2f} MB at 16 k, {peaks[16_000] / 1e6:.2f} MB at 128 k"
    )
    assert grew < 2e6, peaks
