"""metrics.jsonl across a resume: later steps dropped, a line torn by a kill dropped."""

import json

from training.metrics import METRICS, MetricsLog, read_metrics


def test_resume_drops_later_steps_and_a_torn_line(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    (tmp_path / METRICS).write_text("\n".join(lines) + '\n{"step": 5, "lo')  # killed mid-write
    log = MetricsLog(tmp_path, resume_step=3)
    log.write({"step": 4, "loss": 0.2})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert read_metrics(tmp_path)[-1]["loss"] == 0.2
