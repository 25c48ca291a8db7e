"""The quickstart results tables of README.md and docs/results.md, written from runs of the
current code: ``make results`` (all four modalities, about 30 minutes on 2 cores) or
``python -m benchmarks.quickstart_results image text``.

Each quickstart runs from scratch under ``results/quickstart_<modality>/`` (its own run folder,
removed first, so nothing is reused from an older checkout), then its ``finetune`` and ``probe``
metrics are read back. The page says the machine, the date and the commit; the tables are never
copied by hand. ``--collect DIR ...`` only reads finished run folders (to compare two checkouts'
runs, for example), ``--out`` names the markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine
from training.metrics import read_eval_metrics

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("image", "audio", "video", "text")
PERCENT = {"top1", "top5", "accuracy", "wer", "cer"}


def run_quickstart(modality: str) -> tuple[Path, float]:
    run_dir = ROOT / "results" / f"quickstart_{modality}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pipeline.cli", "run", f"configs/quickstart_{modality}.yaml",
           f"run_dir={run_dir}"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True)
    return run_dir, time.perf_counter() - start


def rows(run_dir: Path) -> list[dict]:
    """One row per task and metric: pretrained, random init, which way is better."""
    metrics = read_eval_metrics(run_dir / "evaluate")
    out = []
    for task, about in metrics["tasks"].items():
        pre, rnd = metrics[task].get("pretrained", {}), metrics[task].get("random_init", {})
        for metric, better in about["better"].items():
            if metric == "top5" or metric not in pre:
                continue  # top-5 of 6-8 classes says little
            out.append({"task": about["title"], "metric": metric, "better": better,
                        "pretrained": pre[metric], "random_init": rnd.get(metric)})  # fmt: skip
    return out


def cells(r: dict, digits: int) -> tuple[str, str]:
    """Pretrained and random-init cells, the better one in bold (neither on a tie)."""
    unit = "%" if r["metric"] in PERCENT else ""
    pre, rnd = r["pretrained"], r["random_init"]
    shown = [f"{pre:.{digits}f}{unit}", "-" if rnd is None else f"{rnd:.{digits}f}{unit}"]
    if rnd is not None and round(pre, digits) != round(rnd, digits):
        wins = (pre > rnd) == (r["better"] == "higher")
        shown[0 if wins else 1] = f"**{shown[0 if wins else 1]}**"
    return shown[0], shown[1]


def table(found: list[dict]) -> list[str]:
    lines = ["| task | metric | pretrained | random init | better |", "|---|---|---|---|---|"]
    for r in found:
        pre, rnd = cells(r, 2)
        lines.append(f"| {r['task']} | {r['metric']} | {pre} | {rnd} | {r['better']} |")
    return lines


def page(results: dict, about: dict) -> str:
    lines = [
        "# Quickstart results",
        "",
        f"Written by `make results` (`python -m benchmarks.quickstart_results`) on "
        f"{about['date']}, commit `{about['commit']}`, {about['cpu']} ({about['cores']} cores), "
        f"torch {about['torch']}. {about['how']}; every number below is read from its "
        "`evaluate/{finetune,probe}/metrics.json`. Each protocol scores the pretrained "
        "encoder and a random-init one of the same shape on the val split, which no recipe "
        "choice looked at.",
    ]
    for modality, found in results.items():
        took = f" ({found['seconds'] / 60:.1f} min)" if found.get("seconds") else ""
        source = [f"From {found['from']}.", ""] if found.get("from") else []
        lines += ["", f"## {modality}{took}", "", *source, *table(found["rows"])]
    return "\n".join(lines) + "\n"


def readme_block(results: dict, about: dict) -> str:
    """The README's compact table: one row per modality and protocol (the first metric of each
    task), pretrained against random init."""
    lines = [
        "<!-- results: written by benchmarks/quickstart_results.py; do not edit by hand -->",
        about.get("readme_how")
        or f"From `make results` on {about['date']} (commit `{about['commit']}`, {about['cpu']}, "
        f"{about['cores']} cores):",
        "",
        "| modality | protocol | pretrained | random init |",
        "|---|---|---|---|",
    ]
    for modality, found in results.items():
        seen = set()
        for r in found["rows"]:
            if r["task"] in seen:
                continue
            seen.add(r["task"])
            pre, rnd = cells(r, 2)
            lines.append(f"| {modality} | {r['task']} ({r['metric']}) | {pre} | {rnd} |")
    return "\n".join([*lines, "<!-- /results -->"])


def update_readme(block: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index("<!-- results:")
    end = text.index("<!-- /results -->") + len("<!-- /results -->")
    readme.write_text(text[:start] + block + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modalities", nargs="*", default=list(MODALITIES))
    parser.add_argument("--collect", nargs="*", help="finished run folders to read, not run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--no-readme", action="store_true", help="leave README.md as it is")
    parser.add_argument("--update", nargs="*", metavar="MODALITY=RUN_DIR",
                        help="re-read these modalities from finished runs of this checkout's "
                        "quickstarts; the others stay as <out>.json has them, and each section "
                        "says where it comes from")  # fmt: skip
    parser.add_argument("--how", nargs="*", default=[], metavar="MODALITY=TEXT",
                        help="how an updated modality's run was made, when not from scratch at "
                        "this commit (a run resumed after a config change reran some stages)")  # fmt: skip
    args = parser.parse_args()
    said = dict(item.split("=", 1) for item in args.how)
    results = {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    if args.update:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        before = saved["about"]
        results = saved["results"]
        for found in results.values():
            found.setdefault("from", f"`make results` on {before['date']} at commit "
                                     f"`{before['commit']}`")  # fmt: skip
        for item in args.update:
            modality, run_dir = item.split("=", 1)
            results[modality] = {
                "rows": rows(Path(run_dir)),
                "from": said.get(modality)
                or f"`maskmill run configs/quickstart_{modality}.yaml` from scratch on "
                f"{datetime.date.today().isoformat()} at commit `{commit}`",
            }
    elif args.collect:
        for run_dir in map(Path, args.collect):
            results[run_dir.name] = {"rows": rows(run_dir)}
    else:
        for modality in args.modalities:
            run_dir, seconds = run_quickstart(modality)
            results[modality] = {"rows": rows(run_dir), "seconds": seconds}
    how = (
        "Each quickstart ran from scratch; the sections re-run since say so"
        if args.update
        else f"Collected from finished run folders ({', '.join(args.collect)}), commit not checked"
        if args.collect
        else "Each quickstart ran from scratch"
    )
    about = {**machine(), "date": datetime.date.today().isoformat(), "commit": commit or "?",
             "how": how}  # fmt: skip
    if args.update:
        origins = "; ".join(f"{m}: {r['from']}" for m, r in results.items())
        about["readme_how"] = (
            f"From runs of several commits ({about['cpu']}, {about['cores']} cores), each "
            f"section of docs/results.md saying which: {origins}."
        )
    out = Path(args.out)
    out.write_text(page(results, about))
    out.with_suffix(".json").write_text(json.dumps({"about": about, "results": results}, indent=1))
    if not args.no_readme and (args.update or not args.collect):
        update_readme(readme_block(results, about))
    print(out.read_text())


if __name__ == "__main__":
    main()
