"""Reading LibriLight and LibriSpeech-form folders into audio input items (no audio decoded).

LibriLight (unlabelled; ``small``, ``medium``, ``large`` subsets)::

    SRC/<subset>/<speaker>/<book>/<chapter>.flac
    SRC/<subset>/<speaker>/<book>/<chapter>.json   {"speaker", "book_meta", "snr",
                                                    "voice_activity": [[start, end], ...]}

LibriSpeech form (labelled; LibriLight's limited-resource fine-tuning set is laid out so)::

    SRC/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    SRC/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   "<speaker>-<chapter>-<utt> WORDS ..."

A chapter whose JSON is missing or unreadable is still an item (it will be cut into fixed
windows); what was wrong is named in ``problem`` so the prep counts it. LibriLight has no
validation split: :func:`held_out_speakers` picks whole speakers to hold out.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from data_prep.corpus import LayoutError
from data_prep.plan import pieces_of
from data_prep.store import location, relative

# What libsndfile (soundfile's wheel bundles 1.2) decodes, as corpora name it.
AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".opus", ".mp3", ".aiff", ".aif"}
TRANSCRIPT_SUFFIX = ".trans.txt"
# LibriSpeech's and LibriLight's own tables beside the audio: metadata, not inputs.
LAYOUT_TABLES = {"SPEAKERS.TXT", "CHAPTERS.TXT", "BOOKS.TXT", "README.TXT", "LICENSE.TXT"}


@dataclass(frozen=True)
class AudioItem:
    path: str  # relative to the source root
    speaker: str
    book: str  # LibriLight's book id; LibriSpeech's chapter folder
    chapter: str
    transcript: str | None = None  # LibriSpeech form only
    problem: str | None = None  # missing_json | missing_transcript (known from the listing)
    root: str = ""  # the folder ``path`` is relative to (or an object store's URL of it)
    # a chapter read by several tasks: this one cuts the ``part``-th of ``parts`` contiguous
    # ranges of its segments
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
    """Whether a path below a source is read for its own sake: a chapter's voice-activity JSON,
    a chapter's transcripts, or the corpus's tables."""
    name = rel.rsplit("/", 1)[-1]
    return name.endswith((".json", TRANSCRIPT_SUFFIX)) or name in LAYOUT_TABLES


def _in_walk_order(paths: Iterable[Any], root: Any) -> list[Any]:
    """``paths`` below ``root`` sorted by their relative parts, as ``sorted`` orders local
    ``Path`` objects (a store's listing comes in key order, where ``a-b`` sorts before ``a/b``)."""
    return sorted(paths, key=lambda p: PurePosixPath(relative(p, root)).parts)


def detect_layout(root: Any) -> str:
    """``librispeech`` when there are transcripts (at any depth), ``librilight`` when audio sits
    three folders down; else a LayoutError saying what was expected. ``root`` may be a folder or
    an object store's URL of one."""
    root = location(root)
    if not root.is_dir():
        raise LayoutError(f"source folder {root} does not exist")
    if any(root.rglob(f"*{TRANSCRIPT_SUFFIX}")):
        return "librispeech"
    if any(p.suffix.lower() in AUDIO_SUFFIXES for p in root.glob("*/*/*/*")):
        return "librilight"
    raise LayoutError(
        f"{root} holds neither LibriLight (<subset>/<speaker>/<book>/<chapter>.flac + .json) nor "
        f"LibriSpeech form (<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + "
        f"<speaker>-<chapter>{TRANSCRIPT_SUFFIX})"
    )


def librilight_items(root: Any, task_bytes: int = 0) -> Iterator[AudioItem]:
    """Every chapter recording under ``root`` (a folder or a store's URL), in path order, one
    book folder's listing held at a time (LibriLight's 219 k chapters are never a list on the
    driver). A chapter's voice-activity JSON is not opened here: whether it exists comes from
    the book's listing, and the task that cuts the chapter reads it (before, the driver opened
    every JSON in turn: 219 k serial reads, a request each on a store). A chapter larger than
    ``task_bytes`` (0: never) is several items, each a contiguous range of its segments."""
    root = location(root)
    for subset in _listing(root)[0]:
        for speaker in _listing(root / subset)[0]:
            for book in _listing(root / subset / speaker)[0]:
                listed = _listing(root / subset / speaker / book, task_bytes > 0)[1]
                for name, size in listed.items():
                    stem, dot, suffix = name.rpartition(".")
                    if not dot or f".{suffix.lower()}" not in AUDIO_SUFFIXES:
                        continue
                    parts = pieces_of(size, task_bytes)
                    has_json = f"{stem}.json" in listed
                    for part in range(parts):
                        yield AudioItem(
                            path=f"{subset}/{speaker}/{book}/{name}",
                            speaker=speaker,
                            book=book,
                            chapter=stem,
                            problem=None if has_json else "missing_json",
                            root=str(root),
                            part=part,
                            parts=parts,
                        )


def librilight_speakers(root: Any) -> set[str]:
    """The speakers with at least one chapter recording under ``root``."""
    return {item.speaker for item in librilight_items(root)}


def _listing(folder: Any, sizes: bool = False) -> tuple[list[str], dict[str, int]]:
    """``folder``'s sub-folder names and ``{file name: size}``, each sorted by name (the order
    ``sorted`` gives their paths); sizes 0 unless asked (a local stat each; a store's listing
    carries them)."""
    if isinstance(folder, Path):
        with os.scandir(folder) as found:
            entries = sorted(found, key=lambda e: e.name)
            files = {e.name: e.stat().st_size if sizes else 0 for e in entries if e.is_file()}
            return [e.name for e in entries if e.is_dir()], files
    entries = folder.fs.ls(folder.path, detail=True)
    listed = sorted(((e["name"].rstrip("/").rsplit("/", 1)[-1], e) for e in entries),
                    key=lambda pair: pair[0])  # fmt: skip
    folders = [name for name, e in listed if e["type"] == "directory"]
    return folders, {name: int(e.get("size") or 0) for name, e in listed if e["type"] == "file"}


def librispeech_items(root: Any) -> list[AudioItem]:
    """Every utterance under ``root`` (a folder or a store's URL) with its transcript (upper
    case, as distributed). Chapter folders are found at any depth, so LibriLight's fine-tuning
    set (``1h/0/clean/...``, ``9h/other/...``) reads as one folder."""
    root = location(root)
    items = []
    transcripts = list(root.rglob(f"*{TRANSCRIPT_SUFFIX}"))
    chapters = {str(t.parent): t.parent for t in transcripts}.values()
    for chapter_dir in _in_walk_order(chapters, root):
        speaker, chapter = chapter_dir.parent.name, chapter_dir.name
        lines = _transcripts(chapter_dir / f"{speaker}-{chapter}{TRANSCRIPT_SUFFIX}")
        audio_files = (p for p in chapter_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        for audio in _in_walk_order(audio_files, root):
            text = lines.get(audio.stem)
            items.append(
                AudioItem(
                    path=relative(audio, root),
                    speaker=speaker,
                    book=chapter,
                    chapter=audio.stem,
                    transcript=text,
                    problem=None if text is not None else "missing_transcript",
                    root=str(root),
                )
            )
    return items


def held_out_speakers(speakers: Iterable[str], fraction: float, seed: int) -> frozenset[str]:
    """Whole speakers held out for validation: ``round(fraction * n)`` of them (at least one
    when ``fraction > 0`` and there are two or more), the same for the same seed and set."""
    ordered = sorted(set(speakers))
    count = round(fraction * len(ordered))
    if fraction > 0 and len(ordered) > 1:
        count = min(len(ordered) - 1, max(1, count))
    random.Random(f"{seed}:speakers").shuffle(ordered)
    return frozenset(ordered[:count])


def voice_activity(item: AudioItem) -> tuple[tuple[tuple[float, float], ...] | None, str | None]:
    """A LibriLight chapter's voice activity from its JSON, or what was wrong with it
    (``missing_json``, ``unreadable_json``): read by the task that cuts the chapter."""
    if item.problem == "missing_json":
        return None, "missing_json"
    path = item.file.with_suffix(".json")
    try:
        meta = json.loads(path.read_text())
        raw = meta.get("voice_activity") if isinstance(meta, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, "unreadable_json"
    if not isinstance(raw, list):
        return None, "unreadable_json"
    pairs = tuple(tuple(p) for p in raw if isinstance(p, list | tuple))
    return pairs, None


def _transcripts(path: Any) -> dict[str, str]:
    if not path.is_file():
        return {}
    lines = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        utt, _, text = line.strip().partition(" ")
        if utt:
            lines[utt] = text.strip()
    return lines
