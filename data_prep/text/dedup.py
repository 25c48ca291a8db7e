"""Exact dedup of a text corpus, and the tokenizer's sample, as distributed steps (the datatrove
way): nothing on the driver grows with the number of documents.

1. **Signatures**, a task per input file: each document's 128-bit hash (of its normalised text)
   with its place (file number, document index), written sorted by hash bucket to
   ``sig-NNNNNN.bin``; and the file's share of the tokenizer's seeded sample to
   ``cand-NNNNNN.jsonl``.
2. **Merge**, a task per hash bucket: every file's rows of that bucket (one ranged read each),
   sorted by (hash, file, document); a row whose hash equals the one before it is a later copy.
   The copies go to ``dup-BBBB.bin``, sorted by file, with each file's range in its header.
3. **Filter**, in each split's encode task: the file's later copies, one ranged read per bucket
   that holds any, are dropped while packing (counted as ``duplicate``).

The first copy in (file path, line) order wins, as the one-process pass did, so identical input
gives identical shards. The tokenizer learns from the ``sample_docs`` unique training documents
of smallest seeded priority (a keyed hash of the text): a seeded sample spread over the whole
corpus, not its first files. Each file offers the candidates of its share (twice its share of
the corpus bytes, plus a few), so the driver reads about ``2 x sample_docs`` texts.

Everything lives in ``OUT/.maskmill/dedup/<digest>/``: the digest covers the listing (paths and
sizes) and the settings, so a rerun reuses finished steps (``sig-`` files are written last in
their task, ``dups.json`` after the merge) and a changed corpus starts again. Once the tokenizer
is saved, the signatures and candidates are removed; the copies' lists stay for reruns.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.shard_format import META_DIR, atomic_write_bytes, atomic_write_text
from data_prep.store import location, remove_tree
from data_prep.tasks import run_tasks
from data_prep.text.layout import BadLine, TextFile, read_documents

SIG = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("file", "<u4"), ("doc", "<u4")])
DUP = np.dtype([("file", "<u4"), ("doc", "<u4")])
SUMMARY = "dups.json"
# Source bytes per hash bucket, and the most buckets: C4's 305 GB of .json.gz make 1024 merge
# tasks of ~360 k rows (8.5 MB) each; a one-file demo makes one.
BUCKET_BYTES = 64 << 20
MAX_BUCKETS = 1024
EXTRA_CANDIDATES = 16  # per file, beyond twice its share: small files still offer a few


@dataclass(frozen=True)
class Dedup:
    """Where one corpus's dedup lives and how it is cut; made once on the driver (:func:`plan`)
    and handed to every task."""

    folder: str
    files: int
    buckets: int
    text_field: str
    val_fraction: float
    seed: int
    sample_docs: int  # the tokenizer's sample size; 0 when no tokenizer is trained


@dataclass(frozen=True)
class Copies:
    """What the filter needs: the copies' folder and the buckets that hold any."""

    folder: str
    files: int
    buckets: tuple[int, ...]


def plan(out: str, files: list[TextFile], cfg: Any, sample_docs: int) -> tuple[Dedup, list[int]]:
    """The dedup of ``files`` under ``out``, and each file's byte size (one stat per file)."""
    sizes = [f.file.stat().st_size for f in files]
    settings = [cfg.text_field, cfg.val_fraction, cfg.seed]
    # the sample's size as configured: a rerun that reuses the saved tokenizer wants no
    # sample (``sample_docs`` 0) and is the same dedup
    listing = [settings, cfg.tokenizer_sample_docs, [[f.path, n] for f, n in zip(files, sizes)]]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    buckets = min(MAX_BUCKETS, max(1, math.ceil(sum(sizes) / BUCKET_BYTES)))
    folder = f"{out}/{META_DIR}/dedup/{digest}"
    return Dedup(folder, len(files), buckets, *settings, sample_docs), sizes


def find_copies(dedup: Dedup, files: list[TextFile], sizes: list[int]) -> dict:
    """Steps 1 and 2 (skipped when a run before finished them): ``dups.json``'s summary,
    ``{"documents", "copies", "buckets": [buckets holding copies]}``."""
    root = location(dedup.folder)
    summary = root / SUMMARY
    if summary.exists() and (not dedup.sample_docs or _candidates_kept(dedup)):
        return json.loads(summary.read_text())
    _remove_other_corpora(root)
    total = max(1, sum(sizes))
    quotas = [
        2 * math.ceil(dedup.sample_docs * n / total) + EXTRA_CANDIDATES if dedup.sample_docs else 0
        for n in sizes
    ]
    todo = [i for i in range(dedup.files) if not (root / _sig(i)).exists()]
    calls = ((dedup, i, files[i], quotas[i]) for i in todo)
    documents = sum(run_tasks(write_signatures, calls))
    done = set(range(dedup.files)) - set(todo)
    documents += sum(_sig_documents(root / _sig(i), dedup.buckets) for i in done)
    found = list(run_tasks(write_copies, ((dedup, b) for b in range(dedup.buckets))))
    result = {
        "documents": documents,
        "copies": sum(found),
        "buckets": [b for b, n in enumerate(found) if n],
        "dedup": asdict(dedup),
    }
    atomic_write_text(summary, json.dumps(result, indent=1) + "\n")
    return result


def write_signatures(dedup: Dedup, number: int, file: TextFile, quota: int) -> int:
    """Step 1 for one file; returns its document count."""
    rows: list[tuple[int, int, int, int]] = []
    picked: list[tuple[int, int, str]] = []  # a max-heap (by -priority) of the quota smallest
    offered: set[int] = set()
    for doc in read_documents(file, dedup.text_field):
        if isinstance(doc, BadLine):
            continue
        digest = hashlib.blake2b(doc.text.encode(), digest_size=16).digest()
        rows.append((*np.frombuffer(digest, "<u8").tolist(), number, doc.index))
        if (
            quota
            and not _held_out(doc.text, dedup)
            and (p := _priority(digest, dedup)) not in offered
        ):
            offered.add(p)
            entry = (-p, -doc.index, doc.text)
            if len(picked) < quota:
                heapq.heappush(picked, entry)
            elif entry > picked[0]:
                offered.discard(-heapq.heapreplace(picked, entry)[0])
    root = location(dedup.folder)
    mkdir(root)
    lines = (json.dumps({"priority": -p, "doc": -i, "text": t}) for p, i, t in sorted(picked))
    atomic_write_text(root / f"cand-{number:06d}.jsonl", "".join(f"{line}\n" for line in lines))
    table = np.array(rows, dtype=SIG)
    bucket = table["hi"] % dedup.buckets
    order = np.lexsort((table["doc"], table["lo"], table["hi"], bucket))
    data = grouped_bytes(table[order], bucket[order], dedup.buckets)
    atomic_write_bytes(root / _sig(number), data)  # done last
    return len(table)


def write_copies(dedup: Dedup, bucket: int) -> int:
    """Step 2 for one bucket; returns how many later copies it holds."""
    root = location(dedup.folder)
    parts = [grouped_rows(root / _sig(i), dedup.buckets, bucket, SIG) for i in range(dedup.files)]
    rows = np.concatenate(parts) if parts else np.zeros(0, SIG)
    rows = rows[np.lexsort((rows["doc"], rows["file"], rows["lo"], rows["hi"]))]
    later = np.zeros(len(rows), bool)
    later[1:] = (rows["hi"][1:] == rows["hi"][:-1]) & (rows["lo"][1:] == rows["lo"][:-1])
    copies = np.zeros(int(later.sum()), DUP)
    copies["file"], copies["doc"] = rows["file"][later], rows["doc"][later]
    copies = copies[np.lexsort((copies["doc"], copies["file"]))]
    atomic_write_bytes(root / _dup(bucket), grouped_bytes(copies, copies["file"], dedup.files))
    return len(copies)


def copies_in(copies: Copies, number: int) -> frozenset[int]:
    """Step 3: the indices of file ``number``'s documents that are later copies."""
    root = location(copies.folder)
    found = [grouped_rows(root / _dup(b), copies.files, number, DUP)["doc"] for b in copies.buckets]
    return frozenset(int(i) for part in found for i in part)


def tokenizer_sample(dedup: Dedup) -> list[str]:
    """The ``sample_docs`` unique training documents of smallest priority, in corpus order.
    The driver holds those alone, reading the candidates file by file."""
    root = location(dedup.folder)
    kept: list[tuple[int, int, int, str]] = []  # max-heap by -priority
    priorities: set[int] = set()
    for number in range(dedup.files):  # in order: a later file's copy of a text is not kept
        for line in (root / f"cand-{number:06d}.jsonl").read_text().splitlines():
            c = json.loads(line)
            if c["priority"] in priorities:
                continue
            entry = (-c["priority"], -number, -c["doc"], c["text"])
            if len(kept) < dedup.sample_docs:
                heapq.heappush(kept, entry)
                priorities.add(c["priority"])
            elif entry > kept[0]:
                priorities.discard(-heapq.heapreplace(kept, entry)[0])
                priorities.add(c["priority"])
    return [text for _, _, _, text in sorted(kept, key=lambda e: (-e[1], -e[2]))]


def drop_working_files(dedup: Dedup) -> None:
    """Remove the signatures and candidates (24 bytes a document and the sample's texts; the
    near-duplicates' band hashes and edges): the copies' lists and summaries are all a rerun
    needs."""
    root = location(dedup.folder)
    for path in listed(root, ("sig-", "cand-", "nsig-", "edges-")):
        remove_tree(path)


def grouped_bytes(table: np.ndarray, group_of: np.ndarray, groups: int) -> bytes:
    """``table`` (sorted by ``group_of``) as a file :func:`grouped_rows` reads: ``groups + 1``
    record offsets, then the records."""
    starts = np.searchsorted(group_of, np.arange(groups + 1)).astype("<u8")
    return starts.tobytes() + table.tobytes()


def grouped_rows(path: Any, groups: int, group: int, dtype: np.dtype) -> np.ndarray:
    """The records of ``group`` in a file headed by ``groups + 1`` record offsets."""
    with path.open("rb") as f:
        f.seek(8 * group)
        start, stop = np.frombuffer(f.read(16), "<u8").tolist()
        if stop == start:
            return np.zeros(0, dtype)
        f.seek(8 * (groups + 1) + start * dtype.itemsize)
        return np.frombuffer(f.read((stop - start) * dtype.itemsize), dtype)


def _sig_documents(path: Any, buckets: int) -> int:
    """A finished signature file's document count: the last of its bucket offsets."""
    with path.open("rb") as f:
        f.seek(8 * buckets)
        return int(np.frombuffer(f.read(8), "<u8")[0])


def _held_out(text: str, dedup: Dedup) -> bool:
    from data_prep.text.reader import held_out  # the split rule lives with the reader

    return held_out(text, dedup.val_fraction, dedup.seed)


def _priority(digest: bytes, dedup: Dedup) -> int:
    key = str(dedup.seed).encode()
    return int.from_bytes(hashlib.blake2b(digest, digest_size=8, key=key).digest(), "little")


def _candidates_kept(dedup: Dedup) -> bool:
    root = location(dedup.folder)
    return all((root / f"cand-{i:06d}.jsonl").exists() for i in range(dedup.files))


def _remove_other_corpora(root: Any) -> None:
    """A changed corpus or settings start again: the dedup folders of earlier listings go."""
    if root.parent.exists():
        for other in root.parent.iterdir():
            if other.name != root.name:
                remove_tree(other)


def listed(root: Any, prefixes: Iterable[str]) -> list[Any]:
    return (
        [p for p in root.iterdir() if p.name.startswith(tuple(prefixes))] if root.exists() else []
    )


def mkdir(root: Any) -> None:
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)


def _sig(number: int) -> str:
    return f"sig-{number:06d}.bin"


def _dup(bucket: int) -> str:
    return f"dup-{bucket:04d}.bin"
