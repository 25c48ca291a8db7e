"""The on-disk contract between data_prep and training: a prepared split directory.

A prepared split is a directory holding::

    shard-000000.tar  shard-000001.tar  ...   plain POSIX (ustar) tars, WebDataset convention
    .maskmill/manifest.parquet                one row per shard (see ShardRecord)
    .maskmill/stats.json                      inputs seen, written, skipped by reason, bytes, time
    .maskmill/_SUCCESS                        written last; a split without it is incomplete
    .maskmill/work/                           per-shard completion records used for resume

The records sit in a hidden folder so that readers pointed at the split folder see only the
tars: ``ray.data.read_webdataset`` skips names starting with ``.`` or ``_``, HF ``datasets``
only those starting with ``.``, and both fail on a parquet or an empty file among the shards.
Splits prepared before kept the records beside the tars; they are still read, and a prep into
one moves them (:func:`adopt_legacy_records`).

This module is small on purpose: training imports it to find and check shards, nothing else
from data_prep.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

META_DIR = ".maskmill"
MANIFEST = f"{META_DIR}/manifest.parquet"
LABELS = "labels.json"  # beside the splits: the label list, index order
LEGACY_LABELS = "classes.json"  # its name before modalities
# beside the splits: statistics of the features training computes, measured once at prep time
FEATURE_STATS = "feature_stats.json"
STATS = f"{META_DIR}/stats.json"
SUCCESS = f"{META_DIR}/_SUCCESS"
WORK_DIR = f"{META_DIR}/work"
_LEGACY_WORK_DIR = "_work"


def shard_name(index: int) -> str:
    """File name of shard ``index``; names come from the plan so reruns rewrite the same files."""
    return f"shard-{index:06d}.tar"


@dataclass(frozen=True)
class ShardRecord:
    """One manifest row: what a finished shard holds and which work unit made it."""

    file: str
    samples: int
    bytes: int
    sha256: str
    unit: int
    first_input: str
    last_input: str


class IncompleteSplitError(RuntimeError):
    """A prepared split is missing, unfinished (no ``_SUCCESS``) or empty."""


def write_manifest(split_dir: Path, records: list[ShardRecord]) -> None:
    rows = [asdict(r) for r in sorted(records, key=lambda r: r.unit)]
    schema = pa.schema(
        [
            ("file", pa.string()),
            ("samples", pa.int64()),
            ("bytes", pa.int64()),
            ("sha256", pa.string()),
            ("unit", pa.int64()),
            ("first_input", pa.string()),
            ("last_input", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(split_dir / MANIFEST, lambda tmp: pq.write_table(table, tmp))


def split_record(split_dir: str | Path, name: str) -> Path:
    """Where one of a split's records (MANIFEST, STATS, SUCCESS) is: in the records folder, or
    beside the tars for a split prepared before that folder existed."""
    path = Path(split_dir) / name
    legacy = Path(split_dir) / Path(name).name
    return legacy if not path.exists() and legacy.exists() else path


def adopt_legacy_records(split_dir: Path) -> None:
    """Move an older split's records into the records folder, so a prep into it resumes."""
    moves = [(Path(n).name, n) for n in (MANIFEST, STATS, SUCCESS)]
    moves.append((_LEGACY_WORK_DIR, WORK_DIR))
    for old, new in moves:
        if (split_dir / old).exists() and not (split_dir / new).exists():
            (split_dir / META_DIR).mkdir(parents=True, exist_ok=True)
            os.replace(split_dir / old, split_dir / new)


def read_manifest(split_dir: str | Path) -> list[ShardRecord]:
    """The shard records of a complete split; raises IncompleteSplitError otherwise."""
    split_dir = Path(split_dir)
    if not split_record(split_dir, SUCCESS).exists():
        raise IncompleteSplitError(
            f"{split_dir} is not a finished prepared split (no {SUCCESS}); run the prep stage first"
        )
    table = pq.read_table(split_record(split_dir, MANIFEST))
    records = [ShardRecord(**row) for row in table.to_pylist()]
    if not records or sum(r.samples for r in records) == 0:
        raise IncompleteSplitError(f"{split_dir} holds no samples")
    return records


def shard_urls(split_dir: str | Path) -> list[str]:
    """Absolute paths of a complete split's shards, in manifest order."""
    split_dir = Path(split_dir).resolve()
    return [str(split_dir / r.file) for r in read_manifest(split_dir)]


def read_labels(prep_dir: str | Path) -> list[dict] | None:
    """The label list beside a prep's splits, or None when the corpus has none."""
    for name in (LABELS, LEGACY_LABELS):
        path = Path(prep_dir) / name
        if path.is_file():
            return json.loads(path.read_text())
    return None


def read_stats(split_dir: str | Path) -> dict:
    return json.loads(split_record(split_dir, STATS).read_text())


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def npy_zst_bytes(array: np.ndarray, level: int = 3) -> bytes:
    """An array as a ``.npy`` file compressed with zstd: the ``*.npy.zst`` member form (video
    clips, text token ids)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return zstandard.ZstdCompressor(level=level).compress(buf.getvalue())


def npy_zst_array(data: bytes) -> np.ndarray:
    """The array of a ``*.npy.zst`` member; ValueError when the bytes do not decode."""
    try:
        return np.load(
            io.BytesIO(zstandard.ZstdDecompressor().decompress(data)), allow_pickle=False
        )
    except (zstandard.ZstdError, ValueError, OSError) as err:
        raise ValueError(f"corrupt npy.zst member: {err}") from None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (the manifest's shard hashes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_BLOCK = 512
_FILE_TYPES = (b"0", b"\0")


def read_shard_samples(path: str | Path, members: tuple[str, ...] = ()) -> Iterator[dict]:
    """The samples of one shard as webdataset shapes them (``__key__``, ``__url__`` and one
    entry per member extension), read with a lean ustar parser.

    For the shards our writer makes (plain ustar, one regular file per member, members of a
    sample adjacent). Python's ``tarfile`` parses every header field, which cost a third of the
    training loader's time; this reads the name, size and type and seeks past members not in
    ``members`` (empty: keep all). Anything else in a header (pax, GNU long names, links) is an
    error naming the shard: such tars are not ours; read them with ``webdataset`` directly.
    """
    for _, sample in indexed_shard_samples(path, members):
        yield sample


def indexed_shard_samples(
    path: str | Path, members: tuple[str, ...] = (), keep: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, dict]]:
    """``(ordinal in the shard, sample)`` of the samples ``keep`` accepts (all by default);
    the data of the others is seeked past, never read (see :func:`read_shard_samples`)."""
    url = str(path)
    sample: dict | None = None
    ordinal, kept = -1, False
    with open(path, "rb") as f:
        while True:
            header = f.read(_BLOCK)
            if len(header) < _BLOCK or not header.strip(b"\0"):
                break
            kind = header[156:157]
            if kind not in _FILE_TYPES:
                raise ValueError(f"{url}: tar member type {kind!r} is not a plain file")
            name = header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0].decode()
            if prefix:
                name = f"{prefix}/{name}"
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            stem, _, ext = name.rpartition("/")[2].partition(".")
            key = f"{name.rpartition('/')[0]}/{stem}".lstrip("/")
            if sample is None or sample["__key__"] != key:
                if sample is not None and kept:
                    yield ordinal, sample
                ordinal += 1
                kept = keep is None or keep(ordinal)
                sample = {"__key__": key, "__url__": url}
            if kept and (not members or ext in members):
                sample[ext] = f.read(size)
                f.seek((-size) % _BLOCK, 1)
            else:
                f.seek(size + (-size) % _BLOCK, 1)
    if sample is not None and kept:
        yield ordinal, sample
