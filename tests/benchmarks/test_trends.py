"""``benchmarks/trends.py``: the verdict rule, and the tiny grid run end to end through the
pipeline (two image points, one seed) with its JSON, table and figure, redrawn by --replot."""

from __future__ import annotations

import json

from benchmarks.trends import Claim, main, verdict


def _runs(scores: dict[str, list[float]]) -> list[dict]:
    return [
        {"label": label, "seed": seed, "scores": {"linear_probe.top1": value}}
        for label, values in scores.items()
        for seed, value in enumerate(values)
    ]


def test_a_verdict_compares_the_ranges_over_seeds():
    beats = Claim("p", "0.75", "0.25", "linear_probe.top1")
    assert verdict(beats, _runs({"0.75": [40, 42], "0.25": [30, 35]})) == "reproduced"
    assert verdict(beats, _runs({"0.75": [30, 33], "0.25": [35, 40]})) == "not reproduced"
    assert verdict(beats, _runs({"0.75": [36, 41], "0.25": [35, 40]})) == "within noise"
    level = Claim("p", "0.4", "0.15", "linear_probe.top1", "matches or beats")
    assert verdict(level, _runs({"0.4": [30, 34], "0.15": [33, 36]})) == "reproduced"
    assert verdict(level, _runs({"0.4": [30, 32], "0.15": [33, 36]})) == "not reproduced"
    assert verdict(beats, _runs({"0.75": [40]})) == "not measured"


def test_the_tiny_grid_runs_and_replots(tmp_path):
    """One point of the tiny grid through the real pipeline (demo corpus, prep, pretrain,
    probe: ~40 s; both points took 80 s of the default suite); its claim then lacks the other
    point and says so. Measured again with --points, a point replaces its earlier runs and the
    sweep's other points stay."""
    out = tmp_path / "trends"
    args = ["--grid", "tiny", "--modalities", "image", "--seeds", "1", "--points", "0.75",
            "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    runs = result["modalities"]["image"]["runs"]
    assert [r["label"] for r in runs] == ["0.75"]
    assert all(0 <= r["scores"]["linear_probe.top1"] <= 100 for r in runs)
    table = out.with_suffix(".md").read_text()
    assert "0.75 beats 0.5 on linear_probe.top1 |" in table and "**not measured**" in table
    assert out.with_suffix(".png").stat().st_size > 10_000
    out.with_suffix(".md").unlink()
    assert main([*args, "--replot"]) == 0 and out.with_suffix(".md").read_text() == table

    scores = {"linear_probe.top1": -1.0, "knn.top1": -1.0}
    earlier = {"label": "0.5", "seed": 0, "seconds": 1.0, "scores": scores}
    stale = {**earlier, "label": "0.75"}
    result["modalities"]["image"]["runs"] = [earlier, stale]
    out.with_suffix(".json").write_text(json.dumps(result))
    assert main(args) == 0  # the run is done: its scores are read back
    again = json.loads(out.with_suffix(".json").read_text())["modalities"]["image"]["runs"]
    assert again[0] == earlier and [r["label"] for r in again] == ["0.5", "0.75"]
    assert again[1]["scores"] == runs[0]["scores"]
    assert "**not measured**" not in out.with_suffix(".md").read_text()
