"""Where a run's masking sits on the cost-quality frontier that ``benchmarks.masking_frontier``
measured (shipped in ``docs/masking_frontier.json``): the run's training FLOPs per sample against
the MAE default's on its own model, beside the measured configurations' probe accuracy at equal
wall-clock. MAE objectives only, and only the modality it was measured on (a video run is not
placed on the image frontier); a checkout without the file gets no section."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from matplotlib.figure import Figure

from training.flops import mae_step_flops

FRONTIER = Path(__file__).resolve().parents[1] / "docs" / "masking_frontier.json"
REFERENCE = "mae_default"  # the grid point of MAE's default masking


def relative_cost(model_cfg, geometry, mask) -> float:
    """Training FLOPs per decoded sample of ``mask`` over MAE's default masking (0.75, random,
    one mask per sample) on the same model and tokens."""
    mine = mae_step_flops(model_cfg, geometry, mask.ratio, 1, mask.kind, mask.per_sample)
    mae = mae_step_flops(dataclasses.replace(model_cfg, decoder_type="self"), geometry, 0.75, 1)
    return mine / mae


def load_frontier(path: Path = FRONTIER) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def frontier_modality(frontier: dict) -> str:
    """The modality whose demo corpus the frontier was measured on ("" when the file does not
    say: no run is placed on it)."""
    return frontier.get("modality", "")


def same_point(point: dict, model_cfg, mask) -> bool:
    return (
        point["ratio"] == mask.ratio
        and point["kind"] == mask.kind
        and point["per_sample"] == mask.per_sample
        and point["decoder"] == model_cfg.decoder_type
    )


def frontier_figure(frontier: dict, cost: float, model_cfg, mask) -> Figure:
    """Each measured configuration's final probe accuracy (seed range as bars) against its
    FLOPs per image relative to the MAE default; this run's relative cost as a dashed line, and
    its own configuration ringed when it was measured."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    for name, s in frontier["summary"].items():
        last = s["curve"][-1]
        ref = name == REFERENCE
        x, y = s["relative_flops"], last["probe_top1"]
        err = [[y - last["probe_min"]], [last["probe_max"] - y]]
        ax.errorbar([x], [y], yerr=err, fmt="o", color="black" if ref else "#1f5fa8", capsize=3)
        ax.annotate(s["label"], (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
        if same_point(s["point"], model_cfg, mask):
            ax.plot([x], [y], "o", ms=14, mfc="none", mec="#c0392b", mew=2)
    ax.axvline(cost, color="#c0392b", ls="--", lw=1.2)
    ax.annotate(
        f"this run: {cost:.2f}x", (cost, 0.02), xycoords=("data", "axes fraction"), fontsize=8,
        color="#c0392b", xytext=(4, 0), textcoords="offset points",
    )  # fmt: skip
    ax.set_xlabel("training FLOPs per image, relative to the MAE default (0.75, random, K=1)")
    ax.set_ylabel("linear probe top-1, % (demo corpus)")
    ax.set_title(
        f"Masking at equal wall-clock ({frontier['budget_s']:.0f} s per run, "
        "benchmarks.masking_frontier)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
