"""What a prep output folder records about the prep writing it: the settings that made its
shards, and a lock held while one prep writes.

``OUT/.maskmill/prep.json`` holds the ``prep`` section less the keys that do not change a
shard (the output's own path, the Ray session, which splits to write). A prep into an output made with other settings
is refused before any work, naming the keys that differ, or with ``rebuild`` empties the output
first: shards of two settings never mix in one output. ``OUT/.maskmill/prep.lock`` is held
(``data_prep.lock``: ``flock``, or a lock file where the file system refuses it) while a prep writes, so a second prep into the same output at the same time is
refused rather than interleaved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_prep.corpus import SHARD_BYTES, TASK_BYTES
from data_prep.lock import LockHeld, exclusive
from data_prep.shard_format import META_DIR, atomic_write_text
from data_prep.store import remove_tree

log = logging.getLogger(__name__)

SETTINGS = f"{META_DIR}/prep.json"
LOCK = f"{META_DIR}/prep.lock"
# Where and how a prep runs, which of its splits it writes: not what any shard holds.
# How a prep runs and what it tolerates, not what it writes.
NOT_SETTINGS = (
    "out", "num_cpus", "ray_address", "splits", "max_failed_share", "task_memory_mb",
)  # fmt: skip


class PrepOutputError(RuntimeError):
    """The output folder cannot take this prep: another prep is writing it, or its shards were
    made with other settings."""


def settings_of(cfg: Any) -> dict:
    """The settings a prep output records: the config as JSON values, less NOT_SETTINGS."""
    values = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    return {k: v for k, v in sorted(without_new_defaults(values).items()) if k not in NOT_SETTINGS}


# Keys added after outputs were written: at these values they are left out of the records and
# fingerprints, so an output made before the key reads as made with its default.
NEW_DEFAULTS = {"shard_bytes": SHARD_BYTES, "near_dedup": False, "task_bytes": TASK_BYTES}


def without_new_defaults(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in NEW_DEFAULTS or v != NEW_DEFAULTS[k]}


def changed_keys(recorded: dict, settings: dict) -> list[str]:
    return sorted(
        k for k in recorded.keys() | settings.keys() if recorded.get(k) != settings.get(k)
    )


@contextlib.contextmanager
def writing(out: Path, settings: dict, rebuild: bool = False) -> Iterator[None]:
    """Hold ``out`` for one prep with ``settings`` (see module docstring). A folder that holds
    files no prep wrote is refused before anything is written into it."""
    refuse_foreign(out)
    (out / META_DIR).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:  # an object store has no lock: one prep at a time into one URL is the user's
            if isinstance(out, Path):
                held.enter_context(exclusive(out / LOCK))
        except LockHeld as err:
            raise PrepOutputError(
                f"another prep ({err}) is writing {out}; wait for it to finish, or prepare "
                "into another output folder"
            ) from None
        _claim(out, settings, rebuild)
        yield


def refuse_foreign(out: Path, what: str = "prep") -> None:
    """``out`` must be missing, empty, or made by maskmill (its records folder, or a run's
    output marker): maskmill never writes among, or deletes, files it did not create."""
    if out.exists() and not out.is_dir():
        raise PrepOutputError(f"{what} output {out} is a file; name a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not any(out.glob(f"{META_DIR}*")):
        raise PrepOutputError(
            f"{what} output {out} already holds files that maskmill did not write; point it at "
            "a new or empty folder"
        )


def refuse_inside(out: Path, sources: dict[str, str]) -> None:
    """An output inside a folder it reads would be read as part of the corpus on a rerun (a
    new "class" of an image folder, more documents of a text folder)."""
    for key, source in sources.items():
        if out.resolve().is_relative_to(Path(source).resolve()):
            raise PrepOutputError(
                f"prep output {out} is inside {key} {source}, which the prep reads; point it "
                "outside the source"
            )


def _claim(out: Path, settings: dict, rebuild: bool) -> None:
    record = out / SETTINGS
    if record.is_file():
        differ = changed_keys(json.loads(record.read_text()), settings)
        if differ and not rebuild:
            raise PrepOutputError(
                f"{out} holds shards prepared with other settings ({', '.join(differ)} differ); "
                "prepare into another output folder, or rebuild it whole (`maskmill prep ... "
                "--rebuild`; in a run, a prep.out the run made is rebuilt when its settings change)"
            )
        if differ:
            log.warning("%s: %s changed; removing its shards to rebuild it", out, ", ".join(differ))
            _empty(out)
    atomic_write_text(record, json.dumps(settings, indent=1) + "\n")


def _empty(out: Path) -> None:
    """Remove what earlier preps wrote in ``out``: all but the records folder and the output
    marker a run keeps there."""
    for entry in out.iterdir():
        if entry.name.startswith(META_DIR):  # the records folder, a run's .maskmill-stage
            continue
        remove_tree(entry)
