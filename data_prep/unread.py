"""Every file under a source is read or accounted for: the files a listing did not take, by reason.

A reader's listing (``items``) takes the inputs its layout names; this module walks the same
source folders and names every other file, so that a prep never loses a file in silence
("ignored 3 files: 2 × .mp3 (not an audio format maskmill reads), 1 × not where the layout
reads"). The walk is a second listing of the source: at 10^6 files it costs what the listing
does (a few seconds per 10^5 files on a local disk), once per prep. Pure but for the walk.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

HIDDEN = "hidden"  # .DS_Store, ._name (macOS), .git/...: never data
UNSUPPORTED = "unsupported_format"
SPLIT_NOT_PREPARED = "split_not_prepared"
OUTSIDE_LAYOUT = "outside_layout"
# What a reason means, for the console line (``{modality}`` filled in).
MEANING = {
    HIDDEN: "hidden file",
    UNSUPPORTED: "not {article} {modality} format maskmill reads",
    SPLIT_NOT_PREPARED: "in a split not prepared",
    OUTSIDE_LAYOUT: "not where the layout reads it (a nested folder, or no label table names it)",
}
COMPRESSIONS = (".gz", ".bz2", ".zst", ".xz")
# A console line names at most this many kinds; the full list is in the split's records.
SHOWN_KINDS = 4


@dataclass(frozen=True)
class Unread:
    path: str  # as found: the source folder joined with the path below it
    reason: str  # one of MEANING
    detail: str = ""  # the suffix (unsupported_format) or the split (split_not_prepared)

    def as_record(self) -> dict:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


def suffix_of(name: str) -> str:
    """The format a file name claims: ``.mp3``, ``.txt.gz`` (a compression keeps the suffix it
    compresses), or ``no suffix``."""
    suffixes = [s.lower() for s in Path(name).suffixes][-2:]
    if not suffixes:
        return "no suffix"
    if len(suffixes) == 2 and suffixes[1] in COMPRESSIONS:
        return "".join(suffixes)
    return suffixes[-1]


def unread_files(
    roots: Iterable[Path],
    used: set[str],
    reads: Callable[[str], bool],
    formats: Callable[[str], bool],
    splits: tuple[set[str], set[str]] = (set(), set()),
) -> Iterator[Unread]:
    """The files under ``roots`` that are neither inputs (``used``: absolute paths) nor files the
    layout reads for its own sake (``reads(relative path)``: label tables, transcripts), each
    with its reason. ``formats(name)``: whether the modality reads a file of that name at all.
    ``splits``: (the split folders prepared, every split folder the layout knows), so that a
    file under ``val/`` of a prep of ``train`` alone is named as such."""
    prepared, known = splits
    for root in roots:
        for path, rel in _walk(root if not isinstance(root, str) else Path(root)):
            if path in used:
                continue
            if reads(rel) or rel.startswith(".maskmill"):  # a layout file, or maskmill's own
                continue
            yield _classify(path, rel, formats, prepared, known)


def _classify(path: str, rel: str, formats, prepared: set[str], known: set[str]) -> Unread:
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):
        return Unread(path, HIDDEN)
    if not formats(parts[-1]):
        return Unread(path, UNSUPPORTED, suffix_of(parts[-1]))
    if len(parts) > 1 and parts[0] in known - prepared:
        return Unread(path, SPLIT_NOT_PREPARED, parts[0])
    return Unread(path, OUTSIDE_LAYOUT)


def _walk(root: Path) -> Iterator[tuple[str, str]]:
    """(path, path below ``root``) of every file below ``root`` (symlinked folders not followed:
    a loop cannot hang the walk); below a prefix of an object store, every object. Strings, not
    Paths, on a disk: a Path interns each part of its path, and those stayed alive (1.9 MB more
    over 32 k files)."""
    if not isinstance(root, Path):
        for p in sorted((p for p in root.rglob("*") if p.is_file()), key=str):
            yield str(p), p.relative_to(root).as_posix()
        return
    top = str(root)
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        below = os.path.relpath(folder, top).replace(os.sep, "/")
        for name in sorted(files):
            yield os.path.join(folder, name), name if below == "." else f"{below}/{name}"


def counts_by_kind(unread: Iterable[Unread]) -> Counter[tuple[str, str]]:
    """How many files of each (reason, detail)."""
    return Counter((u.reason, u.detail) for u in unread)


def summary(unread: list[Unread], modality: str) -> str:
    """One console line: ``ignored 3 files: 2 × .mp3 (not an audio format maskmill reads), 1 ×
    hidden file``; the most frequent kinds first, capped at :data:`SHOWN_KINDS`."""
    kinds = counts_by_kind(unread).most_common()
    article = "an" if modality[:1] in "aeiou" else "a"
    shown = []
    for (reason, detail), n in kinds[:SHOWN_KINDS]:
        meaning = MEANING[reason].format(modality=modality, article=article)
        if reason == UNSUPPORTED:
            shown.append(f"{n} × {detail} ({meaning})")
        elif reason == SPLIT_NOT_PREPARED:
            shown.append(f"{n} × {detail}/ ({meaning})")
        else:
            shown.append(f"{n} × {meaning}")
    more = len(kinds) - SHOWN_KINDS
    tail = f", and {more} more kinds" if more > 0 else ""
    noun = "file" if len(unread) == 1 else "files"
    return f"ignored {len(unread)} {noun}: {', '.join(shown)}{tail}"
