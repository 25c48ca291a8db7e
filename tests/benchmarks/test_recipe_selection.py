"""The recipe selection's candidates are valid runs of their quickstart, and the choice is the
best score on the selection data (lowest WER; largest margin over random init)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.recipe_selection import SELECTIONS, chosen, table
from pipeline.schema import load_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_every_candidate_is_a_valid_run_on_other_data_than_the_reported(name, tmp_path):
    selection = SELECTIONS[name]
    for overrides in selection.candidates.values():
        cfg = load_run_config(CONFIGS / f"quickstart_{selection.modality}.yaml",
                              [*selection.overrides, *overrides, f"run_dir={tmp_path}"])  # fmt: skip
        reported = load_run_config(CONFIGS / f"quickstart_{selection.modality}.yaml")
        chosen_on = (cfg.demo_data.seed, getattr(cfg.prep, "labelled_val", None))
        assert chosen_on != (reported.demo_data.seed, getattr(reported.prep, "labelled_val", None))


def _run(label, pretrained, random_init=None):
    scores = {"pretrained": {"wer": pretrained, "top1": pretrained}}
    if random_init is not None:
        scores["random_init"] = {"wer": random_init, "top1": random_init}
    return {"label": label, "scores": scores, "seconds": 1.0}


def test_the_choice_is_the_lowest_wer_or_the_largest_margin():
    ctc, video = SELECTIONS["audio-ctc"], SELECTIONS["video"]
    runs = [_run("a", 40.0), _run("b", 35.0), _run("c", 38.0)]
    for r in runs:
        r["score"] = ctc.score(r["scores"])
    assert chosen(ctc, runs)["label"] == "b"
    runs = [_run("a", 60.0, 55.0), _run("b", 50.0, 30.0), _run("c", 70.0, 65.0)]
    for r in runs:
        r["score"] = video.score(r["scores"])
    assert chosen(video, runs)["label"] == "b"  # +20, where the best pretrained is +5
    info = {"date": "d", "commit": "c", "cpu": "x", "total_seconds": 60.0}
    lines = table("video", video, [{**r, "label": lb} for r, lb in zip(runs, video.candidates)],
                  info)  # fmt: skip
    assert any("**+20.00** (chosen)" in line for line in lines)
