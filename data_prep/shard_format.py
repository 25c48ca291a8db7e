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

A split may live in an object store (``s3://bucket/shards/train``, any fsspec URL): every
function here names it through :func:`data_prep.store.location`.

This module is small on purpose: training imports it (and ``data_prep.store``) to find and check
shards, nothing else from data_prep.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from data_prep.store import location, read_ranges

META_DIR = ".maskmill"
MANIFEST = f"{META_DIR}/manifest.parquet"
LABELS = "labels.json"  # beside the splits: the label list, index order
LEGACY_LABELS = "classes.json"  # its name before modalities
# beside the splits: statistics of the features training computes, measured once at prep time
FEATURE_STATS = "feature_stats.json"
STATS = f"{META_DIR}/stats.json"
SUCCESS = f"{META_DIR}/_SUCCESS"
WORK_DIR = f"{META_DIR}/work"
INDEX_DIR = f"{META_DIR}/index"  # each shard's sample offsets (SampleSpans)
_LEGACY_WORK_DIR = "_work"


def shard_name(index: int) -> str:
    """File name of shard ``index``; names come from the plan so reruns rewrite the same files."""
    return f"shard-{index:06d}.tar"


def shard_unit(name: str) -> int | None:
    """The work unit a shard file belongs to: ``shard-000003.tar`` and its later parts
    (``shard-000003-001.tar``, written when the unit's output passed ``prep.shard_bytes``)."""
    found = re.fullmatch(r"shard-(\d{6})(?:-\d{3})?\.tar", name)
    return int(found.group(1)) if found else None


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
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(location(split_dir) / MANIFEST, buf.getvalue())


def split_record(split_dir: str | Path, name: str) -> Path:
    """Where one of a split's records (MANIFEST, STATS, SUCCESS) is: in the records folder, or
    beside the tars for a split prepared before that folder existed."""
    path = location(split_dir) / name
    legacy = location(split_dir) / Path(name).name
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
    if not split_record(split_dir, SUCCESS).exists():
        raise IncompleteSplitError(
            f"{split_dir} is not a finished prepared split (no {SUCCESS}); run the prep stage first"
        )
    path = split_record(split_dir, MANIFEST)
    if isinstance(path, Path):  # by name: pyarrow reads the footer once (a file object: twice)
        table = pq.read_table(path)
    else:
        with path.open("rb") as f:
            table = pq.read_table(f)
    records = [ShardRecord(**row) for row in table.to_pylist()]
    if not records or sum(r.samples for r in records) == 0:
        raise IncompleteSplitError(f"{split_dir} holds no samples")
    return records


def prepared_splits(prep_dir: str | Path) -> list[Path]:
    """The finished prepared splits in a prep output folder (those with ``_SUCCESS``)."""
    root = location(prep_dir)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and split_record(d, SUCCESS).exists())


def shard_urls(split_dir: str | Path) -> list[str]:
    """Absolute paths of a complete split's shards, in manifest order."""
    split_dir = location(split_dir)
    split_dir = split_dir.resolve() if isinstance(split_dir, Path) else split_dir
    return [str(split_dir / r.file) for r in read_manifest(split_dir)]


def read_labels(prep_dir: str | Path) -> list[dict] | None:
    """The label list beside a prep's splits, or None when the corpus has none."""
    for name in (LABELS, LEGACY_LABELS):
        path = location(prep_dir) / name
        if path.is_file():
            return json.loads(path.read_text())
    return None


def read_stats(split_dir: str | Path) -> dict:
    return json.loads(split_record(split_dir, STATS).read_text())


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file
    (a local path; an object in a store appears whole by itself: :func:`atomic_write_bytes`)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path, data: bytes) -> None:
    """``data`` at ``path``, never seen partial: renamed into place on a disk; in a store one
    PUT, which is atomic by itself."""
    if isinstance(path, Path):
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    else:
        path.write_bytes(data)


def npy_zst_bytes(array: np.ndarray, level: int = 3) -> bytes:
    """An array as a ``.npy`` file compressed with zstd: the ``*.npy.zst`` member form (video
    clips, text token ids). The ``.npy`` header of each shape and type, and the compressor, are
    made once per process: ``np.save`` and a new compressor per sample were an eighth of the
    text prep's time (``python -m benchmarks.text_prep``)."""
    array = np.ascontiguousarray(array)
    return _compressor(level).compress(_npy_header(array.shape, array.dtype.str) + array.tobytes())


@functools.lru_cache(maxsize=64)
def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The bytes ``np.save`` writes before an array's data (format 1.0 for our arrays)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})  # fmt: skip
    return buf.getvalue()


@functools.lru_cache(maxsize=8)
def _compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level)


_MODE_OWNERS = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
_MTIME = b"00000000000\0"
# after the checksum: a regular file, no link, ustar, no owner names or devices, to 512 bytes
_TAIL = b"".join([b"0", b"\0" * 100, b"ustar\x0000", b"\0" * 80]).ljust(512 - 156, b"\0")
_TAIL_SUM = 8 * 32 + sum(_TAIL)


def member_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a shard member: a regular file, mode 0644, owners 0 and
    unnamed, time 0; byte for byte what ``tarfile`` writes for it (a test compares them),
    built directly: ``tarfile.addfile`` was a fifth of the text prep's time."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100 or size >= 8**11:  # a prefix split or a base-256 size: tarfile's way
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    head = b"".join([encoded.ljust(100, b"\0"), _MODE_OWNERS, b"%011o\0" % size, _MTIME])
    checksum = sum(head) + _TAIL_SUM  # the checksum field counts as 8 spaces
    return head + b"%06o\0 " % checksum + _TAIL


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
    with location(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_BLOCK = 512
# Samples fetched per read_ranges call: a store fetches them concurrently (a local file: seeks).
_SAMPLES_PER_READ = 64
_FILE_TYPES = (b"0", b"\0")
# Headers that change how the next member reads (pax, GNU long names): such a tar is not ours.
_META_TYPES = (b"x", b"g", b"L", b"K")


class BadShardError(RuntimeError):
    """A shard is missing, does not match its manifest row, or is not a readable tar.

    Raised once by whoever opens it, naming the shard and what to do (``maskmill verify``, rerun
    the prep); a rerun of the prep rewrites exactly such shards."""


def shard_problem(path: str | Path, record: ShardRecord, sha256: bool = True) -> str | None:
    """What is wrong with the shard at ``path`` against its manifest row, or None. The size is
    one ``stat``; the sha256 reads the file (about 1.5 GB/s)."""
    try:
        size = location(path).stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != record.bytes:
        return f"{size} bytes where the manifest says {record.bytes} (truncated or rewritten)"
    if sha256 and file_sha256(path) != record.sha256:
        return "its sha256 differs from the manifest's (bytes changed after prep)"
    return None


def resized_shards(split_dir: str | Path) -> list[tuple[Path, str]]:
    """``(shard path, problem)`` of every shard of a split that is missing or not at its
    manifest size: one ``stat`` each (the sha256 is ``maskmill verify``'s)."""
    split_dir = location(split_dir)
    found = ((split_dir / r.file, shard_problem(split_dir / r.file, r, sha256=False))
             for r in read_manifest(split_dir))  # fmt: skip
    return [(path, problem) for path, problem in found if problem]


def bad_shard_error(path: str | Path, problem: str) -> BadShardError:
    split = str(path).rpartition("/")[0]
    return BadShardError(
        f"shard {path} is damaged: {problem}. `maskmill verify {split}` checks the whole split; "
        "rerunning the prep rewrites the damaged shards (or set loader.on_bad_shard: skip to "
        "train on without them)"
    )


def verify_split(
    split_dir: str | Path, sha256: bool = True, progress: Callable = lambda rows: rows
) -> tuple[list[str], dict[str, str]]:
    """``(problems of the split's records, {shard file: problem or ""})``: ``_SUCCESS``, the
    manifest, every shard's size and sha256, and that the manifest and stats agree.
    ``progress`` wraps the manifest rows as they are checked (a progress bar)."""
    split_dir = location(split_dir)
    try:
        records = read_manifest(split_dir)
    except (IncompleteSplitError, OSError, pa.ArrowException) as err:
        return [str(err)], {}
    issues = []
    try:
        stats = read_stats(split_dir)
    except (OSError, ValueError) as err:
        issues.append(f"{STATS}: cannot be read ({err})")
    else:
        totals = {
            "shards": len(records),
            "samples": sum(r.samples for r in records),
            "bytes": sum(r.bytes for r in records),
        }
        for key, value in totals.items():
            if stats.get(key) != value:
                issues.append(f"{STATS} says {key} {stats.get(key)}, the manifest {value}")
    shards = {r.file: shard_problem(split_dir / r.file, r, sha256) or "" for r in progress(records)}
    return issues, shards


def read_shard_samples(
    path: str | Path,
    members: tuple[str, ...] = (),
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[dict]:
    """The samples of one shard as webdataset shapes them (``__key__``, ``__url__`` and one
    entry per member extension), read with a lean ustar parser.

    For the shards our writer makes (plain ustar, one regular file per member, members of a
    sample adjacent). Python's ``tarfile`` parses every header field, which cost a third of the
    training loader's time; this reads the name, size and type and seeks past members not in
    ``members`` (empty: keep all). Members no prep writes (links, devices, names that climb out
    with ``..`` or start at ``/``) are skipped, reported to ``on_skip(reason, name)``; pax or GNU
    long-name headers mean the tar is not ours (read it with ``webdataset``), and a header that
    does not parse or a tar cut short is a :class:`BadShardError` naming the shard.
    """
    for _, sample in indexed_shard_samples(path, members, on_skip=on_skip):
        yield sample


def indexed_shard_samples(
    path: str | Path,
    members: tuple[str, ...] = (),
    keep: Callable[[int], bool] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """``(ordinal in the shard, sample)`` of the samples ``keep`` accepts (all by default);
    the data of the others is seeked past, never read (see :func:`read_shard_samples`)."""
    path = location(path)
    with path.open("rb") as f:
        yield from _walk(f, str(path), path.stat().st_size, members, keep, on_skip)


def samples_at(
    path: str | Path,
    spans: SampleSpans,
    ordinals: Iterable[int],
    members: tuple[str, ...] = (),
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """``(ordinal, sample)`` of the given samples of a shard (ascending), each read with one
    read of its own bytes at its :class:`SampleSpans`: no other header or member is read, so a
    rank with a 1/world share of a shard reads 1/world of its bytes."""
    path = location(path)
    url, end = str(path), path.stat().st_size
    ordinals = list(ordinals)
    for at in range(0, len(ordinals), _SAMPLES_PER_READ):
        batch = ordinals[at : at + _SAMPLES_PER_READ]
        wanted = [spans[o] for o in batch]
        for ordinal, (_, stop) in zip(batch, wanted):
            if stop > end:
                raise bad_shard_error(url, f"sample {ordinal} runs past the end (truncated)")
        for ordinal, data in zip(batch, read_ranges(path, wanted)):
            chunk = io.BytesIO(data)
            for _, sample in _walk(chunk, url, len(data), members, None, on_skip, piece=True):
                yield ordinal, sample


def sample_offsets(path: str | Path) -> list[int]:
    """Where each sample of a shard starts (its first header), and where the last one ends:
    ``samples + 1`` offsets, from a walk over the headers alone."""
    offsets, key = [], None
    path = location(path)
    with path.open("rb") as f:
        end = path.stat().st_size
        while True:
            at = f.tell()
            header = _read_full(f, _BLOCK)
            if not header.strip(b"\0"):
                if len(header) < _BLOCK:
                    raise bad_shard_error(path, "it ends without the tar end marker (truncated)")
                return [*offsets, at]
            name, _, size = _parse_header(str(path), header, at)
            if at + _BLOCK + size > end:
                raise bad_shard_error(path, f"member {name!r} runs past the end (truncated)")
            stem = _sample_key(name)
            if stem != key:
                offsets.append(at)
                key = stem
            f.seek(size + (-size) % _BLOCK, 1)


def index_path(split_dir: str | Path, record: ShardRecord) -> Path:
    """Where a shard's sample offsets are kept: named by its sha256, so a rewritten shard never
    meets the index of its earlier bytes."""
    return location(split_dir) / INDEX_DIR / f"{record.file}.{record.sha256[:16]}.offsets"


def write_shard_index(
    split_dir: str | Path, record: ShardRecord, offsets: list[int] | None = None
) -> list[int]:
    """Keep a shard's :func:`sample_offsets` beside the manifest: the ``offsets`` its writer
    noted (prep), or scanned from its headers (a split prepared before gets them on first use;
    a read-only split is scanned again instead)."""
    if offsets is None:
        offsets = sample_offsets(location(split_dir) / record.file)
    path = index_path(split_dir, record)
    data = np.asarray(offsets, dtype="<u8").tobytes()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError:
        pass
    return offsets


class SampleSpans:
    """Where samples of one shard lie, read from its index file entry by entry (16 bytes a
    sample asked for): a reader keeping 1/slots of a shard's samples reads that share of its
    index, not all of it. Reading whole indexes cost every (rank, worker) slot 8 bytes per
    sample of the split, 5% more than its share in ``benchmarks/cluster_scale`` at 2.5 KB
    samples, and a third at 512 GPUs x 10 workers with ImageNet's 110 KB."""

    def __init__(self, split_dir: str | Path, record: ShardRecord):
        path = index_path(split_dir, record)
        size = path.stat().st_size if path.is_file() else -1
        if size != 8 * (record.samples + 1):  # missing or not this shard's: made now
            write_shard_index(split_dir, record)
        # In a store a request costs ~20 ms whatever its size: the index (8 bytes a sample,
        # 8 KB for 1000) is read whole, once; on a disk, 16 bytes per sample asked for.
        self.fd, self.offsets = None, None
        if isinstance(path, Path):
            self.fd = os.open(path, os.O_RDONLY)
        else:
            self.offsets = np.frombuffer(path.read_bytes(), dtype="<u8")

    def __getitem__(self, ordinal: int) -> tuple[int, int]:
        """(first byte, end) of sample ``ordinal``."""
        if self.offsets is not None:
            return int(self.offsets[ordinal]), int(self.offsets[ordinal + 1])
        data = os.pread(self.fd, 16, 8 * ordinal)
        start, stop = np.frombuffer(data, dtype="<u8").tolist()
        return start, stop

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _sample_key(name: str) -> str:
    stem = name.rpartition("/")[2].partition(".")[0]
    return f"{name.rpartition('/')[0]}/{stem}".lstrip("/")


def _walk(f, url, end, members, keep, on_skip, piece: bool = False):
    """The header walk of :func:`indexed_shard_samples` over an open file (or one sample's
    bytes, ``piece``: it ends at their end, not at a tar end marker)."""
    sample: dict | None = None
    ordinal, kept = -1, False
    while True:
        at = f.tell()
        header = _read_full(f, _BLOCK)
        if piece and not header:
            break
        if not header.strip(b"\0"):
            if len(header) < _BLOCK:
                raise bad_shard_error(url, "it ends without the tar end marker (truncated)")
            break
        if len(header) < _BLOCK:
            raise bad_shard_error(url, f"cut short inside the header at byte {at}")
        name, kind, size = _parse_header(url, header, at)
        if at + _BLOCK + size > end:
            raise bad_shard_error(url, f"member {name!r} runs past the end (truncated)")
        skip = _unsafe_member(name, kind)
        if skip:
            if on_skip:
                on_skip(skip, name)
            f.seek(size + (-size) % _BLOCK, 1)
            continue
        ext = name.rpartition("/")[2].partition(".")[2]
        key = _sample_key(name)
        if sample is None or sample["__key__"] != key:
            if sample is not None and kept:
                yield ordinal, sample
            ordinal += 1
            kept = keep is None or keep(ordinal)
            sample = {"__key__": key, "__url__": url}
        if kept and (not members or ext in members):
            sample[ext] = _read_full(f, size)
            f.seek((-size) % _BLOCK, 1)
        else:
            f.seek(size + (-size) % _BLOCK, 1)
    if sample is not None and kept:
        yield ordinal, sample


def _read_full(f, n: int) -> bytes:
    """``n`` bytes, or fewer only at the end of the file (an unbuffered read may return less)."""
    data = f.read(n)
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _parse_header(url: str, header: bytes, at: int) -> tuple[str, bytes, int]:
    """(name, type flag, data size) of a ustar header; BadShardError when it does not parse."""
    kind = header[156:157]
    if kind in _META_TYPES:
        raise ValueError(
            f"{url}: tar member type {kind!r} (pax or GNU long names) is not written by maskmill's "
            "prep; read this tar with webdataset"
        )
    checksum = header[148:156].split(b"\0", 1)[0].strip()
    try:
        expected = int(checksum or b"-1", 8)
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise bad_shard_error(url, f"the tar header at byte {at} does not parse") from None
    if expected != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise bad_shard_error(url, f"the tar header at byte {at} fails its checksum")
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    return (f"{prefix}/{name}" if prefix else name), kind, size


def _unsafe_member(name: str, kind: bytes) -> str | None:
    """Why a member is skipped unread (a reason counted by the loader), or None to read it."""
    if kind not in _FILE_TYPES:
        return "not_a_regular_file"
    if name.startswith("/") or ".." in name.split("/"):
        return "path_outside_shard"
    return None
