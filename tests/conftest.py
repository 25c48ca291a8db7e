"""Shared fixtures: one tiny demo corpus and one real prep of it (local Ray) serve many tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_prep.demo_corpus import DemoCorpusConfig, write_demo_corpus
from data_prep.imagenet import ImagePrepConfig, prep_imagenet

CORRUPT = 3  # one truncated JPEG, one empty file, one non-image, in that order


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """4 classes x 24 train + 6 val images in ImageNet layout, quirks and 3 broken files."""
    out = tmp_path_factory.mktemp("corpus") / "raw"
    cfg = DemoCorpusConfig(
        out=str(out),
        classes=4,
        train_per_class=24,
        val_per_class=6,
        min_size=40,
        max_size=90,
        corrupt=CORRUPT,
    )
    return write_demo_corpus(cfg)


@pytest.fixture(scope="session")
def prepared(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus sharded by the real Ray job: ``prepared/train``, ``prepared/val``."""
    out = tmp_path_factory.mktemp("prepared") / "shards"
    prep_imagenet(prep_config(demo_corpus, out))
    return out


@pytest.fixture(scope="session")
def image_corpus(demo_corpus):
    """The image modality's raw corpus for the modality contract test, and its small prep keys."""
    return demo_corpus, {"shorter_side": 40}


def prep_config(source: Path, out: Path, **overrides) -> ImagePrepConfig:
    values = dict(
        source=str(source), out=str(out), shorter_side=40, samples_per_shard=20, num_cpus=2
    )
    values.update(overrides)
    return ImagePrepConfig(**values)


@pytest.fixture(scope="session", autouse=True)
def _quiet_environment():
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield
