"""Corpus readers, looked up by modality: how one raw layout becomes samples.

A reader is a frozen :class:`CorpusReader` bundle, ``READER``, in its modality's room:
``data_prep/<modality>/reader.py``. :func:`corpus_reader` finds it by that convention and
:func:`modalities` lists the rooms that hold one; no table names them and nothing registers
itself at import time. A package laid out like ours on ``PYTHONPATH`` (``data_prep/<name>/``)
adds a modality without touching this tree (``data_prep/__init__.py`` extends its path). The shared job (``data_prep.job``) calls only these:

* ``items(cfg, split)``: the split's inputs, sorted, each with a stable ``str()`` (its name in
  logs and manifests): any iterable, picklable items. The job writes them to the driver's disk
  as they come (``data_prep.listing``), so a reader that yields them, as the image reader does,
  never holds the corpus's listing in memory;
* ``fit(cfg, train_items)``: run once before sharding (train a tokenizer, measure feature
  statistics, find duplicates); returns a small picklable state handed to every ``encode``. It
  is called on the driver inside the prep's Ray session (``train_items`` a sequence: length, positions,
  iteration), so work that grows with the corpus
  goes to tasks (:func:`data_prep.tasks.run_tasks`), as text's dedup does. It runs again on a
  rerun, so it must be deterministic or reuse what it wrote under ``cfg.out``;
* ``encode(cfg, state, item)``: yields 0..n :class:`~data_prep.writer.Sample` for one input, and
  a :class:`~data_prep.writer.SkipSample` (yielded, or raised to drop the rest of the input) for
  what cannot become a sample, counted by reason;
* ``labels(cfg)``: the label list written to ``OUT/labels.json``, or None;
* ``input_file(cfg, item)``, ``reads_format(name)``, ``layout_file(relative path)``: what
  :mod:`data_prep.unread` needs to name every other file under the sources, by reason;
* ``write_demo(demo_cfg)``: writes a small corpus in the layout (``maskmill demo-data`` and the
  ``demo_data`` stage), configured by ``demo_config``.

``source_keys`` names the ``prep`` keys that are raw folders (``source``, and for audio the
labelled sets): they are made absolute, and their contents fingerprint the prep stage.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.util
import json
import pkgutil
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SourceError(ValueError):
    """The raw source cannot be read as the layout it was given as (fails before any work)."""


class LayoutError(SourceError):
    """The source folder does not hold the layout its reader expects (each reader says which)."""


@contextlib.contextmanager
def csv_rows(table: Path) -> Iterator[csv.DictReader]:
    """The rows of a label table: a byte-order mark (spreadsheets write one) dropped; text that
    is not UTF-8 a LayoutError naming the table."""
    with table.open(newline="", encoding="utf-8-sig") as f:
        try:
            yield csv.DictReader(f)
        except UnicodeDecodeError as err:
            raise LayoutError(
                f"{table}: not UTF-8 text ({err.reason} at byte {err.start})"
            ) from None


def json_array_rows(table: Path) -> Iterator[Any]:
    """The elements of a JSON array file, one at a time, decoded from blocks of 1 MiB: a
    Something-Something split table (169 k rows, ~400 bytes each as Python objects) is never a
    list on the driver. Text that is not UTF-8 or not a JSON array is a LayoutError naming the
    table and the row."""
    row = 0
    try:
        with table.open(encoding="utf-8-sig") as f:
            text = _JsonText(f)
            if text.next_char() != "[":
                raise LayoutError(f"{table}: not a JSON array (it must start with '[')")
            if text.peek() == "]":
                text.next_char()
            else:
                while True:
                    yield text.value()
                    row += 1
                    after = text.next_char()
                    if after == "]":
                        break
                    if after != ",":
                        raise LayoutError(f"{table}: row {row} is followed by {after!r}, not ','")
            if text.next_char():
                raise LayoutError(f"{table}: more text after the array's closing ']'")
    except UnicodeDecodeError as err:
        raise LayoutError(f"{table}: not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise LayoutError(f"{table}: row {row + 1} is not JSON ({err.msg})") from None


_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's white space
_JSON_BLOCK = 1 << 20


class _JsonText:
    """A text file read a block at a time, for :func:`json_array_rows`."""

    def __init__(self, f):
        self.f, self.buf, self.pos, self.eof = f, "", 0, False
        self.decoder = json.JSONDecoder()

    def peek(self) -> str:
        """The next character that is not white space, left in place ("" at the end)."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos : self.pos + 1]

    def next_char(self) -> str:
        char = self.peek()
        self.pos += len(char)
        return char

    def value(self) -> Any:
        """The JSON value that starts at the next character. One cut by the block's end is read
        again with the next block (a number that ends there might go on)."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.eof:
                    raise
            else:
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return value
            self._fill()

    def _fill(self) -> bool:
        """Read the next block (at least as much again as is held: a long value costs
        linear time); False at the end of the file."""
        block = "" if self.eof else self.f.read(max(_JSON_BLOCK, len(self.buf) - self.pos))
        self.buf, self.pos, self.eof = self.buf[self.pos :] + block, 0, not block
        return bool(block)


@dataclass(frozen=True)
class CorpusReader:
    modality: str
    layout: str  # what the source must look like, for --help and errors
    config: type  # the ``prep`` section of this modality
    items: Callable[[Any, str], Iterable[Any]]
    fit: Callable[[Any, Sequence[Any]], Any]
    encode: Callable[[Any, Any, Any], Iterable[Any]]
    labels: Callable[[Any], list[dict] | None]
    demo_config: type  # the ``demo_data`` section of this modality
    write_demo: Callable[[Any], Any]
    source_keys: tuple[str, ...] = ("source",)
    # whether the sources may be object-store URLs (s3://, gs://: read through fsspec); the
    # readers that walk a file tree with os calls need a folder (a mounted bucket)
    reads_stores: bool = False
    aliases: tuple[str, ...] = ()  # other words `maskmill prep` takes for it (its layout's name)
    # Splits of the default ``splits`` that need a key of their own (split -> key): `maskmill
    # prep` leaves them out, saying so, when the key is not given (an unlabelled corpus).
    optional_splits: dict[str, str] = field(default_factory=dict)
    # Every file under a source is used or accounted for (``data_prep.unread``): the file an
    # item was read from (None: this reader's sources are not walked), whether a file name is
    # of a format the modality reads, and whether a path below a source is one the layout reads
    # for its own sake (a label table, transcripts, voice activity).
    input_file: Callable[[Any, Any], str] | None = None
    reads_format: Callable[[str], bool] = lambda name: True
    layout_file: Callable[[str], bool] = lambda rel: False

    def sources(self, cfg: Any) -> dict[str, str]:
        """The raw folders a ``prep`` config names, by key (unset optional ones left out)."""
        return {k: getattr(cfg, k) for k in self.source_keys if getattr(cfg, k)}


def modalities() -> tuple[str, ...]:
    """The modalities whose room holds a corpus reader, sorted."""
    import data_prep

    return tuple(
        sorted(
            info.name
            for info in pkgutil.iter_modules(data_prep.__path__)
            if info.ispkg and importlib.util.find_spec(f"data_prep.{info.name}.reader")
        )
    )


def prep_aliases() -> dict[str, str]:
    """The other words for a modality (``imagenet``: ``image``), as its reader declares them."""
    return {a: m for m in modalities() for a in corpus_reader(m).aliases}


def corpus_reader(modality: str) -> CorpusReader:
    """The ``READER`` of ``data_prep/<modality>/reader.py``."""
    names = modalities()
    if modality not in names:
        raise ValueError(f"no corpus reader for {modality!r}; expected one of {', '.join(names)}")
    return importlib.import_module(f"data_prep.{modality}.reader").READER


# Of a reader's config without ``max_failed_share`` (a modality written before it existed).
DEFAULT_MAX_FAILED_SHARE = 0.01
# The most bytes a shard holds before its unit rolls over into a next part (prep.shard_bytes):
# webdataset advises 100 MB - 1 GB shards, MosaicML streaming 64 MB; a text file or a LibriLight
# chapter set made shards of tens of GB before.
SHARD_BYTES = 256 << 20
# A text file larger than this is read by several tasks (prep.task_bytes): the Pile's 30 files of
# 5-14 GB were 30 tasks of hours each on any cluster.
TASK_BYTES = 256 << 20


def prep_problems(cfg: Any) -> Iterable[tuple[str, str]]:
    """The checks every modality's ``prep`` section shares (sharding and the Ray session)."""
    if cfg.samples_per_shard < 1:
        yield ("samples_per_shard", f"an int >= 1, got {cfg.samples_per_shard}")
    if getattr(cfg, "shard_bytes", 0) < 0:
        yield ("shard_bytes", f"bytes >= 0 (0: no limit), got {cfg.shard_bytes}")
    if cfg.num_cpus is not None and cfg.num_cpus < 1:
        yield ("num_cpus", f"an int >= 1 or null, got {cfg.num_cpus}")
    share = getattr(cfg, "max_failed_share", DEFAULT_MAX_FAILED_SHARE)
    if not 0 <= share <= 1:
        yield ("max_failed_share", f"a share in [0, 1], got {share}")
    if not cfg.splits:
        yield ("splits", "a non-empty list of split names")
