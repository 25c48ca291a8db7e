"""Where prepared splits live: a local folder, or an object store through fsspec (``s3://``,
``gs://``, ``az://``, any URL fsspec knows).

Everything that reads or writes a prepared split names it through :func:`location`: a
:class:`pathlib.Path` for a local folder, a ``UPath`` (universal_pathlib: the same API over
fsspec) for a URL, so one code path serves both. Credentials come the standard way of each
store (for S3: the environment, ``~/.aws``, an instance role; ``AWS_ENDPOINT_URL`` for another
S3-API server): maskmill never reads, writes or logs them.

Writes to a store are atomic per object (an object appears whole or not at all), so a shard is
published by uploading it, then its sample index, then its completion record (:func:`publish`):
a killed task leaves at most a shard without a record, which a rerun writes again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

# A remote shard's samples are fetched this many byte ranges at a time, concurrently: one
# request per sample in turn is bound by the store's latency (~20 ms a GET on S3).
RANGES_PER_FETCH = 64
# A store object opened for seeking (:func:`ranged_source`) is read ahead this much a request:
# ~40 ms at 100 MB/s, about twice a GET's latency, so requests cost at most a third in waiting.
RANGE_BLOCK = 4 << 20


class StoreError(OSError):
    """A store that cannot be reached or used (no fsspec backend, no bucket, no credentials)."""


def is_url(where: str | os.PathLike) -> bool:
    """Whether ``where`` names an object store rather than a local path."""
    text = str(where)
    return "://" in text and not text.startswith("file://")


def location(where: str | os.PathLike) -> Any:
    """A path object for ``where``: ``Path`` when local, ``UPath`` for a URL."""
    if not is_url(where):
        return Path(str(where).removeprefix("file://"))
    for chatty in ("botocore", "aiobotocore", "s3fs"):  # "found credentials ...", each client
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        from upath import UPath

        return UPath(str(where))
    except (ImportError, ValueError) as err:  # fsspec names the package a protocol needs
        raise StoreError(f"{where}: {err}") from None


def absolute(where: str | os.PathLike) -> str:
    """``where`` made absolute when local (Ray workers do not share the driver's working
    directory); a URL as it is, without a trailing slash."""
    return str(where).rstrip("/") if is_url(where) else os.path.abspath(where)


def size(path: Any) -> int:
    return path.stat().st_size


def relative(path: Any, root: Any) -> str:
    """``path`` below ``root`` as a ``/``-separated string, for a ``Path`` or a ``UPath``."""
    return str(PurePosixPath(str(path.relative_to(root))))


def decoder_source(path: Any) -> tuple[str | io.BytesIO, int]:
    """What a decoder that seeks (libsndfile, FFmpeg's demuxers) opens, and its size in bytes: a
    local file's path, or a store object fetched whole into memory (a LibriLight chapter is
    ~20 MB, a Kinetics clip ~2 MB)."""
    if isinstance(path, str | PurePath):
        return str(path), os.stat(path).st_size
    data = path.read_bytes()
    return io.BytesIO(data), len(data)


@contextlib.contextmanager
def ranged_source(path: Any) -> Iterator[tuple[str | Any, int]]:
    """What :func:`decoder_source` gives, for a decoder that reads only part of a file: a local
    file's path, or a store object opened for ranged reads (read ahead ``RANGE_BLOCK`` at a
    time, a request per jump), so a task cutting one piece of an hour-long video fetches its
    container's index and its piece, not the hour."""
    if isinstance(path, str | PurePath):
        yield str(path), os.stat(path).st_size
        return
    with path.fs.open(path.path, "rb", block_size=RANGE_BLOCK, cache_type="readahead") as f:
        yield f, f.size


def read_ranges(path: Any, spans: Iterable[tuple[int, int]]) -> list[bytes]:
    """The bytes of each ``(start, stop)`` span of one file, fetched concurrently from a store
    (:data:`RANGES_PER_FETCH` at a time), or by seeks in a local file."""
    spans = list(spans)
    if isinstance(path, Path):
        with open(path, "rb", buffering=0) as f:
            return [os.pread(f.fileno(), stop - start, start) for start, stop in spans]
    fs, name = path.fs, path.path
    out: list[bytes] = []
    for i in range(0, len(spans), RANGES_PER_FETCH):
        chunk = spans[i : i + RANGES_PER_FETCH]
        out += fs.cat_ranges([name] * len(chunk), [s for s, _ in chunk], [e for _, e in chunk])
    return out


def publish(staged: Path, target: Any, names: Iterable[str]) -> None:
    """Upload the files ``names`` (relative, in order: the shard first, its record last) from
    a local ``staged`` folder to the store folder ``target``."""
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        target.fs.put_file(str(staged / name), (target / name).path)


def remove_tree(path: Any) -> None:
    """Remove a file or a folder with everything in it, on a disk or in a store."""
    if not isinstance(path, Path):  # in a store, a folder is a prefix of objects
        path.fs.rm(path.path, recursive=True)
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
