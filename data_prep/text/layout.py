"""Text corpora in the formats they ship in -> documents, and what cannot be read, by reason.

Formats, found by file name anywhere under the source folder (sorted, so listings are stable):

* ``*.json.gz``, ``*.jsonl.gz``: C4's (one JSON object per line: ``text``, ``url``, ``timestamp``);
* ``*.jsonl.zst``, ``*.jsonl``: the Pile's (``text``, ``meta``);
* ``*.parquet``: Wikipedia dumps as HF datasets ships them (``id``, ``url``, ``title``, ``text``);
* ``*.txt``: plain text, one document per file;
* the same compressed (``.gz``, ``.bz2``, ``.zst``, ``.xz``), and ``*.json`` (JSON lines, or one
  JSON array of records). A byte-order mark at the start of a file is dropped.

The text field is configurable (``text_field``). A line that is not valid UTF-8, not JSON, or has no
or an empty text field is not a document: :func:`read_documents` yields a :class:`BadLine` with
the reason (``invalid_utf8``, ``malformed_json``, ``missing_text``, ``empty_text``) and goes on.
Text is normalised (Unicode NFC, runs of whitespace to one space or one newline) before it is
hashed, deduplicated or tokenised, so two copies differing only in spacing are one document.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import itertools
import json
import lzma
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from data_prep.corpus import LayoutError
from data_prep.store import location

# suffix -> reader name; the longest matching suffix wins. JSON lines and plain text are read
# as they are or compressed (gzip, bz2, zstd, xz); ``.json`` is JSON lines (as HF datasets and
# most dumps write it) or one JSON array of records.
COMPRESSED = ("", ".gz", ".bz2", ".zst", ".xz")
FORMATS = {
    **{f"{base}{c}": "jsonl" for base in (".json", ".jsonl") for c in COMPRESSED},
    **{f".txt{c}": "txt" for c in COMPRESSED},
    ".parquet": "parquet",
}
BAD_LINE_REASONS = (
    "invalid_utf8", "malformed_json", "missing_text", "empty_text", "unreadable_file",
)  # fmt: skip


@dataclass(frozen=True)
class TextFile:
    """One input file: ``path`` relative to ``root``."""

    root: str
    path: str
    format: str

    @property
    def file(self) -> Path:
        return location(self.root) / self.path

    @property
    def key(self) -> str:
        """The file's path as a sample-key prefix (webdataset keys hold no dots)."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.path)

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class Document:
    index: int  # position among the file's lines / rows (a stable name within the file)
    text: str  # normalised
    label: str | None = None  # the label field's value, when one was asked for and is there


@dataclass(frozen=True)
class BadLine:
    index: int
    reason: str  # one of BAD_LINE_REASONS
    detail: str = ""


def text_files(root: Path) -> list[TextFile]:
    """Every file of a known format under ``root`` (a folder, or a prefix in an object store:
    ``data_prep.store.location``), sorted by path."""
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")
    files = []
    for path in sorted((p for p in root.rglob("*") if p.is_file()), key=str):
        fmt = format_of(path.name)
        if fmt:
            files.append(TextFile(str(root), path.relative_to(root).as_posix(), fmt))
    return files


def format_of(name: str) -> str | None:
    suffix = max((s for s in FORMATS if name.endswith(s)), key=len, default=None)
    return FORMATS[suffix] if suffix else None


_SPACE_RUNS = re.compile(r"[ \t\f\v\r]+")
# A line break with the blank lines and indent after it, matched only where it changes the text
# (a bare "\n" replaced by itself was most of the matches); the one space a break can have
# before it once runs are one space goes by str.replace. A pattern led by a literal is scanned
# fast: 8 ms on the demo corpus's documents against 27 ms for " \n\s*|\n\s+", which also
# tried a match at every space.
_LINE_BREAKS = re.compile(r"\n\s+")
_TABS = ("\t", "\r", "\f", "\v")
# Without tabs, only runs of two spaces or more change: a literal-led pattern sre scans fast
# (15 ms against the class pattern's 87 ms on the demo corpus's 1,574 such documents).
_SPACES = re.compile("  +")


def normalise(text: str) -> str:
    """NFC, trimmed; runs of spaces/tabs to one space, runs of blank lines to one newline.
    Each substitution runs only on a text it can change, and matches only what it changes (a
    match at every single space and every bare line break was 5% of the prep at seq 128);
    ``tests/data_prep/text/test_reader.py`` checks it against the two plain substitutions on
    random strings."""
    text = unicodedata.normalize("NFC", text)
    if any(t in text for t in _TABS):
        text = _SPACE_RUNS.sub(" ", text)
    elif "  " in text:
        text = _SPACES.sub(" ", text)
    if "\n" in text:
        text = _LINE_BREAKS.sub("\n", text.replace(" \n", "\n"))
    return text.strip()


# A piece of a file read by several tasks takes every ``parts``-th block of this many lines (or
# rows): each task decompresses and splits the whole file (~1 GB/s) but parses and tokenises
# only its blocks (~2 µs a token), so a 14 GB Pile file in 56 pieces costs each ~10% extra.
PIECE_LINES = 1000


def in_piece(part: int, parts: int, index: int) -> bool:
    """Whether line ``index`` of a file read in ``parts`` pieces belongs to piece ``part``."""
    return (index // PIECE_LINES) % parts == part


def read_documents(
    file: TextFile,
    text_field: str = "text",
    label_field: str | None = None,
    keep: Callable[[int], bool] | None = None,
) -> Iterator[Document | BadLine]:
    """The documents of one file in order, with a :class:`BadLine` for each unusable line; with
    ``label_field`` (JSON lines only) each document carries that field as a string. With
    ``keep``, only the lines (rows) whose index it accepts are parsed and given (a piece of a
    file several tasks read: :func:`in_piece`); indices stay the file's.

    A file that stops being readable (not gzip though named so, cut short, a read error) ends
    with one ``unreadable_file`` BadLine: the documents before it count, the prep goes on. On the
    driver (the dedup pass) and in a task alike: one such file used to end the whole prep. Of a
    file read in pieces, the piece owning the line where reading stopped says so."""
    reached = [0]  # the index of the line (row) being read: where an unreadable file stopped
    try:
        if file.format == "parquet":
            docs = _parquet_documents(file.file, text_field, keep, reached)
        elif file.format == "txt":
            docs = iter([_txt_document(file.file)])
        else:
            docs = _jsonl_documents(file.file, text_field, label_field, keep, reached)
        yield from docs  # the readers keep ``reached`` as they go
    except UNREADABLE as err:
        if keep is None or keep(reached[0]):
            why = f"{file.path}: {type(err).__name__}: {err}"
            yield BadLine(reached[0], "unreadable_file", why)


def _unreadable() -> tuple[type[BaseException], ...]:
    """What reading a damaged file raises: gzip's and zstd's errors, a read error, a parquet
    file that does not parse."""
    import zlib

    import pyarrow as pa
    import zstandard

    return (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, pa.ArrowInvalid)


UNREADABLE = _unreadable()


@contextlib.contextmanager
def _open_lines(path: Path) -> Iterator[io.BufferedIOBase]:
    """The file's bytes, decompressed by its suffix; from a disk or an object store alike (a
    ``UPath`` opens a stream of its object)."""
    with path.open("rb") as raw:
        if path.name.endswith(".gz"):
            f = gzip.GzipFile(fileobj=raw, mode="rb")
        elif path.name.endswith(".bz2"):
            f = bz2.BZ2File(raw, "rb")
        elif path.name.endswith(".xz"):
            f = lzma.LZMAFile(raw, "rb")  # noqa: SIM115 (closed by the with below)
        elif path.name.endswith(".zst"):
            import zstandard

            f = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
        else:
            yield raw
            return
        with f:
            yield f


def _jsonl_documents(
    path: Path, text_field: str, label_field: str | None, keep=None, reached=None
) -> Iterator[Document | BadLine]:
    with _open_lines(path) as f:
        lines = _without_bom(f)
        first = next(lines, b"")
        if first.lstrip().startswith(b"["):  # one JSON array of records, not JSON lines
            records = _array_documents(path, b"".join(itertools.chain([first], lines)),
                                       text_field, label_field)  # fmt: skip
            yield from (d for d in records if keep is None or keep(d.index))
            return
        for index, raw in enumerate(itertools.chain([first], lines)):
            if reached is not None:
                reached[0] = index + 1
            if keep is not None and not keep(index):
                continue  # another piece's line: split off, not parsed
            if not raw.strip():
                continue  # a blank line is not a record
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield BadLine(index, "invalid_utf8", f"{path.name}:{index + 1}: {e.reason}")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield BadLine(index, "malformed_json", f"{path.name}:{index + 1}: {e.msg}")
                continue
            if not isinstance(record, dict):
                yield BadLine(index, "missing_text", f"{path.name}:{index + 1}: not an object")
                continue
            yield _record_document(index, record, text_field, label_field)


def _without_bom(lines: Iterator[bytes]) -> Iterator[bytes]:
    """The lines, the first without a UTF-8 byte-order mark (Windows tools write one)."""
    for index, raw in enumerate(lines):
        yield raw.removeprefix(b"\xef\xbb\xbf") if index == 0 else raw


def _record_document(index: int, record: dict, text_field: str, label_field: str | None):
    label = record.get(label_field) if label_field else None
    return _document(index, record.get(text_field), None if label is None else str(label))


def _array_documents(
    path: Path, raw: bytes, text_field: str, label_field: str | None
) -> Iterator[Document | BadLine]:
    try:
        records = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        yield BadLine(0, "malformed_json", f"{path.name}: {e}")
        return
    for index, record in enumerate(records):
        if isinstance(record, dict):
            yield _record_document(index, record, text_field, label_field)
        else:
            yield BadLine(index, "missing_text", f"{path.name}: record {index} is not an object")


def _document(index: int, text, label: str | None = None) -> Document | BadLine:
    if not isinstance(text, str):
        return BadLine(index, "missing_text")
    text = normalise(text)
    return Document(index, text, label) if text else BadLine(index, "empty_text")


def _parquet_documents(
    path: Path, text_field: str, keep=None, reached=None
) -> Iterator[Document | BadLine]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path.open("rb"))
    if text_field not in parquet.schema_arrow.names:
        raise LayoutError(
            f"{path}: no column {text_field!r} (columns: {parquet.schema_arrow.names})"
        )
    index = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=PIECE_LINES):
        if reached is not None:
            reached[0] = index + batch.num_rows
        if keep is not None and not any(keep(i) for i in range(index, index + batch.num_rows)):
            index += batch.num_rows  # another piece's rows: not turned into strings
            continue
        for text in batch.column(0).to_pylist():
            if keep is None or keep(index):
                yield _document(index, text)
            index += 1


def _txt_document(path: Path) -> Document | BadLine:
    """A plain-text file is one document; lines that are not UTF-8 make it unusable."""
    with _open_lines(path) as f:
        raw = f.read()
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        return BadLine(0, "invalid_utf8", f"{path.name}: {e.reason} at byte {e.start}")
    return _document(0, text)
