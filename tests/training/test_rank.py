"""The one rank entry: every rank program ends on the same exit code for the same error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from data_prep.shard_format import BadShardError
from training import checkpoint
from training.distributed import DeviceUnavailable
from training.rank import (
    EXIT_CODES,
    NonFiniteLoss,
    Preempted,
    run_rank,
)
from training.safe_load import UnsafeCheckpointError
from training.typed_config import ConfigError
from training.watchdog import STALLED_EXIT


def _raise(err):
    def work():
        raise err

    return work


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (BadShardError("shard-000001.tar: size 3 bytes, manifest says 10240"), 1),
        (checkpoint.CheckpointWriteError("disk full"), 1),
        (DeviceUnavailable("device: cuda, but torch sees no CUDA device"), 2),
        (UnsafeCheckpointError("holds objects other than weights"), 2),
        (ConfigError([("steps", "an int >= 1, got 0")]), 2),
        (NonFiniteLoss("loss became non-finite at step 3"), 3),
        (Preempted("preempted: checkpoint saved at step 4; rerun to resume"), 75),
    ],
)
def test_each_error_ends_the_rank_with_its_code_and_one_line(err, code, caplog):
    assert run_rank(_raise(err)) == code
    assert [r.getMessage() for r in caplog.records] == [str(err)]
    assert code in EXIT_CODES


def test_an_unexpected_error_is_not_swallowed():
    with pytest.raises(KeyError):
        run_rank(_raise(KeyError("a bug")))


@pytest.mark.parametrize("program", [["training.pretrain"], ["training.evaluate"]])
def test_every_rank_program_lists_the_same_exit_codes_in_its_help(program):
    out = subprocess.run(
        [sys.executable, "-m", *program, "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    table = out[out.index("exit codes:") :]
    for code, what in EXIT_CODES.items():
        assert f"{code:>3}  {what}" in table
    assert f"{STALLED_EXIT:>3}  stalled" in table


@pytest.mark.parametrize(("local_rank", "removed"), [("0", True), ("1", False)])
def test_the_first_rank_of_a_node_removes_segments_of_killed_ranks(
    monkeypatch, tmp_path, local_rank, removed
):
    """A SIGKILLed rank leaves its 64 MiB segment in its node's /dev/shm; the next job's first
    rank on that node removes it (the other ranks leave it to that one)."""
    import os
    from pathlib import Path

    orphan = Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_testhost_1_{local_rank}")
    orphan.write_bytes(b"\0" * 16)  # held by no process
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    try:
        assert run_rank(lambda: None) == 0
        assert orphan.exists() != removed
    finally:
        orphan.unlink(missing_ok=True)
