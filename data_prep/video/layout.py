"""The three layouts video corpora ship in, read into labelled items (no decoding here).

* **Kinetics**: ``train.csv`` / ``validate.csv`` (``val.csv`` also accepted) with columns
  ``label,youtube_id,time_start,time_end,split``, and clips named
  ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere below the root (per-split or per-class
  folders, as the download scripts leave them; mp4, mkv and webm all occur).
* **Something-Something v2**: ``something-something-v2-labels.json`` (``{template: index}``),
  ``something-something-v2-train.json`` / ``-validation.json`` (``[{id, template, ...}]``; a
  template's ``[something]`` brackets dropped give its label), and ``<id>.webm`` below the root.
* **Class folders**: ``train/<class>/<video>`` and ``val/<class>/<video>``.

A CSV or JSON row whose video is not on disk becomes an item with ``problem="missing_file"``, so
the prep counts it instead of losing it silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from data_prep.corpus import LayoutError, csv_rows, json_array_rows
from data_prep.plan import pieces_of
from data_prep.store import location, relative

# What PyAV opens and corpora ship in (Kinetics: mp4, mkv, webm; older sets: avi, mpg, flv).
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts")
KINETICS_CSV = {"train": ("train.csv",), "val": ("validate.csv", "val.csv")}
# Each Kinetics column and the names other releases and user tables give it, first preferred.
KINETICS_COLUMNS = {
    "label": ("label", "class", "category", "label_name", "classname"),
    "youtube_id": ("youtube_id", "video_id", "ytid", "id"),
    "time_start": ("time_start", "start", "start_time"),
    "time_end": ("time_end", "end", "end_time"),
}
SSV2_LABELS = "something-something-v2-labels.json"
SSV2_SPLITS = {
    "train": "something-something-v2-train.json",
    "val": "something-something-v2-validation.json",
}


@dataclass(frozen=True)
class VideoItem:
    path: str  # relative to the root (the missing file's expected name when absent)
    label: str  # class name
    key: str  # the dot-free sample key stem of this video
    root: str = ""  # a folder, or an object store's URL of one
    problem: str = ""  # "missing_file" when the row names no file on disk
    # a video read by several tasks: this one cuts the ``part``-th of ``parts`` contiguous
    # ranges of its clips
    part: int = 0
    parts: int = 1

    @property
    def file(self) -> Any:
        """A ``Path``, or a ``UPath`` read through fsspec when the root is a store's URL."""
        return location(self.root) / self.path

    def __str__(self) -> str:
        return (
            self.path if self.parts == 1 else f"{self.path} [piece {self.part + 1} of {self.parts}]"
        )


def is_layout_file(rel: str) -> bool:
    """Whether a path below the root is one of the layouts' tables (read for the labels)."""
    tables = {n for names in KINETICS_CSV.values() for n in names} | {SSV2_LABELS}
    return rel in tables | set(SSV2_SPLITS.values())


def detect_layout(root: Any) -> str:
    """``kinetics``, ``ssv2`` or ``folders``; LayoutError when none fits. ``root`` is a folder or
    an object store's URL of one (``data_prep.store.location``)."""
    root = location(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")
    if any((root / name).is_file() for names in KINETICS_CSV.values() for name in names):
        return "kinetics"
    if (root / SSV2_LABELS).is_file():
        return "ssv2"
    if (root / "train").is_dir():
        return "folders"
    raise LayoutError(
        f"{root} holds no train.csv (Kinetics), {SSV2_LABELS} (Something-Something) or "
        "train/<class>/ folders"
    )


def class_names(root: Any) -> list[str]:
    """Every class of the corpus, in index order."""
    root = location(root)
    layout = detect_layout(root)
    if layout == "ssv2":
        found = json_table(root / SSV2_LABELS)
        return [name for name, _ in sorted(found.items(), key=lambda kv: int(kv[1]))]
    if layout == "kinetics":  # every train row's label, from the table alone (no walk)
        return sorted({label for _, label in _kinetics_rows(root, "train")})
    return sorted({item.label for item in split_items(root, "train")})


def split_items(root: Any, split: str, task_bytes: int = 0) -> Iterator[VideoItem]:
    """The items of ``split`` (``train`` or ``val``), sorted by path; a video larger than
    ``task_bytes`` (0: never) is several items, each a contiguous range of its clips. Class
    folders are walked one folder at a time; a Kinetics or Something-Something table is joined
    to the files it names in a SQLite file on the driver's disk (:func:`_joined`), read a row at
    a time (a Something-Something table, one JSON array, too): neither is a list on the driver."""
    root = location(root)
    layout = detect_layout(root)
    if layout == "folders":
        return _folders(root, split, task_bytes)
    return (_kinetics if layout == "kinetics" else _ssv2)(root, split, task_bytes)


def _pieces(item: VideoItem, size: int, task_bytes: int) -> list[VideoItem]:
    parts = pieces_of(size, task_bytes)
    if parts == 1:
        return [item]
    return [dataclasses.replace(item, part=k, parts=parts) for k in range(parts)]


def _videos(root: Any) -> Iterator[tuple[str, str, int]]:
    """``(stem, relative path, size)`` of every video below ``root``. Local folders are walked by ``os.scandir`` (no
    ``Path`` a file: 125 µs a Kinetics video before); a store's by one recursive listing, which
    gives the sizes (no request a file)."""
    if not isinstance(root, Path):
        base = root.path.rstrip("/") + "/"
        for name, info in root.fs.find(root.path, detail=True).items():
            if info.get("type") == "file" and Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                parts = PurePosixPath(name.removeprefix(base)).parts
                stem = parts[-1].rsplit(".", 1)[0]
                yield stem, "/".join(parts), int(info.get("size") or 0)
        return
    folders = [()]  # scandir's entries one at a time: a folder of 240 k clips is no list
    while folders:
        parts = folders.pop()
        with os.scandir(os.path.join(root, *parts)) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):  # as os.walk and rglob: no loops
                    folders.append((*parts, entry.name))
                    continue
                stem, dot, suffix = entry.name.rpartition(".")
                if dot and stem and f".{suffix.lower()}" in VIDEO_EXTENSIONS and entry.is_file():
                    yield stem, "/".join((*parts, entry.name)), entry.stat().st_size


def _joined(root: Any, split: str, rows, task_bytes: int) -> Iterator[VideoItem]:
    """A label table's rows ``(stem, label)`` joined to the videos below ``root``, as items
    sorted by path (a row's order among equal paths kept). The join and the sort run in a
    SQLite file on the driver's disk, so the driver's memory does not grow with the corpus
    (a dict of the videos and a list of the items were 840 bytes a video of Python's
    allocations: 8 GB at WebVid's 10 M). Of two videos with one stem, the later in path order
    is the one a row finds (as the dict of a sorted walk had it). Names are stored as their
    bytes (``surrogateescape``: a file name that is not UTF-8 stays a name); UTF-8 bytes sort
    as Python sorts the strings."""
    with tempfile.TemporaryDirectory(prefix="maskmill-join-") as tmp:
        db = sqlite3.connect(os.path.join(tmp, "join.db"))
        try:
            # ord: the path with \0 between its parts, which sorts as the parts do
            db.execute("CREATE TABLE videos (stem BLOB PRIMARY KEY, ord BLOB, rel BLOB, size INT)")
            db.executemany(
                "INSERT INTO videos VALUES (?, ?, ?, ?) ON CONFLICT(stem) DO UPDATE SET "
                "ord = excluded.ord, rel = excluded.rel, size = excluded.size "
                "WHERE excluded.ord > videos.ord",
                (
                    (_b(stem), _b(rel).replace(b"/", b"\0"), _b(rel), size)
                    for stem, rel, size in _videos(root)
                ),
            )
            db.execute("CREATE TABLE items (seq INTEGER PRIMARY KEY, path BLOB, label TEXT, "
                       "stem BLOB, size INT, problem TEXT)")  # fmt: skip
            db.executemany(
                "INSERT INTO items (path, label, stem, size, problem) "
                "SELECT coalesce(v.rel, ?3), ?2, ?1, coalesce(v.size, 0), "
                "CASE WHEN v.rel IS NULL THEN 'missing_file' ELSE '' END "
                "FROM (SELECT 1) LEFT JOIN videos v ON v.stem = ?1",
                ((_b(stem), label, _b(f"{split}/{stem}")) for stem, label in rows),
            )
            found = db.execute("SELECT path, label, stem, size, problem FROM items "
                               "ORDER BY path, seq")  # fmt: skip
            for path, label, stem, size, problem in found:
                path, stem = _s(path), _s(stem)
                item = VideoItem(path, label, _key(stem), str(root), problem)
                yield from [item] if problem else _pieces(item, size, task_bytes)
        finally:
            db.close()


def _b(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _s(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def _kinetics(root: Path, split: str, task_bytes: int) -> Iterator[VideoItem]:
    return _joined(root, split, _kinetics_rows(root, split), task_bytes)


def _kinetics_rows(root: Any, split: str) -> Iterator[tuple[str, str]]:
    """``(file stem, label)`` of each row of the split's table."""
    table = next((root / n for n in KINETICS_CSV[split] if (root / n).is_file()), None)
    if table is None:
        raise LayoutError(f"{root}: no {' or '.join(KINETICS_CSV[split])} for split '{split}'")
    with csv_rows(table) as rows:
        cols = {want: _column(table, rows.fieldnames or [], want) for want in KINETICS_COLUMNS}
        for line, row in enumerate(rows, start=2):
            try:
                start, end = (int(float(row[cols[c]])) for c in ("time_start", "time_end"))
            except (TypeError, ValueError):
                raise LayoutError(
                    f"{table}:{line}: time_start and time_end must be seconds, got "
                    f"{row[cols['time_start']]!r} and {row[cols['time_end']]!r}"
                ) from None
            yield f"{row[cols['youtube_id']]}_{start:06d}_{end:06d}", row[cols["label"]]


def _column(table: Path, header: list[str], want: str) -> str:
    """The header name of a Kinetics column: its own name or one of its usual others."""
    found = {h.strip().lower(): h for h in header}
    for name in KINETICS_COLUMNS[want]:
        if name in found:
            return found[name]
    raise LayoutError(
        f"{table}: no {want} column (looked for {', '.join(KINETICS_COLUMNS[want])}; "
        f"the header is {', '.join(header) or 'empty'})"
    )


def _ssv2(root: Path, split: str, task_bytes: int) -> Iterator[VideoItem]:
    return _joined(root, split, _ssv2_rows(root / SSV2_SPLITS[split]), task_bytes)


def _ssv2_rows(table: Path) -> Iterator[tuple[str, str]]:
    """``(id, label)`` of each row of a split's table, read a row at a time."""
    if not table.is_file():
        raise LayoutError(f"{table} is missing (the Something-Something layout needs it)")
    for n, row in enumerate(json_array_rows(table), start=1):
        if not (isinstance(row, dict) and "id" in row and isinstance(row.get("template"), str)):
            raise LayoutError(f"{table}: row {n} has no id and template: {str(row)[:80]}")
        yield str(row["id"]), _ssv2_label(row["template"])


def json_table(path: Path):
    """A layout's JSON table, or a LayoutError naming what is wrong with it."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise LayoutError(f"{path} is missing (the Something-Something layout needs it)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LayoutError(f"{path}: not a JSON table ({err})") from None


def _ssv2_label(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def _folders(root: Path, split: str, task_bytes: int) -> Iterator[VideoItem]:
    base = root / split
    if not base.is_dir():
        raise LayoutError(f"{root}: no {split}/<class>/ folders for split '{split}'")
    # a folder's name sorts as its path's prefix does: "a/" after "a b/" (as sorting the paths)
    for label in sorted((p.name for p in base.iterdir() if p.is_dir()), key=lambda n: n + "/"):
        for p in sorted((base / label).iterdir()):
            if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
                item = VideoItem(relative(p, root), label, _key(f"{label}_{p.stem}"), str(root))
                yield from _pieces(item, p.stat().st_size if task_bytes else 0, task_bytes)


def _key(stem: str) -> str:
    return stem.replace(".", "_").replace("/", "_").replace(" ", "_")
