"""Mixtures of prepared splits (``pretrain.data``): per-sample quotas per block, realised
proportions, exact resume at another world size, and splits of another modality or encoding
refused by key."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from data_prep.plan import WorkUnit
from data_prep.writer import Sample, finish_split, write_unit
from tests.training.test_rank_share import global_steps
from training.config import DataSource, LoaderConfig
from training.loader import TrainStream, mixed_train_spec
from training.mixture import BLOCK, MixPlan, quotas, shares
from training.modalities import modality
from training.modalities.image.bundle import ImageInputConfig
from training.sources import epoch_samples, source_problems
from training.typed_config import ConfigError

GLOBAL = 16
SEEN = ImageInputConfig(32)


def test_quotas_sum_to_the_block_by_largest_remainder():
    assert quotas([0.7, 0.3]) == (7000, 3000)
    assert quotas([1, 1, 1], block=10) == (4, 3, 3)
    assert quotas([2, 1], block=10) == (7, 3)  # 6.67 rounds up, 3.33 down


def test_a_two_source_mixture_realises_its_weights_over_ten_thousand_samples():
    plan = MixPlan(quotas([0.7, 0.3]), seed=0)
    walked = [source for _, source, _ in itertools.islice(plan.sources(0), 10_000)]
    assert walked.count(0) == 7000 and walked.count(1) == 3000  # exactly the weights
    assert shares(plan, 10_000) == (0.7, 0.3)
    assert abs(walked[:2_000].count(0) / 2_000 - 0.7) < 0.03  # mixed within the block too
    assert walked[:100] != walked[100:200]  # not a repeating pattern


def test_where_each_source_stands_is_arithmetic_from_any_start():
    plan = MixPlan(quotas([0.5, 0.25, 0.25]), seed=3)
    walk = list(itertools.islice(plan.sources(0), 2 * BLOCK + 77))
    for start in (0, 1, 9_999, 10_000, 12_345, 2 * BLOCK):
        assert list(itertools.islice(plan.sources(start), 50)) == walk[start : start + 50]
        counts = [0, 0, 0]
        for _, source, _ in walk[:start]:
            counts[source] += 1
        assert plan.position(start) == tuple(counts)
    for index, source, j in walk[::97]:
        assert plan.stream_index(source, j) == index


def _mixture(prepared, world, rank, skip=0, workers=0, weights=(0.7, 0.3)):
    sources = [DataSource(str(prepared / "train"), weight=weights[0]),
               DataSource(str(prepared / "val"), weight=weights[1])]  # fmt: skip
    loader = LoaderConfig(workers=workers, shuffle_buffer=50)
    return mixed_train_spec(sources, "image", SEEN, loader, batch_size=GLOBAL // world, seed=0,
                            rank=rank, world_size=world, skip_batches=skip)  # fmt: skip


def test_the_loader_draws_each_source_as_the_plan_says(prepared):
    spec = _mixture(prepared, world=1, rank=0)
    batches = list(itertools.islice(TrainStream(spec)._rows_of_global_batches(0, 1), 40))
    keys = [k for b in batches for k in b[2]]
    val_keys = [k for k in keys if "val" in k]
    plan = MixPlan(spec.quotas, spec.seed)
    assert len(keys) - len(val_keys) == plan.position(len(keys))[0]
    assert [("val" in k) for k in keys] == [
        s == 1 for _, s, _ in itertools.islice(plan.sources(0), len(keys))
    ]
    # each source's own epoch: no sample of it twice before all of it was drawn
    for source, drawn in ((0, [k for k in keys if "val" not in k]), (1, val_keys)):
        size = sum(r.samples for r in spec.mixture[source][1])
        assert len(set(drawn[:size])) == min(size, len(drawn))


def test_a_mixture_resumes_exactly_at_another_world_size_and_worker_count(prepared):
    def spec_of(rank, world, skip, workers):
        return _mixture(prepared, world, rank, skip, workers)

    straight = global_steps(spec_of, world=2, workers=2, skip=0, count=6)
    resumed = global_steps(spec_of, world=4, workers=1, skip=3, count=3)
    assert any("val" in k for keys, _ in straight for k in keys)
    for (keys, images), (want_keys, want_images) in zip(resumed, straight[3:]):
        assert keys == want_keys
        assert torch.equal(images, want_images)


def _split(root: Path, members: dict[str, bytes], tokenizer: str | None = None) -> str:
    """A real prepared split of two samples with ``members``, and a file beside it."""

    def encode(item):
        yield Sample(key=f"doc{item}", members=members)

    split = root / "train"
    result = write_unit(WorkUnit(0, (0, 1)), split, encode)
    finish_split(split, [result], 0.0)
    if tokenizer is not None:
        (root / "tokenizer.json").write_text(tokenizer)
    return str(split)


def test_a_split_of_another_modality_or_tokenizer_is_refused_by_key(prepared, tmp_path):
    image = [DataSource(str(prepared / "train"), weight=1.0)]
    text = _split(tmp_path / "a", {"tokens.npy.zst": b"x", "json": b"{}"}, tokenizer='{"a": 1}')
    problems = source_problems([*image, DataSource(text, weight=1.0)], modality("image"))
    assert [key for key, _ in problems] == ["pretrain.data[1].shards"]
    assert "a split of image samples" in problems[0][1] and "tokens.npy.zst" in problems[0][1]

    other = _split(tmp_path / "b", {"tokens.npy.zst": b"x", "json": b"{}"}, tokenizer='{"b": 2}')
    same = _split(tmp_path / "c", {"tokens.npy.zst": b"x", "json": b"{}"}, tokenizer='{"a": 1}')
    sources = [DataSource(s, weight=1.0) for s in (text, same, other)]
    problems = source_problems(sources, modality("text"))
    assert [key for key, _ in problems] == ["pretrain.data[2].shards"]
    assert "tokenizer.json differs" in problems[0][1]


def test_repeat_weighs_a_source_by_its_samples_and_sizes_the_epoch(prepared):
    from data_prep.shard_format import read_manifest

    train = sum(r.samples for r in read_manifest(prepared / "train"))
    val = sum(r.samples for r in read_manifest(prepared / "val"))
    sources = [DataSource(str(prepared / "train"), repeat=1.0),
               DataSource(str(prepared / "val"), repeat=3.0)]  # fmt: skip
    assert epoch_samples(sources) == train + 3 * val
    spec = mixed_train_spec(sources, "image", SEEN, LoaderConfig(), 4, 0)
    assert spec.quotas == quotas([train, 3 * val])


@pytest.mark.parametrize(
    "data, key",
    [
        ([{"shards": "a", "weight": 0.5}, {"shards": "b", "repeat": 2.0}], "data"),
        ([{"shards": "a", "weight": 0.5}, {"shards": "b"}], "data[1]"),
        ([{"shards": "a", "weight": -1.0}], "data[0].weight"),
    ],
)
def test_a_mixture_needs_one_kind_of_positive_weight(data, key):
    from training.config import pretrain_schema
    from training.typed_config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(pretrain_schema, [{"train_shards": "x", "out_dir": "y", "steps": 1,
                                        "data": data}])  # fmt: skip
    assert any(k.endswith(key) for k, _ in err.value.problems), err.value.problems


@pytest.mark.slow  # ~25-40 s of DeepSpeed launch; the loader tests above run by default
def test_a_pretraining_run_on_a_mixture_logs_its_realised_shares(tmp_path, prepared):
    """One DeepSpeed rank, 4 steps of 8 over train (0.7) and val (0.3): each metrics row holds
    each source's share of the samples drawn so far, as the plan made them."""
    import subprocess

    from tests.training.test_pretrain_distributed import _config, _deepspeed
    from training.metrics import read_metrics

    sources = [{"shards": str(prepared / "train"), "weight": 0.7},
               {"shards": str(prepared / "val"), "weight": 0.3}]  # fmt: skip
    config = _config(tmp_path, prepared, data=sources, precision="fp32")
    proc = subprocess.run(_deepspeed(config, ranks=1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    plan = MixPlan(quotas([0.7, 0.3]), seed=0)
    for row in rows:
        drawn = plan.position(row["step"] * 8)
        want = {s["shards"]: n / sum(drawn) for s, n in zip(sources, drawn)}
        assert row["mixture"] == pytest.approx(want)
    print("realised shares by step:", [(r["step"], r["mixture"]) for r in rows])
