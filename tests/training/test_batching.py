"""How a global batch splits over ranks and micro steps (training.batching)."""

import pytest

from training.batching import BatchSplitError, split_batch


@pytest.mark.parametrize(
    ("world", "per_rank", "micro", "accum"),
    [(8, 512, 128, 4), (16, 256, 128, 2), (32, 128, 128, 1), (512, 8, 8, 1)],
)
def test_mae_4096_at_every_world_size(world, per_rank, micro, accum):
    split = split_batch(4096, world, max_rows=128)
    assert (split.per_rank, split.micro, split.accum) == (per_rank, micro, accum)
    assert split.micro * split.accum * world == 4096


def test_a_share_that_the_cap_does_not_divide_takes_the_next_micro_count_that_does():
    split = split_batch(96 * 8, 8, max_rows=40)  # 96 a rank: 3 x 32, not 40 + 40 + 16
    assert (split.micro, split.accum) == (32, 3)


def test_no_cap_is_one_micro_step():
    assert split_batch(64, 4).accum == 1


def test_pairs_stay_whole_in_every_micro_step():
    split = split_batch(24, 2, max_rows=4, multiple=2)  # 12 a rank: 3 x 4 (not 4 x 3)
    assert (split.micro, split.accum) == (4, 3)
    with pytest.raises(BatchSplitError, match="not a multiple of 2"):
        split_batch(24, 8, multiple=2)  # 3 a rank cannot pair


def test_an_uneven_share_is_refused_naming_the_world_size_and_the_nearest_that_work():
    with pytest.raises(BatchSplitError) as e:
        split_batch(4096, 24)
    assert str(e.value) == "4096 is not a multiple of the 24 ranks; 4080 or 4104 would be"
    with pytest.raises(BatchSplitError, match="16 is not a multiple of the 32 ranks; 32 would be"):
        split_batch(16, 32)


def test_a_pretraining_with_a_global_batch_runs_per_rank_micro_steps():
    from training.config import PretrainConfig, for_world

    cfg = PretrainConfig(global_batch=4096, batch_size=128, steps=1)
    on_8 = for_world(cfg, 8)
    assert (on_8.batch_size, on_8.grad_accum, on_8.global_batch) == (128, 4, None)
    on_512 = for_world(cfg, 512)
    assert (on_512.batch_size, on_512.grad_accum) == (8, 1)
    unset = PretrainConfig(batch_size=64, grad_accum=2, steps=1)
    assert for_world(unset, 4) == unset  # per rank as written
