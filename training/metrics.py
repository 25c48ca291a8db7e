"""Training metrics: one JSON line per logged step plus TensorBoard scalars (rank 0 only)."""

from __future__ import annotations

import json
from pathlib import Path

METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends to ``metrics.jsonl``; on resume, drops lines past the resume step so the curve
    has no repeated steps, and a line torn by a kill mid-write."""

    def __init__(self, out_dir: Path, resume_step: int, prefix: str = "pretrain"):
        self.prefix = prefix  # of the TensorBoard tags
        self.path = out_dir / METRICS
        if self.path.exists():
            kept = [r for r in _records(self.path.read_text()) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)
        self.file = open(self.path, "a")  # noqa: SIM115 (closed in close())

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            # Wall-clock time stays in metrics.jsonl: charted it is a flat line at ~1.8e9.
            if isinstance(value, dict):  # a scoring: {"val": {"top1": ...}} -> val/top1
                for name, v in value.items():
                    self.tb.add_scalar(f"{self.prefix}/{key}/{name}", v, record["step"])
            elif key not in ("step", "time") and isinstance(value, int | float):
                self.tb.add_scalar(f"{self.prefix}/{key}", value, record["step"])

    def note(self, record: dict) -> None:
        """A line of the record alone (an event, such as a rollback), no TensorBoard scalar."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / METRICS
    return _records(path.read_text()) if path.exists() else []


def _records(text: str) -> list[dict]:
    """The whole records of a metrics file; a torn line (a job killed mid-write) is dropped."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_eval_metrics(evaluate_dir: str | Path) -> dict:
    """The ``probe`` and ``finetune`` stages' ``metrics.json`` under ``evaluate.out_dir`` as one
    (probe's tasks first), with ``encoder`` and ``data`` from whichever ran."""
    merged: dict = {"tasks": {}}
    for stage in ("probe", "finetune"):
        path = Path(evaluate_dir) / stage / "metrics.json"
        if not path.exists():
            continue
        found = json.loads(path.read_text())
        merged["tasks"].update(found.pop("tasks", {}))
        for key, value in found.items():
            merged.setdefault(key, value)
    return merged
