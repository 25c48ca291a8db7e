"""The driver's listing on its disk, not in its memory (issue: prep at corpus scale).

Before, every input stayed a Python object on the driver from listing to the last task: the
reader's list, its keys' Counter, the plan's shuffled copy, the used-path set of the walk that
names unread files; ``benchmarks/prep_scale`` measured 344 bytes an image (4.9 GB at
ImageNet-21k). Now a listing is pickled to the driver's disk as it comes and read back by
position; what stays in memory is a few bytes an input (the plan's permutation, digests).
"""

from __future__ import annotations

import random
import tracemalloc
from types import SimpleNamespace

import pytest

from data_prep.image.reader import READER
from data_prep.job import listed
from data_prep.listing import Listing, PathDigests
from data_prep.plan import UnitPlan, WorkUnit, plan_shards


def _plan_of_the_list(items: list, per_shard: int, seed: int) -> list[WorkUnit]:
    """The plan as it was computed before the listing went to disk (``plan_shards`` until
    2026-12-03, verbatim): the list of items itself shuffled, then cut into balanced units."""
    order = list(items)
    random.Random(seed).shuffle(order)
    n_units = max(1, -(-len(order) // per_shard)) if order else 0
    units = []
    start = 0
    for index in range(n_units):
        size = len(order) // n_units + (1 if index < len(order) % n_units else 0)
        units.append(WorkUnit(index, tuple(order[start : start + size])))
        start += size
    return units


@pytest.mark.parametrize("n,per", [(0, 3), (1, 3), (10, 3), (1000, 7), (1001, 1000)])
def test_a_plan_over_a_listing_is_the_plan_over_the_list(n, per):
    """The same units, so a prep planned from its disk listing writes the shards it always
    did, and a finished prep stays finished."""
    items = [f"train/c{i % 7}/img_{i}.JPEG" for i in range(n)]
    with Listing.of(iter(items)) as listing:
        assert len(listing) == n and list(listing) == items
        if n:
            assert [listing[i] for i in (0, n // 2, n - 1)] == [items[0], items[n // 2], items[-1]]
        assert list(UnitPlan(listing, per, seed=3)) == _plan_of_the_list(items, per, seed=3)
        assert plan_shards(items, per, seed=3) == _plan_of_the_list(items, per, seed=3)


def test_path_digests_answer_membership():
    paths = [f"/src/train/n{i}/x_{i}.JPEG" for i in range(500)]
    used = PathDigests(iter(paths))
    assert all(p in used for p in paths)
    assert not any(f"/src/train/n{i}/y_{i}.JPEG" in used for i in range(500))
    assert "anything" not in PathDigests(iter(()))


def _imagenet(root, n: int):
    """An ImageNet-layout tree of ``n`` empty image files (listing reads names, not bytes), 200
    to a class as the corpus grows (ImageNet: ~1,300; the walk holds one folder's names)."""
    classes = n // 200
    for c in range(classes):
        (root / "train" / f"n{c:08d}").mkdir(parents=True)
    for i in range(n):
        (root / "train" / f"n{i % classes:08d}" / f"n{i % classes:08d}_{i}.JPEG").touch()
    (root / "train" / "n00000000" / "notes.txt").touch()  # one unread file, named by the walk
    return root


def _driver_peak(root) -> tuple[int, int]:
    """The Python allocations' peak while the driver lists the split, names the unread files
    and hands out every unit of the plan (what it does before and between tasks), and the
    units' item count."""
    cfg = SimpleNamespace(source=str(root), splits=["train"], out=str(root / "out"))
    tracemalloc.start()
    seen = 0
    with listed(READER, cfg) as (items, unread):
        assert [u.path.rsplit("/", 1)[-1] for u in unread["train"]] == ["notes.txt"]
        for unit in UnitPlan(items["train"], 1000, seed=0):
            seen += len(unit.items)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, seen


def test_the_drivers_memory_does_not_grow_with_the_corpus(tmp_path):
    """2,000 and 32,000 images: the driver's peak grows by well under 40 bytes an input (it
    grew 344 before: ~10 MB more here)."""
    small, large = 2_000, 32_000
    peaks = {}
    for n in (small, large):
        peaks[n], seen = _driver_peak(_imagenet(tmp_path / f"c{n}", n))
        assert seen == n
    per_input = (peaks[large] - peaks[small]) / (large - small)
    print(f"driver peak {peaks[small] / 1e6:.2f} MB at {small}, {peaks[large] / 1e6:.2f} MB at "
          f"{large}: {per_input:.1f} bytes an input")  # fmt: skip
    assert per_input < 40, peaks
