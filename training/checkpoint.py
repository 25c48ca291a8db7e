"""DeepSpeed checkpoints with our own completion marker, auto-resume and pruning.

DeepSpeed writes its ``latest`` tag file last, but a checkpoint directory can still be half
written when a job dies while another rank is saving. A checkpoint counts here only once every
rank has returned from ``save_checkpoint`` and rank 0 has written ``<tag>/_COMPLETE``; resume
takes the newest such tag.

ZeRO partitions the optimizer state (and, at stage 3, the parameters) by data-parallel rank, so
a checkpoint holds one shard per rank. Resuming with another world size (more or fewer nodes)
goes through DeepSpeed's *universal* checkpoint: the newest checkpoint is converted once, by
``deepspeed.checkpoint.ds_to_universal``, into per-parameter files under ``universal/<tag>``,
and the engine, built with ``checkpoint.load_universal``, loads and re-partitions them.

Every checkpoint file is loaded as weights only (``training.safe_load``): a planted pickle is
refused, not run.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch.distributed as dist

from training.safe_load import weights_only_loading

log = logging.getLogger(__name__)

COMPLETE = "_COMPLETE"
UNIVERSAL = "universal"  # world-size-free copies, made when a resume changes the world size


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of finished checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.parent.name for p in ckpt_dir.glob(f"step-*/{COMPLETE}"))


def client_state(step: int) -> dict:
    """What we store beside DeepSpeed's state. ZeRO-1/2 checkpoints convert to the universal
    form only when they say which universal layout they follow (plain data parallelism here: no
    tensor- or pipeline-parallel patterns)."""
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    info = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
    return {"step": step, UNIVERSAL_CHECKPOINT_INFO: info}


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, most often); the last complete one stays."""


def save(
    engine, ckpt_dir: Path, step: int, keep: int, is_main: bool, extra: dict | None = None
) -> str:
    """Save on every rank (DeepSpeed hangs otherwise), mark complete, prune old ones; ``extra``
    is kept in the client state (:func:`resume_state` gives it back)."""
    tag = tag_for(step)
    try:
        engine.save_checkpoint(
            str(ckpt_dir), tag=tag, client_state={**client_state(step), **(extra or {})}
        )
    except (OSError, RuntimeError) as err:  # torch.save reports ENOSPC as a RuntimeError
        raise _write_error(ckpt_dir, tag, err) from None
    dist.barrier()
    if is_main:
        (ckpt_dir / tag / COMPLETE).write_text(f"{step}\n")
        for old in complete_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
            shutil.rmtree(ckpt_dir / UNIVERSAL / old, ignore_errors=True)
    dist.barrier()
    return tag


def _write_error(ckpt_dir: Path, tag: str, err: Exception) -> CheckpointWriteError:
    """The error for a failed save, after removing the partial checkpoint (it is never resumed
    from: it has no completion marker) so that the space it took is free for the rerun."""
    shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    free = shutil.disk_usage(ckpt_dir).free
    kept = complete_tags(ckpt_dir)
    return CheckpointWriteError(
        f"could not write checkpoint {tag} to {ckpt_dir} ({str(err).splitlines()[0]}); "
        f"{free / 2**20:.1f} MiB free there now. "
        + (f"The last complete checkpoint, {kept[-1]}, is kept: " if kept else "")
        + "free space (or lower keep_checkpoints) and rerun to resume"
    )


def saved_world_size(ckpt_dir: Path, tag: str) -> int | None:
    """Data-parallel ranks that wrote ``tag`` (one optimizer shard each); None without ZeRO."""
    return len(list((ckpt_dir / tag).glob("*optim_states.pt"))) or None


def saved_zero_stages(ckpt_dir: Path, tag: str) -> tuple[int, ...]:
    """The ZeRO stages that can load ``tag``: (3,) when each rank wrote its own parameters,
    (1, 2) when ranks wrote optimizer partitions only, (0,) without ZeRO."""
    if any((ckpt_dir / tag).glob("zero_pp_rank_*_model_states.pt")):
        return (3,)
    return (1, 2) if saved_world_size(ckpt_dir, tag) else (0,)


class StageMismatch(ValueError):
    """The checkpoint to resume was written under a ZeRO stage this run cannot load."""


def stage_to_resume(ckpt_dir: Path, wanted: int | None, by_model_size: int) -> int:
    """The ZeRO stage of this run: ``wanted`` if set, else the one of the checkpoint it resumes
    (runs begun under another default go on as they began), else ``by_model_size``.

    DeepSpeed's universal checkpoint re-partitions across world sizes but not from stage 3's
    layout to stage 1-2's (0.19: "Empty ds_version in checkpoint"), so an explicit stage the
    checkpoint cannot be loaded under is refused before anything starts."""
    tags = complete_tags(ckpt_dir)
    loadable = saved_zero_stages(ckpt_dir, tags[-1]) if tags else ()
    if wanted is None:
        return loadable[-1] if loadable else by_model_size
    if loadable and wanted not in loadable:
        raise StageMismatch(
            f"zero_stage: {' or '.join(map(str, loadable))} to resume {ckpt_dir / tags[-1]} "
            f"(written under that stage), got {wanted}; unset it to follow the checkpoint, or "
            "start the run over in a new out_dir"
        )
    return wanted


def needs_universal(ckpt_dir: Path, world_size: int) -> bool:
    """True when the newest checkpoint was written by a different number of ranks."""
    tags = complete_tags(ckpt_dir)
    saved = saved_world_size(ckpt_dir, tags[-1]) if tags else None
    return saved is not None and saved != world_size


def prepare_universal(
    ckpt_dir: Path, world_size: int, rank: int, poll_seconds: float = 2.0
) -> bool:
    """Whether to resume from a universal checkpoint; rank 0 makes it, the others wait for it.

    Called before the process group exists: the conversion takes one rank minutes for a large
    model, longer than a collective would wait. The other ranks watch the checkpoint directory
    (shared by every rank); if rank 0 dies, the launcher stops them (``--kill-on-bad-exit``)."""
    if not needs_universal(ckpt_dir, world_size):
        return False
    if rank == 0:
        make_universal(ckpt_dir)
        return True
    marker = ckpt_dir / UNIVERSAL / complete_tags(ckpt_dir)[-1] / COMPLETE
    waited = 0.0
    while not marker.exists():
        if waited and waited % 60 < poll_seconds:
            log.info("waiting for rank 0 to write %s (%.0f s)", marker.parent, waited)
        time.sleep(poll_seconds)
        waited += poll_seconds
    return True


def make_universal(ckpt_dir: Path) -> Path:
    """Convert the newest checkpoint to DeepSpeed's universal form (once; rank 0 only)."""
    tag = complete_tags(ckpt_dir)[-1]
    out = ckpt_dir / UNIVERSAL / tag
    if (out / COMPLETE).exists():
        return out
    tmp = out.with_name(f"{tag}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "world size changed since %s (%s ranks): converting it to a universal checkpoint",
        tag,
        saved_world_size(ckpt_dir, tag),
    )
    # Relative paths from the checkpoint directory: ds_to_universal matches file paths with
    # unescaped regular expressions, so a run directory holding "$", "(" or "+" broke it.
    subprocess.run(
        [
            sys.executable, "-m", "training.safe_load", "deepspeed.checkpoint.ds_to_universal",
            "--input_folder", tag, "--output_folder", str(tmp.relative_to(ckpt_dir)),
            "--num_extract_workers", "1", "--num_merge_workers", "1",
        ],
        check=True,
        cwd=ckpt_dir,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    (tmp / COMPLETE).write_text((ckpt_dir / tag / COMPLETE).read_text())
    tmp.rename(out)
    return out


def resume(engine, ckpt_dir: Path, universal: bool = False) -> int:
    """Load the newest complete checkpoint (its universal copy when ``universal``); returns the
    step to continue from (0 if none)."""
    return resume_state(engine, ckpt_dir, universal).get("step", 0)


def resume_state(engine, ckpt_dir: Path, universal: bool = False) -> dict:
    """Load the newest complete checkpoint; returns its client state (``step`` and what
    :func:`save` was given as ``extra``), or ``{}`` when there is none."""
    tags = complete_tags(ckpt_dir)
    if not tags:
        return {}
    load_dir = ckpt_dir / UNIVERSAL if universal else ckpt_dir
    with weights_only_loading():
        _, client = engine.load_checkpoint(str(load_dir), tag=tags[-1])
    log.info("resumed from %s (step %d)", ckpt_dir / tags[-1], int(client["step"]))
    return {**client, "step": int(client["step"])}
