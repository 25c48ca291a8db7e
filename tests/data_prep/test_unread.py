"""Every file under a source is read or accounted for: the unread ones named by reason in the
split's records and stats, one console line, and the text forms users have read, not ignored."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
from pathlib import Path

import pytest
from PIL import Image

from data_prep.corpus import SourceError
from data_prep.image.reader import ImagePrepConfig, prep_imagenet
from data_prep.text.layout import TextFile, format_of, read_documents
from data_prep.unread import (
    HIDDEN,
    OUTSIDE_LAYOUT,
    SPLIT_NOT_PREPARED,
    UNSUPPORTED,
    Unread,
    suffix_of,
    summary,
    unread_files,
)
from data_prep.writer import IGNORED, STATS


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), (10, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _messy_imagenet(root: Path) -> None:
    """Two classes of real pictures, and what a real disk also holds beside them."""
    for wnid in ("n01440764", "n01443537"):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(2):
            (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(_jpeg())
    cls = root / "train" / "n01440764"
    (cls / "song.mp3").write_bytes(b"ID3")  # not an image format
    (cls / "song2.mp3").write_bytes(b"ID3")
    (cls / ".DS_Store").write_bytes(b"\0")  # macOS leaves these everywhere
    (cls / "extra").mkdir()
    (cls / "extra" / "deep.JPEG").write_bytes(_jpeg())  # below the class folder: not read
    (root / "val" / "n01440764").mkdir(parents=True)
    (root / "val" / "n01440764" / "v.JPEG").write_bytes(_jpeg())  # a split not asked for
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench\nn01443537 goldfish\n")


def test_every_file_a_prep_did_not_read_is_named_by_reason(tmp_path, caplog):
    src, out = tmp_path / "src", tmp_path / "out"
    _messy_imagenet(src)
    with caplog.at_level(logging.WARNING):
        stats = prep_imagenet(ImagePrepConfig(source=str(src), out=str(out), splits=["train"]))
    assert stats["train"]["samples"] == 4
    assert stats["train"]["ignored"] == {
        HIDDEN: 1, OUTSIDE_LAYOUT: 1, SPLIT_NOT_PREPARED: 1, UNSUPPORTED: 2,
    }  # fmt: skip
    assert json.loads((out / "train" / STATS).read_text())["ignored"] == stats["train"]["ignored"]
    rows = [json.loads(line) for line in (out / "train" / IGNORED).read_text().splitlines()]
    by_name = {Path(r["path"]).name: (r["reason"], r["detail"]) for r in rows}
    assert by_name == {
        ".DS_Store": (HIDDEN, ""),
        "deep.JPEG": (OUTSIDE_LAYOUT, ""),
        "song.mp3": (UNSUPPORTED, ".mp3"),
        "song2.mp3": (UNSUPPORTED, ".mp3"),
        "v.JPEG": (SPLIT_NOT_PREPARED, "val"),
    }  # the synset table is the layout's own file: read, so not listed
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert said == [
        "ignored 5 files: 2 × .mp3 (not an image format maskmill reads), 1 × hidden file, "
        "1 × not where the layout reads it (a nested folder, or no label table names it), "
        "1 × val/ (in a split not prepared) (each listed in its split's .maskmill/ignored.jsonl)"
    ]


def test_a_source_of_only_unread_files_fails_naming_them(tmp_path):
    src = tmp_path / "src"
    (src / "train" / "n01440764").mkdir(parents=True)
    for i in range(3):
        (src / "train" / "n01440764" / f"{i}.heic").write_bytes(b"ftypheic")
    with pytest.raises(SourceError, match=r"holds no inputs .*ignored 3 files: 3 × \.heic"):
        prep_imagenet(ImagePrepConfig(source=str(src), out=str(tmp_path / "o"), splits=["train"]))


def test_unread_files_skips_inputs_and_layout_files(tmp_path):
    for rel in ("a/x.flac", "a/x.json", "a/y.wav", "b/notes.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = list(
        unread_files(
            [tmp_path],
            used={str(tmp_path / "a/x.flac")},
            reads=lambda rel: rel.endswith(".json"),
            formats=lambda name: name.endswith((".flac", ".wav")),
        )
    )
    assert found == [
        Unread(str(tmp_path / "a/y.wav"), OUTSIDE_LAYOUT),
        Unread(str(tmp_path / "b/notes.md"), UNSUPPORTED, ".md"),
    ]


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("a.mp3", ".mp3"), ("a.TXT.GZ", ".txt.gz"), ("archive.tar.gz", ".tar.gz"), ("README", "no suffix"),
     ("v1.2.json", ".json")],
)  # fmt: skip
def test_the_suffix_a_file_name_claims(name, suffix):
    assert suffix_of(name) == suffix


def test_the_console_line_is_capped():
    unread = [Unread(f"/s/{i}.x{i}", UNSUPPORTED, f".x{i}") for i in range(6)]
    line = summary(unread, "audio")
    assert line.startswith("ignored 6 files: 1 × .x0 (not an audio format maskmill reads)")
    assert line.endswith(", and 2 more kinds")


DOCS = [{"text": "the first document"}, {"text": "a second one"}]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.jsonl", b"\xef\xbb\xbf" + _jsonl(DOCS)),  # a BOM before the first record
        ("a.json", _jsonl(DOCS)),  # JSON lines named .json
        ("a.json", json.dumps(DOCS).encode()),  # one JSON array
        ("a.jsonl.bz2", bz2.compress(_jsonl(DOCS))),
        ("a.json.xz", lzma.compress(_jsonl(DOCS))),
    ],
)
def test_text_forms_users_have_are_read(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    docs = list(read_documents(TextFile(str(tmp_path), name, format_of(name))))
    assert [d.text for d in docs] == [d["text"] for d in DOCS]


def test_compressed_plain_text_is_one_document(tmp_path):
    (tmp_path / "book.txt.gz").write_bytes(gzip.compress("\ufeffCall me Ishmael.".encode()))
    (doc,) = read_documents(TextFile(str(tmp_path), "book.txt.gz", format_of("book.txt.gz")))
    assert doc.text == "Call me Ishmael."
