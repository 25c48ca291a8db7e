"""``RUN_DIR/report.html``: one self-contained page a person would rather look at than read.

Loss, learning-rate and throughput curves; a grid of val images as original | masked |
reconstruction; the evaluation table with the random-init baseline and what pretraining bought;
what the prep skipped and why. Figures are PNGs (matplotlib) saved under ``RUN_DIR/report/`` and
embedded in the page, so the file can be mailed or attached to an issue on its own.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from data_prep.shard_format import read_stats
from pipeline.schema import RunConfig
from training.evaluate import METRICS as EVAL_METRICS
from training.export import load_mae
from training.loader import eval_batches
from training.masking import masks_for_batch, num_visible
from training.metrics import read_metrics
from training.patches import denormalize_pixels, normalize_pixels, patchify, unpatchify

REPORT = "report.html"
PROTOCOLS = {"linear_probe": "Linear probe", "knn": "k-NN", "finetune": "Fine-tune"}


def write_report(cfg: RunConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    fig_dir = run_dir / "report"
    fig_dir.mkdir(parents=True, exist_ok=True)
    curve = read_metrics(cfg.pretrain.out_dir)
    metrics = json.loads((Path(cfg.evaluate.out_dir) / EVAL_METRICS).read_text())
    figures = {
        "curves.png": plot_curves(curve),
        "reconstructions.png": plot_reconstructions(cfg),
    }
    for name, fig in figures.items():
        fig.savefig(fig_dir / name, dpi=110, bbox_inches="tight")
    page = _page(cfg, curve, metrics, fig_dir)
    (run_dir / REPORT).write_text(page)
    return run_dir / REPORT


def plot_curves(curve: list[dict]):
    fig = Figure(figsize=(13, 3.4))
    axes = fig.subplots(1, 3)
    steps = [r["step"] for r in curve]
    for ax, key, title in zip(
        axes,
        ("loss", "lr", "images_per_s"),
        ("training loss (masked patches)", "learning rate", "throughput (images/s)"),
    ):
        ax.plot(steps, [r[key] for r in curve], color="#1f5fa8", lw=1.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_reconstructions(cfg: RunConfig):
    """Rows of val images: original | masked input | reconstruction (visible patches pasted)."""
    model = load_mae(Path(cfg.evaluate.export_dir)).eval()
    size, patch = model.cfg.image_size, model.cfg.patch_size
    images, _, keys = next(eval_batches(cfg.evaluate.val_shards, size, cfg.report.reconstructions))
    x = normalize_pixels(images)
    mask = masks_for_batch(cfg.seed, 0, keys, model.cfg.num_patches, cfg.pretrain.mask.ratio)
    _, pred = model(x, mask)
    target = patchify(x, patch)
    if model.cfg.norm_pix_loss:  # predictions are per-patch normalised: undo with the true stats
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    m = mask.masked.unsqueeze(-1)
    masked_in = unpatchify(target * (1 - m) + m * -10.0, patch, size, size)
    pasted = unpatchify(target * (1 - m) + pred * m, patch, size, size)
    columns = [
        ("original", x),
        (f"masked {cfg.pretrain.mask.ratio:.0%}", masked_in),
        ("reconstruction", pasted),
    ]
    n = len(keys)
    fig = Figure(figsize=(5.4, 1.8 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for col, (title, batch) in enumerate(columns):
        pictures = denormalize_pixels(batch).permute(0, 2, 3, 1).numpy()
        for row in range(n):
            ax = axes[row][col]
            ax.imshow(pictures[row], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _page(cfg: RunConfig, curve: list[dict], metrics: dict, fig_dir: Path) -> str:
    p = cfg.pretrain
    m = p.model.resolved()
    last = curve[-1] if curve else {}
    facts = [
        ("run", cfg.name),
        (
            "encoder",
            f"ViT {m.preset} ({m.embed_dim}-d, {m.depth} blocks, patch {m.patch_size}, {m.image_size}px)",
        ),
        ("decoder", f"{m.decoder_depth} blocks x {m.decoder_embed_dim}"),
        ("mask ratio", f"{p.mask.ratio:.2f} ({_visible(p)} of {m.num_patches} patches visible)"),
        (
            "steps",
            f"{last.get('step', 0)} x batch {p.batch_size} x {cfg.launch.ranks} ranks x accum {p.grad_accum}",
        ),
        ("precision / ZeRO", f"{p.precision} / stage {p.zero_stage}"),
        ("final loss", f"{last.get('loss', float('nan')):.4f}"),
        ("throughput", f"{_median([r['images_per_s'] for r in curve]):.0f} images/s (median)"),
    ]
    body = [
        f"<h1>maskmill run <code>{html.escape(cfg.name)}</code></h1>",
        f"<p class=muted>written {datetime.datetime.now().isoformat(timespec='seconds')}</p>",
        _table(["", ""], facts, cls="facts"),
        "<h2>What pretraining bought</h2>",
        _eval_table(metrics),
        "<h2>Training curves</h2>",
        _img(fig_dir / "curves.png"),
        "<h2>Reconstructions (val split)</h2>",
        "<p class=muted>Visible patches are pasted back into the reconstruction; masked ones are the model's guess.</p>",
        _img(fig_dir / "reconstructions.png"),
        "<h2>Data</h2>",
        _data_table(cfg),
    ]
    return _HTML.format(title=html.escape(cfg.name), body="\n".join(body))


def _eval_table(metrics: dict) -> str:
    rows = []
    for key, title in PROTOCOLS.items():
        if key not in metrics:
            continue
        pre, rnd = metrics[key].get("pretrained", {}), metrics[key].get("random_init", {})
        for k in ("top1", "top5"):
            if k in pre:
                gain = pre[k] - rnd[k] if k in rnd else None
                rows.append(
                    (
                        f"{title} {k.replace('top', 'top-')}",
                        f"<b>{pre[k]:.1f}%</b>",
                        f"{rnd[k]:.1f}%" if k in rnd else "-",
                        f"<span class={'good' if gain and gain > 0 else 'bad'}>{gain:+.1f}</span>"
                        if gain is not None
                        else "-",
                    )
                )
    data = metrics.get("data", {})
    note = f"<p class=muted>val split: {data.get('val_samples')} images, {data.get('classes')} classes.</p>"
    return _table(["protocol", "pretrained", "random init", "gain"], rows, raw=True) + note


def _data_table(cfg: RunConfig) -> str:
    rows = []
    for split in cfg.prep.splits:
        stats = read_stats(Path(cfg.prep.out) / split)
        skipped = ", ".join(f"{k}: {v}" for k, v in stats["skipped"].items()) or "none"
        rows.append(
            (
                split,
                stats["inputs"],
                stats["samples"],
                stats["shards"],
                f"{stats['bytes'] / 1e6:.1f} MB",
                skipped,
            )
        )
    return _table(["split", "inputs", "samples", "shards", "size", "skipped (reason: count)"], rows)


def _table(header, rows, cls="", raw=False) -> str:
    esc = (lambda v: str(v)) if raw else (lambda v: html.escape(str(v)))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{path.name}' src='data:image/png;base64,{data}'>"


def _visible(p) -> int:
    return num_visible(p.model.num_patches, p.mask.ratio)


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
