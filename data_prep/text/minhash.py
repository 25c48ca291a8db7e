"""Near-duplicate removal (MinHash LSH), opt-in with ``prep.near_dedup``, as distributed steps
of the same kind as the exact dedup (``data_prep.text.dedup``), in the same folder.

A document's shingles are its 5-word windows (lowercased). Their MinHash under 112 seeded hash
functions is cut into 14 bands of 8; two documents sharing any band's hash are candidates (the
parameters datatrove and the Gopher and FineWeb pipelines use: a pair of Jaccard similarity 0.72
is caught half the time, 0.8 ~92%, 0.6 ~10%).

1. **Band hashes**, a task per file: each document's 14 band hashes with its place, written by
   hash bucket to ``nsig-NNNNNN.bin``.
2. **Edges**, a task per bucket: rows sharing (band, hash) are joined to the first of them
   (``edges-BBBB.bin``).
3. **Clusters**, one task: the edges' connected components (union-find: its memory grows with
   the near-duplicate pairs, not the corpus); in each, the document first in (file path, line)
   order stays, the others are listed in ``near.bin`` by file, and ``near.json`` is written last.
4. **Filter**, in each split's encode task: a file's listed documents are dropped while
   packing (counted as ``near_duplicate``; an exact copy stays ``duplicate``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from data_prep.shard_format import atomic_write_bytes, atomic_write_text
from data_prep.store import location
from data_prep.tasks import run_tasks
from data_prep.text.dedup import DUP, Dedup, grouped_bytes, grouped_rows, mkdir
from data_prep.text.layout import BadLine, TextFile, read_documents

BANDS, ROWS, SHINGLE_WORDS = 14, 8, 5
_MERSENNE = np.uint64((1 << 61) - 1)
# (a x + b) mod p over 32-bit shingle hashes: a, b below 2^32 keep a x + b below 2^64
_A, _B = (np.random.default_rng(20261202).integers(1, 1 << 32, BANDS * ROWS, np.uint64)
          for _ in range(2))  # fmt: skip
BAND = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("band", "<u4"), ("file", "<u4"), ("doc", "<u4")])
EDGE = np.dtype([("file", "<u4"), ("doc", "<u4"), ("to_file", "<u4"), ("to_doc", "<u4")])
SUMMARY = "near.json"


@dataclass(frozen=True)
class NearCopies:
    """What the filter needs: the folder and how many files its list is grouped by."""

    folder: str
    files: int


def band_hashes(text: str) -> np.ndarray:
    """The 14 band hashes of a document, as ``[14, 2]`` uint64 (128 bits each)."""
    words = text.lower().split()
    shingles = {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - 4))}
    hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little")
         for s in shingles),
        np.uint64, len(shingles),
    )  # fmt: skip
    mins = ((hashes[:, None] * _A + _B) % _MERSENNE).min(axis=0).reshape(BANDS, ROWS)
    return np.array(
        [np.frombuffer(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), "<u8")
         for row in mins]
    )  # fmt: skip


def find_near_copies(dedup: Dedup, files: list[TextFile]) -> dict:
    """Steps 1 to 3 (skipped when a run before finished them): ``near.json``'s summary."""
    root = location(dedup.folder)
    if (root / SUMMARY).exists():
        return json.loads((root / SUMMARY).read_text())
    todo = [i for i in range(dedup.files) if not (root / _nsig(i)).exists()]
    list(run_tasks(write_band_hashes, ((dedup, i, files[i]) for i in todo)))
    edges = sum(run_tasks(write_edges, ((dedup, b) for b in range(dedup.buckets))))
    (removed,) = run_tasks(write_clusters, [(dedup,)])
    result = {"edges": edges, "near_copies": removed}
    atomic_write_text(root / SUMMARY, json.dumps(result) + "\n")
    return result


def write_band_hashes(dedup: Dedup, number: int, file: TextFile) -> int:
    """Step 1 for one file; returns its document count."""
    rows = []
    for doc in read_documents(file, dedup.text_field):
        if isinstance(doc, BadLine):
            continue
        for band, (hi, lo) in enumerate(band_hashes(doc.text).tolist()):
            rows.append((hi, lo, band, number, doc.index))
    table = np.array(rows, dtype=BAND)
    bucket = table["hi"] % dedup.buckets
    order = np.lexsort((table["doc"], table["lo"], table["hi"], table["band"], bucket))
    root = location(dedup.folder)
    mkdir(root)
    atomic_write_bytes(
        root / _nsig(number), grouped_bytes(table[order], bucket[order], dedup.buckets)
    )
    return len(table) // BANDS


def write_edges(dedup: Dedup, bucket: int) -> int:
    """Step 2 for one bucket: each row sharing (band, hash) with the first of its group is an
    edge to it; returns the edge count."""
    root = location(dedup.folder)
    parts = [grouped_rows(root / _nsig(i), dedup.buckets, bucket, BAND) for i in range(dedup.files)]
    rows = np.concatenate(parts) if parts else np.zeros(0, BAND)
    rows = rows[np.lexsort((rows["doc"], rows["file"], rows["lo"], rows["hi"], rows["band"]))]
    same = np.zeros(len(rows), bool)
    same[1:] = (
        (rows["band"][1:] == rows["band"][:-1])
        & (rows["hi"][1:] == rows["hi"][:-1])
        & (rows["lo"][1:] == rows["lo"][:-1])
    )
    first = np.maximum.accumulate(np.where(same, 0, np.arange(len(rows))))  # its group's head
    edges = np.zeros(int(same.sum()), EDGE)
    edges["file"], edges["doc"] = rows["file"][same], rows["doc"][same]
    edges["to_file"], edges["to_doc"] = rows["file"][first[same]], rows["doc"][first[same]]
    atomic_write_bytes(root / f"edges-{bucket:04d}.bin", edges.tobytes())
    return len(edges)


def write_clusters(dedup: Dedup) -> int:
    """Step 3: every edge's components; all but the first document of each are listed."""
    root = location(dedup.folder)
    parent: dict[int, int] = {}

    def head(node: int) -> int:
        while parent.get(node, node) != node:
            parent[node] = parent.get(parent[node], parent[node])  # halve the path
            node = parent[node]
        return node

    for bucket in range(dedup.buckets):
        edges = np.frombuffer((root / f"edges-{bucket:04d}.bin").read_bytes(), EDGE)
        a = (edges["file"].astype(np.uint64) << np.uint64(32)) | edges["doc"]
        b = (edges["to_file"].astype(np.uint64) << np.uint64(32)) | edges["to_doc"]
        for x, y in zip(a.tolist(), b.tolist()):
            hx, hy = head(x), head(y)
            if hx != hy:  # the earlier place heads the merged component
                parent[max(hx, hy)] = min(hx, hy)
    later = sorted(node for node in parent if head(node) != node)
    removed = np.zeros(len(later), DUP)
    removed["file"] = [n >> 32 for n in later]
    removed["doc"] = [n & 0xFFFFFFFF for n in later]
    atomic_write_bytes(root / "near.bin", grouped_bytes(removed, removed["file"], dedup.files))
    return len(removed)


def near_copies_in(near: NearCopies, number: int) -> frozenset[int]:
    """Step 4: the indices of file ``number``'s documents that are later near-copies."""
    rows = grouped_rows(location(near.folder) / "near.bin", near.files, number, DUP)
    return frozenset(int(i) for i in rows["doc"])


def _nsig(number: int) -> str:
    return f"nsig-{number:06d}.bin"
