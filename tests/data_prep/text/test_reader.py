"""Text prep on the demo corpus through the real Ray job: every format read, bad lines and copies
counted by reason, and exactly the clean documents' tokens (plus one separator each) in the
shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_prep.shard_format import (
    npy_zst_array,
    read_manifest,
    read_shard_samples,
    read_stats,
    shard_urls,
)
from data_prep.text.layout import BadLine, normalise, read_documents, text_files
from data_prep.text.reader import TextPrepConfig, fit, held_out, items, prep_text
from data_prep.text.tokenizer import PAD, load_tokenizer
from tests.conftest import TEXT_PREP_KEYS


def _damaged_gzips(folder: Path) -> None:
    """A ``.json.gz`` that is not gzip at all, and one cut short halfway (its first documents
    whole): each used to end the whole prep with an uncaught error on the driver."""
    import gzip

    folder.mkdir()
    (folder / "not_gzip.json.gz").write_bytes(b'{"text": "plain lines, named .gz"}\n')
    lines = [
        json.dumps({"text": f"a document only the cut file holds, no. {i}."}) for i in range(40)
    ]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    (folder / "cut_short.json.gz").write_bytes(whole[: len(whole) // 2])


@pytest.fixture(scope="module")
def prepared(text_demo, tmp_path_factory):
    import shutil

    corpus = tmp_path_factory.mktemp("text_corpus") / "corpus"
    shutil.copytree(text_demo / "corpus", corpus)
    _damaged_gzips(corpus / "damaged")
    out = tmp_path_factory.mktemp("text_prepared") / "shards"
    cfg = TextPrepConfig(
        source=str(corpus),
        labelled=str(text_demo / "labelled"),
        out=str(out),
        num_cpus=2,
        **TEXT_PREP_KEYS,
    )
    prep_text(cfg)
    return cfg, out


def _tokens_in(split_dir: Path) -> tuple[int, list[np.ndarray]]:
    total, arrays = 0, []
    for url in shard_urls(split_dir):
        for sample in read_shard_samples(url):
            array = npy_zst_array(sample["tokens.npy.zst"])
            real = json.loads(sample["json"])["tokens"]
            assert (array[0, real:] == PAD).all() and (array[0, :real] != PAD).all()
            total += real
            arrays.append(array)
    return total, arrays


def test_the_shards_hold_the_tokenizers_count_of_the_clean_unique_documents(prepared):
    cfg, out = prepared
    tok = load_tokenizer(out / "tokenizer.json")
    seen, expected = set(), {"train": 0, "val": 0}
    for file in text_files(Path(cfg.source)):  # an independent pass: first copy of a text wins
        for doc in read_documents(file):
            if isinstance(doc, BadLine) or doc.text in seen:
                continue
            seen.add(doc.text)
            split = "val" if held_out(doc.text, cfg.val_fraction, cfg.seed) else "train"
            expected[split] += len(tok.encode(doc.text, add_special_tokens=False).ids) + 1
    for split in ("train", "val"):
        total, arrays = _tokens_in(out / split)
        assert total == expected[split], split
        assert all(a.shape == (2, cfg.seq_len) for a in arrays)
    assert expected["val"] > 0


def test_every_bad_line_and_copy_is_counted_by_reason(prepared, text_demo):
    _, out = prepared
    skipped = read_stats(out / "train")["skipped"]
    for reason in ("invalid_utf8", "malformed_json", "missing_text", "empty_text"):
        assert skipped[reason] == 1, skipped
    assert skipped["unreadable_file"] == 2, skipped  # the two damaged .json.gz, prep went on
    copies = sum(read_stats(out / s)["skipped"].get("duplicate", 0) for s in ("train", "val"))
    assert copies >= 25  # the demo writes 25 exact copies across files (the stdlib has more)
    labelled = read_stats(out / "labelled_train")
    assert labelled["skipped"] == {"missing_label": 1}
    assert labelled["samples"] == 6 * 20


def test_a_long_document_spans_many_packed_sequences(prepared):
    cfg, out = prepared
    keys = [
        s["__key__"]
        for split in ("train", "val")
        for url in shard_urls(out / split)
        for s in read_shard_samples(url, members=("json",))
        if s["__key__"].startswith("books_long_document_txt")
    ]
    assert len(keys) > 64 * 1024 / 6 / cfg.seq_len  # 64 KB of English: > 1 token per 6 bytes


def test_plain_webdataset_reads_the_shards(prepared):
    _, out = prepared
    urls = shard_urls(out / "labelled_train")
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 6 * 20
    array = npy_zst_array(samples[0]["tokens.npy.zst"])
    assert array.shape == (2, 32) and array.dtype == np.uint16
    assert int(samples[0]["cls"]) in range(6)


def test_the_held_out_split_is_a_stable_hash_of_the_text():
    text = normalise("  Some   text\n\n\nwith  spaces ")
    assert text == "Some text\nwith spaces"
    share = np.mean([held_out(f"doc {i}", 0.1, 0) for i in range(5000)])
    assert 0.08 < share < 0.12
    assert held_out("doc 7", 0.1, 0) == held_out("doc 7", 0.1, 0)
    digest = hashlib.blake2b(b"0:doc 7", digest_size=8).digest()
    assert held_out("doc 7", 0.1, 0) == (int.from_bytes(digest, "little") / 2**64 < 0.1)


def test_normalise_is_the_two_plain_substitutions():
    """The fast paths (substring checks, halving space runs) change nothing: the same text as
    substituting both patterns on every document, on random strings of the troublesome
    characters (unicode spaces, tabs, blank lines, spaces before breaks)."""
    import random
    import re
    import unicodedata

    def plain(text):
        text = re.sub(r"[ \t\f\v\r]+", " ", unicodedata.normalize("NFC", text))
        return re.sub(r" ?\n[\s]*", "\n", text).strip()

    rng = random.Random(0)
    pieces = ["a", "é", "e\u0301", " ", "  ", "\n", "\n\n", " \n", "\t", "\r\n", "\xa0",
              "\u2028", "\x1c", "\x85", "\f", "\v", "b c"]  # fmt: skip
    for _ in range(50_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 24)))
        assert normalise(text) == plain(text), repr(text)


def test_a_rerun_keeps_the_tokenizer_it_trained(prepared):
    cfg, out = prepared
    before = (out / "tokenizer.json").read_bytes()
    state = fit(cfg, items(cfg, "train"))  # what a rerun after a crash does first
    assert (out / "tokenizer.json").read_bytes() == before
    assert Path(state["tokenizer"]) == out / "tokenizer.json"


def test_every_shard_stays_within_twice_the_shard_size(tmp_path):
    """Plan by output: a 4 MB file among small ones. Before, a file was one shard whatever its
    size (a 5 MB document made an 85 MB shard beside 10 KB ones); now a shard reaching
    ``shard_bytes`` rolls over into the next part of its unit."""
    source = tmp_path / "corpus"
    source.mkdir()
    words = " ".join(f"word{i % 500}" for i in range(400))
    big = [json.dumps({"text": f"{words} number {i}."}) for i in range(1500)]
    (source / "big.jsonl").write_text("\n".join(big) + "\n")
    for f in range(3):
        small = [json.dumps({"text": f"small file {f} line {i}"}) for i in range(20)]
        (source / f"small{f}.jsonl").write_text("\n".join(small) + "\n")
    target = 256 * 1024
    cfg = TextPrepConfig(source=str(source), out=str(tmp_path / "out"), splits=["train"],
                         seq_len=64, vocab_size=300, val_fraction=0.0, shard_bytes=target)  # fmt: skip
    stats = prep_text(cfg)["train"]
    records = read_manifest(tmp_path / "out" / "train")
    sizes = sorted(r.bytes for r in records)
    print(f"{len(records)} shards, bytes {sizes[0]:,} .. {sizes[-1]:,} (target {target:,})")
    assert stats["bytes"] > 8 * target and len(records) > 8  # the big file alone rolled over
    assert all(r.samples > 0 for r in records) and sizes[-1] <= 2 * target


def test_a_large_file_is_read_by_several_tasks_to_the_same_documents(tmp_path):
    """``task_bytes``: a file over it becomes pieces, each a task taking every n-th block of
    1,000 lines (before, the Pile's 14 GB files were one task each, for hours). The pieces
    together give what one task gave: the same real tokens, the same copies dropped (a copy
    in another piece included, the first copy kept), the one cut file counted once."""
    import gzip

    source = tmp_path / "corpus"
    source.mkdir()
    texts = [f"document {i} tells of {i % 37} things and {i % 11} more" for i in range(3000)]
    texts[2500] = texts[10]  # a copy three blocks (three pieces) later
    (source / "big.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    noise = [json.dumps({"text": hashlib.sha256(str(i).encode()).hexdigest()}) for i in range(3000)]
    whole = gzip.compress(("\n".join(noise) + "\n").encode())
    (source / "cut.json.gz").write_bytes(whole[: len(whole) // 2])
    (source / "small.jsonl").write_text(json.dumps({"text": "a small file"}) + "\n")

    def prepared(name, task_bytes):
        cfg = TextPrepConfig(source=str(source), out=str(tmp_path / name), splits=["train"],
                             seq_len=32, vocab_size=300, val_fraction=0.0,
                             task_bytes=task_bytes)  # fmt: skip
        stats = prep_text(cfg)["train"]
        keys = [s["__key__"] for url in shard_urls(tmp_path / name / "train")
                for s in read_shard_samples(url)]  # fmt: skip
        assert len(keys) == len(set(keys))
        return stats, _tokens_in(tmp_path / name / "train")[0]

    whole_stats, whole_tokens = prepared("whole", 0)
    piece_stats, piece_tokens = prepared("pieces", 40_000)  # trains the same tokenizer
    assert whole_stats["inputs"] == 3 and piece_stats["inputs"] > 6  # big.jsonl: 5 pieces
    assert piece_tokens == whole_tokens
    assert piece_stats["skipped"] == whole_stats["skipped"]
    assert (
        whole_stats["skipped"]["duplicate"] == 1 and whole_stats["skipped"]["unreadable_file"] == 1
    )
