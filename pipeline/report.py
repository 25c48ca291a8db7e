"""``RUN_DIR/report.html``: one self-contained page a person would rather look at than read.

Loss, learning-rate and throughput curves (in the modality's unit); the modality's
reconstruction figure of val samples (for images: original | masked | reconstruction); the
evaluation table with the random-init baseline and what pretraining bought, each gain coloured
by whether its metric is better higher or lower; what the prep skipped and why. Figures are PNGs (matplotlib) saved under ``RUN_DIR/report/`` and
embedded in the page, so the file can be mailed or attached to an issue on its own.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import math
from pathlib import Path

from matplotlib.figure import Figure

from data_prep.shard_format import read_stats
from data_prep.store import location
from pipeline.frontier import frontier_figure, frontier_modality, load_frontier, relative_cost
from pipeline.schema import RunConfig
from training.config import pretrain_split
from training.export import load_model
from training.export_format import read_export
from training.loader import eval_batches
from training.metrics import read_eval_metrics, read_metrics
from training.modalities import Modality, modality
from training.pretrain import zero_stage_of
from training.tasks.config import EVAL_STAGES

REPORT = "report.html"
HIGHER = "higher"
# metrics.json from before tasks carried their directions: every metric was an accuracy
LEGACY_TASKS = {
    "linear_probe": {"title": "Linear probe", "better": {"top1": HIGHER, "top5": HIGHER}},
    "knn": {"title": "k-NN", "better": {"top1": HIGHER, "top5": HIGHER}},
    "finetune": {"title": "Fine-tune", "better": {"top1": HIGHER, "top5": HIGHER}},
}


def write_report(cfg: RunConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    fig_dir = run_dir / "report"
    fig_dir.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(cfg.pretrain.out_dir)
    curve = [r for r in rows if "loss" in r]  # not the events (rollbacks, monitor scores)
    monitored = [r for r in rows if "monitor" in r]
    metrics = read_eval_metrics(cfg.evaluate.out_dir)
    m = modality(cfg.modality)
    (fig_dir / "downstream.png").unlink(missing_ok=True)
    (fig_dir / "monitor.png").unlink(missing_ok=True)
    figures = {
        "curves.png": plot_curves(curve, m.unit),
        "reconstructions.png": plot_reconstructions(cfg, m),
    }
    downstream = plot_downstream_curves(cfg.evaluate.out_dir, metrics)
    if downstream is not None:
        figures["downstream.png"] = downstream
    if monitored:
        figures["monitor.png"] = plot_monitor(monitored, curve)
    masking = _masking_section(cfg, m, fig_dir)
    for name, fig in figures.items():
        fig.savefig(fig_dir / name, dpi=110, bbox_inches="tight")
    page = _page(cfg, m, curve, metrics, fig_dir, masking)
    (run_dir / REPORT).write_text(page)
    return run_dir / REPORT


def plot_curves(curve: list[dict], unit: str):
    fig = Figure(figsize=(13, 3.4))
    axes = fig.subplots(1, 3)
    for ax, key, title, ylabel in zip(
        axes,
        ("loss", "lr", _throughput_key(curve)),
        ("training loss (masked tokens)", "learning rate", "throughput"),
        ("loss (log scale)", "learning rate", f"{unit} / s"),
    ):
        points = [(r["step"], r[key]) for r in curve if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], color="#1f5fa8", lw=1.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig


def plot_reconstructions(cfg: RunConfig, m: Modality):
    """The modality's figure of what the model makes of masked val samples: the objective says
    which val split (the held-out corpus, or the evaluation's) and what masking it shows."""
    export = read_export(cfg.evaluate.export_dir)
    model = load_model(cfg.evaluate.export_dir).eval()
    mask_cfg = cfg.pretrain.mask
    if m.objective.figure_on_pretrain_split:
        split = location(cfg.pretrain.train_shards).parent / "val"
    else:
        split = location(cfg.evaluate.val_shards)
    x, _, keys = next(eval_batches(str(split), m.name, export.input, cfg.report.reconstructions))
    shown = m.objective.figure_inputs(mask_cfg, cfg.seed, keys, x, export.geometry)
    context = m.ops.figure_context(split.parent)  # text: the tokenizer that spells the ids
    title = f"masked {mask_cfg.ratio:.0%}"
    return m.ops.reconstruction_figure(export.input, model, x, shown, title, **context)


def plot_downstream_curves(evaluate_dir: str, metrics: dict):
    """One panel per task that trains (fine-tuning, CTC, the linear probe): its val score at
    each scoring, pretrained against random init; None when no task logged a curve."""
    curves = {}
    for task, about in metrics["tasks"].items():
        metric = next(iter(about["better"]))
        found = {
            encoder: [(r["epoch"], r["val"][metric]) for r in read_metrics(path) if "val" in r]
            for stage in EVAL_STAGES
            for encoder in ("pretrained", "random_init")
            if (path := Path(evaluate_dir) / stage / task / encoder).is_dir()
        }
        if any(found.values()):
            curves[(about["title"], metric)] = found
    if not curves:
        return None
    fig = Figure(figsize=(4.4 * len(curves), 3.2))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    colours = {"pretrained": "#1f5fa8", "random_init": "#999999"}
    for ax, ((title, metric), found) in zip(axes, curves.items()):
        for encoder, points in found.items():
            ax.plot([e for e, _ in points], [v for _, v in points], marker="o", ms=3,
                    color=colours[encoder], label=encoder.replace("_", " "))  # fmt: skip
        ax.set_title(f"{title}: val {metric}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _masking_section(cfg: RunConfig, m: Modality, fig_dir: Path) -> list[str]:
    """The frontier figure with this run's masking on it (objectives that place runs on it, when
    the measured frontier ships with the checkout), and what the masking costs against MAE's
    default."""
    (fig_dir / "masking.png").unlink(missing_ok=True)
    frontier = load_frontier()
    if frontier is None or not m.objective.on_masking_frontier:
        return []
    p = cfg.pretrain
    cost = relative_cost(p.model, m.geometry(p.input), p.mask)
    measured_on = frontier_modality(frontier)
    if measured_on != m.name:  # another modality's frontier says nothing about this run's
        return [
            "<h2>Masking: cost against quality</h2>",
            f"<p>This run's masking ({html.escape(p.mask.kind)}, ratio {p.mask.ratio:.2f}) "
            f"costs <b>{cost:.2f}x</b> the training FLOPs per sample of MAE's default on this "
            f"model. No cost-quality frontier has been measured for {html.escape(m.name)} yet"
            + (
                f" (the one shipped was measured on the {html.escape(measured_on)} demo corpus)"
                if measured_on
                else ""
            )
            + ": <code>python -m benchmarks.masking_frontier</code> measures one.</p>",
        ]
    fig = frontier_figure(frontier, cost, p.model, p.mask)
    fig.savefig(fig_dir / "masking.png", dpi=110, bbox_inches="tight")
    return [
        "<h2>Masking: cost against quality</h2>",
        f"<p>This run's masking ({html.escape(p.mask.kind)}, ratio {p.mask.ratio:.2f}, "
        f"{p.mask.per_sample} mask(s) per sample, {html.escape(p.model.decoder_type)} decoder) "
        f"costs <b>{cost:.2f}x</b> the training FLOPs per sample of MAE's default on this "
        "model. Beside it, what each masking configuration reached on the demo corpus in the "
        "same wall-clock (<code>python -m benchmarks.masking_frontier</code>).</p>",
        _img(fig_dir / "masking.png"),
    ]


def _page(
    cfg: RunConfig,
    modality_: Modality,
    curve: list[dict],
    metrics: dict,
    fig_dir: Path,
    masking: list[str],
) -> str:
    unit = modality_.unit
    last = curve[-1] if curve else {}
    body = [
        f"<h1>maskmill run <code>{html.escape(cfg.name)}</code></h1>",
        f"<p class=muted>written {datetime.datetime.now().isoformat(timespec='seconds')}</p>",
        _table(["", ""], _facts(cfg, modality_, curve), cls="facts"),
        "<h2>What pretraining bought</h2>",
        _eval_table(metrics, unit, _vocab_size(cfg)),
        *_downstream_section(fig_dir),
        "<h2>Training curves</h2>",
        _img(fig_dir / "curves.png"),
        *_monitor_section(fig_dir),
        "<h2>Reconstructions (val split)</h2>",
        "<p class=muted>Visible tokens are pasted back into the reconstruction; masked ones are the model's guess.</p>",
        _img(fig_dir / "reconstructions.png"),
        *masking,
        *_data_section(cfg, last),
    ]
    return _HTML.format(title=html.escape(cfg.name), body="\n".join(body))


def _facts(cfg: RunConfig, modality_: Modality, curve: list[dict]) -> list[tuple[str, str]]:
    """The run at a glance: the table at the top of the page."""
    p = cfg.pretrain
    m = p.model.resolved()
    grid = modality_.geometry(p.input).grid
    tokens = math.prod(grid)
    last = curve[-1] if curve else {}
    speed = _throughput_key(curve)
    split = pretrain_split(p, cfg.launch.world_size)
    return [
        ("run", cfg.name),
        ("modality", f"{cfg.modality}: {_describe_input(p.input)}"),
        ("encoder", f"ViT {m.preset} ({m.embed_dim}-d, {m.depth} blocks, {tokens} tokens)"),
        modality_.objective.head_fact(m),
        modality_.objective.mask_fact(p.mask, grid),
        (
            "steps",
            f"{last.get('step', 0)} x batch {split.global_batch} ({split.world_size} ranks x "
            f"{split.micro} x accum {split.accum})",
        ),
        ("precision / ZeRO", f"{p.precision} / stage {zero_stage_of(p)}"),
        ("final loss", f"{last.get('loss', float('nan')):.4f}"),
        (
            "throughput",
            f"{_median([r[speed] for r in curve if speed in r]):.0f} {modality_.unit}/s (median)",
        ),
    ]


def _monitor_section(fig_dir: Path) -> list[str]:
    if not (fig_dir / "monitor.png").exists():
        return []
    return [
        "<p class=muted>The k-NN monitor (<code>pretrain.monitor</code>): the encoder's k-NN "
        "top-1 on fixed labelled samples while it pretrains, against step and wall-clock.</p>",
        _img(fig_dir / "monitor.png"),
    ]


def plot_monitor(monitored: list[dict], curve: list[dict]):
    """k-NN top-1 against the optimizer step and against minutes since the first score."""
    fig = Figure(figsize=(9, 3.2))
    by_step, by_time = fig.subplots(1, 2)
    steps = [r["step"] for r in monitored]
    top1 = [r["monitor"]["knn_top1"] for r in monitored]
    start = monitored[0]["time"]
    minutes = [(r["time"] - start) / 60 for r in monitored]
    for ax, xs, xlabel in ((by_step, steps, "optimizer step"),
                           (by_time, minutes, "minutes since the first score")):  # fmt: skip
        ax.plot(xs, top1, "o-", color="#1f5fa8", lw=1.6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("k-NN top-1 (%)")
        ax.grid(alpha=0.3)
    by_step.set_title("k-NN monitor by step", fontsize=10)
    by_time.set_title("k-NN monitor by wall-clock", fontsize=10)
    fig.tight_layout()
    return fig


def _downstream_section(fig_dir: Path) -> list[str]:
    if not (fig_dir / "downstream.png").exists():
        return []
    return [
        "<p class=muted>The val split at each scoring of the tasks that train (the "
        "<code>finetune</code> and <code>probe</code> stages; the best model is exported beside "
        "the last).</p>",
        _img(fig_dir / "downstream.png"),
    ]


# Metrics reported in percent (gains in percentage points); the others (perplexity) are not.
PERCENT = {"top1", "top5", "accuracy", "wer", "cer"}


def _eval_table(metrics: dict, unit: str, vocab: int | None = None) -> str:
    data = metrics.get("data", {})
    classes = data.get("classes")
    rows = []
    for key, task in metrics.get("tasks", LEGACY_TASKS).items():
        if key not in metrics:
            continue
        pre, rnd = metrics[key].get("pretrained", {}), metrics[key].get("random_init", {})
        for name, better in task["better"].items():
            if name not in pre or (name == "top5" and classes is not None and classes < 10):
                continue  # top-5 of under 10 classes says little (of 6: chance is 83%)
            chance = chance_level(key, name, classes, vocab)
            rows.append(
                (
                    f"{task['title']} {name}",
                    *_scores(pre[name], rnd.get(name), better, name in PERCENT),
                    "-" if chance is None else f"{chance:.2f}",
                )
            )
    note = (
        f"<p class=muted>val split: {data.get('val_samples')} {unit}, {classes} classes. "
        "Accuracies and error rates are in percent, their gains in percentage points (pp); a "
        "gain is green when it goes the better way for its metric. Chance: what guessing "
        "uniformly scores (top-k: k / classes; masked tokens: 1 / vocabulary, perplexity = "
        "the vocabulary size).</p>"
    )
    header = ["task", "pretrained", "random init", "gain", "chance"]
    return _table(header, rows, raw=True) + note


def chance_level(task: str, metric: str, classes: int | None, vocab: int | None) -> float | None:
    """What a uniform guess scores on ``metric``, or None where that is not defined (WER)."""
    if metric in ("top1", "top5") and classes:
        k = 1 if metric == "top1" else 5
        return 100.0 * min(k, classes) / classes
    if vocab and metric in ("accuracy", "perplexity"):  # masked-token scores
        return 100.0 / vocab if metric == "accuracy" else float(vocab)
    return None


def _scores(pre: float, rnd: float | None, better: str, percent: bool) -> tuple[str, str, str]:
    """Cells for one metric: pretrained (bold), random init, and the gain coloured by whether it
    went the better way (up for accuracy, down for WER or perplexity)."""
    if rnd is None:
        return f"<b>{pre:.2f}</b>", "-", "-"
    gain = pre - rnd
    good = gain > 0 if better == HIGHER else gain < 0
    shown = f"{gain:+.2f} pp" if percent else f"{gain:+.2f}"
    return (
        f"<b>{pre:.2f}</b>",
        f"{rnd:.2f}",
        f"<span class={'good' if good else 'bad'}>{shown}</span>",
    )


def _vocab_size(cfg: RunConfig) -> int | None:
    try:
        return read_export(cfg.evaluate.export_dir).geometry.vocab_size or None
    except (OSError, ValueError):
        return None


def _describe_input(input_cfg) -> str:
    return ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(input_cfg).items())


def _data_section(cfg: RunConfig, last: dict) -> list[str]:
    """The prepared splits, and a mixture's sources with the share each had by the end."""
    section = ["<h2>Data</h2>", _data_table(cfg)]
    if len(cfg.pretrain.data) > 1:
        realised = last.get("mixture", {})
        rows = [
            (s.shards, f"weight {s.weight:g}" if s.weight is not None else f"repeat {s.repeat:g}",
             f"{100 * realised[s.shards]:.2f}%" if s.shards in realised else "-")
            for s in cfg.pretrain.data
        ]  # fmt: skip
        section += [
            "<p class=muted>Pretraining mixed these splits (<code>pretrain.data</code>), drawn "
            "per sample; the share is of every sample drawn, at the last step.</p>",
            _table(["source", "asked", "realised share"], rows),
        ]
    return section


def _data_table(cfg: RunConfig) -> str:
    rows = []
    for split in cfg.prep.splits:
        stats = read_stats(location(cfg.prep.out) / split)
        rows.append(
            (
                split,
                stats["inputs"],
                stats["samples"],
                stats["shards"],
                f"{stats['bytes'] / 1e6:.1f} MB",
                _counts(stats["skipped"]),
                _counts(stats.get("converted", {})),
            )
        )
    header = ["split", "inputs", "samples", "shards", "size", "skipped (reason: count)"]
    return _table([*header, "converted (reason: count)"], rows)


def _counts(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in by_reason.items()) or "none"


def _table(header, rows, cls="", raw=False) -> str:
    esc = (lambda v: str(v)) if raw else (lambda v: html.escape(str(v)))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{path.name}' src='data:image/png;base64,{data}'>"


def _throughput_key(curve: list[dict]) -> str:
    """``units_per_s`` (in the modality's unit); curves written before it had samples only."""
    return "units_per_s" if any("units_per_s" in r for r in curve) else "samples_per_s"


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>maskmill: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
h1 code {{ background: #eef3fa; padding: 0 .3em; }}
table {{ border-collapse: collapse; margin: .6em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .35em .9em; text-align: left; }}
th {{ background: #f4f6f9; }}
table.facts th {{ display: none; }}
.muted {{ color: #777; font-size: .9em; }}
.good {{ color: #17803d; font-weight: 600; }} .bad {{ color: #b3261e; font-weight: 600; }}
img {{ max-width: 100%; }}
</style></head><body>
{body}
</body></html>
"""
