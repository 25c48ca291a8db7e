"""The one entry every rank program goes through: ``python -m training.pretrain`` and
``python -m training.evaluate {finetune,probe}``, on every rank of the launcher.

It owns what the programs share at their edges, so they cannot disagree:

* the command line: ``CONFIG.yaml [key=value ...]``, the ``--local_rank`` the deepspeed launcher
  appends dropped, ``-h`` listing the config keys and the exit codes below;
* the preemption signal: SIGUSR2 asks every rank to checkpoint at the next step and stop (Slurm
  sends it ``--signal`` seconds before the time limit); :func:`stop_requested` is the flag the
  training loops pass into their one all-reduce per step, so every rank stops at the same step;
* one set of exceptions and one exit-code table (:data:`EXIT_CODES`), the same for every program;
* leaving the process group and removing this rank's shared-memory segments, however it ends.

The stall watchdog (``training.watchdog``) is the fourth edge: it ends a stalled rank with exit
code 4 from its own thread, since a stalled main thread cannot raise.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from cluster.local import PREEMPTED_EXIT
from training.typed_config import ConfigError, describe_keys, load_config
from training.watchdog import STALLED_EXIT

T = TypeVar("T")
log = logging.getLogger("training.rank")

DONE, FAILED, BAD_CONFIG, NON_FINITE = 0, 1, 2, 3
EXIT_CODES = {
    DONE: "done",
    FAILED: "failed work: a damaged shard, a checkpoint that could not be written",
    BAD_CONFIG: "bad config or environment (a key, a device, a checkpoint that cannot be "
    "resumed as asked); nothing was started",
    NON_FINITE: "the loss became non-finite (or spiked) past pretrain.rollback.tries, or before "
    "the first checkpoint; the last complete checkpoint is kept",
    STALLED_EXIT: "stalled: a rank made no step within stall_timeout_s and its watchdog ended it",
    PREEMPTED_EXIT: "preempted (SIGUSR2): a checkpoint was saved; rerun to resume",
}


def exit_code_help() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())


class RankError(RuntimeError):
    """An error a rank program ends on with one line and :attr:`exit_code`, no traceback."""

    exit_code = FAILED


class BadConfig(RankError):
    """Found before any work: the config or the environment cannot run as asked."""

    exit_code = BAD_CONFIG


class NonFiniteLoss(RankError):
    exit_code = NON_FINITE


class Preempted(RankError):
    """Stopped on SIGUSR2 after saving a checkpoint."""

    exit_code = PREEMPTED_EXIT


_stop_requested = False


def _request_stop(signum, frame) -> None:
    global _stop_requested
    _stop_requested = True


def install_stop_handler() -> None:
    signal.signal(signal.SIGUSR2, _request_stop)


def stop_requested() -> bool:
    """Whether SIGUSR2 reached this rank (each rank's flag joins the step's all-reduce)."""
    return _stop_requested


def config_from_argv(schema: type[T] | Callable[[Any], T], argv: list[str], usage: str) -> T:
    """The validated config named on the command line.

    Exits 0 after printing ``usage``, the config keys and the exit codes for ``-h``/``--help``,
    2 without arguments or on a bad config (the message names every bad key)."""
    if not argv or argv[0] in ("-h", "--help"):
        keys = describe_keys(schema)
        sys.stdout.write(f"{usage}\nconfig keys (type = default):\n{keys}\n{exit_code_help()}\n")
        raise SystemExit(0 if argv else BAD_CONFIG)
    try:
        return load_config(schema, [argv[0]], argv[1:])
    except ConfigError as err:
        logging.getLogger(schema.__module__).error("%s", err)
        raise SystemExit(BAD_CONFIG) from None


def rank_argv(argv: list[str] | None) -> list[str]:
    """The program's arguments, without the ``--local_rank`` the deepspeed launcher appends."""
    argv = sys.argv[1:] if argv is None else argv
    return [a for a in argv if not a.startswith("--local_rank")]


def setup_logging() -> None:
    logging.basicConfig(  # as the maskmill command's, so a stage's lines read alike
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # DeepSpeed calls collectives torch has renamed; one warning per call floods the log.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def _clean_this_node() -> None:
    """The first rank on each node removes what killed ranks of earlier jobs left in this node's
    /dev/shm: a SIGKILLed rank cannot unlink its own segment, and only a process on the same
    node can see it (the launching step runs on the first node alone)."""
    local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if local != "0":
        return
    from cluster.local import remove_orphan_shm_segments

    removed = remove_orphan_shm_segments()  # only segments no living process maps or holds
    if removed:
        log.info("%s: removed %d /dev/shm segments of killed ranks", socket.gethostname(), removed)


def run_rank(work: Callable[[], Any]) -> int:
    """Run ``work`` to its exit code: errors of the table end in one line, and the rank leaves
    its process group and removes its shared-memory segments whatever happens."""
    from data_prep.shard_format import BadShardError
    from training import checkpoint
    from training.distributed import DeviceUnavailable, leave_process_group
    from training.safe_load import UnsafeCheckpointError

    # error class -> exit code, for errors raised by the layers below (they know no exit codes)
    table = (
        (RankError, None),
        (BadShardError, FAILED),
        (checkpoint.CheckpointWriteError, FAILED),
        (DeviceUnavailable, BAD_CONFIG),
        (checkpoint.StageMismatch, BAD_CONFIG),
        (UnsafeCheckpointError, BAD_CONFIG),
        (ConfigError, BAD_CONFIG),
        (ValueError, BAD_CONFIG),  # a value the layers below refuse (an export of another kind)
    )
    _clean_this_node()
    try:
        work()
        return DONE
    except tuple(cls for cls, _ in table) as err:
        code = next(c for cls, c in table if isinstance(err, cls)) or err.exit_code
        (log.warning if code == PREEMPTED_EXIT else log.error)("%s", err)
        return code
    finally:
        from cluster.local import remove_shm_segments

        leave_process_group()
        remove_shm_segments(os.environ.get("MASTER_PORT"), os.environ.get("RANK", "0"))
