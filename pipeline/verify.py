"""``maskmill verify``: every shard of some prepared splits against its manifest (size and
sha256), ``_SUCCESS``, and the manifest against the stats; a line per shard, exit 0 or 1."""

from __future__ import annotations

import functools
from pathlib import Path

from tqdm.auto import tqdm

from data_prep.shard_format import MANIFEST, SUCCESS, prepared_splits, split_record, verify_split
from data_prep.store import absolute, location
from pipeline.schema import RunConfig

REPAIR = (
    "to repair: rerun the prep, which rewrites exactly the damaged shards (`maskmill run RUN.yaml` "
    "after missing or truncated shards, `maskmill run RUN.yaml --force prep` after changed bytes; "
    "for a folder, `maskmill prep` with the settings that made it)"
)


def splits_of_folder(folder: Path) -> list[Path]:
    """``folder`` itself when it is a prepared split, else the prepared splits in it."""
    if split_record(folder, MANIFEST).exists() or split_record(folder, SUCCESS).exists():
        return [folder]
    return prepared_splits(folder)


def splits_of_run(cfg: RunConfig) -> list[Path]:
    """Every prepared split a run writes or reads, each once."""
    named = [cfg.pretrain.train_shards, cfg.evaluate.train_shards, cfg.evaluate.val_shards]
    found = {absolute(p): p for p in prepared_splits(cfg.prep.out)}
    for path in map(location, named):
        found.setdefault(absolute(path), path)
    return [found[k] for k in sorted(found)]


def report(splits: list[Path], sha256: bool = True) -> tuple[list[str], bool]:
    """The report's lines (a head line per split, then one per shard) and whether all is intact."""
    lines, intact = [], True
    for split in splits:
        bar = functools.partial(tqdm, desc=f"verify {split.name}", unit="shard", leave=False)
        issues, shards = verify_split(split, sha256, progress=bar)
        bad = sum(1 for problem in shards.values() if problem)
        intact = intact and not issues and not bad
        lines.append(f"{split}: {len(shards)} shards, {bad} damaged")
        lines += [f"  records: {issue}" for issue in issues]
        lines += [
            f"  {'BAD ' if p else 'ok  '}{f}{'  ' + p if p else ''}" for f, p in shards.items()
        ]
    if not intact:
        lines.append(REPAIR)
    return lines, intact
