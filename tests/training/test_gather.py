"""Scoring gathers tensors, not pickles: what a gathered row costs, and that no object gather is
left on the evaluation path (two real gloo ranks)."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cluster.local import free_port
from training.distributed import all_gathered_rows, every_ranks_keys

ROOT = Path(__file__).resolve().parents[2]


def _rank(rank: int, world: int, port: int, shares: list[int], out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    moved = []
    real = dist.all_gather

    def counting(buffers, tensor, *a, **k):
        moved.append(sum(b.nbytes for b in buffers))
        return real(buffers, tensor, *a, **k)

    dist.all_gather = counting
    n = shares[rank]
    batch = torch.arange(512 * 768, dtype=torch.float32).reshape(512, 768) + 1000 * rank
    rows = batch[:n]  # views of a bigger batch, as a scoring pass makes them
    places = torch.arange(n) * world + rank
    got_places, got_rows = all_gathered_rows(places, rows)
    sizes = (moved[-1], moved[-2])
    keys = every_ranks_keys([f"n{rank}_é{i}" for i in range(n)])  # a rollback's sample names
    out[rank] = (got_places, got_rows, *sizes, keys)
    dist.destroy_process_group()


def _gather(shares: list[int]) -> dict:
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_rank, args=(len(shares), free_port(), shares, out), nprocs=len(shares))
    return dict(out)


def test_every_ranks_rows_arrive_in_rank_order_and_a_rank_may_have_none():
    out = _gather([3, 0])
    for places, rows, _, _, keys in out.values():
        assert keys == ["n0_é0", "n0_é1", "n0_é2"]
        assert places.tolist() == [0, 2, 4]
        assert torch.equal(rows, torch.arange(3 * 768, dtype=torch.float32).reshape(3, 768))


def test_a_gathered_row_costs_its_own_bytes_not_its_batchs():
    out = _gather([64, 63])
    row_bytes = 768 * 4
    _, rows, moved_rows, _, keys = out[0]
    assert keys[62:66] == ["n0_é62", "n0_é63", "n1_é0", "n1_é1"]
    assert len(rows) == 127
    assert moved_rows / len(rows) <= 1.1 * row_bytes  # padding of the shorter share only
    one_row_pickled = len(pickle.dumps(torch.zeros(512, 768)[0]))
    assert one_row_pickled > 100 * row_bytes  # what all_gather_object of a view cost


def test_no_object_gather_is_left_in_training():
    calls = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted((ROOT / "training").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "all_gather_object"
    ]
    assert calls == []
