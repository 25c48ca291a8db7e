import itertools

import pytest

from training.schedule import warmup_cosine


def test_warmup_rises_linearly_to_peak():
    lrs = [warmup_cosine(s, 100, 10, 1.0, 0.0) for s in range(10)]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in itertools.pairwise(lrs))


def test_cosine_decays_to_floor():
    assert warmup_cosine(10, 100, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    mid = warmup_cosine(55, 100, 10, 1.0, 0.0)
    assert mid == pytest.approx(0.5)
