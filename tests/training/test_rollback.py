"""A run survives a non-finite and a spiking loss: it rolls back to the last checkpoint, skips
the bad step's global batches (recorded by sample keys in metrics.jsonl), and its losses equal
those of a run told to skip the same batches from the start. The bad losses are injected
(``MASKMILL_INJECT_LOSS``): a real NaN and a real spike, on demand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.training.test_pretrain_distributed import _config
from training.metrics import read_metrics
from training.rollback import MIN_HISTORY, Rollbacks, bad_step_reason, is_spike, stream_index

NAN_AT, SPIKE_AT = 4, 12  # global batches (stream indices)


def test_a_micro_step_trains_on_the_next_batch_not_skipped():
    assert [stream_index(m, []) for m in range(4)] == [0, 1, 2, 3]
    assert [stream_index(m, [1, 3]) for m in range(4)] == [0, 2, 4, 5]
    assert stream_index(5, [9, 0, 0]) == 6  # order and repeats do not matter


def test_a_spike_is_judged_against_the_median_once_enough_is_known():
    calm = [1.0, 1.2, 0.9] * 4
    assert is_spike(10.0, calm, factor=5) and not is_spike(4.0, calm, factor=5)
    assert not is_spike(10.0, calm[: MIN_HISTORY - 1], factor=5)
    assert not is_spike(1e9, calm, factor=0)  # off
    assert bad_step_reason(float("nan"), 0, calm, 0) == "non_finite"
    assert bad_step_reason(1.0, 1, calm, 0) == "non_finite"  # another rank's
    assert bad_step_reason(1.0, 0, calm, 5) is None


def test_the_record_of_earlier_rollbacks_joins_the_configs_skips(tmp_path):
    first = Rollbacks.load(tmp_path, tries=3, skip=[2], window=10)
    first.record({"step": 6, "batches": [5, 6]}, is_main=True)
    again = Rollbacks.load(tmp_path, tries=3, skip=[2], window=10)
    assert again.skipped == [2, 5, 6] and again.left() == 2


def _losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out_dir) if "loss" in r}


def _run(config, inject: str = ""):
    env = {**os.environ, "MASKMILL_INJECT_LOSS": inject}
    return subprocess.run([sys.executable, "-m", "training.pretrain", str(config)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def survived(tmp_path_factory, prepared):
    """A 16-step run, a NaN injected at one batch and a 100x spike at another."""
    tmp = tmp_path_factory.mktemp("survived")
    config = _config(tmp, prepared, steps=16, batch_size=16, precision="fp32",
                     checkpoint_every=2, rollback={"spike_factor": 20.0})  # fmt: skip
    proc = _run(config, inject=f"{NAN_AT}:nan,{SPIKE_AT}:100")
    return tmp, proc


def test_a_nan_and_a_spike_are_rolled_back_and_the_run_completes(survived):
    tmp, proc = survived
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "rolled back to step" in line]
    print("\n".join(said))
    assert len(said) == 2
    assert f"non-finite loss nan at step {NAN_AT + 1} (global batches [{NAN_AT}]" in said[0]
    assert "rolled back to step 4" in said[0]
    assert "spiking loss" in said[1] and f"(global batches [{SPIKE_AT}]" in said[1]
    events = [r["rollback"] for r in read_metrics(tmp / "run") if "rollback" in r]
    assert [(e["reason"], e["batches"]) for e in events] == [
        ("non_finite", [NAN_AT]), ("spike", [SPIKE_AT]),
    ]  # fmt: skip
    assert all(len(e["samples"]) == 16 for e in events)  # every row of the global batch, by key
    record = json.loads((tmp / "run" / "rollbacks.json").read_text())
    assert [e["batches"] for e in record["events"]] == [[NAN_AT], [SPIKE_AT]]


def test_its_losses_are_those_of_a_run_that_never_saw_those_batches(survived, tmp_path, prepared):
    tmp, proc = survived
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = _config(tmp_path, prepared, steps=16, batch_size=16, precision="fp32",
                     checkpoint_every=2, rollback={"skip": [NAN_AT, SPIKE_AT]})  # fmt: skip
    clean = _run(config)
    assert clean.returncode == 0, clean.stderr[-3000:]
    got, want = _losses(tmp / "run"), _losses(tmp_path / "run")
    assert sorted(got) == sorted(want) == list(range(1, 17))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step


def test_past_its_tries_the_run_stops_naming_the_steps_and_samples(tmp_path, prepared):
    config = _config(tmp_path, prepared, steps=8, batch_size=16, precision="fp32",
                     checkpoint_every=2, rollback={"tries": 1})  # fmt: skip
    proc = _run(config, inject="3:nan,5:nan")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "non-finite loss nan at step" in proc.stderr
    assert "the run has rolled back 1 times already (steps [4]" in proc.stderr
    assert "samples " in proc.stderr
