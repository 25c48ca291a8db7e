"""Choosing a quickstart's recipe on a split that its reported numbers never use.

    python -m benchmarks.recipe_selection [--selection audio-ctc] [--work runs/recipe_selection]
        [--out docs/recipe_selection]

``audio-ctc``: the audio quickstart's CTC fine-tune. The demo corpus is made with its selection
split (``demo_data.selection_split``: ``digits/select``, every voice saying each digit string
once more) and prepared with ``digits/select`` as the labelled val split; the encoder is
pretrained once, exactly as the quickstart pretrains it (the LibriLight chapters, the train
digits and the pretraining schedule are the same bytes); then each candidate recipe fine-tunes it
with CTC and is scored on ``digits/select``. The lowest WER is chosen, and that recipe is the
quickstart's (``configs/quickstart_audio.yaml``), which reports on ``digits/val``: a split no
choice looked at. Only the pretrained encoder is scored here (the recipe is chosen for the
encoder a user would fine-tune), and random init then gets the same recipe.

Writes ``<out>.json`` (every candidate's scores and seconds) and ``<out>.md`` (the table and
the choice). Benchmarks report; nothing passes or fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import machine

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Selection:
    modality: str
    task: str  # the metrics.json section
    metric: str
    lower_is_better: bool
    overrides: tuple[str, ...]  # the selection split in place of val; only this task runs
    candidates: dict[str, tuple[str, ...]]


def _ctc(lr: float, decay: float, epochs: int = 60) -> tuple[str, ...]:
    prefix = "evaluate.tasks.ctc"
    return (f"{prefix}.base_lr={lr}", f"{prefix}.layer_decay={decay}", f"{prefix}.epochs={epochs}")


SELECTIONS = {
    "audio-ctc": Selection(
        "audio", "ctc", "wer", True,
        ("demo_data.selection_split=true", "prep.labelled_val=${demo_data.out}/digits/select",
         "evaluate.baseline=false", "evaluate.tasks.linear_probe.enabled=false",
         "evaluate.tasks.knn.enabled=false", "evaluate.tasks.finetune.enabled=false",
         "pretrain.monitor.every=0"),
        {"lr 5e-3, layer decay 1.0 (before)": _ctc(5e-3, 1.0),
         "lr 2e-3, layer decay 1.0": _ctc(2e-3, 1.0),
         "lr 1e-2, layer decay 1.0": _ctc(1e-2, 1.0),
         "lr 5e-3, layer decay 0.75": _ctc(5e-3, 0.75),
         "lr 1e-2, layer decay 0.75": _ctc(1e-2, 0.75)},
    ),
}  # fmt: skip


def run_candidate(selection: Selection, label: str, work: Path) -> dict:
    """One candidate's fine-tune of the shared pretrained encoder (the pipeline reruns only the
    finetune stage when just the task's keys change), scored on the selection split."""
    from pipeline.runner import run_pipeline
    from pipeline.schema import load_run_config
    from training.metrics import read_eval_metrics

    config = ROOT / "configs" / f"quickstart_{selection.modality}.yaml"
    overrides = [*selection.overrides, *selection.candidates[label], f"run_dir={work}"]
    cfg = load_run_config(config, overrides)
    start = time.perf_counter()
    run_pipeline(cfg, only=("demo_data", "prep", "pretrain", "finetune"))
    scores = read_eval_metrics(work / "evaluate")[selection.task]["pretrained"]
    return {"label": label, "scores": scores, "seconds": time.perf_counter() - start}


def chosen(selection: Selection, runs: list[dict]) -> dict:
    sign = 1 if selection.lower_is_better else -1
    return min(runs, key=lambda r: sign * r["scores"][selection.metric])


def table(name: str, selection: Selection, runs: list[dict], info: dict) -> list[str]:
    best = chosen(selection, runs)
    lines = [
        f"# Recipe selection: {name}",
        "",
        f"Written by `python -m benchmarks.recipe_selection --selection {name}` on "
        f"{info['date']}, commit `{info['commit']}`, {info['cpu']}. Each candidate fine-tunes "
        f"the same pretrained encoder and is scored on the selection split; the reported "
        f"numbers (docs/results.md) come from the val split, which none of this looked at.",
        "",
        f"| candidate | {selection.task} {selection.metric} (selection split) | seconds |",
        "|---|---|---|",
    ]
    for run in runs:
        score = f"{run['scores'][selection.metric]:.2f}"
        mark = f"**{score}** (chosen)" if run is best else score
        lines.append(f"| {run['label']} | {mark} | {run['seconds']:.0f} |")
    lines += ["", f"Chosen: {best['label']} ({' '.join(selection.candidates[best['label']])})."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selection", default="audio-ctc", choices=sorted(SELECTIONS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "recipe_selection")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "recipe_selection")
    parser.add_argument("--candidates", nargs="*", help="labels to run (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    selection = SELECTIONS[args.selection]
    labels = args.candidates or list(selection.candidates)
    started = time.perf_counter()
    runs = [run_candidate(selection, label, args.work / args.selection) for label in labels]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    info = {**machine(), "date": datetime.date.today().isoformat(), "commit": commit or "?",
            "total_seconds": time.perf_counter() - started}  # fmt: skip
    result = {"selection": args.selection, "runs": runs, "chosen": chosen(selection, runs)["label"],
              "machine": info}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = "\n".join(table(args.selection, selection, runs, info)) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
