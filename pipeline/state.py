"""Per-stage run state and fingerprints, kept under ``RUN_DIR/.maskmill/``.

A stage's fingerprint hashes its resolved config section and the identity of its inputs (file
listings with sizes and times for a raw source; manifest and export hashes downstream). A stage
is skipped only when it finished with the fingerprint it has now.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.shard_format import atomic_write_text

STATE_DIR = ".maskmill"
OUTPUT_MARKER = ".maskmill-stage"

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass
class StageState:
    status: str = PENDING
    fingerprint: str = ""
    started: float | None = None
    finished: float | None = None
    error: str = ""
    pid: int | None = None

    @property
    def seconds(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


def state_path(run_dir: Path, stage: str) -> Path:
    return run_dir / STATE_DIR / f"{stage}.json"


def read_state(run_dir: Path, stage: str) -> StageState:
    path = state_path(run_dir, stage)
    return StageState(**json.loads(path.read_text())) if path.exists() else StageState()


def write_state(run_dir: Path, stage: str, state: StageState) -> None:
    path = state_path(run_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(state), indent=2))


def fingerprint(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def listing_signature(root: Path) -> str:
    """A raw source's identity from its listing: each directory's relative path and mtime and
    its entries' names, one stat per directory and none per file (``tree_signature`` stat'ed
    each of ImageNet-21k's 14 M files at every ``maskmill run``; a directory's listing comes
    in bulk). A file added, removed, renamed or replaced by rename shows; one rewritten in
    place under its name does not (``maskmill run --force prep`` redoes the prep then)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        names = "\0".join(sorted(filenames))
        h.update(f"{rel}\0{os.stat(dirpath).st_mtime_ns}\0{names}\n".encode())
    return h.hexdigest()


def tree_signature(root: Path) -> str:
    """Relative path, size and mtime of every file under ``root``: the raw source's identity
    before ``listing_signature``, computed only to keep a stage those versions finished."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = path.stat()
            h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
