"""DeepSpeed checkpoints with our own completion marker, auto-resume and pruning.

DeepSpeed writes its ``latest`` tag file last, but a checkpoint directory can still be half
written when a job dies while another rank is saving. A checkpoint counts here only once every
rank has returned from ``save_checkpoint`` and rank 0 has written ``<tag>/_COMPLETE``; resume
takes the newest such tag.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch.distributed as dist

log = logging.getLogger(__name__)

COMPLETE = "_COMPLETE"


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of finished checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.parent.name for p in ckpt_dir.glob(f"step-*/{COMPLETE}"))


def save(engine, ckpt_dir: Path, step: int, keep: int, is_main: bool) -> str:
    """Save on every rank (DeepSpeed hangs otherwise), mark complete, prune old ones."""
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step})
    dist.barrier()
    if is_main:
        (ckpt_dir / tag / COMPLETE).write_text(f"{step}\n")
        for old in complete_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    dist.barrier()
    return tag


def resume(engine, ckpt_dir: Path) -> int:
    """Load the newest complete checkpoint; returns the step to continue from (0 if none)."""
    tags = complete_tags(ckpt_dir)
    if not tags:
        return 0
    _, client = engine.load_checkpoint(str(ckpt_dir), tag=tags[-1])
    step = int(client["step"])
    log.info("resumed from %s (step %d)", ckpt_dir / tags[-1], step)
    return step
