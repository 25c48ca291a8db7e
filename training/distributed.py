"""Process-group set-up shared by the per-rank entry points, and the one per-step collective.

Every tensor handed to a collective lives on the rank's device. DeepSpeed's NCCL group serves
CUDA tensors only: a CPU tensor there fails with "No backend type associated with device type
cpu", which gloo-only tests never see. ``tests/training/test_distributed.py`` binds a real gloo
group to another device type (``meta:gloo``) so that the same mistake fails on a CPU machine.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cluster.local import free_port

log = logging.getLogger(__name__)

# Every collective gives up after this long. DeepSpeed's default is 10 minutes; a ZeRO-3 save of
# ViT-H from 16 ranks to a busy parallel file system has taken longer. Work done by one rank
# alone (universal-checkpoint conversion, the export) runs outside the process group instead.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class DeviceUnavailable(RuntimeError):
    """``device: cuda`` was asked for and torch sees no CUDA device."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def local_world_size() -> int:
    """Ranks on this machine, from whichever launcher started us."""
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return int(os.environ.get("WORLD_SIZE", "1"))


def cuda_ordinal(local_rank: int, device_count: int) -> int:
    """The CUDA device of a rank: ``local_rank`` when it sees every GPU of the node, and the one
    it sees when Slurm hands each task its own (``--gpus-per-task=1``, ``--gpu-bind``), where
    ``LOCAL_RANK`` 1-7 as an ordinal would be "invalid device ordinal"."""
    if device_count < 1:
        raise DeviceUnavailable("no CUDA device is visible to this rank")
    return local_rank % device_count


def wants_cuda(device: str) -> bool:
    """Whether ``device`` (auto | cpu | cuda) means CUDA here; ``cuda`` without one fails fast."""
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device: cuda, but torch {torch.__version__} sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
            "Run on a GPU node with a CUDA build of torch, or set pretrain.device=cpu."
        )
    return torch.cuda.is_available() if device == "auto" else device == "cuda"


def launch_env() -> tuple[int, int]:
    """(rank, world size) as the launcher set them, before any process group exists: torch's
    variables from ``deepspeed``/``torchrun``, Slurm's under ``srun`` (copied to torch's), or a
    one-rank world when started as a plain ``python -m`` (idempotent)."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:
        os.environ.update(
            RANK=os.environ["SLURM_PROCID"],
            WORLD_SIZE=os.environ["SLURM_NTASKS"],
            LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"),
        )
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group the launcher set up (deepspeed, torchrun or srun), or make a
    one-rank group when started as a plain ``python -m``. NCCL on CUDA, gloo on CPU."""
    import deepspeed

    launch_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wants_cuda(device):
        ordinal = cuda_ordinal(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(ordinal)
        rank_device = torch.device("cuda", ordinal)
    else:
        rank_device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:
            # Ranks sharing a CPU must split its cores, or each one's thread pool fights the others.
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world_size()))
    deepspeed.init_distributed(
        dist_backend="nccl" if rank_device.type == "cuda" else "gloo",
        timeout=COLLECTIVE_TIMEOUT,
    )
    hosts = rank_hosts()
    if int(os.environ["RANK"]) == 0:
        placed = ", ".join(f"{rank} {host}" for rank, host in enumerate(hosts))
        log.info("%d ranks on %d host(s): %s", len(hosts), len(set(hosts)), placed)
    return DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=local_rank,
        device=rank_device,
    )


def rank_hosts() -> list[str]:
    """Every rank's host name, in rank order (a stage's log says where its ranks ran)."""
    name = socket.gethostname().encode()[:HOST_BYTES]
    row = torch.zeros(1, HOST_BYTES, dtype=torch.uint8)
    row[0, : len(name)] = torch.tensor(list(name), dtype=torch.uint8)
    (rows,) = all_gathered_rows(row)
    return [bytes(r[r > 0].tolist()).decode(errors="replace") for r in rows]


HOST_BYTES = 64  # a host name's longest (HOST_NAME_MAX)


def leave_process_group() -> None:
    """Shut the process group down (idempotent). Left to exit-time destructors, its background
    threads sometimes abort the process ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Verdict:
    """What every rank agreed on at the end of a step."""

    loss: float  # mean over the micro steps of every rank
    non_finite_ranks: int
    stop: bool
    skipped_samples: int = 0  # by every rank's loader since the run (re)started
    skipped_shards: int = 0


class StepAgreement:
    """The one collective of a training step: the summed loss, a non-finite flag, a stop flag
    and what the loaders skipped, kept on the rank's device. Micro-step losses are added there
    without a host copy; ``agree`` reduces them in one all-reduce and reads the numbers back in
    one copy, the step's only device-to-host synchronisation in our code."""

    def __init__(self, device: torch.device, micro_steps_per_rank: int, skips=None):
        self.sums = torch.zeros(5, device=device)
        self.micro_steps_per_rank = micro_steps_per_rank
        self.skips = skips  # the rank's loader SkipCounts, or None

    def add(self, loss: torch.Tensor) -> None:
        self.sums[0] += loss.detach().float()

    def reduce(self, stop: bool) -> torch.Tensor:
        """The all-reduced ``[loss sum, non-finite ranks, stop ranks, skipped samples, skipped
        shards]``, still on the device."""
        self.sums[1] = (~torch.isfinite(self.sums[0])).float()
        self.sums[2] = float(stop)
        if self.skips is not None:
            self.sums[3], self.sums[4] = float(self.skips.samples), float(self.skips.shards)
        dist.all_reduce(self.sums)
        return self.sums

    def agree(self, stop: bool) -> Verdict:
        loss_sum, non_finite, stops, samples, shards = self.reduce(stop).tolist()
        self.sums.zero_()
        world = dist.get_world_size()
        mean = loss_sum / (self.micro_steps_per_rank * world)
        return Verdict(mean, int(non_finite), stops > 0, int(samples), int(shards))


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: the rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gathered_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows of ``tensors`` (each ``[n, ...]``, the same ``n`` on a rank, any ``n``
    per rank, 0 included), concatenated in rank order, on the CPU of every rank.

    Fixed-shape ``all_gather`` into preallocated buffers, padded to the largest share: the bytes
    moved per row are the row's own (plus the padding of a short share), where pickling a row
    that views its batch pickled the whole batch (one row of a 512 x 768 batch: 1.57 MB for its
    3 KB). The counts and trailing shapes travel first, so a rank with no rows takes part too.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tuple(t.cpu() for t in tensors)
    device, world = _collective_device(), dist.get_world_size()
    n = len(tensors[0])
    shapes = torch.zeros(len(tensors), 5, dtype=torch.long)  # n, ndim, up to 3 trailing dims
    for i, t in enumerate(tensors):
        if n:  # an empty share says nothing of the shape: the others' decides
            shapes[i, : t.dim() + 1] = torch.tensor([n, t.dim(), *t.shape[1:]])
    every = [torch.zeros_like(shapes, device=device) for _ in range(world)]
    dist.all_gather(every, shapes.to(device))
    every = torch.stack(every).cpu()  # [world, tensors, 5]
    counts = every[:, 0, 0].tolist()
    merged = every.amax(dim=0)  # the shape of every tensor, from the ranks that have rows
    most = max(counts)
    out = []
    for i, t in enumerate(tensors):
        trailing = [int(d) for d in merged[i, 2 : 1 + int(merged[i, 1])]]
        padded = torch.zeros(most, *trailing, dtype=t.dtype, device=device)
        padded[:n] = t.reshape(n, *trailing).to(device)
        buffers = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(buffers, padded)
        out.append(torch.cat([b[:c] for b, c in zip(buffers, counts)]).cpu())
    return tuple(out)


def all_summed(*values: float) -> tuple[float, ...]:
    """The sums over every rank of a few numbers (one all-reduce, float64)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tuple(float(v) for v in values)
    sums = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(sums)
    return tuple(sums.cpu().tolist())


def from_rank0(obj):
    """Rank 0's ``obj`` on every rank (what rank 0 decided, e.g. a score and whether it is the
    best so far); ``obj`` itself without a process group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


KEY_BYTES = 128  # a sample key is at most 95 bytes (a ustar member name less its extension)


def every_ranks_keys(keys: list[str]) -> list[str]:
    """Every rank's sample ``keys`` in rank order, on every rank: as rows of UTF-8 bytes
    through :func:`all_gathered_rows`, like every other gather (no pickled objects)."""
    rows = torch.zeros(len(keys), KEY_BYTES, dtype=torch.uint8)
    for i, key in enumerate(keys):
        data = key.encode()[:KEY_BYTES]
        rows[i, : len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    (every,) = all_gathered_rows(rows)
    return [bytes(row.tolist()).rstrip(b"\0").decode() for row in every]
