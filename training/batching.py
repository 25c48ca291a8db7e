"""How a global batch splits over ranks and micro steps.

A recipe states the global batch, the samples of one optimizer step: that is what the learning
rate, the schedule and the result depend on. The world size only decides how it is cut. Each
rank takes ``global / world`` rows of every global batch; where that share is more than a rank
may put through one forward (``max_rows``: what fits in its memory), it runs in ``accum`` equal
micro steps whose gradients add up before the step. So ``global_batch: 4096`` with
``max_rows: 128`` is 8 GPUs x 128 x 4 micro steps, 32 x 128 x 1, or 512 x 8 x 1.

A global batch that the ranks cannot share evenly is refused, naming the key and the world size:
uneven shares would weight some ranks' samples more in the averaged gradient.
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchSplitError(ValueError):
    """A global batch that the world cannot share evenly; ``str`` is the reason."""


@dataclass(frozen=True)
class BatchSplit:
    global_batch: int
    world_size: int
    per_rank: int  # rows a rank takes of each global batch
    micro: int  # rows of one forward
    accum: int  # micro steps per optimizer step


def split_batch(
    global_batch: int, world_size: int, max_rows: int | None = None, multiple: int = 1
) -> BatchSplit:
    """The fewest equal micro steps that keep each rank's forward within ``max_rows`` (None: no
    limit), each a multiple of ``multiple`` rows (2 where samples are mixed in pairs)."""
    if global_batch % world_size:
        raise BatchSplitError(
            f"{global_batch} is not a multiple of the {world_size} ranks; "
            f"{_near_multiples(global_batch, world_size)} would be"
        )
    per_rank = global_batch // world_size
    if per_rank % multiple:
        raise BatchSplitError(
            f"{global_batch} gives each of the {world_size} ranks {per_rank} rows, "
            f"not a multiple of {multiple}"
        )
    cap = per_rank if max_rows is None else max(multiple, max_rows)
    accum = -(-per_rank // cap)
    while per_rank % accum or (per_rank // accum) % multiple:
        accum += 1
    return BatchSplit(global_batch, world_size, per_rank, per_rank // accum, accum)


def _near_multiples(value: int, world_size: int) -> str:
    below = value // world_size * world_size
    above = below + world_size
    return f"{below} or {above}" if below else f"{above}"
