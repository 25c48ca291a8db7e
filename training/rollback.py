"""Surviving a non-finite or spiking loss: roll back to the last complete checkpoint, skip the
global batches of the bad step, go on; a bounded number of times.

NaNs come late in long runs (mae #65, #77); restarting from the last checkpoint by hand and
hoping the data order moves on is what users did (ConvMAE #6). Here the run does it: the step's
batches are recorded in ``OUT/rollbacks.json`` with their sample keys, every later attempt (a
resume, a requeue) leaves them out too, and the run's losses from the rollback on are those of a
run that was told to skip them from the start (``pretrain.rollback.skip``).

The pure parts (where a micro step's batch lies in the stream once some are skipped, whether a
loss spikes) are functions here; the training loop (``training.pretrain``) calls
:class:`Rollbacks` when a step goes wrong.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

RECORD = "rollbacks.json"
# A spike is judged once this many step losses are known (a median of fewer says little).
MIN_HISTORY = 10


def stream_index(micro_step: int, skipped: Sequence[int]) -> int:
    """The global batch of the stream that micro step ``micro_step`` trains on when the batches
    ``skipped`` are left out: the ``micro_step``-th batch not skipped."""
    position = micro_step
    for s in sorted(set(skipped)):
        if s > position:
            break
        position += 1
    return position


def is_spike(loss: float, history: Sequence[float], factor: float) -> bool:
    """Whether ``loss`` is above ``factor`` times the median of the recent ``history`` (off when
    ``factor`` is 0 or fewer than :data:`MIN_HISTORY` losses are known)."""
    if factor <= 0 or len(history) < MIN_HISTORY:
        return False
    return loss > factor * statistics.median(history)


def bad_step_reason(loss: float, non_finite_ranks: int, history, factor: float) -> str | None:
    """``non_finite``, ``spike`` or None for a step's agreed loss."""
    if non_finite_ranks or not math.isfinite(loss):
        return "non_finite"
    return "spike" if is_spike(loss, history, factor) else None


@dataclass
class Rollbacks:
    """The run's rollbacks: the global batches skipped (from the config and from earlier
    rollbacks), each event, and the recent losses a spike is judged against."""

    out_dir: Path
    tries: int
    skipped: list[int]
    events: list[dict] = field(default_factory=list)
    history: deque = field(default_factory=lambda: deque(maxlen=100))

    @classmethod
    def load(cls, out_dir: Path, tries: int, skip: Sequence[int], window: int) -> Rollbacks:
        """The config's ``skip`` and what earlier attempts of this run recorded."""
        path = Path(out_dir) / RECORD
        saved = json.loads(path.read_text()) if path.is_file() else {"events": []}
        skipped = sorted({*skip, *(b for e in saved["events"] for b in e["batches"])})
        return cls(Path(out_dir), tries, skipped, saved["events"], deque(maxlen=max(1, window)))

    def left(self) -> int:
        return self.tries - len(self.events)

    def record(self, event: dict, is_main: bool) -> None:
        """Add a rollback: its batches join the skipped ones; rank 0 writes the record."""
        self.events.append(event)
        self.skipped = sorted({*self.skipped, *event["batches"]})
        if is_main:
            path = self.out_dir / RECORD
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"events": self.events}, indent=1) + "\n")
            tmp.replace(path)
