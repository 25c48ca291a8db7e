"""Reading the ImageNet folder layout into labelled input items.

Layout (as distributed for ILSVRC2012 / the Kaggle LOC release)::

    SRC/train/<wnid>/<wnid>_<n>.JPEG
    SRC/val/ILSVRC2012_val_<8 digits>.JPEG  + SRC/LOC_val_solution.csv  (ImageId,PredictionString)
    SRC/val/<wnid>/*.JPEG                    (alternative: per-class val folders, no CSV)
    SRC/LOC_synset_mapping.txt               (optional: "<wnid> <names>" per line)

The class index of a wnid is its position in the sorted list of train synset folders, as in
torchvision's ImageFolder and every ImageNet checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_prep.corpus import LayoutError, csv_rows
from data_prep.listing import Listing, Mapped, path_digest, repeated_digests
from data_prep.store import location

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
VAL_CSV = "LOC_val_solution.csv"
SYNSETS = "LOC_synset_mapping.txt"


@dataclass(frozen=True)
class ImageItem:
    path: str  # relative to the source root
    label: int
    wnid: str
    key: str = ""  # the sample key, unique in the split: set by ImageNetLayout.items (unique_keys)

    def __str__(self) -> str:  # printable even for a file name that is not UTF-8
        return self.path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class ImageNetLayout:
    root: Path  # or a UPath: a prefix of an object store, read through fsspec
    wnids: tuple[str, ...]
    names: dict[str, str]

    def items(self, split: str) -> Mapped:
        """Every image file of ``split`` with its label, sorted by path, each with its sample
        key. The walk happens here (a bad layout fails now); the items wait on the driver's
        disk (``data_prep.listing``), not in its memory."""
        split_dir = self.root / split
        if not split_dir.is_dir():
            alone = "; to prepare train alone: splits=[train]" if split != "train" else ""
            raise LayoutError(f"{self.root} has no {split}/ folder{alone}")
        if split == "val" and (self.root / VAL_CSV).is_file():
            found = self._items_from_csv(split_dir)
        else:
            found = self._items_from_folders(split_dir)
        return keyed_items(found)

    def _items_from_folders(self, split_dir: Path) -> Iterator[ImageItem]:
        index = {w: i for i, w in enumerate(self.wnids)}
        class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
        loose = [f for f in split_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
        if loose and not class_dirs:
            raise LayoutError(
                f"{split_dir} holds {len(loose)} image files but nothing labels them: put "
                f"{VAL_CSV} (ImageId,PredictionString) beside {split_dir.name}/, or the images "
                f"in {split_dir.name}/<wnid>/ folders"
            )
        for class_dir in class_dirs:
            if class_dir.name not in index:
                raise LayoutError(f"{class_dir} is not a train synset folder")
            # one class's names at a time, by name (the order of the Paths: comparing Paths
            # took a third of the driver's listing time)
            for f in sorted(class_dir.iterdir(), key=_name):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    rel = str(f.relative_to(self.root))
                    yield ImageItem(rel, index[class_dir.name], class_dir.name)

    def _items_from_csv(self, split_dir: Path) -> Iterator[ImageItem]:
        index = {w: i for i, w in enumerate(self.wnids)}
        labels: dict[str, str] = {}
        with csv_rows(self.root / VAL_CSV) as rows:
            missing = [
                c for c in ("ImageId", "PredictionString") if c not in (rows.fieldnames or [])
            ]
            if missing:
                raise LayoutError(
                    f"{self.root / VAL_CSV}: no {' or '.join(missing)} column (the header is "
                    f"{', '.join(rows.fieldnames or []) or 'empty'})"
                )
            for row in rows:
                words = (row["PredictionString"] or "").split()
                if words:  # an empty label is a missing one: its image counts as no_label_row
                    labels[row["ImageId"]] = words[0]
        for f in sorted(split_dir.iterdir(), key=_name):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if f.stem not in labels:  # kept, to be skipped and counted (no_label_row)
                yield ImageItem(str(f.relative_to(self.root)), -1, "")
                continue
            wnid = labels[f.stem]
            if wnid not in index:
                raise LayoutError(f"{VAL_CSV} labels {f.stem} with unknown synset {wnid}")
            yield ImageItem(str(f.relative_to(self.root)), index[wnid], wnid)


def keyed_items(found: Iterator[ImageItem]) -> Mapped:
    """A split's items with their sample keys (:func:`unique_keys`, streamed): the walk's items
    wait on the driver's disk with an 8-byte digest of each stem, so the stems that collide are
    known before the first key is given, and the keys are checked distinct the same way. The
    job lists the result as it is (``data_prep.listing.Mapped``)."""
    spool, stems = Listing(), array("Q")
    for item in found:
        spool.append(item)
        stems.append(path_digest(_stem(item.path)))
    spool.flush()
    keyed = Mapped(spool, functools.partial(_keyed, repeated_digests(stems)))
    del stems
    same = repeated_digests(array("Q", (path_digest(i.key) for i in keyed)))
    if same:  # a long form equal to someone's stem: not in any real corpus
        keys = sorted({i.key for i in keyed if path_digest(i.key) in same})
        keyed.close()
        raise LayoutError(f"sample keys collide: {keys[:5]}")
    return keyed


def _keyed(colliding: set[int], item: ImageItem) -> ImageItem:
    stem = _stem(item.path)
    key = _key(item.path, stem, path_digest(stem) in colliding)
    return ImageItem(item.path, item.label, item.wnid, key)  # dataclasses.replace: 4x slower


def unique_keys(paths: list[str]) -> list[str]:
    """Dot-free sample keys, one per path and all distinct: the file's stem (ImageNet's names
    are unique: ``n01440764_10026``), or, where stems collide (two classes holding ``1.jpg``;
    ``a.jpg`` beside ``a.png``), the path below the split folder with a short hash of it.

    Only colliding paths get the long form, so the keys of a corpus without collisions, which
    seed its masks and crops, are those it always had."""
    stems = [_stem(p) for p in paths]
    counts = Counter(stems)
    keys = [_key(path, stem, counts[stem] > 1) for path, stem in zip(paths, stems)]
    if len(set(keys)) != len(keys):  # a long form equal to someone's stem: not in any real corpus
        raise LayoutError(
            f"sample keys collide: {sorted(k for k, n in Counter(keys).items() if n > 1)[:5]}"
        )
    return keys


def _name(path: Path) -> str:
    return path.name


def _stem(path: str) -> str:
    """``Path(path).stem`` with its dots made underscores, by string operations: a Path interns
    each part of the path, and those stayed alive (1.9 MB more over 32 k files here)."""
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return (name[:dot] if 0 < dot < len(name) - 1 else name).replace(".", "_")


def _key(path: str, stem: str, colliding: bool) -> str:
    """A path's sample key: its stem, unless that collides with another's in the split or
    cannot be a member name (see :func:`unique_keys`)."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()
    if not _storable(stem):
        return f"h{digest[:24]}"  # the original name stays in the json member
    if not colliding:
        return stem
    below_split = "_".join(Path(path).parts[1:]).replace(".", "_")
    key = f"{below_split}_{digest[:8]}"
    return key if _storable(key) else f"h{digest[:24]}"


# A tar member's name is at most 100 bytes in ustar (no pax: our reader and plain webdataset
# both read ustar); the longest extension we add is ".json".
_MAX_KEY_BYTES = 100 - len(".json")


def _storable(key: str) -> bool:
    """A key a plain ustar member name can hold: UTF-8 (a file name that is not, such as
    Latin-1 bytes, comes as surrogates) and short enough."""
    try:
        return len(key.encode("utf-8")) <= _MAX_KEY_BYTES
    except UnicodeEncodeError:
        return False


def read_layout(root: str | Path) -> ImageNetLayout:
    """Open an ImageNet-layout folder (or ``s3://`` / any fsspec URL of one); fails at once, with
    a clear message, if it is not one."""
    root = location(root)
    if not root.exists():
        raise LayoutError(f"source folder {root} does not exist")
    train = root / "train"
    if not train.is_dir():
        raise LayoutError(f"{root} has no train/ folder of <wnid>/ synset folders")
    wnids = tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))
    if not wnids:
        raise LayoutError(f"{train} holds no synset folders")
    for wnid in wnids:
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in (train / wnid).iterdir()):
            log.warning(
                "%s holds no image files: the class keeps its index %d (indices follow the "
                "sorted synset folders, as ImageNet checkpoints expect) but has no samples",
                train / wnid, wnids.index(wnid),
            )  # fmt: skip
    names = {}
    if (root / SYNSETS).is_file():
        for line in (root / SYNSETS).read_text().splitlines():
            wnid, _, name = line.partition(" ")
            if wnid:
                names[wnid] = name.strip()
    return ImageNetLayout(root, wnids, names)
