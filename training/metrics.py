"""Training metrics: one JSON line per logged step plus TensorBoard scalars (rank 0 only)."""

from __future__ import annotations

import json
from pathlib import Path

METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends to ``metrics.jsonl``; on resume, drops lines past the resume step so the curve
    has no repeated steps."""

    def __init__(self, out_dir: Path, resume_step: int):
        self.path = out_dir / METRICS
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)
        self.file = open(self.path, "a")  # noqa: SIM115 (closed in close())

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.tb.add_scalar(f"pretrain/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / METRICS
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line]
        if path.exists()
        else []
    )
