"""The papers' trends, measured on maskmill itself: for each modality's demo corpus, sweep the one
knob its paper is known for, at an equal number of steps and over seeds, and say whether the
paper's direction comes out.

    python -m benchmarks.trends [--modalities image text audio video] [--seeds 2]
        [--work runs/trends] [--out docs/trends] [--grid full|tiny]
    python -m benchmarks.trends --replot          # redraw docs/trends.{md,png} from the JSON
    python -m benchmarks.trends --modalities video --points "tube 0.9" "random 0.9"

Each point is a real run of the modality's quickstart (``configs/quickstart_<m>.yaml``) through
the pipeline, stages ``pretrain`` and ``probe`` only (linear probe and k-NN; text also scores
held-out masked tokens at a fixed 15%, as Wettig et al. evaluate), with the knob overridden and
``seed`` set. The demo corpus is made and prepared once per modality and shared by its points.
The sweeps:

* image: mask ratio 0.25 / 0.5 / 0.75 / 0.9 (MAE: 75% best for linear probing, much better
  than 25-50%);
* video: tube vs random masking at 0.75 and 0.9 (VideoMAE: tube beats random at 90%);
* audio: mask ratio 0.5 / 0.8 / 0.9 on the classification probe (AudioMAE: 80% works);
* text: MLM rate 0.15 / 0.3 / 0.4 (Wettig et al.: 40% matches or beats 15%).

Verdicts compare min-max ranges over seeds: *reproduced* when the paper's winner's worst seed
beats the other's best (for "matches or beats": when the ranges overlap or the winner is
higher), *not reproduced* when it is the other way round, *within noise* otherwise. Writes
``<out>.json`` (every seed's scores), ``<out>.md`` (the table, with each claim's verdict) and
``<out>.png`` (one panel per modality: means with min-max bars). Benchmarks report; nothing
passes or fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import machine

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Claim:
    """A paper's direction: ``winner`` scores above (or, with ``kind`` "matches or beats", at
    least level with) ``other`` on ``metric``."""

    paper: str
    winner: str
    other: str
    metric: str  # "<task>.<metric>" of metrics.json, pretrained encoder
    kind: str = "beats"


@dataclass(frozen=True)
class Sweep:
    modality: str
    points: tuple[tuple[str, tuple[str, ...]], ...]  # (label, overrides)
    metrics: tuple[str, ...]  # "<task>.<metric>", the first plotted
    claims: tuple[Claim, ...]
    overrides: tuple[str, ...] = ()  # for every point: the schedule, what the probe runs
    note: str = ""  # what the schedule is against the paper's, printed under the verdicts


def _ratios(values, key: str = "pretrain.mask.ratio"):
    return tuple((f"{v:g}", (f"{key}={v}",)) for v in values)


MAE = "MAE (He et al. 2022, Fig. 5)"
SWEEPS = {
    "image": Sweep(
        "image", _ratios((0.25, 0.5, 0.75, 0.9)), ("linear_probe.top1", "knn.top1"),
        (Claim(MAE, "0.75", "0.25", "linear_probe.top1"),
         Claim(MAE, "0.75", "0.5", "linear_probe.top1")),
    ),
    "video": Sweep(
        "video",
        tuple((f"{kind} {r:g}", (f"pretrain.mask.kind={kind}", f"pretrain.mask.ratio={r}"))
              for r in (0.75, 0.9) for kind in ("tube", "random")),
        ("linear_probe.top1", "knn.top1"),
        (Claim("VideoMAE (Tong et al. 2022, Table 1c)", "tube 0.9", "random 0.9",
               "linear_probe.top1"),),
        # the object scene the points were measured on (the quickstart's corpus until it moved
        # to the texture scene), so that the missing points join them on the same corpus
        ("pretrain.steps=600", "evaluate.tasks.multi_view=false", "demo_data.scene=object",
         "demo_data.seconds=2.6", "demo_data.clips_per_class=60", "prep.clips_per_video=2"),
        "600 steps, half the video quickstart's, single-view scoring, on the object scene (one "
        "shape moving over a still background), 48-pixel clips of 16 "
        "frames (6 x 6 tubes a time step: at 0.9 about 4 stay visible). VideoMAE's gap is "
        "measured over 800 epochs of Something-Something V2 with a ViT-B; a larger input "
        "(more tubes a step) and a longer schedule are what a fair test would take.",
    ),
    "audio": Sweep(
        "audio", _ratios((0.5, 0.8, 0.9)), ("linear_probe.top1", "knn.top1"),
        (Claim("AudioMAE (Huang et al. 2022, Table 2)", "0.8", "0.5", "linear_probe.top1",
               "matches or beats"),),
        ("pretrain.steps=300",),
        "300 steps, half the audio quickstart's, of a nano ViT on 523 LibriLight-layout "
        "clips; AudioMAE's 80% comes from 32 epochs of AudioSet-2M with a ViT-B. Harder masking "
        "learns more slowly at a short schedule: a schedule several times longer is what a "
        "fair test of the claim would take. Not tuned until it flips.",
    ),
    "text": Sweep(
        "text", _ratios((0.15, 0.3, 0.4)), ("mlm.accuracy", "linear_probe.top1"),
        (Claim("Wettig et al. 2023, 'Should You Mask 15% in MLM?'", "0.4", "0.15",
               "mlm.accuracy", "matches or beats"),),
        ("pretrain.steps=600",),
        "600 steps, half the text quickstart's. The probe rises with the rate too, beyond the "
        "seeds' ranges.",
    ),
}  # fmt: skip
# Every point: its pretraining and the frozen-feature stage only; no random-init baseline (the
# points compare with each other), no k-NN monitor.
COMMON = ("evaluate.baseline=false", "pretrain.monitor.every=0")
# --grid tiny: the smoke test's sweep (two points, a tiny corpus and schedule)
TINY = {
    "image": Sweep(
        "image", _ratios((0.5, 0.75)), ("linear_probe.top1", "knn.top1"),
        (Claim(MAE, "0.75", "0.5", "linear_probe.top1"),),
        ("demo_data.classes=3", "demo_data.train_per_class=8", "demo_data.val_per_class=4",
         "pretrain.steps=2", "pretrain.batch_size=4", "pretrain.optim.warmup_steps=1",
         "launch.ranks=1", "prep.num_cpus=null", "pretrain.loader.workers=1",
         "evaluate.tasks.linear_probe.epochs=2", "evaluate.tasks.knn.k=3"),
    ),
}  # fmt: skip


def run_point(sweep: Sweep, label: str, seed: int, work: Path) -> dict:
    """One point's run (pretrain, probe) on the modality's shared prepared corpus; its scores
    by metric, and its seconds."""
    from pipeline.runner import run_pipeline
    from pipeline.schema import load_run_config
    from training.metrics import read_eval_metrics

    overrides = dict(sweep.points)[label]
    data = work / sweep.modality / "data"
    shared = [f"demo_data.out={data}/raw", f"prep.out={data}/shards", f"seed={seed}"]
    config = CONFIGS / f"quickstart_{sweep.modality}.yaml"
    base = [*COMMON, *sweep.overrides, *shared]
    if not (data / "shards").exists() or not (data / "ready").exists():
        prep = load_run_config(config, [*base, f"run_dir={data}/run"])
        run_pipeline(prep, only=("demo_data", "prep"))
        (data / "ready").write_text("")
    run_dir = work / sweep.modality / label.replace(" ", "_") / f"seed{seed}"
    cfg = load_run_config(config, [*base, *overrides, f"run_dir={run_dir}"])
    start = time.perf_counter()
    run_pipeline(cfg, only=("pretrain", "probe"))
    metrics = read_eval_metrics(run_dir / "evaluate")
    scores = {m: metrics[m.split(".")[0]]["pretrained"][m.split(".")[1]] for m in sweep.metrics}
    return {"label": label, "seed": seed, "scores": scores, "seconds": time.perf_counter() - start}


def summarise(runs: list[dict], metric: str) -> dict[str, dict]:
    """Per label: mean, min and max of ``metric`` over seeds, in the order the runs came."""
    by_label: dict[str, list[float]] = {}
    for run in runs:
        by_label.setdefault(run["label"], []).append(run["scores"][metric])
    return {
        label: {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "n": len(v)}
        for label, v in by_label.items()
    }


def verdict(claim: Claim, runs: list[dict]) -> str:
    """reproduced / not reproduced / within noise, from the min-max ranges over seeds."""
    s = summarise(runs, claim.metric)
    if claim.winner not in s or claim.other not in s:
        return "not measured"
    win, other = s[claim.winner], s[claim.other]
    if claim.kind == "matches or beats":
        return "reproduced" if win["max"] >= other["min"] else "not reproduced"
    if win["min"] > other["max"]:
        return "reproduced"
    if win["max"] < other["min"]:
        return "not reproduced"
    return "within noise"


def table(result: dict) -> list[str]:
    """The markdown: per modality, each point's scores (mean, min-max), then each claim."""
    lines = [
        "# The papers' trends on maskmill",
        "",
        f"Written by `python -m benchmarks.trends` on {result['machine']['cpu']}; every point a "
        f"real pipeline run (pretrain, probe) at an equal number of steps, {result['seeds']} "
        f"seeds; scores of the pretrained encoder on the val split, mean (min-max). Total "
        f"CPU time: {result['seconds'] / 60:.1f} min of wall-clock on this machine.",
        "",
    ]
    for modality, entry in result["modalities"].items():
        sweep = _sweeps(result["grid"])[modality]
        runs = entry["runs"]
        lines += [f"## {modality}", "", "| point | " + " | ".join(sweep.metrics) + " |",
                  "|---|" + "---|" * len(sweep.metrics)]  # fmt: skip
        summaries = {m: summarise(runs, m) for m in sweep.metrics}
        for label, _ in sweep.points:
            if label not in summaries[sweep.metrics[0]]:
                continue
            cells = [
                f"{s['mean']:.2f} ({s['min']:.2f}-{s['max']:.2f})"
                for s in (summaries[m][label] for m in sweep.metrics)
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "| paper | its direction | ours | verdict |", "|---|---|---|---|"]
        for claim in sweep.claims:
            s = summaries.get(claim.metric) or summarise(runs, claim.metric)
            ours = " vs ".join(f"{s[k]['mean']:.2f}" for k in (claim.winner, claim.other) if k in s)
            lines.append(f"| {claim.paper} | {claim.winner} {claim.kind} {claim.other} on "
                         f"{claim.metric} | {ours} | **{verdict(claim, runs)}** |")  # fmt: skip
        lines += ["", sweep.note, ""] if sweep.note else [""]
    missing = [m for m in _sweeps(result["grid"]) if m not in result["modalities"]]
    if missing:
        lines += [f"Not measured yet: {', '.join(missing)} "
                  f"(`python -m benchmarks.trends --modalities {' '.join(missing)}`).", ""]  # fmt: skip
    return lines


def plot(result: dict, path: Path) -> None:
    """One panel per modality: the first metric's mean per point, with min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = list(result["modalities"])
    fig, axes = plt.subplots(1, len(modalities), figsize=(4.2 * len(modalities), 3.4),
                             squeeze=False)  # fmt: skip
    for ax, modality in zip(axes[0], modalities):
        sweep = _sweeps(result["grid"])[modality]
        metric = sweep.metrics[0]
        s = summarise(result["modalities"][modality]["runs"], metric)
        labels = [label for label, _ in sweep.points if label in s]
        means = [s[k]["mean"] for k in labels]
        errors = [[s[k]["mean"] - s[k]["min"] for k in labels],
                  [s[k]["max"] - s[k]["mean"] for k in labels]]  # fmt: skip
        ax.errorbar(range(len(labels)), means, yerr=errors, fmt="o-", capsize=4)
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_xlabel("mask kind and ratio" if modality == "video" else "mask ratio")
        ax.set_ylabel(f"{metric} (pretrained, val)")
        verdicts = ", ".join(verdict(c, result["modalities"][modality]["runs"])
                             for c in sweep.claims)  # fmt: skip
        ax.set_title(f"{modality}: {verdicts}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(table(result)) + "\n")
    plot(result, out.with_suffix(".png"))


def _sweeps(grid: str) -> dict[str, Sweep]:
    return TINY if grid == "tiny" else SWEEPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modalities", nargs="+", default=list(SWEEPS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--grid", choices=("full", "tiny"), default="full")
    parser.add_argument("--work", default="runs/trends")
    parser.add_argument("--out", default="docs/trends")
    parser.add_argument("--replot", action="store_true", help="redraw from <out>.json")
    parser.add_argument("--points", nargs="+", help="only these labels of each sweep")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.replot:
        write(json.loads(out.with_suffix(".json").read_text()), out)
        return 0
    sweeps = _sweeps(args.grid)
    before = (
        json.loads(out.with_suffix(".json").read_text())
        if out.with_suffix(".json").exists()
        else {}
    )
    result = {"machine": machine(), "grid": args.grid, "seeds": args.seeds, "seconds": 0.0,
              # the modalities measured before (a sweep run one modality at a time) are kept
              "modalities": dict(before.get("modalities", {})) if before.get("grid") == args.grid else {}}  # fmt: skip
    for modality in args.modalities:
        sweep = sweeps[modality]
        labels = [label for label, _ in sweep.points if not args.points or label in args.points]
        runs = [run_point(sweep, label, seed, Path(args.work))
                for seed in range(args.seeds) for label in labels]  # fmt: skip
        # with --points, the sweep's other points measured before are kept beside these
        kept = [r for r in result["modalities"].get(modality, {}).get("runs", [])
                if r["label"] not in labels]  # fmt: skip
        result["modalities"][modality] = {"runs": kept + runs}
        result["seconds"] = sum(
            r["seconds"] for e in result["modalities"].values() for r in e["runs"]
        )
        write(result, out)  # after each modality: a long sweep keeps what it measured
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
