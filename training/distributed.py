"""Process-group set-up shared by the per-rank entry points."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments(port: int | str, rank: int | str = "*") -> list[Path]:
    """DeepSpeed's CPU all-reduce segments in ``/dev/shm`` for the process group on ``port``
    (named ``deepspeed_allreduce_buffer_<uid>_<master addr>_<port>_<rank>``)."""
    pattern = f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}"
    return sorted(Path("/dev/shm").glob(pattern))


def remove_shm_segments(port: int | str | None, rank: int | str = "*") -> int:
    """Unlink DeepSpeed's CPU all-reduce segments for ``port``; returns how many were removed.

    DeepSpeed's CPU communication op maps a 64 MiB ``/dev/shm`` segment per rank and never
    unlinks it. ``/dev/shm`` is RAM, so every run would leak 64 MiB per rank until the machine
    reboots (200 test and benchmark runs held 12 GiB here). Unlinking while peers still have
    the segment mapped is safe: the memory goes when the last mapping does."""
    removed = 0
    for path in shm_segments(port, rank) if port else []:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:  # a peer rank got there first
            pass
    return removed


def local_world_size() -> int:
    """Ranks on this machine, from whichever launcher started us."""
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group the launcher set up (deepspeed, torchrun or srun), or make a
    one-rank group when started as a plain ``python -m``. NCCL on CUDA, gloo on CPU."""
    import deepspeed

    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:
        os.environ.update(
            RANK=os.environ["SLURM_PROCID"],
            WORLD_SIZE=os.environ["SLURM_NTASKS"],
            LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"),
        )
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Ranks sharing a CPU must split its cores, or each one's thread pool fights the others.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size()))
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    return DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=local_rank,
        device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"),
    )
