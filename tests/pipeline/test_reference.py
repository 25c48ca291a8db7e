"""docs/reference.md is what the typed configs say: regenerate it with
``maskmill config --reference > docs/reference.md`` (or ``make docs``) after changing a config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.reference import field_comments, reference_markdown
from training.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_reference_matches_the_configs():
    shipped = (ROOT / "docs" / "reference.md").read_text()
    assert shipped == reference_markdown(), (
        "docs/reference.md is stale: run `make docs` (maskmill config --reference)"
    )


def test_every_key_of_every_modality_is_in_the_reference():
    text = reference_markdown()
    for f in dataclasses.fields(ModelConfig):
        assert f"`pretrain.model.{f.name}`" in text
    for section in ("prep.source", "pretrain.input.", "evaluate.tasks.", "demo_data.out"):
        assert text.count(section) >= 4, section  # once per modality at least


def test_a_field_comment_on_its_line_or_above_it_is_its_meaning():
    comments = field_comments(ModelConfig)
    assert comments["pool"].startswith("features for probes")  # on its line
    assert comments["decoder_type"].startswith('"self": MAE')  # the block above
