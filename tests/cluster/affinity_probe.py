"""Run as a Slurm task: writes the CPUs this rank and one of its loader workers may run on."""

import json
import os
import sys
from pathlib import Path

import torch


class _Affinity(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield sorted(os.sched_getaffinity(0))


if __name__ == "__main__":
    loader = torch.utils.data.DataLoader(_Affinity(), batch_size=None, num_workers=1)
    result = {"rank": sorted(os.sched_getaffinity(0)), "worker": next(iter(loader))}
    Path(sys.argv[1], f"rank{os.environ['SLURM_PROCID']}.json").write_text(json.dumps(result))
