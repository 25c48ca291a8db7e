"""The report as a person reads it: chance beside each score, gains in percentage points,
labelled axes (pure pieces; the whole page is checked by the end-to-end runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.report import _eval_table, chance_level, plot_curves


def _metrics(classes: int) -> dict:
    return {
        "data": {"val_samples": 60, "classes": classes},
        "tasks": {
            "linear_probe": {
                "title": "Linear probe",
                "better": {"top1": "higher", "top5": "higher"},
            },
            "mlm": {
                "title": "Masked tokens",
                "better": {"accuracy": "higher", "perplexity": "lower"},
            },
        },
        "linear_probe": {
            "pretrained": {"top1": 37.5, "top5": 90.0},
            "random_init": {"top1": 20.0, "top5": 85.0},
        },
        "mlm": {
            "pretrained": {"accuracy": 14.5, "perplexity": 331.9},
            "random_init": {"accuracy": 0.0, "perplexity": 13943.5},
        },
    }


def test_chance_is_what_a_uniform_guess_scores():
    assert chance_level("linear_probe", "top1", 4, None) == 25.0
    assert chance_level("knn", "top5", 20, None) == 25.0
    assert chance_level("knn", "top5", 3, None) == 100.0
    assert chance_level("mlm", "accuracy", None, 8000) == pytest.approx(0.0125)
    assert chance_level("mlm", "perplexity", None, 8000) == 8000.0
    assert chance_level("ctc", "wer", 20, None) is None


def test_the_table_has_chance_and_gains_in_points_and_no_top5_of_few_classes():
    few = _eval_table(_metrics(6), "images", vocab=8000)
    assert "Linear probe top5" not in few  # of 6 classes, top-5 chance is 83%
    assert "<td>Linear probe top1</td><td><b>37.50</b></td><td>20.00</td>" in few
    assert "+17.50 pp</span></td><td>16.67</td>" in few
    assert "-13611.60</span></td><td>8000.00</td>" in few  # perplexity: no pp
    many = _eval_table(_metrics(20), "images", vocab=8000)
    assert "Linear probe top5" in many and "+5.00 pp</span></td><td>25.00</td>" in many


def test_every_curve_has_labelled_axes():
    curve = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "units_per_s": 100.0} for s in (1, 2, 3)]
    fig = plot_curves(curve, "images")
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    assert fig.axes[2].get_ylabel() == "images / s"


def test_the_masking_section_places_the_run_on_the_measured_frontier(tmp_path):
    """A run's masking cost against MAE's default on its own model, and its point ringed when
    the benchmark measured its configuration."""
    from pipeline.frontier import frontier_figure, relative_cost, same_point
    from training.config import MaskConfig, ModelConfig
    from training.modalities.image.bundle import ImageInputConfig, geometry

    model = ModelConfig(preset="nano", decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3)
    g = geometry(ImageInputConfig(image_size=64, patch_size=8))
    assert relative_cost(model, g, MaskConfig()) == 1.0
    at_09 = relative_cost(model, g, MaskConfig(ratio=0.9))
    assert at_09 < 1.0
    assert relative_cost(model, g, MaskConfig(ratio=0.9, per_sample=2)) == pytest.approx(2 * at_09)
    assert relative_cost(model, g, MaskConfig(kind="hpm")) > 1.0
    point = {"ratio": 0.9, "kind": "random", "per_sample": 2, "decoder": "self"}
    assert same_point(point, model, MaskConfig(ratio=0.9, per_sample=2))
    assert not same_point(point, model, MaskConfig(ratio=0.9))
    frontier = {
        "budget_s": 40,
        "summary": {
            name: {
                "label": name, "point": pt, "relative_flops": cost,
                "curve": [{"probe_top1": acc, "probe_min": acc - 1, "probe_max": acc + 1}],
            }
            for name, pt, cost, acc in (
                ("mae_default", {**point, "ratio": 0.75, "per_sample": 1}, 1.0, 35.0),
                ("r0.90_k2", point, 2 * at_09, 33.0),
            )
        },
    }  # fmt: skip
    fig = frontier_figure(frontier, 2 * at_09, model, MaskConfig(ratio=0.9, per_sample=2))
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("training FLOPs per image")
    assert any(t.get_text() == f"this run: {2 * at_09:.2f}x" for t in ax.texts)
    rings = [line for line in ax.lines if line.get_markersize() == 14]
    assert len(rings) == 1 and rings[0].get_xdata()[0] == pytest.approx(2 * at_09)


@pytest.mark.parametrize(("modality", "placed"), [("image", True), ("video", False)])
def test_a_report_shows_the_frontier_only_of_its_own_modality(tmp_path, modality, placed):
    """The shipped frontier was measured on the image demo corpus: a video run is not placed on
    it, and its report says that no frontier exists for video yet."""
    from pipeline.report import _masking_section
    from pipeline.schema import load_run_config
    from training.modalities import modality as modality_named

    root = Path(__file__).resolve().parents[2]
    cfg = load_run_config(root / "configs" / f"quickstart_{modality}.yaml")
    html = "\n".join(_masking_section(cfg, modality_named(modality), tmp_path))
    assert (tmp_path / "masking.png").exists() == placed
    assert ("No cost-quality frontier has been measured for video yet" in html) != placed
    assert "the training FLOPs per sample of MAE's default" in html


def test_a_mixtures_report_names_each_source_with_its_asked_and_realised_share(prepared):
    from types import SimpleNamespace

    from pipeline.report import _data_section
    from training.config import DataSource

    data = [DataSource(str(prepared / "train"), weight=0.7),
            DataSource(str(prepared / "val"), weight=0.3)]  # fmt: skip
    cfg = SimpleNamespace(
        prep=SimpleNamespace(out=str(prepared), splits=["train", "val"]),
        pretrain=SimpleNamespace(data=data),
    )
    last = {"mixture": {data[0].shards: 0.7, data[1].shards: 0.3}}
    page = "\n".join(_data_section(cfg, last))
    assert page.count("<tr>") == 3 + 3  # the splits' table, and the sources' (headers included)
    assert "weight 0.7" in page and "70.00%" in page and "30.00%" in page
    cfg.pretrain.data = data[:1]
    assert "realised share" not in "\n".join(_data_section(cfg, last))
