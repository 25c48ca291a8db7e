"""A split's inputs on the driver's local disk, not in its memory (a bounded driver at 10^7 inputs).

The files go to a temporary folder (``TMPDIR``, else ``/tmp``), removed when the prep ends:
151 bytes an ImageNet input (its pickle and offset), 2.1 GB for ImageNet-21k; point ``TMPDIR``
at a larger disk on a head node whose ``/tmp`` is small.

A reader's listing yields its items; :class:`Listing` pickles them one after another into a file
on the driver's disk, with each one's offset in a second file, and reads them back by position.
What the driver keeps in memory per input is a few fixed-width numbers, not a Python object:

* the plan's seeded order, 4 bytes an input (``plan.UnitPlan``: the same permutation the list
  shuffle made, so the shards are the ones a prep always wrote);
* the inputs' paths as 8-byte digests, sorted (:class:`PathDigests`), for the walk that names
  every file no input took (``data_prep.unread``).

Before, every input stayed a Python object (a dataclass with its strings, in a list, and its path
again in a set): 344 bytes an input measured by ``benchmarks/prep_scale`` for images, 0.44 GB at
ImageNet-1k and 4.9 GB at ImageNet-21k.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Offsets are read back this many at a time when a listing is iterated (~0.4 MB of pickles and
# offsets held while a chunk is read)
_CHUNK = 1 << 12


class Listing(Sequence):
    """Items pickled to ``folder`` (made if absent; removed by :meth:`close`), read back by
    position or in order."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="maskmill-listing-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._data = open(self.folder / "items.pickle", "w+b")  # noqa: SIM115 (closed by close)
        self._offsets = open(self.folder / "offsets.u64", "w+b")  # noqa: SIM115
        self._pending = array("Q", [0])  # offsets not yet written; the first item's start
        self._end = 0
        self._count = 0
        # the folder goes when the listing does, closed or not (a reader's spool never iterated)
        self._cleanup = weakref.finalize(self, _remove, self._data, self._offsets, self.folder)

    @classmethod
    def of(cls, items: Iterable[Any], folder: str | Path | None = None) -> Listing:
        listing = cls(folder)
        for item in items:
            listing.append(item)
        listing.flush()
        return listing

    def append(self, item: Any) -> None:
        blob = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        self._data.write(blob)
        self._end += len(blob)
        self._pending.append(self._end)
        self._count += 1
        if len(self._pending) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        """Write what :meth:`append` holds back (reads see it after this)."""
        self._pending.tofile(self._offsets)
        self._pending = array("Q")
        self._data.flush()
        self._offsets.flush()

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"listing position {index} of {self._count}")
        raw = os.pread(self._offsets.fileno(), 16, 8 * index)
        start, stop = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        return pickle.loads(os.pread(self._data.fileno(), stop - start, start))

    def __iter__(self) -> Iterator[Any]:
        for first in range(0, self._count, _CHUNK):
            n = min(_CHUNK, self._count - first)
            raw = os.pread(self._offsets.fileno(), 8 * (n + 1), 8 * first)
            offsets = np.frombuffer(raw, "<u8")
            blob = os.pread(self._data.fileno(), int(offsets[-1] - offsets[0]), int(offsets[0]))
            base = int(offsets[0])
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
                yield pickle.loads(blob[a - base : b - base])

    def close(self) -> None:
        self._cleanup()

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Mapped(Sequence):
    """A listing read through a function of each item (the image reader's keys, given once the
    whole walk is known): a reader may return one, and the job uses it as its listing rather
    than pickling every item a second time."""

    def __init__(self, listing: Listing, fn: Callable[[Any], Any]):
        self.listing, self.fn = listing, fn

    def __len__(self) -> int:
        return len(self.listing)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.fn(self.listing[index])

    def __iter__(self) -> Iterator[Any]:
        return map(self.fn, self.listing)

    def close(self) -> None:
        self.listing.close()

    def __enter__(self) -> Mapped:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def on_disk(items: Iterable[Any]) -> Listing | Mapped:
    """``items`` as a listing on the driver's disk: as they are when a reader made one."""
    return items if isinstance(items, Listing | Mapped) else Listing.of(items)


def _remove(data, offsets, folder: Path) -> None:
    data.close()
    offsets.close()
    shutil.rmtree(folder, ignore_errors=True)


def path_digest(path: str) -> int:
    """An 8-byte digest of a path (surrogates kept: a file name that is not UTF-8 still has one)."""
    raw = path.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


class PathDigests:
    """A set of paths held as sorted 8-byte digests (8 bytes a path, not a Python string in a
    set: ~100). Two paths share a digest with a chance of about n² / 2^65, below 10^-5 at
    ImageNet-21k's 14 M; such a file would be taken for an input and go unnamed."""

    def __init__(self, paths: Iterable[str]):
        digests = array("Q", (path_digest(p) for p in paths))
        self._sorted = np.sort(np.frombuffer(digests, dtype=np.uint64)) if digests else None

    def __contains__(self, path: str) -> bool:
        if self._sorted is None:
            return False
        digest = np.uint64(path_digest(path))
        i = int(np.searchsorted(self._sorted, digest))
        return i < len(self._sorted) and self._sorted[i] == digest


def repeated_digests(digests: array) -> set[int]:
    """The digests that occur more than once (sorted once: 8 bytes a value, not a Counter's
    ~100 of a string key)."""
    if not digests:
        return set()
    values = np.sort(np.frombuffer(digests, dtype=np.uint64))
    same = values[1:] == values[:-1]
    return set(values[1:][same].tolist())
